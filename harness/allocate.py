"""`bytegolf allocate`: per-tensor settings of one format, chosen to minimise output error under a byte cap.

Every unit the plan gives to the run's format (a tensor, or a family when the format's scope says
so; passthrough tensors and tensors that rules give to other formats stay as they are) is encoded
at every candidate setting (`allocate.candidates`, each over the format's settings). Per unit and
candidate two numbers are measured:

  bytes  the unit's streams alone through the run's layout and codec (what the artifact writer
         stores for them, without the container header; with layout.grouping role or all, units
         share blobs and this is an estimate that the real writes below correct);
  error  the unit's share of the reported aggregate output error: result.json's output_error is
         Σ nᵢ·eᵢ / Σ nᵢ over quantized 2-D tensors with a calibration Gram matrix H (nᵢ parameters,
         eᵢ = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)), so a tensor contributes nᵢ·eᵢ / Σ nᵢ and lowering the
         summed objective lowers the reported number by the same amount. Tensors without a Gram
         matrix (or none collected: calib.windows=0) count nᵢ·rel_mseᵢ / Σ nᵢ instead. The
         sensitivity of a tensor is its weight on the raw error: nᵢ / (Σ nᵢ · tr(W H Wᵀ)).

Allocation is greedy on marginal error per byte over each unit's lower convex hull of
(bytes, error) (candidates above it or dominated are never chosen): start at the cheapest point,
take the upgrade with the largest Δerror/Δbytes that still fits, stop when none fits. The fixed
bytes (passthrough tensors, header, code bytes with budget.count_code) are measured by writing the
cheapest allocation. Each round then writes the chosen artifact for real; when it is over the cap
(or more than `tol` under), the fixed part is re-measured and the allocation moves (downgrades with
the least error per byte saved first, then upgrades that fit) for at most `max_rounds` writes.
The best fitting allocation is evaluated like `bytegolf run` (bytegolf.runner.run_point) into the
run directory, with allocation.json, allocation.md and plan.yaml (a plan config for `plan=`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from bytegolf.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

    from bytegolf.formats.base import Encoded
    from bytegolf.layout import LayoutConfig
    from bytegolf.plan import Assignment, Rule

log = logging.getLogger("bytegolf")
PROBE = ".probe-allocate.bgz"


@dataclass
class AllocateSettings:
    """candidates: settings of the run's format, each over its parameters (e.g. [{bits: 4}, {bits: 6}]);
    tol: the artifact should land within (1 - tol)·budget; max_rounds: artifact writes to correct the prediction."""

    candidates: list[Any] = field(default_factory=list)
    tol: float = 0.01
    max_rounds: int = 5


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_allocate", node=AllocateSettings, package="allocate")


# ------------------------------------------------------------------ the greedy on convex hulls


def lower_hull(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (bytes, error) points on their lower convex hull, cheapest first, error strictly falling."""
    hull: list[int] = []
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i)):
        x, y = points[i]
        if hull and y >= points[hull[-1]][1]:
            continue  # costs as much or more and is no better
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = points[hull[-2]], points[hull[-1]]
            if (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) > 0:
                break
            hull.pop()  # on or above the chord from its left neighbour to the new point
        hull.append(i)
    return hull


def _slope(points: Sequence[tuple[float, float]], a: int, b: int) -> float:
    """Error saved per byte going from point a to the richer point b."""
    return (points[a][1] - points[b][1]) / (points[b][0] - points[a][0])


def allocate_greedy(
    tables: Sequence[Sequence[tuple[float, float]]], budget: float, start: Sequence[int] | None = None
) -> list[int]:
    """One candidate per item (its index in the item's table of (bytes, error)) with Σ bytes ≤ budget.

    From `start` (candidate indices on the hulls; default: each item's cheapest), downgrades the step
    with the least error per byte saved while over the budget, then takes the upgrade with the most
    error per byte that fits until none does. Raises ConfigError when even the cheapest choice is over."""
    hulls = [lower_hull(t) for t in tables]
    pos = [0] * len(tables) if start is None else [h.index(s) for h, s in zip(hulls, start, strict=True)]
    total = sum(t[h[p]][0] for t, h, p in zip(tables, hulls, pos, strict=True))
    while total > budget:
        down = [
            (_slope(t, h[p - 1], h[p]), i) for i, (t, h, p) in enumerate(zip(tables, hulls, pos, strict=True)) if p > 0
        ]
        if not down:
            raise ConfigError(f"does not fit: cheapest allocation is {total:,.0f} bytes (budget {budget:,.0f})")
        _, i = min(down)
        total -= tables[i][hulls[i][pos[i]]][0] - tables[i][hulls[i][pos[i] - 1]][0]
        pos[i] -= 1
    while True:
        up = []
        for i, (t, h, p) in enumerate(zip(tables, hulls, pos, strict=True)):
            if p + 1 < len(h) and total + t[h[p + 1]][0] - t[h[p]][0] <= budget:
                up.append((-_slope(t, h[p], h[p + 1]), t[h[p + 1]][0] - t[h[p]][0], i))
        if not up:
            break
        _, step, i = min(up)
        total += step
        pos[i] += 1
    return [h[p] for h, p in zip(hulls, pos, strict=True)]


