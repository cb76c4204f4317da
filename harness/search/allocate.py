"""`bytegolf allocate`: per-tensor formats and settings, chosen to minimise output error under a byte cap.

Every unit the plan gives to the run's format (a tensor, or a family when the format's scope says
so; passthrough tensors and tensors that rules give to other formats stay as they are) is encoded
at every candidate that applies to it. A candidate is a format and settings:

  allocate.candidates  a list of mappings: settings of the run's format ({bits: 4}), or of a named
                       format ({format: clustered, codebook_size: 256}, over that format's
                       `format=<name>` defaults), optionally restricted to tensors by name glob(s)
                       ({format: scalar, bits: 8, match: "tok_emb*"}; a unit takes a candidate when
                       each of its tensors matches one of the globs);
  allocate.knob        candidates along a format's rate knob, one mapping or a list of them:
                       {format: F (default the run's), name: K (default F's rate knob), values: [..]
                       or steps: N over the knob's range from bytegolf.search.budget (lo, hi, log, integer
                       override it), params: {..} (settings under the knob), match: ..}.

Per unit and candidate two numbers are measured:

  bytes  the unit's streams alone through the run's layout and codec (what the artifact writer
         stores for them, without the container header; with layout.grouping role or all, units
         share blobs and this is an estimate that the real writes below correct);
  error  the unit's share of the reported aggregate output error: result.json's output_error is
         Σ nᵢ·eᵢ / Σ nᵢ over quantized 2-D tensors with a calibration Gram matrix H (nᵢ parameters,
         eᵢ = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)), so a tensor contributes nᵢ·eᵢ / Σ nᵢ and lowering the
         summed objective lowers the reported number by the same amount. Tensors without a Gram
         matrix (or none collected: calib.windows=0) count nᵢ·rel_mseᵢ / Σ nᵢ instead. The
         sensitivity of a tensor is its weight on the raw error: nᵢ / (Σ nᵢ · tr(W H Wᵀ)).
         With allocate.objective=loss (auto: the default, on the built-in GPT) the error is instead
         the unit's expected increase of the mean token loss in nats (bytegolf.quantize.sensitivity: output-side
         Fisher times input Gram, K-FAC style), so that a tensor the loss is sensitive to (the tied
         embedding) weighs what it costs in bpb, not what its relative output error says.

The allocation itself is bytegolf.search.knapsack.allocate: the greedy on each unit's lower convex hull,
then an exact branch and bound that finds the least-error allocation within the bytes (proven
optimal unless its frontier grows beyond allocate.max_states). The fixed bytes (passthrough tensors,
header, code bytes with budget.count_code) are measured by writing the cheapest allocation. Each
round then writes the chosen artifact for real; when it is over the cap (or more than `tol` under),
the fixed part is re-measured and the allocation is solved again for at most `max_rounds` writes.
The best fitting allocation is evaluated like `bytegolf run` (bytegolf.run.point.run_point) into the
run directory, with allocation.json, allocation.md and plan.yaml (a plan config for `plan=`: a rule
per allocated tensor naming its format and settings).

`bytegolf compare` ranks allocations as systems of their own (compare.allocated, bytegolf.study.compare): it
uses the same pieces (check_candidates, check_plan, measure, land with a Writer, allocated_rules,
summarize, write_reports) with the tables cached (Measured.to_json / from_json) so that every budget
is allocated from one measurement.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from tqdm import tqdm

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.codecs import get_codec
from bytegolf.errors import ConfigError
from bytegolf.formats import REGISTRY, get_format
from bytegolf.measure import codebytes, metrics
from bytegolf.quantize.encoder import encode_state, group_units
from bytegolf.quantize.plan import Assignment, Rule, format_defaults, make_plan, merge_settings
from bytegolf.quantize.sensitivity import loss_increase
from bytegolf.run import store, sweep
from bytegolf.run.point import name_and_params, run_point
from bytegolf.search import budget as search
from bytegolf.search.knapsack import MAX_STATES, allocate, lower_hull, slope
from bytegolf.search.prober import Workspace

if TYPE_CHECKING:
    from torch import Tensor

    from bytegolf.artifact.layout import LayoutConfig
    from bytegolf.formats.base import Encoded

log = logging.getLogger("bytegolf")
PROBE = ".probe-allocate.bgz"


@dataclass
class AllocateSettings:
    """candidates: settings of the run's format or of a named format, each optionally restricted by `match`
    (e.g. [{bits: 4}, {format: clustered, codebook_size: 256, match: "blocks.*.mlp.*"}]); knob: candidates
    along a rate knob ({name: clip_k, values: [8, 12]}, or a list of such); tol: the artifact should land
    within (1 - tol)·budget; max_rounds: artifact writes to correct the prediction; max_states: the exact
    search's frontier limit (beyond it the greedy answer stands, reported as not proven optimal); objective:
    what the allocation minimises (OBJECTIVES: loss, output_error, or auto)."""

    candidates: list[Any] = field(default_factory=list)
    knob: Any = None
    objective: str = "auto"
    tol: float = 0.01
    max_rounds: int = 5
    max_states: int = MAX_STATES


def register() -> None:

    ConfigStore.instance().store(name="base_allocate", node=AllocateSettings, package="allocate")


# ------------------------------------------------------------------ candidates


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


# ------------------------------------------------------------------ measuring units


@dataclass
class Unit:
    """One allocatable unit: its tensors and, per option, stored bytes, objective error and encoding
    (None: not kept; Measured.encodings makes it again when an artifact needs it); options[p] is the
    candidate of table position p (empty: position p is candidate p)."""

    names: list[str]
    numel: int
    sensitivity: float
    gram: bool
    bytes: list[int] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    encoded: list[Encoded | None] = field(default_factory=list)
    options: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # candidate → why the format refused this unit

    @property
    def table(self) -> list[tuple[float, float]]:
        return list(zip(self.bytes, self.errors, strict=True))

    def candidate(self, p: int) -> int:
        return self.options[p] if self.options else p


def unit_bytes(unit: Encoded, codec: str, codec_params: dict[str, Any], lay: LayoutConfig) -> int:
    """Stored bytes of one unit's streams alone, through the layout and codec the artifact writer uses."""

    _, blobs = layout.pack([unit], codec, codec_params, lay, progress=False)
    return sum(len(get_codec(b.codec, **b.params).compress(b.raw, b.info)) for b in blobs)


