"""Typed experiment configs on the command line and in JSON files.

A config is a dataclass (an :class:`~latentgrad.lab.experiment.ExperimentConfig` subclass)
whose annotations say how each field is parsed. :func:`add_config_arguments` turns every field
into one ``--field-name VALUE`` option; :func:`resolve_config` layers the class defaults, an
optional JSON override file and the flags given on the command line (the flags win);
:func:`config_to_dict` and :func:`config_from_dict` are the JSON round trip a run directory
uses to record and check its config.

Supported field types: ``int``, ``float``, ``str``, ``bool`` (``--flag``, ``--no-flag`` or
``--flag true``), ``X | None`` (``none`` on the command line, ``null`` in JSON), ``Literal``
of strings or ints, tuples (``tuple[int, ...]`` or fixed length, written ``1,2,3``), and
``dict[str, Any]``: a JSON object of scalars (no flag of its own; ``estimator_options`` has
typed flags per estimator, see :mod:`latentgrad.lab.registry`).

Example:
    >>> import argparse
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Config:
    ...     lr: float = 1e-3
    ...     hidden: tuple[int, ...] = (200,)
    ...     limit: int | None = None
    >>> parser = argparse.ArgumentParser()
    >>> add_config_arguments(parser, Config)
    >>> args = parser.parse_args(["--hidden", "300,200", "--limit", "5"])
    >>> resolve_config(Config, overrides=cli_overrides(args, Config))
    Config(lr=0.001, hidden=(300, 200), limit=5)
    >>> config_to_dict(Config(hidden=(1, 2)))
    {'lr': 0.001, 'hidden': [1, 2], 'limit': None}
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")

_DEST_PREFIX = "config__"
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_NONE = frozenset({"none", "null"})


class ConfigError(ValueError):
    """A config file or value that does not fit the config class."""


class InvalidConfigValue(ConfigError):
    """A config value of the right type but outside the range its field allows.

    Args:
        field: the field's name.
        requirement: what the value must be, as it reads after "must be".
        value: the value given.

    Example:
        >>> str(InvalidConfigValue("batch_size", "a positive int", 0))
        'batch_size must be a positive int, got 0'
    """

    def __init__(self, field: str, requirement: str, value: object) -> None:
        super().__init__(f"{field} must be {requirement}, got {value!r}")
        self.field = field
        self.requirement = requirement
        self.value = value

    def __reduce__(self) -> tuple[type[InvalidConfigValue], tuple[str, str, object]]:
        return type(self), (self.field, self.requirement, self.value)


def require(ok: bool, field: str, requirement: str, value: object) -> None:
    """Raise :class:`InvalidConfigValue` unless ``ok``.

    Example:
        >>> require(3 >= 1, "epochs", "an int >= 1", 3)  # passes silently
    """
    if not ok:
        raise InvalidConfigValue(field, requirement, value)


def is_positive_int(value: object, *, optional: bool = False) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``) >= 1, or ``None`` when ``optional``.

    Example:
        >>> is_positive_int(2), is_positive_int(0), is_positive_int(None, optional=True)
        (True, False, True)
    """
    if value is None:
        return optional
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_nonnegative_number(value: object, *, optional: bool = False) -> bool:
    """Whether ``value`` is a finite ``int`` or ``float`` (not a ``bool``) >= 0, or ``None``
    when ``optional``.

    Example:
        >>> is_nonnegative_number(0.5), is_nonnegative_number(-1), is_nonnegative_number(None)
        (True, False, False)
    """
    if value is None:
        return optional
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


def require_positive_ints(config: object, *names: str, optional: bool = False) -> None:
    """Require each field ``names`` of ``config`` to be a positive int (or ``None`` when
    ``optional``), in order.

    Raises:
        InvalidConfigValue: naming the first field that is not.

    Example:
        >>> from types import SimpleNamespace
        >>> require_positive_ints(SimpleNamespace(width=3, depth=0), "width", "depth")
        Traceback (most recent call last):
        ...
        latentgrad.lab.config.InvalidConfigValue: depth must be a positive int, got 0
    """
    requirement = "a positive int or none" if optional else "a positive int"
    _require_each(config, names, lambda v: is_positive_int(v, optional=optional), requirement)


