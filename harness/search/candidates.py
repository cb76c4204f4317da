"""The allocation's candidate language: the formats and settings a unit may take (`candidates`, listed, or
along a rate knob, `knob`), restricted to tensors by `match`, and checked against the plan before any
encoding (bytegolf.search.allocate describes the language in full)."""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bytegolf.errors import ConfigError
from bytegolf.formats import REGISTRY, get_format
from bytegolf.quantize.encoder import group_units
from bytegolf.quantize.plan import Assignment, format_defaults, merge_settings
from bytegolf.search import budget as search

if TYPE_CHECKING:
    pass


def label(params: dict[str, Any]) -> str:
    """Settings as text: bits=4,clip_k=8 (nested settings dotted: base.bits=3)."""

    def flat(d: dict[str, Any], pre: str) -> list[str]:
        return [x for k, v in d.items() for x in (flat(v, f"{pre}{k}.") if isinstance(v, dict) else [f"{pre}{k}={v}"])]

    return ",".join(flat(params, "")) or "defaults"


@dataclass
class Candidate:
    """One format and settings a unit may take.

    params: the settings given, over the run's (per tensor, as the plan gives them) for the run's
    format, else over `settings` (the named format's defaults, already merged); match: globs, a unit
    takes the candidate when each of its tensors matches one (none: every unit); named: whether the
    user named the format (labels then show it); source: where it came from, for error messages."""

    format: str
    params: dict[str, Any]
    match: list[str] = field(default_factory=list)
    named: bool = False
    source: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        text = (f"{self.format}:" if self.named else "") + label(self.params)
        return text + (f"@{'|'.join(self.match)}" if self.match else "")

    def applies(self, names: list[str]) -> bool:
        return not self.match or all(any(fnmatch.fnmatchcase(n, m) for m in self.match) for n in names)

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "params": self.params, "match": self.match}


