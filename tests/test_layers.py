"""The package's layers hold: imports point downwards, and no module reaches into another
package's private modules.

Every module under ``src/latentgrad`` is parsed with ``ast`` (nothing is imported), and each of
its imports of ``latentgrad`` (at module level or inside a function) is checked against the
layer order of DESIGN.md:

    structured < mappings < distributions, schedules < estimators < testing
    < data < lab (the machinery experiments share) < experiments < cli

``latentgrad/__init__.py`` (the public front, which imports everything) and the shared private
vocabulary ``latentgrad._validation`` / ``latentgrad._numerics`` and the optional compiled
kernels ``latentgrad._native`` (importable from anywhere, importing no package) sit outside the
order. A *private* module is one whose name starts with
``_`` (``__init__`` aside); a package may use its own private modules, never another's, and
never another package's private names. ``import latentgrad`` itself (for ``__version__``) is
allowed; names are imported from the package that defines them, not from the root.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "latentgrad"

#: Rank of each top-level package or module; an import may not point to a higher rank.
RANK = {
    "_validation": 0,
    "_numerics": 0,
    "_native": 0,
    "structured": 1,
    "mappings": 2,
    "distributions": 3,
    "schedules": 3,
    "estimators": 4,
    "testing": 5,
    "data": 6,
    "lab": 7,
    "experiments": 8,
    "cli": 9,
}
RANK_ZERO = {"_validation", "_numerics", "_native"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def imported(module: str) -> list[tuple[int, str, str | None]]:
    """``(line, module, name)`` of each import of ``latentgrad`` in ``module`` (``name`` is the
    imported name of a ``from`` import, ``None`` for ``import x.y``)."""
    parts = module.split(".")
    path = PACKAGE.joinpath(*parts[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out += [(node.lineno, base, alias.name) for alias in node.names]
    return [item for item in out if item[1].split(".")[0] == "latentgrad"]


def top(parts: list[str]) -> str | None:
    """The top-level package (or module) of ``latentgrad.<top>...``; ``None`` for the root and
    for a name imported from the root."""
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def violations(module: str, imports: list[tuple[int, str, str | None]] | None = None) -> list[str]:
    """What is wrong with the imports of ``module`` (its own, or ``imports`` given by hand)."""
    own_top = top(module.split("."))
    if own_top is None:  # the root re-exports the public API of every package
        return []
    found = []
    for line, target, name in imported(module) if imports is None else imports:
        parts = target.split(".")
        if name is not None:  # ``from a.b import c``: c is a module or a name of a.b
            parts = [*parts, name]
        where = f"{module}:{line} imports {'.'.join(parts)}"
        target_top = top(parts)
        if target_top is None and parts == ["latentgrad"]:
            continue  # the root package itself, for its metadata
        if target_top is None:
            found.append(f"{where}: import from the package's modules instead")
        elif own_top in RANK_ZERO and target_top not in RANK_ZERO:
            found.append(f"{where}: the shared vocabulary imports no package")
        elif target_top != own_top:
            if any(is_private(p) for p in parts[2:]):
                found.append(f"{where}: a private module or name of another package")
            if RANK[target_top] > RANK[own_top]:
                found.append(f"{where}: points upwards ({own_top} < {target_top})")
    return found


def test_every_module_is_checked() -> None:
    assert {"latentgrad.structured.core", "latentgrad.mappings.oracles", "latentgrad.cli"} <= set(
        MODULES
    )
    assert set(RANK) >= {module.split(".")[1] for module in MODULES if "." in module}


@pytest.mark.parametrize("module", MODULES)
def test_imports_respect_the_layers(module: str) -> None:
    assert violations(module) == []


def test_the_checker_finds_violations() -> None:
    """The rules themselves, on imports written out by hand."""
    module = "latentgrad.distributions.sparsemap"
    cases = {
        (1, "latentgrad.mappings._sparsemap", "sparsemap"): "private module",
        (1, "latentgrad.mappings", "_shared"): "private module",
        (1, "latentgrad.structured._core", None): "private module",
        (1, "latentgrad.estimators", "ScoreFunction"): "upwards",
        (1, "latentgrad", "Categorical"): "package's modules",
    }
    for item, problem in cases.items():
        found = violations(module, [item])
        assert len(found) == 1 and problem in found[0], (item, found)
    allowed = [
        (1, "latentgrad.distributions._base", "DiscreteDistribution"),
        (1, "latentgrad.mappings", "sparsemap"),
        (1, "latentgrad._validation", "check_tensor"),
        (1, "latentgrad.structured.core", "Trace"),
    ]
    assert violations(module, allowed) == []
    assert violations("latentgrad._numerics", [(1, "latentgrad.structured", "run")])
