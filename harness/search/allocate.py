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
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from bytegolf import markdown
from bytegolf.artifact import layout
from bytegolf.codecs import get_codec
from bytegolf.errors import ConfigError
from bytegolf.quantize.plan import Rule, make_plan, merge_settings
from bytegolf.run import store, sweep
from bytegolf.run.point import name_and_params, run_point
from bytegolf.search.knapsack import MAX_STATES, lower_hull, slope
from bytegolf.search.prober import Workspace

if TYPE_CHECKING:
    from torch import Tensor

from bytegolf.search.candidates import Candidate, check_candidates
from bytegolf.search.tables import PROBE, Measured, Unit, Writer, encoder, land, measure, resolve_objective, richest

log = logging.getLogger("bytegolf")


@dataclass
class AllocateConfig:
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

    ConfigStore.instance().store(name="base_allocate", node=AllocateConfig, package="allocate")


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
        markdown.header(["tensor", "params", "setting", "bytes", "error", "sensitivity", "slope"], "lrlrrrr"),
    ]
    for r in rows:
        name = r["tensors"][0] + (f" +{len(r['tensors']) - 1}" if len(r["tensors"]) > 1 else "")
        slope_ = f"{r['slope']:.3e}" if r["slope"] is not None else "-"
        sens = f"{r['sensitivity']:.3e}" + ("" if r["gram"] else " (F)")
        setting = r["label"] + ("" if r["on_hull"] else " *")
        lines.append(markdown.row([name, r["params"], setting, r["bytes"], f"{r['error']:.3e}", sens, slope_]))
    return "\n".join(lines) + "\n"


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