def require_nonnegative(config: object, *names: str, optional: bool = False) -> None:
    """:func:`require_positive_ints` for finite numbers >= 0 (``int`` or ``float``).

    >>> from types import SimpleNamespace
    >>> require_nonnegative(SimpleNamespace(decay=-0.1, alpha=None), "alpha", optional=True)
    >>> require_nonnegative(SimpleNamespace(decay=-0.1), "decay")
    Traceback (most recent call last):
    ...
    latentgrad.lab.config.InvalidConfigValue: decay must be a finite number >= 0, got -0.1
    """
    requirement = "a finite number >= 0 or none" if optional else "a finite number >= 0"
    _require_each(config, names, lambda v: is_nonnegative_number(v, optional=optional), requirement)


def _require_each(
    config: object, names: Iterable[str], ok: Callable[[object], bool], requirement: str
) -> None:
    for name in names:
        value = getattr(config, name)
        require(ok(value), name, requirement, value)


def require_choice(config: object, name: str, allowed: Iterable[str]) -> None:
    """Require the field ``name`` of ``config`` to be one of ``allowed`` (names, or the keys of
    a mapping).

    Raises:
        InvalidConfigValue: if it is not.

    Example:
        >>> from types import SimpleNamespace
        >>> require_choice(SimpleNamespace(activation="elu"), "activation", ("tanh", "relu"))
        Traceback (most recent call last):
        ...
        latentgrad.lab.config.InvalidConfigValue: activation must be one of tanh, relu, got 'elu'
    """
    choices = tuple(allowed)
    value = getattr(config, name)
    require(value in choices, name, "one of " + ", ".join(choices), value)


#: Metadata key of a config field added after runs were recorded:
#: ``field(default=NEW, metadata={RECORDED_BEFORE: OLD})`` says that a recorded config (a run
#: directory's, a results record's) without the field ran with ``OLD``, so that reports read
#: such records as what they ran. Needed where ``OLD`` is not the default; where it is, it only
#: makes old and new records compare field by field (a field that some rows lack is not shown
#: in their labels unless the rows differ in it, see ``latentgrad.lab.report``).
RECORDED_BEFORE = "recorded_before"


#: Metadata key of a config field that only estimators of some latent families read:
#: ``field(default=..., metadata={FOR_LATENTS: ("sparsemap",)})``. Reports leave it out of the
#: settings of the other estimators' runs (see :func:`fields_not_read`), so that it neither
#: labels their rows nor splits them.
FOR_LATENTS = "for_latents"


def fields_not_read(config_class: type, latent: str) -> set[str]:
    """The fields of ``config_class`` that an estimator of the latent family ``latent`` does
    not read (:data:`FOR_LATENTS`).

    Example:
        >>> from dataclasses import dataclass, field
        >>> @dataclass
        ... class Config:
        ...     lr: float = 1e-3
        ...     encoding: str = field(default="a", metadata={FOR_LATENTS: ("sparsemap",)})
        >>> fields_not_read(Config, "softmax"), fields_not_read(Config, "sparsemap")
        ({'encoding'}, set())
    """
    return {
        f.name
        for f in dataclasses.fields(config_class)
        if FOR_LATENTS in f.metadata and latent not in f.metadata[FOR_LATENTS]
    }


