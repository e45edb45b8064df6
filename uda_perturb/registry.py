"""One small registry class; one instance per kind of component (backbones, attacks, ...)."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar, overload

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or factory functions.

    ``register`` works as a decorator (``@reg.register()`` / ``@reg.register("name")``) or as a call
    (``reg.register("name", obj)``). ``build`` accepts a name or a config mapping ``{"name": ..., **kwargs}``.
    Unknown names raise a ``KeyError`` that lists the closest registered names.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"

    @overload
    def register(self, name: str | None = None) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str | None, obj: T) -> T: ...

    def register(self, name: str | None = None, obj: T | None = None):  # type: ignore[no-untyped-def]
        """Register ``obj`` under ``name`` (default: its ``__name__``); duplicates are rejected."""

        def add(item: T) -> T:
            key = name or getattr(item, "__name__", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"{self.kind}: cannot infer a name for {item!r}; pass one explicitly")
            if key in self._items:
                raise KeyError(f"{self.kind} {key!r} is already registered ({self._items[key]!r})")
            self._items[key] = item
            return item

        if obj is not None:
            return add(obj)
        return add

    def unregister(self, name: str) -> T:
        """Remove and return an entry (useful in tests and for overriding a built-in)."""
        self.get(name)
        return self._items.pop(name)

    def get(self, name: str) -> T:
        """Return the registered object, or raise ``KeyError`` with "did you mean" suggestions."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._items), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(sorted(self._items)) or '(none)'}"

    def build(self, spec: str | Mapping[str, Any], **kwargs: Any) -> Any:
        """Instantiate by name, or from a mapping with a ``name`` key plus keyword arguments.

        Keyword arguments whose value is ``None`` are dropped, so the factory's defaults apply.
        """
        if isinstance(spec, Mapping):
            spec = dict(spec)
            if "name" not in spec:
                raise KeyError(f"{self.kind} config needs a 'name' key, got keys {sorted(spec)}")
            name = spec.pop("name")
            kwargs = {**spec, **kwargs}
        else:
            name = spec
        factory = self.get(name)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return factory(**kwargs)  # type: ignore[operator]

    def list(self, include: str | Iterable[str] = "*", exclude: str | Iterable[str] | None = None) -> list[str]:
        """Sorted names matching any ``include`` fnmatch pattern and no ``exclude`` pattern."""
        inc = [include] if isinstance(include, str) else list(include)
        exc = [exclude] if isinstance(exclude, str) else list(exclude or [])
        names = [n for n in self._items if any(fnmatch.fnmatch(n, p) for p in inc)]
        return sorted(n for n in names if not any(fnmatch.fnmatch(n, p) for p in exc))


BACKBONES: Registry = Registry("backbone")
HEADS: Registry = Registry("head")
DISCRIMINATORS: Registry = Registry("discriminator")
ATTACKS: Registry = Registry("attack")
DEFENSES: Registry = Registry("defense")
METHODS: Registry = Registry("method")
DATASETS: Registry = Registry("dataset")
ADDONS: Registry = Registry("addon")
