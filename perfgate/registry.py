"""One registry per axis of the matrix (backends, techniques, metrics).

Entries are registered by import path so that listing the axis never imports a heavy library: the
module behind an entry is imported only when a case on it is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownEntryError(KeyError):
    """A name that the matrix file uses is not registered on this axis."""

    def __str__(self) -> str:
        return str(self.args[0])


def import_object(path: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute.

    Its type is whatever the user's module holds: each caller checks what it gets.

    :param path: a ``module:attribute`` path, as written in the matrix file.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{path!r} is not of the form 'package.module:attribute'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r} (from {path!r})") from None


class Registry(Generic[T]):
    """Named entries of one axis, resolved lazily from ``module:attribute`` paths."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._paths: dict[str, str] = {}
        self._loaded: dict[str, T] = {}
        # The entry every other one of the axis is judged against (fp32, torch_cpu), if it has one;
        # a name, so that knowing it imports nothing.
        self.reference: str | None = None

    def register(self, name: str, path_or_object: str | T, *, reference: bool = False) -> None:
        """Register an entry by ``module:attribute`` path or by the object itself.

        :param name: the name the matrix file uses.
        :param path_or_object: where the entry lives, or the entry.
        :param reference: make it the axis's :attr:`reference` (the last one registered so wins).
        """
        if isinstance(path_or_object, str):
            self._paths[name] = path_or_object
            self._loaded.pop(name, None)
        else:
            self._loaded[name] = path_or_object
        if reference:
            self.reference = name

    def get(self, name: str) -> T:
        """Return the entry called ``name``, importing its module on first use."""
        if name not in self._loaded:
            if name not in self._paths:
                known = ", ".join(sorted(self.names())) or "none"
                raise UnknownEntryError(f"unknown {self.axis} {name!r}; registered: {known}")
            self._loaded[name] = import_object(self._paths[name])
        return self._loaded[name]

    def names(self) -> list[str]:
        """All registered names, in registration order."""
        return list(dict.fromkeys([*self._paths, *self._loaded]))

    def __contains__(self, name: object) -> bool:
        return name in self._paths or name in self._loaded

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