def with_recorded_defaults(config_class: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded config with the fields it lacks that say what runs recorded before them ran
    with (:data:`RECORDED_BEFORE`); other missing fields stay missing.

    Example:
        >>> from dataclasses import dataclass, field
        >>> @dataclass
        ... class Config:
        ...     lr: float = 1e-3
        ...     encoding: str = field(default="new", metadata={RECORDED_BEFORE: "old"})
        >>> with_recorded_defaults(Config, {"lr": 0.1}), with_recorded_defaults(Config, {})
        ({'lr': 0.1, 'encoding': 'old'}, {'encoding': 'old'})
        >>> with_recorded_defaults(Config, {"encoding": "new"})
        {'encoding': 'new'}
    """
    out = dict(data)
    for f in dataclasses.fields(config_class):
        if f.init and f.name not in out and RECORDED_BEFORE in f.metadata:
            out[f.name] = f.metadata[RECORDED_BEFORE]
    return out


def config_class_named(name: object) -> type | None:
    """The config dataclass a run directory or record names (``"module.QualName"``), or
    ``None`` when it is not one or cannot be imported (an extra not installed).

    Example:
        >>> config_class_named("latentgrad.experiments.vae.VAEConfig").__name__
        'VAEConfig'
        >>> config_class_named("no.such.Config") is None, config_class_named(None) is None
        (True, True)
    """
    if not isinstance(name, str) or "." not in name:
        return None
    module_name, _, qualname = name.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and dataclasses.is_dataclass(obj) else None


def config_fields(config_class: type) -> dict[str, Any]:
    """The init fields of a config dataclass and their resolved types, in declaration order.

    Raises:
        TypeError: if ``config_class`` is not a dataclass or a field has an unsupported type.
    """
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise TypeError(f"expected a dataclass type, got {config_class!r}")
    hints = typing.get_type_hints(config_class)
    out = {}
    for f in dataclasses.fields(config_class):
        if f.init:
            _check_supported(hints[f.name], f.name)
            out[f.name] = hints[f.name]
    return out


def _check_supported(tp: Any, name: str) -> None:
    inner = _optional_inner(tp)
    if inner is not None:
        tp = inner
    origin = typing.get_origin(tp)
    if tp in (int, float, str, bool):
        return
    if origin is typing.Literal and all(
        isinstance(a, (str, int)) and not isinstance(a, bool) for a in typing.get_args(tp)
    ):
        return
    if origin is tuple and all(
        a in (int, float, str) or a is Ellipsis for a in typing.get_args(tp)
    ):
        return
    if _is_mapping(tp):
        return
    raise TypeError(f"config field {name!r} has an unsupported type {tp!r}")


def _optional_inner(tp: Any) -> Any | None:
    """``X`` for ``X | None`` (and ``Optional[X]``), else ``None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
        raise TypeError(f"only `X | None` unions are supported, got {tp!r}")
    return None


def _is_mapping(tp: Any) -> bool:
    """Whether ``tp`` is ``dict[str, Any]`` (a JSON object of scalars)."""
    return typing.get_origin(tp) is dict and typing.get_args(tp)[:1] == (str,)


def _tuple_item_types(tp: Any, length: int) -> list[Any] | None:
    """Element types of a tuple type for ``length`` items (``None``: wrong length)."""
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return [args[0]] * length
    return list(args) if len(args) == length else None


def _describe_type(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{_describe_type(inner)} or none"
    if _is_mapping(tp):
        return "a JSON object"
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"comma-separated {args[0].__name__}s"
        return "comma-separated (" + ", ".join(a.__name__ for a in args) + ")"
    return str(tp.__name__)


def parse_text(tp: Any, text: str) -> Any:
    """Parse a command-line string as a value of type ``tp``.

    Raises:
        ValueError: with a message saying what was expected.

    Example:
        >>> parse_text(tuple[int, ...], "3,4"), parse_text(int | None, "none"), parse_text(bool, "no")
        ((3, 4), None, False)
    """
    inner = _optional_inner(tp)
    if inner is not None:
        return None if text.strip().lower() in _NONE else parse_text(inner, text)
    if tp is bool:
        word = text.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ValueError(f"expected true or false, got {text!r}")
    if tp is int or tp is float:
        try:
            return tp(text)
        except ValueError:
            raise ValueError(f"expected {tp.__name__}, got {text!r}") from None
    if tp is str:
        return text
    if typing.get_origin(tp) is typing.Literal:
        for choice in typing.get_args(tp):
            if str(choice) == text:
                return choice
        raise ValueError(f"expected {_describe_type(tp)}, got {text!r}")
    if typing.get_origin(tp) is tuple:
        body = text.strip().strip("()[]").strip()
        items = [s.strip() for s in body.split(",")] if body else []
        if items and items[-1] == "":
            items.pop()  # a trailing comma, as in "200,"
        types_ = _tuple_item_types(tp, len(items))
        if types_ is None:
            raise ValueError(f"expected {_describe_type(tp)}, got {text!r}")
        return tuple(parse_text(t, s) for t, s in zip(types_, items, strict=True))
    raise TypeError(f"unsupported type {tp!r}")


def coerce_value(tp: Any, value: object) -> Any:
    """Check a JSON value against type ``tp`` and convert it (lists to tuples, ints to floats).

    Raises:
        ValueError: if ``value`` does not have type ``tp``.

    Example:
        >>> coerce_value(float, 1), coerce_value(tuple[int, ...], [1, 2])
        (1.0, (1, 2))
    """
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else coerce_value(inner, value)
    bad = ValueError(f"expected {_describe_type(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if typing.get_origin(tp) is typing.Literal:
        for choice in typing.get_args(tp):
            if type(choice) is type(value) and choice == value:
                return choice
        raise bad
    if _is_mapping(tp):
        scalar = (str, int, float, bool, type(None))
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, scalar) for k, v in value.items()
        ):
            raise ValueError(
                f"expected a JSON object of numbers, strings and booleans, got {value!r}"
            )
        return dict(value)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        types_ = _tuple_item_types(tp, len(value))
        if types_ is None:
            raise bad
        try:
            return tuple(coerce_value(t, v) for t, v in zip(types_, value, strict=True))
        except ValueError:
            raise bad from None
    raise TypeError(f"unsupported type {tp!r}")


def field_docs(config_class: type) -> dict[str, str]:
    """One-paragraph descriptions of the fields, from the ``Attributes:`` sections of the
    docstrings of the class and its bases (a subclass's entry wins).

    Example:
        >>> from latentgrad.lab.experiment import ExperimentConfig
        >>> field_docs(ExperimentConfig)["epochs"]
        'number of passes over the training set.'
    """
    docs: dict[str, str] = {}
    for cls in reversed(config_class.__mro__):
        doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
        docs.update(_parse_attributes(doc))
    return docs


def _parse_attributes(doc: str) -> dict[str, str]:
    out: dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return out
    indent = len(lines[start]) - len(lines[start].lstrip())
    entry_indent: int | None = None
    current: str | None = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        ind = len(line) - len(line.lstrip())
        if ind <= indent:
            break
        if entry_indent is None:
            entry_indent = ind
        if ind == entry_indent and ":" in line:
            name, _, text = line.strip().partition(":")
            current = name.strip().split(" ")[0]
            out[current] = text.strip()
        elif current is not None:
            out[current] = f"{out[current]} {line.strip()}".strip()
    return out


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_class: type,
    *,
    defaults: object | None = None,
) -> None:
    """Add one ``--field-name VALUE`` option per field of ``config_class`` to ``parser``.

    Options that are not given leave no attribute (their default is ``argparse.SUPPRESS``), so
    :func:`cli_overrides` returns only what the user typed and an override file can sit between
    the class defaults and the flags. Each option's help is the field's docstring entry and its
    default (from ``defaults``, an instance, when given). Booleans get ``--flag [BOOL]`` and
    ``--no-flag``.

    Args:
        parser: the parser or argument group to add to.
        config_class: the config dataclass.
        defaults: an instance whose values the help shows (default: the class defaults).
    """
    docs = field_docs(config_class)
    shown = _default_values(config_class) if defaults is None else config_to_dict(defaults)
    for name, tp in config_fields(config_class).items():
        if _is_mapping(tp):
            continue  # no flag: a nested object (estimator_options has flags of its own)
        help_text = docs.get(name, "").replace("``", "").rstrip()
        default = _as_text(shown[name]) if name in shown else "required"
        help_text = f"{help_text} ({_describe_type(tp)}; default: {default})".strip()
        help_text = help_text.replace("%", "%%")
        dest = _DEST_PREFIX + name
        if tp is bool:
            parser.add_argument(
                _option(name),
                dest=dest,
                nargs="?",
                const=True,
                type=_argparse_type(tp),
                metavar="BOOL",
                default=argparse.SUPPRESS,
                help=help_text,
            )
            parser.add_argument(
                "--no-" + name.replace("_", "-"),
                dest=dest,
                action="store_const",
                const=False,
                default=argparse.SUPPRESS,
                help=f"same as {_option(name)} false",
            )
        else:
            parser.add_argument(
                _option(name),
                dest=dest,
                type=_argparse_type(tp),
                metavar=_metavar(tp),
                default=argparse.SUPPRESS,
                help=help_text,
            )


