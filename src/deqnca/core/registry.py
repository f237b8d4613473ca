"""One registry mechanism for every concept a config names: rules, conditionings, solvers, gradients,
read-outs and tasks. A registry maps a name to a factory; configs hold names, so a checkpoint's JSON
says what to build and a user's own piece is one `register` call away (TorchDeq's `register_*`).

    from deqnca import RULES

    @RULES.register("my_rule")
    class MyRule(torch.nn.Module): ...

An unknown name is a one-line error that lists what is registered.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_names_checked = True


@contextmanager
def names_unchecked():
    """While the command line is checked before `--plugin` code runs, every name counts as registered
    (`name in REGISTRY` is True): a plugin may register it; the parse after the plugins checks it."""
    global _names_checked
    _names_checked = False
    try:
        yield
    finally:
        _names_checked = True


class Registry:
    """A named table of factories for one concept (e.g. ``"rule"``).

    Args:
        concept: what the entries are, used in error messages ("rule", "solver", ...).
        protocol: a one-line description of what an entry must provide, shown in errors and docs.

    Examples:
        >>> SHAPES = Registry("shape", "a callable returning an area")
        >>> _ = SHAPES.register("unit", lambda: 1.0)
        >>> SHAPES.build("unit")
        1.0
    """

    def __init__(self, concept: str, protocol: str = ""):
        self.concept, self.protocol = concept, protocol
        self._entries: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None, *, replace: bool = False):
        """Add `obj` under `name`; used as ``register(name, obj)`` or as a decorator ``@register(name)``.

        Args:
            name: the name configs use.
            obj: the factory (a class or a function); omitted when used as a decorator.
            replace: allow replacing an existing entry (otherwise a name clash is an error).

        Returns:
            `obj` (so the decorator leaves the class or function unchanged).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.concept} name must be a non-empty string, got {name!r}")

        def add(o):
            if name in self._entries and not replace and not _same_definition(self._entries[name], o):
                raise ValueError(f"{self.concept} {name!r} is already registered; pick another name "
                                 "or pass replace=True")
            self._entries[name] = o
            return o

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove the entry `name` (e.g. a test's temporary one)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> Any:
        """The factory registered as `name`; a one-line error listing the registered names otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.concept} {name!r}; choose one of {', '.join(self.names())}"
                             + (f" (or register your own: {self.protocol})" if self.protocol else "")) from None

    def build(self, name: str, *args, **kwargs) -> Any:
        """Call the factory registered as `name` with the given arguments."""
        factory: Callable = self.get(name)
        return factory(*args, **kwargs)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or not _names_checked

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.concept!r}: {', '.join(self.names())})"


def _same_definition(a, b) -> bool:
    """The same class or function defined by the same source (a module imported twice, e.g. a plugin
    file loaded by path and by name), which may register again."""
    if a is b:
        return True
    try:
        return a.__qualname__ == b.__qualname__ and inspect.getfile(a) == inspect.getfile(b)
    except (AttributeError, TypeError):
        return False