OBJECTIVES = ("auto", "loss", "output_error")


def sensitivity(w: Tensor, gram: Tensor | None, norm: float) -> float:
    """The weight of a tensor's raw error tr(ΔW H ΔWᵀ) (‖ΔW‖² without a Gram matrix) in the objective."""
    w64 = w.double().reshape(w.shape[0], -1) if w.ndim else w.double().reshape(1, 1)
    den = float(((w64 @ gram.double()) * w64).sum()) if gram is not None else float(w64.square().sum())
    return w.numel() / (norm * den) if den > 0 else 0.0


def objective_error(w: Tensor, w_hat: Tensor, gram: Tensor | None, norm: float) -> float:
    """A tensor's share of the aggregate objective: n·output_error / norm (n·rel_mse / norm without a Gram matrix)."""

    w, w_hat = w.float(), w_hat.float()
    err = metrics.output_error(w, w_hat, gram) if gram is not None else metrics.rel_mse(w, w_hat)
    return w.numel() * err / norm


# ------------------------------------------------------------------ the verb


@dataclass
class Measured:
    """Every unit of the plan in order: allocatable (a Unit) or encoded once (another format's; None: not
    encoded yet, as after from_json), with the plan's assignments of each (groups, parallel to slots)."""

    slots: list[Unit | Encoded | None]
    other_bytes: int  # stored bytes of the units that are not allocated
    objective: str  # "output_error", or "rel_mse" when no tensor has a Gram matrix
    groups: list[list[Assignment]] = field(default_factory=list)

    @property
    def units(self) -> list[Unit]:
        return [s for s in self.slots if isinstance(s, Unit)]

    def encodings(
        self, choice: list[int], fmt: str, candidates: list[Candidate], encode: Callable[[list[Assignment]], Encoded]
    ) -> list[Encoded]:
        """Every slot's encoding with each unit at its chosen table position; what the measurement did not
        keep is encoded now with encode(assignments) (deterministic: the same bytes) and kept."""
        picks = iter(choice)
        out: list[Encoded] = []
        for i, (s, group) in enumerate(zip(self.slots, self.groups, strict=True)):
            if isinstance(s, Unit):
                p = next(picks)
                if s.encoded[p] is None:
                    enc = encode(option_group(group, fmt, candidates[s.candidate(p)]))
                    enc.recon = None
                    s.encoded[p] = enc
                out.append(s.encoded[p])  # type: ignore[arg-type]
            else:
                if s is None:
                    s = encode(group)
                    s.recon = None
                    self.slots[i] = s
                out.append(s)
        return out

    def to_json(self) -> dict[str, Any]:
        """The measured tables (no encodings): what from_json needs to allocate again without encoding."""
        slots: list[dict[str, Any]] = []
        for s, group in zip(self.slots, self.groups, strict=True):
            names = [a.name for a in group]
            if isinstance(s, Unit):
                unit = {k: getattr(s, k) for k in ("numel", "sensitivity", "gram", "bytes", "errors", "options")}
                slots.append({"names": names, **unit, "skipped": {str(k): v for k, v in s.skipped.items()}})
            else:
                slots.append({"names": names, "other": True})
        return {"objective": self.objective, "other_bytes": self.other_bytes, "slots": slots}

    @classmethod
    def from_json(cls, body: dict[str, Any], groups: list[list[Assignment]]) -> Measured | None:
        """The tables of to_json for this plan's units (None: they are another plan's); no encodings kept."""
        slots: list[Unit | Encoded | None] = []
        if len(body.get("slots", [])) != len(groups):
            return None
        for d, group in zip(body["slots"], groups, strict=True):
            if d["names"] != [a.name for a in group]:
                return None
            if d.get("other"):
                slots.append(None)
                continue
            u = Unit(d["names"], int(d["numel"]), float(d["sensitivity"]), bool(d["gram"]))
            u.bytes, u.errors, u.options = list(d["bytes"]), list(d["errors"]), list(d["options"])
            u.encoded = [None] * len(u.bytes)
            u.skipped = {int(k): v for k, v in d.get("skipped", {}).items()}
            slots.append(u)
        return cls(slots, int(body["other_bytes"]), str(body["objective"]), groups)