def _as_text(value: Any) -> str:
    """A value as it is typed on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_as_text(v) for v in value) or '""'
    return str(value) if value != "" else '""'


def _default_values(config_class: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _jsonable(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _jsonable(f.default_factory())
    return out


def _metavar(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return _metavar(inner)
    if typing.get_origin(tp) is typing.Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if typing.get_origin(tp) is tuple:
        return "LIST"
    return str(tp.__name__).upper()


def _argparse_type(tp: Any) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse_text(tp, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = _describe_type(tp)
    return convert


def cli_overrides(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The config values given on the command line (parsed with :func:`add_config_arguments`)."""
    out = {}
    for name in config_fields(config_class):
        dest = _DEST_PREFIX + name
        if hasattr(args, dest):
            out[name] = getattr(args, dest)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def config_to_dict(config: object) -> dict[str, Any]:
    """A config as a JSON-ready dict (tuples become lists); inverse of :func:`config_from_dict`."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {config!r}")
    return {
        f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init
    }


def _check_keys(config_class: type, data: Mapping[str, Any], source: str) -> dict[str, Any]:
    fields = config_fields(config_class)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown config key(s) in {source}: {', '.join(map(repr, unknown))}; "
            f"{config_class.__name__} has: {', '.join(fields)}"
        )
    out = {}
    for key, value in data.items():
        try:
            out[key] = coerce_value(fields[key], value)
        except ValueError as err:
            raise ConfigError(f"bad value for {key!r} in {source}: {err}") from None
    return out


def config_from_dict(
    config_class: type[C], data: Mapping[str, Any], *, source: str = "config"
) -> C:
    """Build a config from a (JSON) dict; missing keys take the class defaults.

    Raises:
        ConfigError: for keys that are not fields (naming them) and values of the wrong type.
    """
    values = _check_keys(config_class, data, source)
    return _construct(config_class, values, source)


def _construct(config_class: type[C], values: dict[str, Any], source: str) -> C:
    missing = [
        f.name
        for f in dataclasses.fields(config_class)  # type: ignore[arg-type]
        if f.init
        and f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required config value(s) in {source}: {', '.join(missing)}")
    return config_class(**values)


def load_config_file(config_class: type, path: str | Path) -> dict[str, Any]:
    """Read an override file: a JSON object of config values (a subset of the fields).

    The ``config.json`` of a run directory (``{"experiment": ..., "config": {...}}``) is also
    accepted, so ``--config runs/.../config.json`` repeats a run's settings (fields added since
    it ran take the value it ran with, see :data:`RECORDED_BEFORE`).

    Raises:
        ConfigError: if the file is unreadable, not a JSON object, or has unknown keys or
            values of the wrong type.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    if "experiment" in data and isinstance(data.get("config"), dict):
        data = with_recorded_defaults(config_class, data["config"])
    return _check_keys(config_class, data, str(path))


def resolve_config(
    config_class: type[C],
    *,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """The class defaults, then the values of ``file``, then ``overrides`` (later wins).

    Raises:
        ConfigError: see :func:`load_config_file`; also for unknown override keys.
    """
    values: dict[str, Any] = {}
    if file is not None:
        values.update(load_config_file(config_class, file))
    if overrides:
        values.update(_check_keys(config_class, dict(overrides), "overrides"))
    return _construct(config_class, values, "the config")


def config_differences(a: object, b: object) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two configs of the same class, ``name: (a, b)``."""
    da, db = config_to_dict(a), config_to_dict(b)
    keys = list(da) + [k for k in db if k not in da]
    return {k: (da.get(k), db.get(k)) for k in keys if da.get(k) != db.get(k)}
