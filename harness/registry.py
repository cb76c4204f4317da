"""Name → class registries with lazy imports (formats and codecs each keep their own table)."""

from __future__ import annotations

import importlib
from typing import Any

from bytegolf.errors import ConfigError


def instantiate(registry: dict[str, str], kind: str, name: str, params: dict[str, Any]) -> Any:
    """Import `module:Class` registered under `name` and build it from `params`."""
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(registry))}")
    module, cls = registry[name].split(":")
    klass = getattr(importlib.import_module(module), cls)
    try:
        return klass(**params)
    except TypeError as exc:
        raise ConfigError(f"{kind} {name}: {exc}") from None