def _setting_names(fmt: str) -> set[str] | None:
    """The settings a format's constructor takes (None: it takes any keyword)."""

    module, cls = REGISTRY[fmt].split(":")
    params = inspect.signature(getattr(importlib.import_module(module), cls).__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self"}


def _known_format(fmt: str, where: str) -> None:

    if fmt not in REGISTRY:
        raise ConfigError(f"{where}: unknown format {fmt!r}; known: {', '.join(sorted(REGISTRY))}")


def _match(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    globs = [value] if isinstance(value, str) else value
    if not isinstance(globs, list) or not globs or not all(isinstance(g, str) and g for g in globs):
        raise ConfigError(f"{where}: match must be a glob or a list of globs over tensor names, got {value!r}")
    return list(globs)


def _candidate(fmt: str, fmt_params: dict[str, Any], c: Any, where: str, named: bool | None = None) -> Candidate:
    """One candidate mapping checked: known format, known settings, accepted by the format, same scope."""

    if not isinstance(c, dict):
        raise ConfigError(f"{where}: {c!r} is not a mapping of {fmt} settings")
    params = dict(c)
    cf = params.pop("format", None)
    match = _match(params.pop("match", None), where)
    cand_fmt = fmt if cf is None else str(cf)
    _known_format(cand_fmt, where)
    names = _setting_names(cand_fmt)
    unknown = sorted(set(params) - names) if names is not None else []
    if unknown:
        raise ConfigError(
            f"{where}: format {cand_fmt} has no setting {', '.join(map(repr, unknown))} "
            f"(its settings: {', '.join(sorted(names or ()))})"
        )
    base = dict(fmt_params) if cand_fmt == fmt else format_defaults(cand_fmt)
    settings = merge_settings(base, params)
    cand = Candidate(cand_fmt, params, match, cf is not None if named is None else named, where)
    try:
        get_format(cand_fmt, **settings)
    except ConfigError as exc:
        raise ConfigError(f"{where} {cand.label} is rejected by format {cand_fmt}: {exc}") from None
    run_scope = fmt_params.get("scope", "tensor")
    if settings.get("scope", "tensor") != run_scope:
        raise ConfigError(
            f"{where}: scope {settings.get('scope', 'tensor')} cannot differ from the run format's ({run_scope}); "
            "units are the run format's"
        )
    if cand_fmt != fmt:
        cand.settings = settings
    return cand


KNOB_KEYS = {"format", "name", "values", "steps", "lo", "hi", "log", "integer", "params", "match"}


def knob_values(knob: Any, steps: int, where: str = "allocate.knob") -> list[int | float]:
    """`steps` values spread evenly over a bytegolf.search.budget.Knob's range (log or linear), snapped, distinct."""
    if steps < 1:
        raise ConfigError(f"{where}: steps must be >= 1, got {steps}")
    if steps == 1:
        ts = [(knob.t(knob.lo) + knob.t(knob.hi)) / 2]
    else:
        ts = [knob.t(knob.lo) + i * (knob.t(knob.hi) - knob.t(knob.lo)) / (steps - 1) for i in range(steps)]
    out: list[int | float] = []
    for t in ts:
        v = knob.value(knob.snap(knob.x(t)))
        if v not in out:
            out.append(v)
    return out


def knob_candidates(fmt: str, fmt_params: dict[str, Any], spec: Any, where: str = "allocate.knob") -> list[Candidate]:
    """Candidates along one rate knob (see the module docstring), its range from bytegolf.search.budget.knob_for."""

    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {spec!r} is not a mapping (keys: {', '.join(sorted(KNOB_KEYS))})")
    unknown = sorted(set(spec) - KNOB_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (use {', '.join(sorted(KNOB_KEYS))})")
    named = spec.get("format") is not None
    kfmt = str(spec["format"]) if named else fmt
    _known_format(kfmt, where)
    params = spec.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: params must be a mapping of {kfmt} settings, got {params!r}")
    settings = merge_settings(dict(fmt_params) if kfmt == fmt else format_defaults(kfmt), params)
    name = spec.get("name")
    if name is None:
        try:
            name = get_format(kfmt, **settings).rate_knob
        except ConfigError as exc:
            raise ConfigError(f"{where}: format {kfmt} rejects params {label(params)}: {exc}") from None
        if name is None:
            raise ConfigError(f"{where}: format {kfmt} has no rate knob; give {where}.name")
    path = str(name).split(".")
    node: Any = merge_settings(format_defaults(kfmt), settings)
    for part in path:
        if not isinstance(node, dict) or part not in node:
            own = get_format(kfmt, **settings).rate_knob
            raise ConfigError(f"{where}: format {kfmt} has no knob {name!r} (its rate knob: {own})")
        node = node[part]
    default = node
    if spec.get("values") is not None:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: values must be a non-empty list, got {values!r}")
        if "steps" in spec or any(k in spec for k in ("lo", "hi", "log", "integer")):
            raise ConfigError(f"{where}: give values, or steps with the range (lo, hi, log, integer), not both")
    else:
        override = {k: spec[k] for k in ("lo", "hi", "log", "integer") if spec.get(k) is not None}
        knob = search.knob_for(path[-1], default, override)
        assert knob is not None
        values = knob_values(knob, int(spec.get("steps") or 6), where)
    out = []
    for v in values:
        leaf: dict[str, Any] = {path[-1]: v}
        for part in reversed(path[:-1]):
            leaf = {part: leaf}
        c = {**merge_settings(params, leaf), **({"format": kfmt} if named else {})}
        if spec.get("match") is not None:
            c["match"] = spec["match"]
        out.append(_candidate(fmt, fmt_params, c, f"{where} {name}={v}", named=named))
    return out


def check_candidates(
    fmt: str, fmt_params: dict[str, Any], candidates: Any, knob: Any = None, where: str = "allocate"
) -> list[Candidate]:
    """The candidates of `<where>.candidates` then of `<where>.knob` (a mapping or a list), checked, distinct;
    errors name the setting by `where` (compare.allocated.<name> for a compare's allocated system)."""

    knobs = [] if knob is None else knob if isinstance(knob, list) else [knob]
    if candidates is not None and not isinstance(candidates, list):
        raise ConfigError(f"{where}.candidates: need a list of mappings of settings, got {candidates!r}")
    if not candidates and not knobs:
        raise ConfigError(
            f"{where}.candidates is empty: give settings of {fmt}, e.g. [{{bits: 4}}, {{bits: 6}}], "
            f"or {where}.knob={{name: ..., values: [...]}}"
        )
    out = [_candidate(fmt, fmt_params, c, f"{where}.candidates[{i}]") for i, c in enumerate(candidates or [])]
    for i, spec in enumerate(knobs):
        out += knob_candidates(fmt, fmt_params, spec, f"{where}.knob" + (f"[{i}]" if len(knobs) > 1 else ""))
    seen, distinct = set(), []
    for c in out:
        key = json.dumps([c.format, c.params, c.match], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            distinct.append(c)
    return distinct


def unit_settings(a: Assignment, fmt: str, cand: Candidate) -> dict[str, Any]:
    """A tensor's settings under a candidate: over what the plan gave it for the run's format, else the
    named format's defaults with the candidate's settings (what make_plan gives the rule plan_rules writes)."""

    return merge_settings(a.params, cand.params) if cand.format == fmt else dict(cand.settings)


def option_group(group: list[Assignment], fmt: str, cand: Candidate) -> list[Assignment]:
    """A unit's assignments under a candidate."""

    return [Assignment(a.name, cand.format, unit_settings(a, fmt, cand), a.reshape) for a in group]


def check_plan(plan: list[Assignment], fmt: str, candidates: list[Candidate], where: str = "allocate") -> None:
    """Before any encoding: every unit the plan gives to format fmt has a candidate, every candidate a unit."""

    used = [False] * len(candidates)
    groups = [g for g in group_units(plan) if g[0].format == fmt]
    if not groups:
        raise ConfigError(f"{where}: the plan gives no tensor to format {fmt}")
    for group in groups:
        names = [a.name for a in group]
        applies = [i for i, c in enumerate(candidates) if c.applies(names)]
        if not applies:
            globs = sorted({m for c in candidates for m in c.match})
            raise ConfigError(f"{where}: no candidate applies to tensor {names[0]} (candidates match only {globs})")
        for i in applies:
            used[i] = True
    for c, hit in zip(candidates, used, strict=True):
        if not hit:
            raise ConfigError(f"{c.source}: match {c.match} matches no tensor the plan gives to format {fmt}")
