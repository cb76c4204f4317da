"""Name → class registries with lazy imports, merged with third-party entry points.

Part of the small core (with bytegolf.errors) that formats and codecs depend on: it imports
nothing else of the harness. Each registry holds built-in `"module:Class"` targets and, on first
use, adds the entry points of its group (`bytegolf.formats`, `bytegolf.codecs`), so another
distribution adds a format or codec by declaring, in its pyproject:

    [project.entry-points."bytegolf.formats"]
    myfmt = "my_package.module:MyFormat"

Name clashes: a built-in always wins over an entry point of the same name (the entry point is
ignored, with a warning naming its distribution), so installing a package can never change what
an existing name means. Two distributions that register the same new name with different targets
make that name ambiguous: it is left out (with a warning) and using it raises ConfigError naming
both; other names keep working.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

from bytegolf.errors import ConfigError


def _dist_name(ep: metadata.EntryPoint) -> str:
    """The distribution that declares an entry point ("?" when unknown)."""
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "?"


class Registry(Mapping[str, str]):
    """Read-only mapping name -> "module:Class": the built-ins plus, loaded lazily, the entry points of `group`.

    `base` (set by the module that defines the protocol) is the class every registered target must subclass.
    """

    def __init__(self, kind: str, group: str, builtin: Mapping[str, str], base: type | None = None) -> None:
        self.kind = kind
        self.group = group
        self.builtin = dict(builtin)
        self.base = base
        self._merged: dict[str, str] | None = None
        self._ambiguous: dict[str, list[str]] = {}
        self._origin: dict[str, str] = {}  # plugin name -> distribution

    def _load(self) -> dict[str, str]:
        if self._merged is not None:
            return self._merged
        merged = dict(self.builtin)
        seen: dict[str, list[tuple[str, str]]] = {}
        try:
            eps = list(metadata.entry_points(group=self.group))
        except Exception as exc:  # a broken installed distribution must not break the built-ins
            warnings.warn(f"cannot read {self.group} entry points: {exc}", stacklevel=3)
            eps = []
        for ep in eps:
            target = f"{ep.module}:{ep.attr}" if ep.attr else ep.value
            dist = _dist_name(ep)
            if ep.name in self.builtin:
                if target != self.builtin[ep.name]:
                    warnings.warn(
                        f"{self.kind} {ep.name!r} from distribution {dist!r} ({target}) is ignored: "
                        f"the built-in {self.kind} of that name wins",
                        stacklevel=3,
                    )
                continue
            seen.setdefault(ep.name, [])
            if (dist, target) not in seen[ep.name]:
                seen[ep.name].append((dist, target))
        for name, defs in seen.items():
            if len({t for _, t in defs}) > 1:
                self._ambiguous[name] = [f"{d} ({t})" for d, t in defs]
                warnings.warn(self._ambiguity(name), stacklevel=3)
                continue
            merged[name] = defs[0][1]
            self._origin[name] = defs[0][0]
        self._merged = merged
        return merged

    def refresh(self) -> None:
        """Forget the loaded entry points (after installing a distribution in a running process)."""
        self._merged = None
        self._ambiguous.clear()
        self._origin.clear()

    def _ambiguity(self, name: str) -> str:
        return (
            f"{self.kind} {name!r} is registered by more than one distribution: "
            f"{', '.join(self._ambiguous[name])}; it is unusable until all but one are uninstalled"
        )

    def __getitem__(self, name: str) -> str:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {dict(self._load())!r})"

    def plugins(self) -> dict[str, str]:
        """The names (and targets) that entry points add to the built-ins."""
        return {n: t for n, t in self._load().items() if n not in self.builtin}

    def origin(self, name: str) -> str:
        """Where a registered name comes from: "built-in" or the distribution that declares it."""
        self._load()
        return "built-in" if name in self.builtin else self._origin.get(name, "?")

    def load(self, name: str) -> type:
        """Import and return the class registered under `name` (ConfigError if unknown, broken or of the wrong kind)."""
        if name not in self and name in self._ambiguous:
            raise ConfigError(self._ambiguity(name))
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(sorted(self))}")
        target = self[name]
        module, _, attr = target.partition(":")
        where = "" if name in self.builtin else f" (entry point of distribution {self.origin(name)!r})"
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{self.kind} {name!r}{where}: cannot load {target}: {exc}") from None
        if not isinstance(obj, type) or (self.base is not None and not issubclass(obj, self.base)):
            base = self.base.__name__ if self.base is not None else "class"
            raise ConfigError(f"{self.kind} {name!r}{where}: {target} is not a {base} subclass")
        declared = getattr(obj, "name", None)
        if isinstance(declared, str) and declared and declared != name:
            raise ConfigError(f"{self.kind} {name!r}{where}: {target} declares name {declared!r}; the two must agree")
        return obj


def instantiate(registry: Mapping[str, str], kind: str, name: str, params: dict[str, Any]) -> Any:
    """Import `module:Class` registered under `name` and build it from `params`."""
    if isinstance(registry, Registry):
        klass = registry.load(name)
    else:
        if name not in registry:
            raise ConfigError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(registry))}")
        module, cls = registry[name].split(":")
        klass = getattr(importlib.import_module(module), cls)
    try:
        return klass(**params)
    except TypeError as exc:
        raise ConfigError(f"{kind} {name}: {exc}") from None
