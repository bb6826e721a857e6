"""A tiny name -> factory registry shared by tasks, methods, checkpoint formats and datasets.

Each family keeps one ``Registry``; entries register with a decorator and are created by name,
so no module needs an if/else chain over names.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator

from mtwork.errors import UserError


class UnknownName(UserError, KeyError):
    """A name no entry of the family is registered under (the message lists the known ones)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class Registry:
    """Maps names to factories (classes or functions) for one family of components."""

    def __init__(self, family: str):
        self.family = family
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
            key = name or getattr(factory, "name", None) or factory.__name__
            if key in self._entries:
                raise ValueError(f"{self.family} '{key}' is registered twice")
            self._entries[key] = factory
            return factory

        return wrap

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownName(f"unknown {self.family} '{name}' (known: {known})") from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
