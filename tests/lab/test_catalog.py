"""The catalog finds every experiment module; experiments never see estimator names."""

from __future__ import annotations

import ast
import importlib
import sys
import types
from pathlib import Path

import pytest

from latentgrad.lab import Experiment, catalog


def test_every_experiment_module_is_found_and_registered():
    modules = catalog.experiment_modules()
    assert "latentgrad.experiments.vae" in modules
    found = catalog.all_experiments()
    assert len(found) == len(modules)
    for name, experiment in found.items():
        assert isinstance(experiment, Experiment) and experiment.name == name


@pytest.mark.parametrize("module", catalog.experiment_modules())
def test_experiments_never_import_the_estimator_registry(module):
    source = Path(importlib.import_module(module).__file__ or "").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not {m for m in imported if m.startswith("latentgrad.lab.registry")}, module
    assert "latentgrad.lab.ESTIMATORS" not in imported
    assert not {m for m in imported if "._" in m}, "imports of private modules"


def test_a_module_without_an_experiment_is_an_error(monkeypatch):
    fake = types.ModuleType("latentgrad.experiments.broken")
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(catalog, "experiment_modules", lambda: [fake.__name__])
    with pytest.raises(TypeError, match=r"latentgrad\.experiments\.broken must define EXPERIMENT"):
        catalog.all_experiments()


def test_two_modules_with_one_name_are_an_error(monkeypatch):
    vae = importlib.import_module("latentgrad.experiments.vae")
    twin = types.ModuleType("latentgrad.experiments.twin")
    twin.EXPERIMENT = vae.EXPERIMENT  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, twin.__name__, twin)
    monkeypatch.setattr(catalog, "experiment_modules", lambda: [vae.__name__, twin.__name__])
    with pytest.raises(ValueError, match="register the name 'vae'"):
        catalog.all_experiments()