def unit_settings(a: Assignment, fmt: str, cand: Candidate) -> dict[str, Any]:
    """A tensor's settings under a candidate: over what the plan gave it for the run's format, else the
    named format's defaults with the candidate's settings (what make_plan gives the rule plan_rules writes)."""

    return merge_settings(a.params, cand.params) if cand.format == fmt else dict(cand.settings)


def option_group(group: list[Assignment], fmt: str, cand: Candidate) -> list[Assignment]:
    """A unit's assignments under a candidate."""

    return [Assignment(a.name, cand.format, unit_settings(a, fmt, cand), a.reshape) for a in group]


def encoder(cfg: DictConfig, ws: Any) -> Callable[[list[Assignment]], Encoded]:
    """encode(assignments): one unit's encoding on the workspace's Gram matrices, seeded with cfg.seed."""

    ctx = ws.context()

    def encode(group: list[Assignment]) -> Encoded:
        torch.manual_seed(cfg.seed)
        return encode_state(ws.state, group, ctx, progress=False)[0]

    return encode


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


def resolve_objective(objective: str, ws: Any, where: str = "allocate") -> str:
    """The objective to measure: output_error or loss (auto: loss for the built-in GPT with calibration
    windows, else output_error); a ConfigError for any other name."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"{where}.objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if objective == "auto":
        return "loss" if ws.adapter.name == "gpt" and ws.grams and ws.data is not None else "output_error"
    return objective


def measure(
    cfg: DictConfig,
    ws: Any,
    plan: list[Assignment],
    candidates: list[Candidate],
    where: str = "allocate",
    objective: str = "output_error",
) -> Measured:
    """Encode every unit of the run's format at every candidate that applies to it; bytes through the
    run's layout and codec, error by the objective (output_error: the unit's share of the aggregate
    output error; loss: its expected increase of the mean token loss in nats, bytegolf.quantize.sensitivity).
    A candidate the format refuses on a unit is skipped there (with a warning). Errors name the setting
    by `where`."""

    fmt, _ = name_and_params(cfg.format)
    codec, codec_params = name_and_params(cfg.codec)
    lay = layout.LayoutConfig(**cfg.layout)
    encode = encoder(cfg, ws)

    def gram(name: str) -> Tensor | None:
        return ws.grams.get(name) if ws.state[name].ndim == 2 else None

    quantized = [a.name for a in plan if a.format != "passthrough"]
    with_gram = [n for n in quantized if gram(n) is not None]
    norm = float(sum(ws.state[n].numel() for n in (with_gram or quantized)) or 1)
    check_plan(plan, fmt, candidates, where)
    fishers = ws.sensitivities() if objective == "loss" else None
    out = Measured([], 0, objective if objective == "loss" else "output_error" if with_gram else "rel_mse")

    def error(n: str, w_hat: Tensor) -> float:
        if fishers is None:
            return objective_error(ws.state[n], w_hat, gram(n), norm)
        g = gram(n)
        if g is None or n not in fishers:
            raise ConfigError(f"{where}: objective loss has no sensitivity for {n} (not a linear weight of the GPT)")

        return loss_increase(ws.state[n].float(), w_hat.float(), g, ws.rows, fishers[n])

    def weight(n: str) -> float:  # the objective's weight on the raw error tr(ΔW H ΔWᵀ), reported
        if fishers is None:
            return sensitivity(ws.state[n], gram(n), norm)
        return 0.5 * float(fishers[n].out.mean()) / max(ws.rows, 1)

    for group in tqdm(group_units(plan), desc="measure", unit="unit", leave=False):
        names = [a.name for a in group]
        out.groups.append(group)
        if group[0].format != fmt:
            enc = encode(group)
            enc.recon = None
            out.other_bytes += unit_bytes(enc, codec, codec_params, lay)
            out.slots.append(enc)
            continue
        sens = [weight(n) for n in names]
        numel = sum(ws.state[n].numel() for n in names)
        u = Unit(names, numel, sum(sens) / len(sens), all(gram(n) is not None for n in names))
        for i in [i for i, c in enumerate(candidates) if c.applies(names)]:
            c = candidates[i]
            try:
                enc = encode(option_group(group, fmt, c))
            except ConfigError as exc:
                u.skipped[i] = str(exc)
                log.warning("%s: %s skipped on %s: %s", where, c.label, names[0], exc)
                continue
            assert enc.recon is not None
            u.errors.append(sum(error(n, enc.recon[n]) for n in names))
            enc.recon = None
            u.bytes.append(unit_bytes(enc, codec, codec_params, lay))
            u.encoded.append(enc)
            u.options.append(i)
        if not u.options:
            i, why = next(iter(u.skipped.items()))
            raise ConfigError(f"{where}: every candidate fails on tensor {names[0]}, e.g. {candidates[i].label}: {why}")
        log.info(
            "measured %s (%s params): %s",
            names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}",
            f"{numel:,}",
            " | ".join(
                f"{candidates[i].label} {b:,} B {e:.3e}" for i, b, e in zip(u.options, u.bytes, u.errors, strict=True)
            ),
        )
        out.slots.append(u)
    return out


class DoesNotFit(ConfigError):
    """Even the cheapest allocation is over the budget; counted: its bytes."""

    def __init__(self, counted: int, budget: int) -> None:
        super().__init__(f"does not fit: cheapest allocation is {counted:,} bytes (budget {budget:,})")
        self.counted = counted


def land(
    units: list[Unit],
    write: Callable[[list[int]], int],
    budget: int,
    tol: float,
    max_rounds: int,
    max_states: int = MAX_STATES,
) -> tuple[list[int], int, list[dict[str, Any]]]:
    """The allocation (table position per unit) whose written artifact fits the budget with the least
    predicted error, its counted bytes, and the rounds (predicted vs written bytes, whether the allocation
    was proven optimal for its byte target). write(choice) writes the artifact of an allocation and
    returns its counted bytes. Each round solves for the budget less the overhead the last write showed
    (counted minus predicted bytes); it stops within tol of the budget, after max_rounds writes, or when
    the solution is one written before (the overhead depends on the allocation, so the corrections could
    otherwise alternate between two allocations). Raises DoesNotFit when the cheapest allocation is over."""
    tables = [u.table for u in units]

    def predicted(choice: list[int]) -> tuple[int, float]:
        pairs = list(zip(units, choice, strict=True))
        return sum(u.bytes[c] for u, c in pairs), sum(u.errors[c] for u, c in pairs)

    choice = [lower_hull(t)[0] for t in tables]
    counted = write(choice)
    if counted > budget:
        raise DoesNotFit(counted, budget)
    overhead = counted - predicted(choice)[0]  # other units, header, code bytes
    rounds = [{"predicted_bytes": counted, "counted_bytes": counted, "objective": predicted(choice)[1], "exact": True}]
    best = (choice, counted)
    written = [choice]
    for _ in range(max_rounds):
        sol = allocate(tables, budget - overhead, start=choice, max_states=max_states)
        if sol.choice in written:
            break  # its bytes are known already: moving again would cycle between the corrections
        written.append(sol.choice)
        choice = sol.choice
        pb, pe = predicted(choice)
        counted = write(choice)
        rounds.append({"predicted_bytes": pb + overhead, "counted_bytes": counted, "objective": pe, "exact": sol.exact})
        log.info(
            "allocation round %d: predicted %s B, written %s B%s",
            len(rounds) - 1,
            f"{pb + overhead:,}",
            f"{counted:,}",
            "" if sol.exact else " (search stopped at allocate.max_states: greedy answer, not proven optimal)",
        )
        if counted <= budget and pe < predicted(best[0])[1]:
            best = (choice, counted)
        if (1 - tol) * budget <= counted <= budget:
            break
        overhead = counted - pb
    return best[0], best[1], rounds


class Writer:
    """write(choice): an allocation's artifact written to a probe file (deleted again) with the given codec
    and layout; returns its counted bytes (final, + code bytes with count_code) and keeps the last
    write's final and code bytes."""

    def __init__(
        self,
        m: Measured,
        fmt: str,
        candidates: list[Candidate],
        encode: Callable[[list[Assignment]], Encoded],
        path: Path,
        codec: str,
        codec_params: dict[str, Any],
        lay: LayoutConfig,
        count_code: bool,
    ) -> None:
        self.m, self.fmt, self.candidates, self.encode = m, fmt, candidates, encode
        self.path, self.codec, self.codec_params, self.lay, self.count_code = path, codec, codec_params, lay, count_code
        self.final = self.code = 0

    def __call__(self, choice: list[int]) -> int:

        encoded = self.m.encodings(choice, self.fmt, self.candidates, self.encode)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.final = artifact.write(self.path, encoded, self.codec, self.codec_params, self.lay).final_bytes
            self.code = codebytes.artifact_code_bytes(self.path)["code_bytes"]
        finally:
            self.path.unlink(missing_ok=True)
        return self.final + (self.code if self.count_code else 0)