# ------------------------------------------------------------------ measuring units


@dataclass
class Unit:
    """One allocatable unit: its tensors and, per candidate, stored bytes, objective error and encoding."""

    names: list[str]
    numel: int
    sensitivity: float
    gram: bool
    bytes: list[int] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    encoded: list[Encoded] = field(default_factory=list)

    @property
    def table(self) -> list[tuple[float, float]]:
        return list(zip(self.bytes, self.errors, strict=True))


def label(params: dict[str, Any]) -> str:
    """A candidate as text: bits=4,clip_k=8."""
    return ",".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def check_candidates(fmt: str, fmt_params: dict[str, Any], candidates: Any) -> list[dict[str, Any]]:
    """The candidates as dicts, each accepted by the format over the run's settings."""
    from bytegolf.formats import get_format

    if not candidates:
        raise ConfigError(f"allocate.candidates is empty: give settings of {fmt}, e.g. [{{bits: 4}}, {{bits: 6}}]")
    out = []
    for i, c in enumerate(candidates):
        if not isinstance(c, dict):
            raise ConfigError(f"allocate.candidates[{i}]: {c!r} is not a mapping of {fmt} settings")
        if "scope" in c:
            raise ConfigError(f"allocate.candidates[{i}]: scope cannot differ between candidates")
        try:
            get_format(fmt, **{**fmt_params, **c})
        except ConfigError as exc:
            raise ConfigError(f"allocate.candidates[{i}] {label(c)} is rejected by format {fmt}: {exc}") from None
        out.append(dict(c))
    return out


def unit_bytes(unit: Encoded, codec: str, codec_params: dict[str, Any], lay: LayoutConfig) -> int:
    """Stored bytes of one unit's streams alone, through the layout and codec the artifact writer uses."""
    from bytegolf import layout
    from bytegolf.codecs import get_codec

    _, blobs = layout.pack([unit], codec, codec_params, lay)
    return sum(len(get_codec(b.codec, **b.params).compress(b.raw, b.info)) for b in blobs)


def sensitivity(w: Tensor, gram: Tensor | None, norm: float) -> float:
    """The weight of a tensor's raw error tr(ΔW H ΔWᵀ) (‖ΔW‖² without a Gram matrix) in the objective."""
    w64 = w.double().reshape(w.shape[0], -1) if w.ndim else w.double().reshape(1, 1)
    den = float(((w64 @ gram.double()) * w64).sum()) if gram is not None else float(w64.square().sum())
    return w.numel() / (norm * den) if den > 0 else 0.0


def objective_error(w: Tensor, w_hat: Tensor, gram: Tensor | None, norm: float) -> float:
    """A tensor's share of the aggregate objective: n·output_error / norm (n·rel_mse / norm without a Gram matrix)."""
    from bytegolf import metrics

    w, w_hat = w.float(), w_hat.float()
    err = metrics.output_error(w, w_hat, gram) if gram is not None else metrics.rel_mse(w, w_hat)
    return w.numel() * err / norm


# ------------------------------------------------------------------ the verb


@dataclass
class Measured:
    """Every unit of the plan in order: allocatable (a Unit) or encoded once (another format's)."""

    slots: list[Unit | Encoded]
    other_bytes: int  # stored bytes of the units that are not allocated
    objective: str  # "output_error", or "rel_mse" when no tensor has a Gram matrix

    @property
    def units(self) -> list[Unit]:
        return [s for s in self.slots if isinstance(s, Unit)]


