"""The experiments the command line knows, discovered in :mod:`latentgrad.experiments`.

Every public module of that package (a name without a leading underscore) is one experiment
and exposes ``EXPERIMENT``, an :class:`~latentgrad.lab.experiment.Experiment`. Adding an
experiment is adding a module there; no list to edit. The modules are imported on the first
call (they may need the ``experiments`` extra).

Example:
    >>> "vae" in all_experiments()
    True
"""

from __future__ import annotations

import importlib
import pkgutil

from latentgrad.lab.experiment import Experiment

#: The package whose modules are the experiments.
EXPERIMENTS_PACKAGE = "latentgrad.experiments"


def experiment_modules() -> list[str]:
    """The full names of the experiment modules, sorted.

    Example:
        >>> "latentgrad.experiments.vae" in experiment_modules()
        True
    """
    package = importlib.import_module(EXPERIMENTS_PACKAGE)
    names = (info.name for info in pkgutil.iter_modules(package.__path__))
    return sorted(f"{EXPERIMENTS_PACKAGE}.{name}" for name in names if not name.startswith("_"))


def all_experiments() -> dict[str, Experiment]:
    """Registered experiments by CLI name, in module order.

    Raises:
        TypeError: if an experiment module has no ``EXPERIMENT`` of type ``Experiment``.
        ValueError: if two modules register the same name.
        ImportError: if an experiment module cannot be imported (e.g. a missing extra).
    """
    found: dict[str, Experiment] = {}
    for module_name in experiment_modules():
        module = importlib.import_module(module_name)
        experiment = vars(module).get("EXPERIMENT")
        if not isinstance(experiment, Experiment):
            raise TypeError(
                f"experiment module {module_name} must define EXPERIMENT, an "
                f"latentgrad.lab.Experiment; got {type(experiment).__name__}"
            )
        if experiment.name in found:
            raise ValueError(f"two experiment modules register the name {experiment.name!r}")
        found[experiment.name] = experiment
    return found