def allocated_rules(
    user: list[Rule], state: dict[str, Tensor], fmt: str, units: list[Unit], chosen: list[Candidate]
) -> list[Rule]:
    """plan_rules for an allocation: a rule per allocated tensor, then the user's rules still in use by the
    state's other float tensors."""
    allocated = {n for u in units for n in u.names}
    others = [n for n, t in state.items() if n not in allocated and t.is_floating_point()]
    return plan_rules(user, others, fmt, units, chosen)


def summarize(
    m: Measured,
    choice: list[int],
    rounds: list[dict[str, Any]],
    probed: int,
    counted: int,
    budget: int,
    count_code: bool,
    tol: float,
    candidates: list[Candidate],
) -> dict[str, Any]:
    """The allocation summary of a landed and evaluated allocation (result.json's `allocation`): status
    (ok, short, or over) from the evaluated bytes `counted`, predictions, rounds, settings chosen."""
    units = m.units
    chosen = [candidates[u.candidate(p)] for u, p in zip(units, choice, strict=True)]
    pb = sum(u.bytes[c] for u, c in zip(units, choice, strict=True))
    pe = sum(u.errors[c] for u, c in zip(units, choice, strict=True))
    status, reason = _status(units, choice, counted, budget, tol)
    landed = next((r for r in rounds if r["counted_bytes"] == probed and r["objective"] == pe), rounds[-1])
    return {
        "budget_bytes": budget,
        "count_code": count_code,
        "status": status,
        "reason": reason,
        "counted_bytes": counted,
        "landed_ratio": counted / budget,
        "objective": m.objective,
        "predicted_error": pe,
        "exact": landed["exact"],
        "allocated_bytes": pb,
        "other_unit_bytes": m.other_bytes,
        "overhead_bytes": counted - pb - m.other_bytes,
        "rounds": rounds,
        "settings": _histogram([c.label for c in chosen]),
        "formats": _histogram([c.format for c in chosen]),
    }