def measure(cfg: DictConfig, ws: Any, plan: list[Assignment], candidates: list[dict[str, Any]]) -> Measured:
    """Encode every unit of the run's format at every candidate; bytes through the run's layout and codec."""
    import torch
    from tqdm import tqdm

    from bytegolf import artifact, layout
    from bytegolf.plan import Assignment
    from bytegolf.runner import _params

    fmt, _ = _params(cfg.format)
    codec, codec_params = _params(cfg.codec)
    lay = layout.LayoutConfig(**cfg.layout)
    ctx = ws.context()

    def gram(name: str) -> Tensor | None:
        return ws.grams.get(name) if ws.state[name].ndim == 2 else None

    def encode(group: list[Assignment]) -> Encoded:
        torch.manual_seed(cfg.seed)
        return artifact.encode_state(ws.state, group, ctx, progress=False)[0]

    quantized = [a.name for a in plan if a.format != "passthrough"]
    with_gram = [n for n in quantized if gram(n) is not None]
    norm = float(sum(ws.state[n].numel() for n in (with_gram or quantized)) or 1)
    out = Measured([], 0, "output_error" if with_gram else "rel_mse")
    for group in tqdm(artifact.group_units(plan), desc="measure", unit="unit", leave=False):
        names = [a.name for a in group]
        if group[0].format != fmt:
            enc = encode(group)
            enc.recon = None
            out.other_bytes += unit_bytes(enc, codec, codec_params, lay)
            out.slots.append(enc)
            continue
        sens = [sensitivity(ws.state[n], gram(n), norm) for n in names]
        numel = sum(ws.state[n].numel() for n in names)
        u = Unit(names, numel, sum(sens) / len(sens), all(gram(n) is not None for n in names))
        for c in candidates:
            try:
                enc = encode([Assignment(a.name, a.format, {**a.params, **c}) for a in group])
            except ConfigError as exc:
                raise ConfigError(f"allocate: candidate {label(c)} on {names[0]}: {exc}") from None
            assert enc.recon is not None
            u.errors.append(sum(objective_error(ws.state[n], enc.recon[n], gram(n), norm) for n in names))
            enc.recon = None
            u.bytes.append(unit_bytes(enc, codec, codec_params, lay))
            u.encoded.append(enc)
        log.info(
            "measured %s (%s params): %s",
            names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}",
            f"{numel:,}",
            " | ".join(f"{label(c)} {b:,} B {e:.3e}" for c, b, e in zip(candidates, u.bytes, u.errors, strict=True)),
        )
        out.slots.append(u)
    if not out.units:
        raise ConfigError(f"allocate: the plan gives no tensor to format {fmt}")
    return out


def land(
    units: list[Unit], write: Callable[[list[int]], int], budget: int, tol: float, max_rounds: int
) -> tuple[list[int], int, list[dict[str, Any]]]:
    """The allocation (candidate index per unit) whose written artifact fits the budget with the least
    predicted error, its counted bytes, and the rounds (predicted vs written bytes). write(choice) writes
    the artifact of an allocation and returns its counted bytes."""
    tables = [u.table for u in units]

    def predicted(choice: list[int]) -> tuple[int, float]:
        pairs = list(zip(units, choice, strict=True))
        return sum(u.bytes[c] for u, c in pairs), sum(u.errors[c] for u, c in pairs)

    choice = [lower_hull(t)[0] for t in tables]
    counted = write(choice)
    if counted > budget:
        raise ConfigError(f"does not fit: cheapest allocation is {counted:,} bytes (budget {budget:,})")
    overhead = counted - predicted(choice)[0]  # other units, header, code bytes
    rounds = [{"predicted_bytes": counted, "counted_bytes": counted, "objective": predicted(choice)[1]}]
    best = (choice, counted)
    for _ in range(max_rounds):
        new = allocate_greedy(tables, budget - overhead, start=choice)
        if new == choice:
            break
        choice = new
        pb, pe = predicted(choice)
        counted = write(choice)
        rounds.append({"predicted_bytes": pb + overhead, "counted_bytes": counted, "objective": pe})
        log.info(
            "allocation round %d: predicted %s B, written %s B", len(rounds) - 1, f"{pb + overhead:,}", f"{counted:,}"
        )
        if counted <= budget and pe < predicted(best[0])[1]:
            best = (choice, counted)
        if (1 - tol) * budget <= counted <= budget:
            break
        overhead = counted - pb
    return best[0], best[1], rounds


