"""Fixtures the experiment tests share."""

from __future__ import annotations

import pytest

from latentgrad.data import DataSplits, load_dataset


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    """The embedded 8x8 digits (offline), loaded once per test module."""
    return load_dataset("digits")