def write_reports(
    out_dir: Path,
    summary: dict[str, Any],
    result: dict[str, Any],
    m: Measured,
    choice: list[int],
    candidates: list[Candidate],
    fmt: str,
    fmt_params: dict[str, Any],
    codec: str,
    codec_params: dict[str, Any],
) -> None:
    """allocation.json (the summary, candidates and every unit's table) and allocation.md into out_dir."""

    rows = _rows(m.units, choice, candidates)
    body = {**summary, "format": fmt, "format_params": fmt_params, "codec": codec, "codec_params": codec_params}
    body |= {"candidates": [c.as_dict() for c in candidates]}
    body |= {"achieved": {k: result.get(k) for k in ("output_error", "rel_mse", "bpb")}}
    store.write_json_atomic(out_dir / "allocation.json", {**body, "units": rows})
    (out_dir / "allocation.md").write_text(_markdown(body, rows, result))


def run_allocate(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Measure, allocate, land the artifact within the budget, evaluate; returns the result row."""

    ac = cfg.allocate
    fmt, fmt_params = name_and_params(cfg.format)
    codec, codec_params = name_and_params(cfg.codec)
    knob = ac.get("knob")
    knob = OmegaConf.to_container(knob, resolve=True) if isinstance(knob, DictConfig | ListConfig) else knob
    candidates = check_candidates(fmt, fmt_params, OmegaConf.to_container(ac.candidates, resolve=True), knob)
    budget, count_code, tol = int(cfg.budget.cap_bytes), bool(cfg.budget.count_code), float(ac.tol)
    max_states = int(ac.get("max_states", MAX_STATES))
    if budget <= 0 or not 0 < tol < 1 or int(ac.max_rounds) < 1 or max_states < 1:
        raise ConfigError(
            "allocate: need budget.cap_bytes > 0, 0 < allocate.tol < 1, allocate.max_rounds >= 1 "
            "and allocate.max_states >= 1"
        )
    lay = layout.LayoutConfig(**cfg.layout)
    get_codec(codec, **codec_params)
    if "finetune" in cfg and cfg.finetune.steps > 0:
        log.warning("allocate: bytes are measured before block calibration (finetune.steps > 0); they may move")

    ws = Workspace(cfg)
    plan = make_plan(ws.state, ws.plan_cfg, fmt, fmt_params)
    m = measure(cfg, ws, plan, candidates, objective=resolve_objective(str(ac.get("objective", "auto")), ws))
    units = m.units
    out_dir.mkdir(parents=True, exist_ok=True)
    write = Writer(m, fmt, candidates, encoder(cfg, ws), out_dir / PROBE, codec, codec_params, lay, count_code)
    choice, probed, rounds = land(units, write, budget, tol, int(ac.max_rounds), max_states)
    chosen = [candidates[u.candidate(p)] for u, p in zip(units, choice, strict=True)]

    pc = cfg.copy()
    with open_dict(pc):
        pc.pop("allocate", None)
        pc.plan.rules = allocated_rules(ws.plan_cfg.rules, ws.state, fmt, units, chosen)
    write_plan(out_dir / "plan.yaml", pc, budget, chosen)
    result = run_point(pc, out_dir)

    counted = result["final_bytes"] + (result["code_bytes"] if count_code else 0)
    if counted != probed:
        log.warning(
            "allocate: the evaluated artifact has %d B, its probe had %d B (encoding is not deterministic)",
            counted,
            probed,
        )
    summary = summarize(m, choice, rounds, probed, counted, budget, count_code, tol, candidates)
    conf, _ = sweep.point_config(pc, drop=False)
    result = store.write_result(out_dir, result, config_hash=store.config_hash(conf), allocation=summary)
    write_reports(out_dir, summary, result, m, choice, candidates, fmt, fmt_params, codec, codec_params)
    log.info("allocation: %s", describe(summary))
    return result


def richest(units: list[Unit], choice: list[int]) -> bool:
    """Whether no unit has an option with more bytes and less error than its chosen one: no budget buys more."""
    return not any(b > u.bytes[c] and e < u.errors[c] for u, c in zip(units, choice, strict=True) for b, e in u.table)


def _status(units: list[Unit], choice: list[int], counted: int, budget: int, tol: float) -> tuple[str, str]:
    """("ok" | "short" | "over", why) for a written allocation."""
    if counted > budget:
        return "over", f"{counted:,} B is over the budget"
    if counted >= (1 - tol) * budget:
        return "ok", ""
    if richest(units, choice):
        return "short", f"the richest allocation ({counted:,} B) is smaller than the budget"
    steps = []  # per unit, the fewest extra bytes that buy less error
    for u, c in zip(units, choice, strict=True):
        ups = [b - u.bytes[c] for b, e in u.table if e < u.errors[c] and b > u.bytes[c]]
        if ups:
            steps.append(min(ups))
    return "short", f"no upgrade fits: the smallest next step is {min(steps):,} B, {budget - counted:,} B are left"


def _literal(name: str) -> str:
    """A glob matching exactly this name."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def plan_rules(user: list[Rule], others: list[str], fmt: str, units: list[Unit], chosen: list[Candidate]) -> list[Rule]:
    """A rule per allocated tensor naming its format and settings (for the run's format, its setting over
    what the user's first matching rule gave it), then the user's rules that are still the first match of
    another float tensor (names in `others`)."""

    def first(name: str) -> Rule | None:
        return next((r for r in user if fnmatch.fnmatchcase(name, r.match)), None)

    out = []
    for u, c in zip(units, chosen, strict=True):
        for n in u.names:
            if c.format == fmt:
                r = first(n)
                out.append(Rule(_literal(n), fmt, merge_settings(dict(r.params) if r else {}, c.params)))
            else:
                out.append(Rule(_literal(n), c.format, dict(c.params)))
    used = {id(r) for r in map(first, others) if r is not None}
    return out + [r for r in user if id(r) in used]


def write_plan(
    path: Path, pc: DictConfig, budget: int, chosen: list[Candidate], source: str = "bytegolf allocate"
) -> None:
    """The plan of run config pc as a config-group file: copy it to experiments/plan/NAME.yaml and run with
    plan=NAME; its header names the budget, the formats chosen and where it came from."""
    formats = sorted({c.format for c in chosen})
    node = OmegaConf.to_container(pc.plan, resolve=True)
    assert isinstance(node, dict)
    head = (
        f"# Mixed-precision plan from `{source}` at {budget:,} B "
        f"(run format {pc.format.name}; formats chosen: {', '.join(formats)}; codec {pc.codec.name}).\n"
        "# Reuse: copy to experiments/plan/NAME.yaml and run `bytegolf run plan=NAME` with the same format settings\n"
        "# and codec (rules for the run's format give settings over the run's; other formats' over their defaults).\n"
    )
    path.write_text(head + OmegaConf.to_yaml(OmegaConf.create({"defaults": ["base_plan", "_self_"], **node})))


def _histogram(labels: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in labels:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


def _rows(units: list[Unit], choice: list[int], candidates: list[Candidate]) -> list[dict]:
    rows = []
    for u, p in zip(units, choice, strict=True):
        t = u.table
        h = lower_hull(t)
        below = [q for q in h if t[q][0] < t[p][0] and t[q][1] > t[p][1]]  # cheaper hull points, worse error
        c = candidates[u.candidate(p)]
        rows.append(
            {
                "tensors": u.names,
                "params": u.numel,
                "format": c.format,
                "setting": c.params,
                "label": c.label,
                "bytes": u.bytes[p],
                "error": u.errors[p],
                "sensitivity": u.sensitivity,
                "gram": u.gram,
                "on_hull": p in h,
                "slope": slope(t, below[-1], p) if below else None,
                "candidates": [
                    {"candidate": u.candidate(q), "label": candidates[u.candidate(q)].label}
                    | {"bytes": b, "error": e, "on_hull": q in h}
                    for q, (b, e) in enumerate(t)
                ],
                "skipped": {candidates[i].label: why for i, why in u.skipped.items()},
            }
        )
    return rows


def describe(s: dict[str, Any]) -> str:
    """One line: where the allocation landed and what it chose."""
    hist = ", ".join(f"{k} ×{v}" for k, v in s["settings"].items())
    why = f" ({s['reason']})" if s["reason"] else ""
    proof = "" if s.get("exact", True) else " (greedy, not proven optimal)"
    return (
        f"{s['counted_bytes']:,} B = {s['landed_ratio']:.4f} × budget {s['budget_bytes']:,} B [{s['status']}]{why}; "
        f"{hist}; predicted {s['objective']} {s['predicted_error']:.4e}{proof}"
    )


def _markdown(body: dict[str, Any], rows: list[dict], result: dict[str, Any]) -> str:
    formats = ", ".join(body.get("formats") or [body["format"]])
    lines = [
        f"# Allocation: {formats} + {body['codec']} at {body['budget_bytes']:,} B",
        "",
        describe(body),
        "",
        f"Result: {result['final_bytes']:,} B final, rel_mse {result['rel_mse']:.4e}, "
        f"output_error {result['output_error']:.4e}, "
        + (
            f"bpb {result['bpb']:.4f} (Δ {result['delta_bpb']:+.4f})."
            if result.get("bpb") is not None
            else "bpb not measured."
        ),
        "",
        "error: the tensor's share of the aggregate objective; sensitivity: its weight on tr(ΔW H ΔWᵀ) "
        "(on ‖ΔW‖² without a Gram matrix); slope: error saved per byte from the richest cheaper point on the "
        "unit's convex hull to the chosen one (a chosen point off the hull is marked *).",
        "",
        "| tensor | params | setting | bytes | error | sensitivity | slope |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["tensors"][0] + (f" +{len(r['tensors']) - 1}" if len(r["tensors"]) > 1 else "")
        slope_ = f"{r['slope']:.3e}" if r["slope"] is not None else "-"
        sens = f"{r['sensitivity']:.3e}" + ("" if r["gram"] else " (F)")
        setting = r["label"] + ("" if r["on_hull"] else " *")
        cells = [name, f"{r['params']:,}", setting, f"{r['bytes']:,}", f"{r['error']:.3e}", sens, slope_]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
