"""Loads ``markdown_examples.py`` (beside this file) once, as the module
``latentgrad_tests_markdown``, so that test_readme.py and test_docs.py share one extractor of
code examples (pytest runs with ``--import-mode=importlib``, which puts no test folder on
``sys.path``)."""

import importlib.util
import sys
from pathlib import Path

MARKDOWN_MODULE = "latentgrad_tests_markdown"

if MARKDOWN_MODULE not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        MARKDOWN_MODULE, Path(__file__).with_name("markdown_examples.py")
    )
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[MARKDOWN_MODULE] = _module
    _spec.loader.exec_module(_module)
