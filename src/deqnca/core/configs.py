"""One config mechanism: dataclasses, one strict loader, and command-line flags derived from the fields.

Every model and training option is a dataclass field. `load_dataclass` builds a config from a dict (a
JSON file, a checkpoint, ``--set key=value`` pairs) and refuses unknown keys and wrong types with one
line that lists the valid keys; `add_dataclass_flags` turns the fields into ``--field-name`` flags, with
the help text kept beside the field (``option(default, "help")``), so no flag list is kept by hand.
Torch-free, so that building the command line stays fast.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any


class ConfigError(ValueError):
    """A config that does not fit its dataclass (unknown key, wrong type, value out of range)."""


def option(default: Any, help: str = "", *, choices: tuple | None = None, flag: bool = True,
           min: float | None = None, max: float | None = None, **meta):
    """A dataclass field with its help text (and choices, range) for the derived command-line flag.

    Args:
        default: the default value (a dict or list default is copied per instance).
        help: the flag's help text.
        choices: allowed values (checked by the loader and the flag).
        flag: derive a command-line flag for this field.
        min: the smallest allowed value of a number (inclusive), checked by the loader, the derived flag
            and `check_ranges`; a field redefined in a subclass keeps the range of the base class's
            field unless it gives its own. Float fields never take NaN or infinity.
        max: the largest allowed value (inclusive), likewise.

    Examples:
        >>> @dataclasses.dataclass
        ... class C:
        ...     lr: float = option(0.1, "learning rate")
        >>> C().lr
        0.1
    """
    metadata = {"help": help, "choices": choices, "flag": flag, **meta}
    if min is not None:
        metadata["min"] = min
    if max is not None:
        metadata["max"] = max
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: json.loads(json.dumps(default)), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_names(cls) -> list[str]:
    """The field names of dataclass `cls`, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def field_meta(cls, name: str) -> dict:
    """The metadata of field `name` of dataclass `cls`, with the range (min, max) and choices that a
    redefinition in a subclass leaves out taken from the base classes' field of that name."""
    out: dict = {}
    for klass in reversed([c for c in getattr(cls, "__mro__", (cls,)) if dataclasses.is_dataclass(c)]):
        f = klass.__dataclass_fields__.get(name) if "__dataclass_fields__" in vars(klass) else None
        if f is not None:
            out.update({k: v for k, v in (f.metadata or {}).items() if v is not None or k not in out})
    return out


def check_value(value, meta: dict, key: str, what: str = "config") -> None:
    """A one-line `ConfigError` when number `value` is NaN, infinite or outside `meta`'s min..max."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{what} key {key!r}: {value} is not a finite number")
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{what} key {key!r}: {value} is out of range ({_range_text(lo, hi)})")


def _range_text(lo, hi) -> str:
    def text(v):
        return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"
    if lo is not None and hi is not None:
        return f"{text(lo)} to {text(hi)}"
    return f">= {text(lo)}" if lo is not None else f"<= {text(hi)}"


def check_ranges(obj, what: str = "config") -> None:
    """Check every number of dataclass instance `obj` against its field's range (one-line `ConfigError`).

    Example:
        >>> @dataclasses.dataclass
        ... class C:
        ...     n: int = option(1, "count", min=1)
        >>> check_ranges(C(n=0))
        Traceback (most recent call last):
        ...
        deqnca.core.configs.ConfigError: config key 'n': 0 is out of range (>= 1)
    """
    for f in dataclasses.fields(obj):
        check_value(getattr(obj, f.name), field_meta(type(obj), f.name), f.name, what)


def check_known_ranges(cls, data: dict, what: str = "config") -> None:
    """Check the numbers of plain dict `data` that are fields of dataclass `cls` against their ranges (keys
    `cls` does not know are left alone: a record written by an older version)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a JSON object of settings, got {type(data).__name__}")
    names = set(field_names(cls))
    for k, v in data.items():
        if k in names:
            check_value(v, field_meta(cls, k), k, what)


