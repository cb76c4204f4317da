"""The tensor plan: which tensor gets which format and settings."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from harness.errors import ConfigError
from harness.model import CONTROL_PATTERNS


@dataclass
class Rule:
    """Tensors whose name matches `match` (a glob) get `format` (default: the run's format) with `params`."""

    match: str
    format: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PlanConfig:
    """Small float tensors pass through (control tensors at fp32, others at passthrough_dtype);
    the rest get the run's format unless a rule (first match wins) says otherwise."""

    passthrough_max_numel: int = 65_536
    passthrough_dtype: str = "fp16"
    control_patterns: list[str] = field(default_factory=lambda: list(CONTROL_PATTERNS))
    rules: list[Rule] = field(default_factory=list)


@dataclass(frozen=True)
class Assignment:
    """One tensor's format name and constructor settings."""

    name: str
    format: str
    params: dict[str, Any]


def make_plan(
    state: dict[str, Tensor], cfg: PlanConfig, format_name: str, format_params: dict[str, Any]
) -> list[Assignment]:
    """Assign every tensor of the state dict, in state-dict order."""
    rules = [r if isinstance(r, Rule) else Rule(**r) for r in cfg.rules]
    used = [False] * len(rules)
    plan = []
    for name, t in state.items():
        if not t.is_floating_point():
            plan.append(Assignment(name, "passthrough", {"dtype": "keep"}))
            continue
        rule_idx = next((i for i, r in enumerate(rules) if fnmatch.fnmatchcase(name, r.match)), None)
        if rule_idx is not None:
            used[rule_idx] = True
            rule = rules[rule_idx]
            fmt = rule.format or format_name
            base = dict(format_params) if fmt == format_name else {}
            plan.append(Assignment(name, fmt, {**base, **dict(rule.params)}))
        elif t.numel() <= cfg.passthrough_max_numel:
            control = any(p in name for p in cfg.control_patterns)
            plan.append(Assignment(name, "passthrough", {"dtype": "fp32" if control else cfg.passthrough_dtype}))
        else:
            plan.append(Assignment(name, format_name, dict(format_params)))
    unused = [r.match for r, u in zip(rules, used, strict=True) if not u]
    if unused:
        raise ConfigError(f"plan rules match no tensor: {unused}")
    return plan
