"""The allocation's tables and landing: every unit encoded at every candidate, its bytes and error measured
(Measured, cached as JSON), and the least-error allocation within a byte target landed on real artifact
writes (land, Writer); the solver itself is bytegolf.search.knapsack (bytegolf.search.allocate describes
the whole procedure)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.codecs import get_codec
from bytegolf.errors import ConfigError
from bytegolf.measure import codebytes, metrics
from bytegolf.quantize.encoder import encode_state, group_units
from bytegolf.quantize.plan import Assignment
from bytegolf.quantize.sensitivity import loss_increase
from bytegolf.run.point import name_and_params
from bytegolf.search.knapsack import MAX_STATES, allocate, lower_hull

if TYPE_CHECKING:
    from torch import Tensor

    from bytegolf.artifact.layout import LayoutConfig
    from bytegolf.formats.base import Encoded
from bytegolf.search.candidates import Candidate, check_plan, option_group

log = logging.getLogger("bytegolf")


PROBE = ".probe-allocate.bgz"


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


def encoder(cfg: DictConfig, ws: Any) -> Callable[[list[Assignment]], Encoded]:
    """encode(assignments): one unit's encoding on the workspace's Gram matrices, seeded with cfg.seed."""

    ctx = ws.context()

    def encode(group: list[Assignment]) -> Encoded:
        torch.manual_seed(cfg.seed)
        return encode_state(ws.state, group, ctx, progress=False)[0]

    return encode


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


def richest(units: list[Unit], choice: list[int]) -> bool:
    """Whether no unit has an option with more bytes and less error than its chosen one: no budget buys more."""
    return not any(b > u.bytes[c] and e < u.errors[c] for u, c in zip(units, choice, strict=True) for b, e in u.table)
