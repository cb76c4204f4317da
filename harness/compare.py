"""`bytegolf compare`: every format at equal final bytes, per budget, evaluated and ranked.

For each format (default: every registered format but passthrough, each with its YAML defaults
from experiments/format/, plus compare.params.<format>; or named variants of one format) and
each budget, the equal-bytes search (harness/search.py) moves the format's rate knob with
encode + write probes only. Each landed point is then run like `bytegolf run` from its probe's
encoding (harness.runner.run_point: the artifact is written, decoded from the file, checked bit
for bit and evaluated) into points/<budget>/<format or variant>_<config hash>/result.json, with
the budget, the knob value and how close it landed. A budget no setting reaches gives a row
with status does_not_fit. Per budget the lowest bpb wins; every other format gets Δbpb against
the winner with a paired bootstrap CI over the evaluation windows.

A compare started again in the same directory (hydra.run.dir=...) reuses the probe caches in
search/ and skips points whose result.json is there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from harness import search, store, sweep
from harness.analysis import system
from harness.errors import ConfigError
from harness.plan import format_defaults, merge_settings
from harness.stats import paired_bootstrap

log = logging.getLogger("bytegolf")


@dataclass
class CompareSettings:
    """Formats (null: every registered one but passthrough), budgets in bytes, search and bootstrap settings.

    params: per-format settings over the YAML defaults, e.g. {scalar: {bits: 8}};
    knobs: per-format knob ranges, e.g. {scalar: {lo: 2.0, hi: 30.0}} (keys lo, hi, log, integer);
    variants: named settings of one format compared as systems of their own, listed in `formats`
    by their label, e.g. {rows: {format: sparse_outlier, params: {layout: row}}}; params and knobs
    then take the label as key."""

    formats: list[str] | None = None
    budgets: list[float] = field(default_factory=lambda: [16e6, 8e6, 4e6])
    params: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, Any] = field(default_factory=dict)
    tol: float = 0.005
    max_probes: int = 24
    samples: int = 1000
    level: float = 0.95


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_compare", node=CompareSettings, package="compare")


def _variants(node: dict[str, Any], registry: dict[str, str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """compare.variants as label -> (format, params), checked."""
    out = {}
    for label, v in node.items():
        if label in registry:
            raise ConfigError(f"compare.variants: label {label!r} is a format's name; pick another")
        if not isinstance(v, dict) or v.get("format") not in registry or set(v) - {"format", "params"}:
            raise ConfigError(
                f"compare.variants.{label}: need {{format: <one of {', '.join(sorted(registry))}>, params: {{...}}}}"
            )
        out[label] = (str(v["format"]), dict(v.get("params") or {}))
    return out


def _budgets(values: list[float]) -> list[int]:
    out = []
    for v in values:
        if not v > 0:
            raise ConfigError(f"compare.budgets: every budget must be a positive number of bytes, got {v!r}")
        out.append(int(v))
    return out


def point_cfg(cfg: DictConfig, fmt: str, params: dict[str, Any], budget: int) -> DictConfig:
    """The run config of one landed point: the compare config with this format and cap = budget."""
    c = cfg.copy()
    with open_dict(c):
        c.pop("compare", None)
        c.format = OmegaConf.create({"name": fmt, **params})
        c.budget.cap_bytes = budget
    return c


def run_compare(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Search, evaluate and rank; returns one row per (budget, format)."""
    from formats import REGISTRY
    from harness.runner import run_point

    cc = cfg.compare
    variants = _variants(OmegaConf.to_container(cc.variants, resolve=True) or {}, REGISTRY)
    names = list(cc.formats) if cc.formats else [f for f in REGISTRY if f != "passthrough"] + list(variants)
    budgets = _budgets(list(cc.budgets))
    if not names or not budgets:
        raise ConfigError("compare: need at least one format and one budget")
    extra_params = OmegaConf.to_container(cc.params, resolve=True) or {}
    knob_over = OmegaConf.to_container(cc.knobs, resolve=True) or {}
    for key in (*extra_params, *knob_over):  # entries for formats this compare leaves out are unused
        if key not in names and key not in REGISTRY and key not in variants:
            raise ConfigError(f"compare.params/knobs name {key!r}, which is neither a format nor a variant")
    codec = OmegaConf.to_container(cfg.codec, resolve=True)
    assert isinstance(codec, dict)
    codec_name = str(codec.pop("name"))
    count_code = bool(cfg.budget.count_code)

    from formats import get_format

    plans = []  # settings and knob of every format, checked before any work
    for label in names:
        fmt, own = variants.get(label, (label, {}))
        params = merge_settings(format_defaults(fmt), own, extra_params.get(label, {}))
        instance = get_format(fmt, **params)
        knob = search.knob_for(instance.rate_knob, params.get(instance.rate_knob), knob_over.get(label))
        plans.append((label, fmt, params, knob))

    ws = search.Workspace(cfg)
    rows: list[dict[str, Any]] = []
    for label, fmt, params, knob in plans:
        ident, _ = sweep.point_config(point_cfg(cfg, fmt, {**params, **({knob.name: 0} if knob else {})}, 0))
        for k in ("eval", "budget"):
            ident.pop(k, None)
        cache = out_dir / "search" / f"{label}_{codec_name}_{store.config_hash(ident)}.json"
        enc = search.Encoder(ws, fmt, params, knob, codec_name, codec, out_dir / "search", cache)
        start = params.get(knob.name) if knob else None
        for budget in budgets:
            landing = search.search(enc, knob, start, budget, count_code, cc.tol, cc.max_probes)
            log.info("%s at %s B: %s", label, f"{budget:,}", landing.describe())
            print(f"{label} at {budget:,} B: {landing.describe()}", flush=True)
            row = _point(cfg, label, enc, landing, out_dir, run_point)
            rows.append(row)
    _print_ranking(rows, budgets, cc)
    df = store.collect([out_dir / "points"])
    store.save_table(df, out_dir / "results")
    return rows