def _types(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:              # unresolvable annotations: fall back to the defaults' types
        return {}


def _coerce(value, kind, key: str, what: str):
    """`value` checked against annotation `kind` (int, float, str, bool, dict, list, X | None)."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, what) if len(inner) == 1 else value
    base = origin or kind
    bad = ConfigError(f"{what} key {key!r}: expected {getattr(base, '__name__', base)}, got {value!r}")
    if base in (bool, str, dict):                  # taken as they are, never converted
        if not isinstance(value, base):
            raise bad
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if base in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        return list(value)
    return value


def load_dataclass(cls, data: dict | None, what: str = "config"):
    """An instance of dataclass `cls` from a plain dict: unknown keys and wrong types are one-line errors.

    Args:
        cls: the dataclass.
        data: its fields as a dict (missing keys take the defaults).
        what: how the error messages name the config.

    Returns:
        The instance.

    Examples:
        >>> @dataclasses.dataclass
        ... class C:
        ...     lr: float = 0.1
        >>> load_dataclass(C, {"lr": 1}).lr
        1.0
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a JSON object of settings, got {type(data).__name__}")
    names = field_names(cls)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}; valid keys: {', '.join(names)}")
    hints = _types(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        kind = hints.get(f.name)
        v = json.loads(json.dumps(v)) if isinstance(v, (dict, list)) else v
        if kind is not None:
            v = _coerce(v, kind, f.name, what)
        meta = field_meta(cls, f.name)
        choices = meta.get("choices")
        if choices and v not in choices:
            raise ConfigError(f"{what} key {f.name!r}: {v!r} is not one of {', '.join(map(str, choices))}")
        check_value(v, meta, f.name, what)
        values[f.name] = v
    return cls(**values)


def merged(cls, base: dict, overrides: dict, what: str = "config") -> dict:
    """`base` updated with `overrides` (nested dicts merged one level deep), checked against `cls`."""
    out = json.loads(json.dumps(base))
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    load_dataclass(cls, out, what)          # validate
    return out


def parse_value(text: str):
    """A command-line value: JSON where it parses (numbers, true/false, objects), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_set_pairs(pairs) -> dict:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}`` (dotted keys reach nested dicts)."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set schedule=cosine")
        key, value = pair.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {p!r} is set twice")
        node[leaf] = parse_value(value)
    return out


def add_dataclass_flags(parser, cls, skip: tuple = (), defaults_none: bool = True) -> list[str]:
    """Add one ``--field-name`` flag per field of `cls` (type, choices and help from the field).

    Flags default to None ("not given"), so that the caller can tell explicit values from defaults.
    Dict-valued fields take JSON. Returns the field names that got a flag.
    """
    hints = _types(cls)
    added = []
    for f in dataclasses.fields(cls):
        meta = field_meta(cls, f.name)
        if f.name in skip or not meta.get("flag", True):
            continue
        kind = hints.get(f.name, type(f.default))
        if typing.get_origin(kind) is not None and typing.get_origin(kind) is not dict:
            inner = [a for a in typing.get_args(kind) if a is not type(None)]
            kind = inner[0] if inner else str
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = meta.get("help", "")
        help_text = f"{help_text} (default: {json.dumps(default)})" if help_text else f"default: {json.dumps(default)}"
        name = "--" + f.name.replace("_", "-")
        kw: dict = {"dest": f.name, "default": None if defaults_none else default, "help": help_text}
        if kind is bool:
            kw.update(type=_bool, metavar="BOOL")
        elif kind in (int, float):
            kw["type"] = number_type(kind, meta.get("min"), meta.get("max"))
            kw["metavar"] = f.name.upper()
        elif kind is str:
            kw["type"] = kind
        else:
            kw.update(type=_json, metavar="JSON")
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        parser.add_argument(name, **kw)
        added.append(f.name)
    return added


def number_type(kind, lo=None, hi=None, name: str | None = None):
    """An argparse type: `kind` (int or float) parsed from the text, finite and within lo..hi, else a
    one-line usage error that says the range.

    Example:
        >>> number_type(int, 1)("3")
        3
    """
    import argparse

    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text} is out of range: need {what} {_range_text(lo, hi)}")
        return value

    parse.__name__ = name or kind.__name__
    return parse


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _json(text: str):
    return json.loads(text)


_json.__name__ = "JSON"
_bool.__name__ = "boolean"
