"""Fixtures shared by the tests of the simplex mappings (sparsemax and 1.5-entmax)."""

from collections.abc import Callable

import pytest

import latentgrad.mappings._entmax as em
import latentgrad.mappings._sparsemax as sm

#: ``(_PAIRWISE_MAX, _SORT_MAX)`` that send every row through one way of finding the threshold.
PATHS = {"pairwise": (10**9, 10**9), "sort": (0, 10**9), "prune": (0, 0)}


@pytest.fixture
def use_path(monkeypatch) -> Callable[[str], None]:
    """``use_path(name)`` sends sparsemax and 1.5-entmax through one of :data:`PATHS`."""

    def use(name: str) -> None:
        pairwise_max, sort_max = PATHS[name]
        for module in (sm, em):
            monkeypatch.setattr(module, "_PAIRWISE_MAX", pairwise_max)
            monkeypatch.setattr(module, "_SORT_MAX", sort_max)

    return use


@pytest.fixture(params=list(PATHS))
def path(request, use_path) -> str:
    """Run a test through pairwise gaps, the whole-row sort and the pruned-candidate path."""
    use_path(request.param)
    return request.param
