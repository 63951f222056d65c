"""Loads the toy experiment (``toy.py`` beside this file) once, as the module
``latentgrad_tests_toy``, so that the test files can ``import latentgrad_tests_toy as toy``
(pytest runs with ``--import-mode=importlib``, which puts no test folder on ``sys.path``)."""

import importlib.util
import sys
from pathlib import Path

TOY_MODULE = "latentgrad_tests_toy"

if TOY_MODULE not in sys.modules:
    _spec = importlib.util.spec_from_file_location(TOY_MODULE, Path(__file__).with_name("toy.py"))
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[TOY_MODULE] = _module
    _spec.loader.exec_module(_module)