def run_allocate(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Measure, allocate, land the artifact within the budget, evaluate; returns the result row."""
    from bytegolf import artifact, codebytes, layout, search, store, sweep
    from bytegolf.codecs import get_codec
    from bytegolf.plan import make_plan
    from bytegolf.runner import _params, run_point

    ac = cfg.allocate
    fmt, fmt_params = _params(cfg.format)
    codec, codec_params = _params(cfg.codec)
    candidates = check_candidates(fmt, fmt_params, OmegaConf.to_container(ac.candidates, resolve=True))
    budget, count_code, tol = int(cfg.budget.cap_bytes), bool(cfg.budget.count_code), float(ac.tol)
    if budget <= 0 or not 0 < tol < 1 or int(ac.max_rounds) < 1:
        raise ConfigError("allocate: need budget.cap_bytes > 0, 0 < allocate.tol < 1 and allocate.max_rounds >= 1")
    lay = layout.LayoutConfig(**cfg.layout)
    get_codec(codec, **codec_params)
    if "finetune" in cfg and cfg.finetune.steps > 0:
        log.warning("allocate: bytes are measured before block calibration (finetune.steps > 0); they may move")

    ws = search.Workspace(cfg)
    plan = make_plan(ws.state, ws.plan_cfg, fmt, fmt_params)
    m = measure(cfg, ws, plan, candidates)
    units = m.units
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = out_dir / PROBE

    def write(choice: list[int]) -> int:
        picks = iter(choice)
        encoded = [s.encoded[next(picks)] if isinstance(s, Unit) else s for s in m.slots]
        try:
            final = artifact.write(probe, encoded, codec, codec_params, lay).final_bytes
            code = codebytes.artifact_code_bytes(probe)["code_bytes"] if count_code else 0
        finally:
            probe.unlink(missing_ok=True)
        return final + code

    choice, probed, rounds = land(units, write, budget, tol, int(ac.max_rounds))
    chosen = [candidates[c] for c in choice]

    allocated = {n for u in units for n in u.names}
    others = [n for n, t in ws.state.items() if n not in allocated and t.is_floating_point()]
    pc = cfg.copy()
    with open_dict(pc):
        pc.pop("allocate", None)
        pc.plan.rules = plan_rules(ws.plan_cfg.rules, others, fmt, units, chosen)
    _write_plan(out_dir / "plan.yaml", pc, budget)
    result = run_point(pc, out_dir)

    counted = result["final_bytes"] + (result["code_bytes"] if count_code else 0)
    if counted != probed:
        log.warning(
            "allocate: the evaluated artifact has %d B, its probe had %d B (encoding is not deterministic)",
            counted,
            probed,
        )
    pb = sum(u.bytes[c] for u, c in zip(units, choice, strict=True))
    pe = sum(u.errors[c] for u, c in zip(units, choice, strict=True))
    status, reason = _status(units, choice, counted, budget, tol)
    summary = {
        "budget_bytes": budget,
        "count_code": count_code,
        "status": status,
        "reason": reason,
        "counted_bytes": counted,
        "landed_ratio": counted / budget,
        "objective": m.objective,
        "predicted_error": pe,
        "allocated_bytes": pb,
        "other_unit_bytes": m.other_bytes,
        "overhead_bytes": counted - pb - m.other_bytes,
        "rounds": rounds,
        "settings": _histogram(chosen),
    }
    conf, _ = sweep.point_config(pc, drop=False)
    result = store.write_result(out_dir, result, config_hash=store.config_hash(conf), allocation=summary)
    rows = _rows(units, choice, candidates)
    body = {**summary, "format": fmt, "format_params": fmt_params, "codec": codec, "codec_params": codec_params}
    body |= {"candidates": candidates, "achieved": {k: result[k] for k in ("output_error", "rel_mse", "bpb")}}
    store.write_json_atomic(out_dir / "allocation.json", {**body, "units": rows})
    (out_dir / "allocation.md").write_text(_markdown(body, rows, result))
    log.info("allocation: %s", describe(summary))
    return result


def _status(units: list[Unit], choice: list[int], counted: int, budget: int, tol: float) -> tuple[str, str]:
    """("ok" | "short" | "over", why) for a written allocation."""
    if counted > budget:
        return "over", f"{counted:,} B is over the budget"
    if counted >= (1 - tol) * budget:
        return "ok", ""
    steps = []
    for u, c in zip(units, choice, strict=True):
        h = lower_hull(u.table)
        if h.index(c) + 1 < len(h):
            steps.append(u.bytes[h[h.index(c) + 1]] - u.bytes[c])
    if not steps:
        return "short", f"the richest allocation ({counted:,} B) is smaller than the budget"
    return "short", f"no upgrade fits: the smallest next step is {min(steps):,} B, {budget - counted:,} B are left"


def _literal(name: str) -> str:
    """A glob matching exactly this name."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def plan_rules(
    user: list[Rule], others: list[str], fmt: str, units: list[Unit], chosen: list[dict[str, Any]]
) -> list[Rule]:
    """A rule per allocated tensor (its setting over what the user's first matching rule gave it), then
    the user's rules that are still the first match of another float tensor (names in `others`)."""
    import fnmatch

    from bytegolf.plan import Rule

    def first(name: str) -> Rule | None:
        return next((r for r in user if fnmatch.fnmatchcase(name, r.match)), None)

    out = []
    for u, c in zip(units, chosen, strict=True):
        for n in u.names:
            r = first(n)
            out.append(Rule(_literal(n), fmt, {**(dict(r.params) if r else {}), **c}))
    used = {id(r) for r in map(first, others) if r is not None}
    return out + [r for r in user if id(r) in used]


