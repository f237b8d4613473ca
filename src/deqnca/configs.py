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
import typing
from typing import Any


class ConfigError(ValueError):
    """A config that does not fit its dataclass (unknown key, wrong type, value out of range)."""


def option(default: Any, help: str = "", *, choices: tuple | None = None, flag: bool = True, **meta):
    """A dataclass field with its help text (and choices) for the derived command-line flag.

    Args:
        default: the default value (a dict or list default is copied per instance).
        help: the flag's help text.
        choices: allowed values (checked by the loader and the flag).
        flag: derive a command-line flag for this field.

    Examples:
        >>> @dataclasses.dataclass
        ... class C:
        ...     lr: float = option(0.1, "learning rate")
        >>> C().lr
        0.1
    """
    metadata = {"help": help, "choices": choices, "flag": flag, **meta}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: json.loads(json.dumps(default)), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_names(cls) -> list[str]:
    """The field names of dataclass `cls`, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


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
    if base is bool:
        if isinstance(value, bool):
            return value
        raise bad
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
    if base is str:
        if not isinstance(value, str):
            raise bad
        return value
    if base is dict:
        if not isinstance(value, dict):
            raise bad
        return value
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
        choices = f.metadata.get("choices") if f.metadata else None
        if choices and v not in choices:
            raise ConfigError(f"{what} key {f.name!r}: {v!r} is not one of {', '.join(map(str, choices))}")
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
        meta = f.metadata or {}
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
        elif kind in (int, float, str):
            kw["type"] = kind
        else:
            kw.update(type=_json, metavar="JSON")
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        parser.add_argument(name, **kw)
        added.append(f.name)
    return added


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
