"""Shared set-up of the test suite.

1. Loads ``markdown_examples.py`` (beside this file) once, as the module
   ``latentgrad_tests_markdown``, so that test_readme.py and test_docs.py share one extractor of
   code examples (pytest runs with ``--import-mode=importlib``, which puts no test folder on
   ``sys.path``).
2. The test device: ``pytest --device cuda`` (or ``LATENTGRAD_TEST_DEVICE=cuda``) runs the suite
   with every tensor that the tests build on that device (see :class:`TestDevice`); the tests that
   cannot run there are skipped, and their skip reason says why (:data:`CPU_ONLY`, the
   ``cpu_only(reason)`` marker). The default, ``cpu``, changes nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

MARKDOWN_MODULE = "latentgrad_tests_markdown"

if MARKDOWN_MODULE not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        MARKDOWN_MODULE, Path(__file__).with_name("markdown_examples.py")
    )
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[MARKDOWN_MODULE] = _module
    _spec.loader.exec_module(_module)

# -- the test device ----------------------------------------------------------------------------

DEVICE_ENV = "LATENTGRAD_TEST_DEVICE"

#: Tests (node-id prefixes, relative to the repository) that run on the CPU only, with the reason
#: shown when ``--device`` skips them. A single test says so with ``@pytest.mark.cpu_only(reason)``.
CPU_ONLY = {
    "tests/data/": "data loading reads files into CPU tensors: nothing device-specific to run",
    "tests/lab/": "the experiment runner and its CLI run on the CPU (no device option)",
    "tests/experiments/": "the experiments build their models on the CPU (no device option)",
    "tests/test_cli.py": "runs the CLI, whose experiments run on the CPU (no device option)",
    "tests/test_readme.py": "the README's examples are a reader's CPU session",
    "tests/test_docs.py": "the documentation's examples are a reader's CPU session",
    "src/latentgrad/": "doctests show CPU tensors in their expected output",
}

_DEVICE_KEY = pytest.StashKey[torch.device]()
_MODE_KEY = pytest.StashKey["TestDevice"]()


def _is_library_frame(depth: int) -> bool:
    """Whether the caller ``depth`` frames up is latentgrad's own code (its test oracles,
    :mod:`latentgrad.testing`, count as test code)."""
    name = sys._getframe(depth + 1).f_globals.get("__name__", "")
    if name == "latentgrad" or name.startswith("latentgrad."):
        return not name.startswith("latentgrad.testing")
    return False


class TestDevice(TorchFunctionMode):
    """Puts the tensors that the tests create on ``device``.

    Like ``torch.set_default_device(device)``, a factory call with no ``device=`` (``torch.randn``,
    ``torch.tensor``, ``torch.zeros``, ...) creates its tensor on ``device``, with two differences:

    - only calls from the tests (and :mod:`latentgrad.testing`) are moved: a call from the library
      itself keeps torch's default (the CPU), so a library function that creates a tensor on the
      CPU whatever its input's device fails on the device run instead of being hidden;
    - a call with a ``generator=`` on another device (the tests' seeded
      ``torch.Generator().manual_seed(s)``) draws on the generator's device and then moves the
      result, so a seeded test sees the same numbers on every device.
    """

    __test__ = False  # a helper, not a test class

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if (
            func in _device_constructors()
            and kwargs.get("device") is None
            and not _is_library_frame(1)
        ):
            generator = kwargs.get("generator")
            if generator is not None and generator.device.type != self.device.type:
                requires_grad = kwargs.pop("requires_grad", False)
                out = func(*args, **kwargs).to(self.device)
                return out.requires_grad_() if requires_grad else out
            kwargs["device"] = self.device
        return func(*args, **kwargs)


def _test_device(config: pytest.Config) -> torch.device:
    """The device named by ``--device`` or ``$LATENTGRAD_TEST_DEVICE`` (default ``cpu``)."""
    name = config.getoption("--device", default=None) or os.environ.get(DEVICE_ENV) or "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise pytest.UsageError(
            f"--device / {DEVICE_ENV}: {name!r} is not a device ({error})"
        ) from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "meta":
        raise pytest.UsageError(
            f"--device / {DEVICE_ENV}: 'meta' holds no data, tests cannot run on it; "
            "name a real device (cpu, cuda, cuda:1, mps)"
        )
    module = getattr(torch, device.type, None)
    available = getattr(module, "is_available", None)
    if available is None or not available():
        raise pytest.UsageError(
            f"--device / {DEVICE_ENV}: {name!r} is not available on this machine "
            f"(torch {torch.__version__}); run without it to test on the CPU"
        )
    count = getattr(module, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise pytest.UsageError(
            f"--device / {DEVICE_ENV}: {name!r} does not exist, this machine has {count()}"
        )
    if device.index is None and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=None,
        metavar="DEVICE",
        help=f"run the tests on DEVICE (cuda, cuda:1, mps); default ${DEVICE_ENV}, else cpu. "
        "Tests that cannot run there are skipped with the reason.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cpu_only(reason): runs on the CPU only; --device skips it with the reason"
    )
    device = _test_device(config)
    config.stash[_DEVICE_KEY] = device
    if device.type != "cpu":
        mode = TestDevice(device)
        mode.__enter__()
        config.stash[_MODE_KEY] = mode


def pytest_unconfigure(config: pytest.Config) -> None:
    mode = config.stash.get(_MODE_KEY, None)
    if mode is not None:
        mode.__exit__(None, None, None)
        del config.stash[_MODE_KEY]


def pytest_report_header(config: pytest.Config) -> str:
    device = config.stash.get(_DEVICE_KEY, torch.device("cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"latentgrad test device: {device} ({name})"


def _cpu_only_reason(item: pytest.Item, root: Path) -> str | None:
    marker = item.get_closest_marker("cpu_only")
    if marker is not None:
        return marker.kwargs.get("reason") or (marker.args[0] if marker.args else "CPU only")
    where = item.path.resolve()
    path = where.relative_to(root).as_posix() if where.is_relative_to(root) else str(where)
    for prefix, reason in CPU_ONLY.items():
        if path.startswith(prefix):
            return reason
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    device = config.stash.get(_DEVICE_KEY, torch.device("cpu"))
    if device.type == "cpu":
        return
    root = Path(__file__).resolve().parents[1]
    for item in items:
        reason = _cpu_only_reason(item, root)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"CPU only: {reason}"))


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    """The test device (``--device`` / ``$LATENTGRAD_TEST_DEVICE``, default ``cpu``)."""
    return pytestconfig.stash[_DEVICE_KEY]