def _write_plan(path: Path, pc: DictConfig, budget: int) -> None:
    """The plan as a config-group file: copy it to experiments/plan/NAME.yaml and run with plan=NAME."""
    node = OmegaConf.to_container(pc.plan, resolve=True)
    assert isinstance(node, dict)
    head = (
        f"# Mixed-precision plan from `bytegolf allocate` at {budget:,} B ({pc.format.name}, {pc.codec.name}).\n"
        "# Reuse: copy to experiments/plan/NAME.yaml and run `bytegolf run plan=NAME` with the same format and codec.\n"
    )
    path.write_text(head + OmegaConf.to_yaml(OmegaConf.create({"defaults": ["base_plan", "_self_"], **node})))


def _histogram(chosen: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in chosen:
        out[label(c)] = out.get(label(c), 0) + 1
    return dict(sorted(out.items()))


def _rows(units: list[Unit], choice: list[int], candidates: list[dict]) -> list[dict]:
    rows = []
    for u, c in zip(units, choice, strict=True):
        h = lower_hull(u.table)
        p = h.index(c)
        rows.append(
            {
                "tensors": u.names,
                "params": u.numel,
                "setting": candidates[c],
                "bytes": u.bytes[c],
                "error": u.errors[c],
                "sensitivity": u.sensitivity,
                "gram": u.gram,
                "slope": _slope(u.table, h[p - 1], c) if p > 0 else None,
                "candidates": [
                    {"setting": cand, "bytes": b, "error": e, "on_hull": i in h}
                    for i, (cand, b, e) in enumerate(zip(candidates, u.bytes, u.errors, strict=True))
                ],
            }
        )
    return rows


def describe(s: dict[str, Any]) -> str:
    """One line: where the allocation landed and what it chose."""
    hist = ", ".join(f"{k} ×{v}" for k, v in s["settings"].items())
    why = f" ({s['reason']})" if s["reason"] else ""
    return (
        f"{s['counted_bytes']:,} B = {s['landed_ratio']:.4f} × budget {s['budget_bytes']:,} B [{s['status']}]{why}; "
        f"{hist}; predicted {s['objective']} {s['predicted_error']:.4e}"
    )


def _markdown(body: dict[str, Any], rows: list[dict], result: dict[str, Any]) -> str:
    lines = [
        f"# Allocation: {body['format']} + {body['codec']} at {body['budget_bytes']:,} B",
        "",
        describe(body),
        "",
        f"Result: {result['final_bytes']:,} B final, rel_mse {result['rel_mse']:.4e}, "
        f"output_error {result['output_error']:.4e}, bpb {result['bpb']:.4f} (Δ {result['delta_bpb']:+.4f}).",
        "",
        "error: the tensor's share of the aggregate objective; sensitivity: its weight on tr(ΔW H ΔWᵀ) "
        "(on ‖ΔW‖² without a Gram matrix); slope: error saved per byte by the last upgrade taken.",
        "",
        "| tensor | params | setting | bytes | error | sensitivity | slope |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["tensors"][0] + (f" +{len(r['tensors']) - 1}" if len(r["tensors"]) > 1 else "")
        slope = f"{r['slope']:.3e}" if r["slope"] is not None else "-"
        sens = f"{r['sensitivity']:.3e}" + ("" if r["gram"] else " (F)")
        cells = [name, f"{r['params']:,}", label(r["setting"]), f"{r['bytes']:,}", f"{r['error']:.3e}", sens, slope]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