def _point(cfg: DictConfig, label: str, enc: search.Encoder, landing: search.Landing, out_dir: Path, run_point) -> dict:
    """Evaluate a landed point (or record that the budget is out of reach) into its own directory."""
    fmt = enc.fmt
    extra = {
        **({"variant": label} if label != fmt else {}),
        "budget_bytes": landing.budget,
        "status": landing.status,
        "landed_ratio": landing.ratio,
        "counted_bytes": landing.counted_bytes,
        "count_code": bool(cfg.budget.count_code),
        "knob": landing.knob,
        "knob_value": enc.knob.value(landing.value) if enc.knob and landing.value is not None else None,
        "search_probes": landing.probes,
        "search_trace": landing.trace,
    }
    params = enc.params_at(landing.value) if landing.value is not None else dict(enc.params)
    pc = point_cfg(cfg, fmt, params, landing.budget)
    conf, _ = sweep.point_config(pc, drop=False)
    chash = store.config_hash(conf)
    d = out_dir / "points" / str(landing.budget) / f"{label}_{chash}"
    done = store.finished(d, chash)
    if done is not None:
        print(f"  finished already in {d}; skipped", flush=True)
        return done
    d.mkdir(parents=True, exist_ok=True)
    if landing.status == "does_not_fit":
        row = {
            "format": fmt,
            "codec": enc.codec,
            "format_params": params,
            "codec_params": enc.codec_params,
            "final_bytes": landing.final_bytes,
            "code_bytes": landing.code_bytes,
            "cap_bytes": landing.budget,
            "fits_cap": False,
        }
        return store.write_result(d, row, config_hash=chash, **extra)
    with store.claim(d) as owned:
        if not owned:
            raise ConfigError(f"{d} is being evaluated by another process (claim {d / store.CLAIM})")
        result = run_point(pc, d, units=enc.units.pop(landing.value, None))
    if result["final_bytes"] != landing.final_bytes:
        log.warning(
            "%s: the evaluated artifact has %d B, the search probe had %d B (encoding is not deterministic)",
            fmt,
            result["final_bytes"],
            landing.final_bytes,
        )
    return store.write_result(d, result, config_hash=chash, **extra)


def ranking(rows: list[dict[str, Any]], budget: int, samples: int, level: float) -> list[dict[str, Any]]:
    """Rows of one budget, best bpb first, each with Δbpb against the best and its bootstrap CI."""
    here = [r for r in rows if r.get("budget_bytes") == budget]
    ok = sorted((r for r in here if r.get("bpb") is not None), key=lambda r: r["bpb"])
    out = []
    best = ok[0] if ok else None
    for r in ok:
        entry = {"row": r, "delta": None}
        if r is not best and best is not None:
            a, b = np.asarray(r["window_nll"]), np.asarray(best["window_nll"])
            if a.shape == b.shape and r["window_bytes"] == best["window_bytes"]:
                entry["delta"] = paired_bootstrap(a, b, np.asarray(r["window_bytes"]), samples, level)
        out.append(entry)
    out.extend({"row": r, "delta": None} for r in here if r.get("bpb") is None)
    return out


def _print_ranking(rows: list[dict[str, Any]], budgets: list[int], cc: DictConfig) -> None:
    for budget in budgets:
        ranked = ranking(rows, budget, cc.samples, cc.level)
        print(f"\nbudget {budget:,} B ({'final + code' if rows and rows[0].get('count_code') else 'final'} bytes):")
        for e in ranked:
            r, d = e["row"], e["delta"]
            knob = f"{r['knob']}={r['knob_value']:g}" if r.get("knob") else "-"
            if r.get("bpb") is None:
                line = f"{system(r):<12} {knob:<22} does not fit (smallest {r['counted_bytes']:,} B)"
            else:
                cmp = "best" if d is None and e is ranked[0] else (f"Δbpb {d}" if d else "Δbpb n/a (windows differ)")
                line = (
                    f"{system(r):<12} {knob:<22} {r['counted_bytes']:>12,} B {r['landed_ratio']:.4f}× "
                    f"bpb {r['bpb']:.4f}  {cmp}  [{r['status']}]"
                )
            print("  " + line, flush=True)
        fitted = [e for e in ranked if e["row"].get("bpb") is not None]
        if not fitted:
            print("  no format fits this budget")
            continue
        win = system(fitted[0]["row"])
        ties = [system(e["row"]) for e in fitted[1:] if e["delta"] is None or not e["delta"].significant]
        verdict = f"winner: {win}" + (f" (not separable from {', '.join(ties)} at {cc.level:.0%})" if ties else "")
        print("  " + verdict, flush=True)
