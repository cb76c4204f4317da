"""The tensor plan: which tensor gets which format and settings."""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import Tensor

from bytegolf.artifact.reshape import check_mode
from bytegolf.errors import ConfigError
from bytegolf.model.gpt import CONTROL_PATTERNS, is_control
from bytegolf.quantize.lqer import LowRankPlan

FORMAT_YAMLS = Path(__file__).resolve().parents[2] / "experiments" / "format"


def format_defaults(name: str) -> dict[str, Any]:
    """A format's settings as `format=<name>` gives them: constructor defaults under its YAML."""
    from bytegolf.formats import REGISTRY

    if name not in REGISTRY:
        raise ConfigError(f"unknown format {name!r}; known: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    sig = inspect.signature(getattr(importlib.import_module(module), cls).__init__)
    params = {p.name: p.default for p in sig.parameters.values() if p.name != "self" and p.default is not p.empty}
    yaml = FORMAT_YAMLS / f"{name}.yaml"
    if yaml.is_file():
        node = OmegaConf.to_container(OmegaConf.load(yaml), resolve=True)
        assert isinstance(node, dict)
        node.pop("defaults", None)
        params.update(node)
    params.pop("name", None)
    return params


def merge_settings(*layers: dict[str, Any]) -> dict[str, Any]:
    """Settings layered left to right; nested dicts (an inner format's settings) merge key by key."""
    out = OmegaConf.to_container(OmegaConf.merge(*(OmegaConf.create(dict(layer)) for layer in layers)), resolve=True)
    assert isinstance(out, dict)
    return out


@dataclass
class Rule:
    """Tensors whose name matches `match` (a glob) get `format` (default: the run's format) with `params`
    over that format's settings (the run's for the run's format, else `format=<name>`'s defaults).

    A rule takes every float tensor its glob matches, those that would pass through included (small tensors,
    control tensors such as `blocks.N.attn.q_gain`): a glob meant for matrices names them (`blocks.*.attn.*.weight`)."""

    match: str
    format: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    optional: bool = False  # may match no tensor (the run's default embedding rule, on a model without one)


@dataclass
class PlanConfig:
    """Small float tensors pass through (control tensors at fp32, others at passthrough_dtype);
    the rest get the run's format unless a rule (first match wins) says otherwise; `lowrank` adds
    a low-rank correction to chosen tensors after they are encoded (bytegolf.quantize.lqer).

    vectors: 1-D float tensors above passthrough_max_numel (biases, norms of a wide model) pass through
    at passthrough_dtype whatever their size ("passthrough"), or get the run's format ("format").
    reshape: how a tensor that is not a matrix (a weight bank (L, out, in), a conv kernel) is given to
    a matrix format: "fold" its leading dims into rows, or "split" it along dim 0 into slices encoded as
    tensors of their own, f"{name}[{i}]", each with its own scales and Hessian (bytegolf.artifact.reshape; recorded
    in the artifact)."""

    passthrough_max_numel: int = 65_536
    passthrough_dtype: str = "fp16"
    vectors: str = "passthrough"
    reshape: str = "fold"
    control_patterns: list[str] = field(default_factory=lambda: list(CONTROL_PATTERNS))
    rules: list[Rule] = field(default_factory=list)
    lowrank: LowRankPlan = field(default_factory=LowRankPlan)


@dataclass(frozen=True)
class Assignment:
    """One tensor's format name and constructor settings, and how the tensor is reshaped when it is not a
    matrix (plan.reshape: bytegolf.artifact.reshape)."""

    name: str
    format: str
    params: dict[str, Any]
    reshape: str = "fold"


def make_plan(
    state: dict[str, Tensor], cfg: PlanConfig, format_name: str, format_params: dict[str, Any]
) -> list[Assignment]:
    """Assign every tensor of the state dict, in state-dict order."""
    rules = [r if isinstance(r, Rule) else Rule(**r) for r in cfg.rules]
    used = [False] * len(rules)
    vectors = getattr(cfg, "vectors", "passthrough")
    if vectors not in ("passthrough", "format"):
        raise ConfigError(f"plan.vectors must be passthrough or format, got {vectors!r}")
    mode = check_mode(getattr(cfg, "reshape", "fold"))
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
            base = dict(format_params) if fmt == format_name else format_defaults(fmt)
            plan.append(Assignment(name, fmt, merge_settings(base, dict(rule.params)), mode))
        elif t.numel() <= cfg.passthrough_max_numel:
            control = is_control(name, cfg.control_patterns)
            plan.append(Assignment(name, "passthrough", {"dtype": "fp32" if control else cfg.passthrough_dtype}))
        elif t.ndim <= 1 and vectors == "passthrough":
            plan.append(Assignment(name, "passthrough", {"dtype": cfg.passthrough_dtype}))
        else:
            plan.append(Assignment(name, format_name, dict(format_params), mode))
    unused = [r.match for r, u in zip(rules, used, strict=True) if not u and not r.optional]
    if unused:
        raise ConfigError(f"plan rules match no tensor: {unused}")
    return plan


def plan_config(node: Any) -> PlanConfig:
    """A PlanConfig from a plan config node (structured or a plain mapping, e.g. a saved config.yaml)."""
    from bytegolf.quantize.lqer import LowRankPlan

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PlanConfig), node))
    assert isinstance(cfg, PlanConfig)
    cfg.rules = [r if isinstance(r, Rule) else Rule(**r) for r in cfg.rules]
    if not isinstance(cfg.lowrank, LowRankPlan):
        cfg.lowrank = LowRankPlan(**cfg.lowrank)
    return cfg
