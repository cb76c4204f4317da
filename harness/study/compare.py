"""`bytegolf compare`: every format at equal final bytes, per budget, evaluated and ranked.

For each format (default: every registered format but passthrough, each with its YAML defaults
from experiments/format/, plus compare.params.<format>; or named variants of one format) and
each budget, the equal-bytes search (harness/search/budget.py) moves the format's rate knob with
encode + write probes only (harness/search/prober.py). Each landed point is then run like `bytegolf run`
from its probe's encoding (bytegolf.run.point.run_point: the artifact is written, decoded from the
file, checked bit for bit and evaluated) into points/<budget>/<format or variant>_<config hash>/result.json, with
the budget, the knob value and how close it landed. A budget no setting reaches gives a row
with status does_not_fit. Per budget the lowest bpb wins; every other format gets Δbpb against
the winner with a paired bootstrap CI over the evaluated documents and the p of a ratio t-test over them.

Randomized systems (a format with `randomized = True`) are evaluated again at each landing with
other seeds (compare.seeds), which gives the ranking's seed spread; every system gets
compare.front_points evaluated points across the budgets' range for its frontier (points/front/).

Allocated systems (compare.allocated.<name>: a format, candidates and/or a knob in `bytegolf allocate`'s
language, bytegolf.search.allocate) have no knob to search: every unit × candidate is measured once (bytes
with the probe codec, output error) into search/<name>_<hash>.allocation.json, and per budget the
least-error allocation within it is landed from those tables (bytegolf.search.tables.land: a few probe
writes; landings are cached in the same file), then evaluated like any point, encoded afresh from its
plan (a rule per tensor), into points/<budget>/<name>_<key>/ with config.yaml, plan.yaml,
allocation.json and allocation.md beside result.json. The key covers the run config, the candidates,
tol, max_rounds, max_states and the target, so other allocation settings are other points.

A compare started again in the same directory (hydra.run.dir=...) reuses the probe caches and the
allocation tables in search/ and skips points whose result.json is there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.errors import ConfigError
from bytegolf.formats import get_format
from bytegolf.measure import codebytes
from bytegolf.quantize import encoder
from bytegolf.quantize.plan import make_plan
from bytegolf.run import store, sweep
from bytegolf.run.point import run_point
from bytegolf.run.provenance import git_revision, source_hash
from bytegolf.search import allocate, candidates, tables
from bytegolf.search import budget as search
from bytegolf.search.prober import Encoder, Workspace, remove_stale_probes
from bytegolf.study.analysis import system
from bytegolf.study.ranking import evaluated, print_ranking
from bytegolf.study.systems import System, parse_budgets, point_cfg, searched_references, skips, systems

log = logging.getLogger("bytegolf")
# a point's own keys, which a twin's result does not pass on (_take_over)
TWIN_DROP = frozenset(
    [
        "variant",
        "reference",
        "budget_bytes",
        "seed_budget",
        "status",
        "landed_ratio",
        "counted_bytes",
        "count_code",
        "knob",
        "knob_value",
        "search_probes",
        "search_trace",
        "config_hash",
        "cap_bytes",
        "fits_cap",
    ]
)
WAIT_S = 5.0  # seconds between looks at a point another compare is evaluating


def run_compare(cfg: DictConfig, out_dir: Path) -> list[dict[str, Any]]:
    """Search, evaluate and rank; returns one row per (budget, system)."""

    cc = cfg.compare
    budgets = parse_budgets(list(cc.budgets))
    if not budgets:
        raise ConfigError("compare: need at least one budget")
    count_code = bool(cfg.budget.count_code)
    for stale in remove_stale_probes(out_dir / "search"):
        log.info("removed %s, the probe of a search that no longer runs", stale)
    if cc.get("rank_by", "bpb") not in ("bpb", "kld"):
        raise ConfigError(f"compare.rank_by must be bpb or kld, got {cc.rank_by!r}")
    if cc.get("rank_by") == "kld" and not cfg.eval.get("kld", False):
        raise ConfigError("compare.rank_by=kld needs eval.kld=true (the KL divergence is measured in evaluation)")
    ranked, probe_codec = systems(cfg)
    tuned = [s.label for s in ranked if int((s.finetune or {}).get("steps", 0) or 0) > 0]
    model_name = str(cfg.model.get("name", "gpt") or "gpt")
    if tuned and model_name != "gpt":
        raise ConfigError(
            f"compare.calibrate asks block calibration of {', '.join(tuned)}, which only model=gpt has; "
            f"with model={model_name} set compare.calibrate.<system>.steps=0"
        )
    ws = Workspace(cfg)
    works = {s.label: AllocationWork(cfg, s, ws, probe_codec, out_dir) for s in ranked if s.allocation}
    for label, work in list(works.items()):
        try:
            work.check()  # a candidate that matches no tensor fails before any system's work
        except ConfigError as exc:
            if model_name == "gpt":
                raise
            # the default allocated systems name the built-in GPT's tensors: another model skips them
            log.warning("compare.allocated.%s skipped on model=%s: %s", label, model_name, exc)
            del works[label]
            ranked = [s for s in ranked if s.label != label]
    rows: list[dict[str, Any]] = []
    skipped = skips(cc)
    for sysm in ranked:
        if sysm.label in works:
            rows.extend(_allocated_points(cfg, works.pop(sysm.label), budgets, rows, out_dir, run_point))
            continue
        p_name, p_params = (sysm.codec, sysm.codec_params) if sysm.reference or not probe_codec else probe_codec
        ident, _ = sweep.point_config(
            point_cfg(cfg, sysm, search.with_setting(sysm.params, sysm.knob.name, 0) if sysm.knob else sysm.params, 0)
        )
        for k in ("eval", "budget"):
            ident.pop(k, None)
        ident["probe_codec"] = [p_name, p_params]
        cache = out_dir / "search" / f"{sysm.label}_{store.config_hash(ident)}.json"
        enc = Encoder(
            ws,
            sysm.fmt,
            sysm.params,
            sysm.knob,
            p_name,
            p_params,
            out_dir / "search",
            cache,
            plan_at=sysm.plan_config,
            layout_cfg=sysm.layout,
        )
        start = search.setting(sysm.params, sysm.knob.name) if sysm.knob else None
        if sysm.reference:  # the export as published, at its own size
            value = sysm.knob.snap(start) if sysm.knob and start is not None else 0.0
            probe = enc(value)
            if probe.final_bytes is None:
                raise ConfigError(f"reference {sysm.label} does not encode: {probe.error}")
            counted = probe.counted(count_code)
            own = search.Landing(
                0,
                "own",
                sysm.knob.name if sysm.knob else None,
                value,
                probe.final_bytes,
                counted,
                probe.code_bytes,
                1.0,
                1,
                [(value, counted)],
            )
            if sysm.gguf:
                print(f"{sysm.label} at its own size: container {counted:,} B; its GGUF file counts", flush=True)
            else:
                print(f"{sysm.label} at its own size: {counted:,} B", flush=True)
            own_row = _point(cfg, sysm, enc, own, out_dir, run_point)
            rows.append(own_row)
            if sysm.gguf and own_row.get("gguf_bytes"):
                print(f"  {sysm.label}: model.gguf {own_row['gguf_bytes']:,} B", flush=True)
            if sysm.label not in searched_references(cc):
                continue
            if sysm.knob is None:  # a GGUF mix's types are categorical: nothing to search
                print(f"{sysm.label} has no rate knob: ranked at its own size only", flush=True)
                continue
        for budget in budgets:
            above, why = skipped.get(sysm.label, (budget, ""))
            if budget > above:
                print(f"{sysm.label} at {budget:,} B: not searched above {above:,} B ({why})", flush=True)
                rows.append(
                    {"variant": sysm.label, "format": sysm.fmt, "budget_bytes": budget, "status": "not_searched"}
                    | {"why": f"not searched above {above:,} B: {why}"}
                )
                continue
            target = budget
            for _ in range(3):  # calibration can move the bytes past the probe's: land lower and again
                landing = search.search(
                    enc, sysm.knob, start, target, count_code, cc.tol, cc.max_probes, enc.cache, enc.estimate
                )
                landing = replace(landing, budget=budget, ratio=(landing.counted_bytes or 0) / budget)
                via = f" (bytes through the probe codec {enc.codec})" if enc.codec != sysm.codec else ""
                log.info("%s at %s B: %s%s", sysm.label, f"{budget:,}", landing.describe(), via)
                print(f"{sysm.label} at {budget:,} B: {landing.describe()}{via}", flush=True)
                if via and landing.status == "does_not_fit":
                    landing = _fits_when_written(enc, sysm, landing, budget, count_code)
                if via and landing.status in ("ok", "short") and target == budget:
                    landing = _land_on_written(enc, sysm, landing, budget, count_code, cc)
                    landing = replace(landing, budget=budget, ratio=(landing.counted_bytes or 0) / budget)
                same = sysm.reference and landing.value == own.value and "bpb" in own_row
                twin = (Path(own_row["artifact"]).parent, own_row) if same else None
                row = _point(cfg, sysm, enc, landing, out_dir, run_point, twin=twin)
                over = _counted(row, count_code) - budget if evaluated(row) else 0
                if over <= 0:
                    break
                print(f"  {over:,} B over the budget after calibration: searching again below it", flush=True)
                target = budget - (_counted(row, count_code) - (landing.counted_bytes or 0)) - 1
                _set_aside(row)
            rows.append(row)
            if row.get("bpb") is not None and _randomized(sysm):
                rows.extend(_seed_points(cfg, sysm, enc, landing, out_dir, run_point))
        if int(cc.get("front_points", 0)) > 0 and sysm.knob is not None:
            searched = [b for b in budgets if b <= skipped.get(sysm.label, (b, ""))[0]]
            rows.extend(_front(cfg, sysm, enc, searched or budgets, rows, out_dir, run_point))
    print_ranking(rows, budgets, cc)
    df = store.collect([out_dir / "points"])
    store.save_table(df, out_dir / "results")
    return rows


def written_bytes(enc: Encoder, sysm: System, value: float, count_code: bool) -> int | None:
    """The counted bytes of the probe at value written through the system's own codec (the artifact's; the
    compressed blobs are remembered, so the landed point's write reuses them); None where the format refuses
    the settings. A probe read from the cache file is encoded again."""

    units = enc.encoding(value)
    if units is None:
        return None
    path = enc.work_dir / f".written-{sysm.label}-{os.getpid()}.bgz"
    try:
        lay = layout.LayoutConfig(**sysm.layout)
        final = artifact.write(path, units, sysm.codec, sysm.codec_params, lay).final_bytes
        return final + (codebytes.artifact_code_bytes(path)["code_bytes"] if count_code else 0)
    finally:
        path.unlink(missing_ok=True)


def _land_on_written(
    enc: Encoder, sysm: System, landing: search.Landing, budget: int, count_code: bool, cc: Any
) -> search.Landing:
    """Equal bytes on the artifact, not on the probe: the system's codec (fair: the best of several per blob)
    writes the landed probe smaller than the probe codec measured it. While that leaves the file under
    (1 - tol)·budget, the search lands again (up to 3 times, to tol / 4) on a target raised by 90% of the last
    shrinkage (its probes are cached); a landing that ends over the budget is searched again below it by
    the caller. A short landing is tried too: through the probe codec a dearer setting may look over the
    budget that the system's codec writes under it (hqq's 2-bit codes at 4 MB)."""
    floor = (1 - float(cc.tol)) * budget
    written = written_bytes(enc, sysm, landing.value, count_code) if landing.value is not None else None
    for _ in range(3):
        measured = enc.cache.get(landing.value) if landing.value is not None else None
        probe = measured.counted(count_code) if measured and measured.final_bytes else (landing.counted_bytes or 0)
        if written is None or written >= floor or written >= probe:
            break
        target = budget + int(0.9 * (probe - written))
        print(f"  written: {written:,} B ({written / budget:.4f}× budget); probes aim at {target:,} B", flush=True)
        again = search.search(
            enc, sysm.knob, landing.value, target, count_code, float(cc.tol) / 4, cc.max_probes, enc.cache, enc.estimate
        )
        new = written_bytes(enc, sysm, again.value, count_code) if again.value is not None else None
        if new is None or new > budget or new <= written:
            break  # no better: keep the landing so far
        where = f"{again.knob}={again.value:g}"
        print(f"  landed again at {where}: {new:,} B written ({new / budget:.4f}× budget)", flush=True)
        landing = replace(again, trace=[*landing.trace, *again.trace], probes=landing.probes + again.probes)
        written = new
    return landing


def _fits_when_written(
    enc: Encoder, sysm: System, landing: search.Landing, budget: int, count_code: bool
) -> search.Landing:
    """A probe-codec "does not fit" checked on the artifact: the smallest probe written through the system's
    own codec (fair: per blob the best of several) may fit where the probe codec's bytes did not (hqq's 1-bit
    codes: 3.65 MB through ans, 1.87 MB through fair). It then lands there, short of the budget."""
    written = written_bytes(enc, sysm, landing.value, count_code) if landing.value is not None else None
    if written is None or written > budget:
        return landing
    print(f"  written: {written:,} B ({written / budget:.4f}× budget): it fits through {sysm.codec}", flush=True)
    return replace(landing, status="short", counted_bytes=written, ratio=written / budget)


def _randomized(sysm: System) -> bool:
    """Whether the system's encoder draws random numbers (k-means or codebook initialisation)."""

    return bool(getattr(get_format(sysm.fmt, **sysm.params), "randomized", False))


def _seed_points(
    cfg: DictConfig, sysm: System, enc: Encoder, landing: search.Landing, out_dir: Path, run_point
) -> list[dict]:
    """The landed point again with seeds seed+1 .. seed+seeds-1 (not ranked: they give the seed spread)."""
    out = []
    for k in range(1, int(cfg.compare.get("seeds", 1))):
        seeded = replace(landing, status="seed")
        out.append(_point(cfg, sysm, enc, seeded, out_dir, run_point, seed=int(cfg.seed) + k))
    return out


def _front(
    cfg: DictConfig,
    sysm: System,
    enc: Encoder,
    budgets: list[int],
    rows: list[dict],
    out_dir: Path,
    run_point,
) -> list[dict]:
    """Evaluated points that give the system a front of compare.front_points points across the budgets'
    range (half the smallest budget to the largest; where the system cannot get that small, from its
    smallest size): for each target, a probe already encoded within 10% of it, else a loose search (5%)
    to it. They are not ranked (status front)."""
    count_code = bool(cfg.budget.count_code)
    n = int(cfg.compare.front_points)
    mine = [r for r in rows if system(r).removesuffix("@own") == sysm.label and evaluated(r)]
    have = [float(_counted(r, count_code)) for r in mine if r.get("status") != "seed"]
    out: list[dict] = []
    lo, hi = min(budgets) / 2, float(max(budgets))
    for _ in range(2):  # the second pass re-grids over what the system can reach
        grid = np.geomspace(lo, hi, n + 2)[1:-1]
        far = sorted(grid, key=lambda t: -min((abs(np.log(t / h)) for h in have), default=np.inf))
        for target in sorted(far[: max(n - len(have), 0)]):
            landing = _front_landing(cfg, sysm, enc, int(target), count_code)
            if landing is None or any(abs(np.log(landing.counted_bytes / h)) < np.log(1.02) for h in have):
                continue  # nothing there, or an evaluated point is already there
            print(f"{sysm.label} front point: {landing.knob}={landing.value:g} {landing.counted_bytes:,} B", flush=True)
            out.append(_point(cfg, sysm, enc, landing, out_dir, run_point))
            have.append(float(landing.counted_bytes))
        if len(have) >= n or not have:
            break
        lo = max(lo, min(have))
    return out


def _front_landing(cfg: DictConfig, sysm: System, enc: Encoder, target: int, count_code: bool) -> search.Landing | None:
    """A frontier point near target bytes: a cached probe within 10%, else a 5% search (its smallest
    size when target is out of reach)."""
    near = [p for p in enc.cache.values() if p.counted(count_code)]
    near = [p for p in near if abs(np.log(p.counted(count_code) / target)) < np.log(1.1)]
    if near:
        p = min(near, key=lambda p: abs(np.log(p.counted(count_code) / target)))
        c = p.counted(count_code)
        knob = enc.knob.name
        return search.Landing(0, "front", knob, p.value, p.final_bytes, c, p.code_bytes, 1.0, 0, [(p.value, c)])
    start = search.setting(sysm.params, sysm.knob.name)
    landing = search.search(enc, sysm.knob, start, target, count_code, 0.05, cfg.compare.max_probes)
    if landing.value is None or landing.counted_bytes is None:
        return None
    return replace(landing, budget=0, status="front", ratio=1.0)


def _counted(row: dict[str, Any], count_code: bool) -> int:
    """A result's bytes as the budget counts them."""
    return int(row["final_bytes"]) + (int(row.get("code_bytes") or 0) if count_code else 0)


def _set_aside(row: dict[str, Any]) -> None:
    """Mark an evaluated point that ended over its budget so no ranking or table counts it."""
    d = Path(row["artifact"]).parent
    row.update(status="over_budget", over_budget_bytes=row.get("budget_bytes"), budget_bytes=None)
    store.write_json_atomic(d / store.RESULT, row)


def _finished(d: Path, chash: str, landing: search.Landing) -> dict | None:
    """The point's stored result, unless it says "does not fit" where the setting now lands (written through
    the system's codec), or the other way round."""
    done = store.finished(d, chash)
    if done is not None and (done.get("status") == "does_not_fit") != (landing.status == "does_not_fit"):
        return None
    return done


def _point(
    cfg: DictConfig,
    sysm: System,
    enc: Encoder,
    landing: search.Landing,
    out_dir: Path,
    run_point,
    seed: int | None = None,
    twin: tuple[Path, dict] | None = None,
) -> dict:
    """Evaluate a landed point (or record that the budget is out of reach) into its own directory.

    landing.status own: the reference at its own size; front: a frontier point off the budgets;
    seed: the landing again with another seed (encoded afresh). None of these is ranked.
    twin: (directory, result) of an evaluated point with the same encoding, codec and layout (a
    reference whose search ends at its own setting): its artifact and result are taken over."""
    fmt, own = enc.fmt, landing.status == "own"
    unranked = landing.status in ("own", "front", "seed")
    label = sysm.label + ("@own" if own else "")
    extra = {
        **({"variant": label} if label != fmt else {}),
        "reference": sysm.reference,
        "budget_bytes": None if unranked else landing.budget,
        **({"seed_budget": landing.budget} if landing.status == "seed" else {}),
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
    pc = point_cfg(cfg, sysm, params, landing.budget, landing.value)
    if seed is not None:
        pc.seed = seed
    few, windows = int(cfg.compare.get("front_windows", 0) or 0), int(cfg.eval.windows)
    if landing.status == "front" and few > 0 and (windows == 0 or few < windows):
        pc.eval.windows = few  # a cheaper evaluation; the point's result has its window count
    conf, _ = sweep.point_config(pc, drop=False)
    chash = store.config_hash(conf)
    where = {"own": "own", "front": "front"}.get(landing.status, str(landing.budget))
    d = out_dir / "points" / where / f"{label}_{chash}"
    done = _finished(d, chash, landing)
    if done is not None:
        print(f"  finished already in {d}; skipped", flush=True)
        return done
    d.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(pc, d / "config.yaml")  # the point's whole run config: its system, plan included
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
            "git_revision": git_revision(),
            "source_hash": source_hash(),
        }
        return store.write_result(d, row, config_hash=chash, **extra)
    while True:  # a point another compare on this directory is evaluating: wait for its result
        with store.claim(d) as owned:
            if owned:
                done = _finished(d, chash, landing)  # finished between our check and our claim
                if done is not None:
                    return done
                if twin is not None and twin[1].get("final_bytes") == landing.final_bytes:
                    result = _take_over(twin, d, pc)
                else:
                    reuse = enc.units.pop(landing.value, None) if seed is None else None
                    result = run_point(pc, d, units=reuse)
                same_file = enc.codec == sysm.codec and not result.get("gguf_bytes")  # (a GGUF point: its GGUF file)
                if result["final_bytes"] != landing.final_bytes and same_file and seed is None:
                    calibrated = int(pc.get("finetune", {}).get("steps") or 0) > 0
                    (log.info if calibrated else log.warning)(
                        "%s: the evaluated artifact has %d B, the search probe had %d B (%s)",
                        sysm.label,
                        result["final_bytes"],
                        landing.final_bytes,
                        "block calibration changed the encoding after the probe"
                        if calibrated
                        else "encoding is not deterministic",
                    )
                counted = _counted(result, bool(cfg.budget.count_code))  # the evaluated file's bytes count
                extra.update(counted_bytes=counted, landed_ratio=counted / landing.budget if landing.budget else 1.0)
                return store.write_result(d, result, config_hash=chash, **extra)
        print(f"  {d.name} is being evaluated by another process; waiting for its result", flush=True)
        while store.finished(d, chash) is None and store.is_claimed(d):
            time.sleep(WAIT_S)
        done = store.finished(d, chash)
        if done is not None:
            return done


def _take_over(twin: tuple[Path, dict], d: Path, pc: DictConfig) -> dict:
    """The twin point's artifact, log and result as this point's (same encoding; only the cap differs)."""
    src, row = twin
    for name in (artifact.ARTIFACT_NAME, "run.log"):
        if (src / name).is_file():
            shutil.copyfile(src / name, d / name)
    counted = _counted(row, bool(pc.budget.count_code))
    keep = {k: v for k, v in row.items() if k not in TWIN_DROP}
    print(f"  the same artifact as {src.parent.name}/{src.name}: its evaluation is reused", flush=True)
    cap = pc.budget.cap_bytes
    return {
        **keep,
        "artifact": str(d / artifact.ARTIFACT_NAME),
        "cap_bytes": cap,
        "fits_cap": counted <= cap,
        "same_as": src.name,
    }


# ------------------------------------------------------------------ allocated systems


class AllocationWork:
    """An allocated system's measurement and landings. Each unit × candidate is measured once per compare
    directory: search/<name>_<hash>.allocation.json holds the measured tables and every landing (target and
    tol -> allocation and probe bytes), so other budgets, front points and a resumed compare allocate
    without encoding; encodings are made again only when a new landing writes a probe artifact. Bytes are
    measured and probes written with the probe codec (compare.probe_codec where it is one of the compare
    codec's candidates, else the system's codec), as the search does."""

    def __init__(
        self, cfg: DictConfig, sysm: System, ws: Workspace, probe_codec: tuple[str, dict] | None, out_dir: Path
    ) -> None:

        assert sysm.allocation is not None
        self.cfg, self.sysm, self.ws, self.spec = cfg, sysm, ws, sysm.allocation
        self.where = f"compare.allocated.{sysm.label}"
        self.codec: tuple[str, dict[str, Any]] = probe_codec or (sysm.codec, dict(sysm.codec_params))
        self.mcfg = point_cfg(cfg, sysm, sysm.params, 0)
        with open_dict(self.mcfg):
            self.mcfg.codec = OmegaConf.create({"name": self.codec[0], **self.codec[1]})
        self.plan_cfg = sysm.plan_config(None)
        self.plan = make_plan(ws.state, self.plan_cfg, sysm.fmt, sysm.params)
        ident, _ = sweep.point_config(point_cfg(cfg, sysm, sysm.params, 0))
        for k in ("eval", "budget"):
            ident.pop(k, None)
        self.objective = tables.resolve_objective(self.spec.objective, ws, self.where)
        ident |= {"probe_codec": list(self.codec), "candidates": [c.as_dict() for c in self.spec.candidates]}
        if self.objective != "output_error":  # (caches measured before objectives existed keep their name)
            ident["objective"] = self.objective
        self.work_dir = out_dir / "search"
        self.cache_file = self.work_dir / f"{sysm.label}_{store.config_hash(ident)}.allocation.json"
        body = json.loads(self.cache_file.read_text()) if self.cache_file.is_file() else {}
        self.tables: dict[str, Any] | None = body.get("measured")
        self.landings: dict[str, dict[str, Any]] = body.get("landings", {})
        self._measured: Any = None
        self.measure_seconds: float | None = None  # set when this process measured

    def check(self) -> None:
        """The candidates against the plan, before any encoding (bytegolf.search.candidates.check_plan)."""

        candidates.check_plan(self.plan, self.sysm.fmt, self.spec.candidates, self.where)

    @property
    def measured(self) -> Any:
        """The bytegolf.search.tables.Measured tables: from the cache file, else measured now (and cached)."""
        if self._measured is None:
            groups = encoder.group_units(self.plan)
            m = tables.Measured.from_json(self.tables, groups) if self.tables else None
            if m is None:
                n = sum(1 for g in groups if g[0].format == self.sysm.fmt)
                print(f"{self.sysm.label}: measuring {n} units × {len(self.spec.candidates)} candidates", flush=True)
                t0 = time.perf_counter()
                m = tables.measure(self.mcfg, self.ws, self.plan, self.spec.candidates, self.where, self.objective)
                self.measure_seconds = time.perf_counter() - t0
                print(f"{self.sysm.label}: measured in {self.measure_seconds:.1f} s", flush=True)
                self.tables = m.to_json()
                self._save()
            self._measured = m
        return self._measured

    @property
    def randomized(self) -> bool:
        """Whether a candidate's format draws random numbers (its points then get seed points)."""

        return any(
            getattr(get_format(c.format, **(c.settings or self.sysm.params)), "randomized", False)
            for c in self.spec.candidates
        )

    def land(self, target: int, tol: float) -> dict[str, Any]:
        """The allocation landed at target bytes within tol (bytegolf.search.tables.land), cached: {choice, probed,
        rounds}, or {does_not_fit: the cheapest allocation's counted bytes, final, code}."""

        key = f"{target}:{tol}"
        if key in self.landings:
            return self.landings[key]
        m, sysm, spec = self.measured, self.sysm, self.spec
        path = self.work_dir / f".probe-{sysm.label}-{os.getpid()}.bgz"  # own file: compares may share search/
        write = tables.Writer(
            m,
            sysm.fmt,
            spec.candidates,
            tables.encoder(self.mcfg, self.ws),
            path,
            self.codec[0],
            self.codec[1],
            layout.LayoutConfig(**sysm.layout),
            bool(self.cfg.budget.count_code),
        )
        try:
            choice, probed, rounds = tables.land(m.units, write, target, tol, spec.max_rounds, spec.max_states)
            out: dict[str, Any] = {"choice": choice, "probed": probed, "rounds": rounds}
        except tables.DoesNotFit as exc:
            out = {"does_not_fit": exc.counted, "final": write.final, "code": write.code}
        self.landings[key] = out
        self._save()
        return out

    def _save(self) -> None:
        body = {
            "system": self.sysm.label,
            "format": self.sysm.fmt,
            "probe_codec": list(self.codec),
            "candidates": [c.as_dict() for c in self.spec.candidates],
            "measured": self.tables,
            "landings": self.landings,
        }
        self.work_dir.mkdir(parents=True, exist_ok=True)
        store.write_json_atomic(self.cache_file, body)


def _allocated_points(
    cfg: DictConfig, work: AllocationWork, budgets: list[int], rows: list[dict], out_dir: Path, run_point
) -> list[dict]:
    """An allocated system's points: its landing at every budget (ranked), seed points when a candidate's
    format is randomized, and front points (compare.front_points) across the budgets' range."""
    cc, count_code = cfg.compare, bool(cfg.budget.count_code)
    out: list[dict] = []
    for budget in budgets:
        target = budget
        for _ in range(3):  # an evaluated file over the budget (a nondeterministic encoder): land lower
            row = _allocated_point(cfg, work, budget, target, out_dir, run_point)
            over = _counted(row, count_code) - budget if evaluated(row) else 0
            if over <= 0:
                break
            print(f"  {over:,} B over the budget when evaluated: allocating again below it", flush=True)
            target -= over + 1
            _set_aside(row)
        out.append(row)
        if row.get("bpb") is not None and int(cc.get("seeds", 1)) > 1 and work.randomized:
            out.extend(_allocated_seeds(cfg, work, row, budget, out_dir, run_point))
    if int(cc.get("front_points", 0)) > 0:
        out.extend(_allocated_front(cfg, work, budgets, [*rows, *out], out_dir, run_point))
    return out


def _allocated_point(
    cfg: DictConfig,
    work: AllocationWork,
    budget: int,
    target: int,
    out_dir: Path,
    run_point,
    tol: float | None = None,
) -> dict:
    """One allocated point: the allocation landed at target bytes, evaluated like `bytegolf run` from its
    config (the plan with a rule per allocated tensor; config.yaml and plan.yaml beside result.json), or a
    does_not_fit row. budget 0: a front point (not ranked). Its directory is keyed by the run config, the
    allocation settings and the target, and a finished one is returned as it is."""

    sysm, spec = work.sysm, work.spec
    tol = spec.tol if tol is None else tol
    count_code, ranked = bool(cfg.budget.count_code), budget > 0
    base = point_cfg(cfg, sysm, sysm.params, budget)
    ident, _ = sweep.point_config(base)
    ident["allocated"] = {**spec.ident(), "tol": tol, "probe_codec": list(work.codec), "target": target}
    key = store.config_hash(ident)
    d = out_dir / "points" / (str(budget) if ranked else "front") / f"{sysm.label}_{key}"
    done = store.read_result(d / store.RESULT)
    if done is not None and done.get("allocation_key") == key:
        print(f"  finished already in {d}; skipped", flush=True)
        return done
    landing = work.land(target, tol)
    extra = {
        "variant": sysm.label,
        "reference": False,
        "budget_bytes": budget if ranked else None,
        "count_code": count_code,
        "knob": None,
        "knob_value": None,
        "allocation_key": key,
    }
    if "does_not_fit" in landing:
        counted = int(landing["does_not_fit"])
        print(f"{sysm.label} at {budget:,} B: does not fit: the cheapest allocation is {counted:,} B", flush=True)
        d.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(base, d / "config.yaml")
        row = {
            "format": sysm.fmt,
            "codec": sysm.codec,
            "format_params": sysm.params,
            "codec_params": sysm.codec_params,
            "final_bytes": landing["final"],
            "code_bytes": landing["code"],
            "cap_bytes": budget,
            "fits_cap": False,
            "git_revision": git_revision(),
            "source_hash": source_hash(),
        }
        extra |= {"status": "does_not_fit", "counted_bytes": counted, "landed_ratio": counted / target}
        return store.write_result(d, row, config_hash=key, search_probes=1, search_trace=[(0, counted)], **extra)
    m = work.measured
    choice, probed, rounds = list(landing["choice"]), int(landing["probed"]), landing["rounds"]
    chosen = [spec.candidates[u.candidate(p)] for u, p in zip(m.units, choice, strict=True)]
    if not ranked:
        status = "front"
    elif (1 - tol) * target <= probed <= target:
        status = "ok"
    else:  # at_limit: no allocation is richer; short: the next upgrade does not fit
        status = "at_limit" if tables.richest(m.units, choice) else "short"
    hist = ", ".join(f"{k} ×{v}" for k, v in Counter(c.label for c in chosen).items())
    print(
        f"{sysm.label} at {target:,} B: {probed:,} B = {probed / target:.4f} × target "
        f"[{status}, {len(rounds)} writes]; {hist}",
        flush=True,
    )
    pc = base.copy()
    with open_dict(pc):
        pc.plan.rules = allocate.allocated_rules(work.plan_cfg.rules, work.ws.state, sysm.fmt, m.units, chosen)
    d.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(pc, d / "config.yaml")  # `bytegolf run --config-dir <d> --config-name config` reproduces it
    allocate.write_plan(d / "plan.yaml", pc, target, chosen, f"bytegolf compare, {work.where}")
    trace = [(i, r["counted_bytes"]) for i, r in enumerate(rounds)]
    extra |= {"status": status, "search_probes": len(rounds), "search_trace": trace}
    while True:  # a point another compare on this directory is evaluating: wait for its result
        with store.claim(d) as owned:
            if owned:
                done = store.read_result(d / store.RESULT)
                if done is not None and done.get("allocation_key") == key:
                    return done
                result = run_point(pc, d)  # encoded afresh from the plan, as `bytegolf run` would
                counted = _counted(result, count_code)
                if counted != probed and work.codec[0] == sysm.codec:
                    log.warning("%s: the evaluated artifact has %d B, its probe had %d B", sysm.label, counted, probed)
                summary = allocate.summarize(
                    m, choice, rounds, probed, counted, target, count_code, tol, spec.candidates
                )
                conf, _ = sweep.point_config(pc, drop=False)
                extra |= {"counted_bytes": counted, "landed_ratio": counted / budget if ranked else 1.0}
                row = store.write_result(d, result, config_hash=store.config_hash(conf), allocation=summary, **extra)
                allocate.write_reports(
                    d, summary, row, m, choice, spec.candidates, sysm.fmt, sysm.params, sysm.codec, sysm.codec_params
                )
                return row
        print(f"  {d.name} is being evaluated by another process; waiting for its result", flush=True)
        while store.read_result(d / store.RESULT) is None and store.is_claimed(d):
            time.sleep(WAIT_S)
        done = store.read_result(d / store.RESULT)
        if done is not None and done.get("allocation_key") == key:
            return done


def _allocated_seeds(
    cfg: DictConfig, work: AllocationWork, row: dict, budget: int, out_dir: Path, run_point
) -> list[dict]:
    """The landed allocation (its config.yaml) again with seeds seed+1 .. seed+seeds-1, encoded afresh (not
    ranked: they give the seed spread)."""
    pc = OmegaConf.load(Path(row["artifact"]).parent / "config.yaml")
    assert isinstance(pc, DictConfig)
    out = []
    for k in range(1, int(cfg.compare.get("seeds", 1))):
        pk = pc.copy()
        pk.seed = int(cfg.seed) + k
        conf, _ = sweep.point_config(pk, drop=False)
        chash = store.config_hash(conf)
        d = out_dir / "points" / str(budget) / f"{work.sysm.label}_{chash}"
        done = store.finished(d, chash)
        if done is None:
            d.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(pk, d / "config.yaml")
            result = run_point(pk, d)
            extra = {"variant": work.sysm.label, "reference": False, "budget_bytes": None, "seed_budget": budget}
            extra |= {"status": "seed", "counted_bytes": _counted(result, bool(cfg.budget.count_code))}
            extra |= {"count_code": bool(cfg.budget.count_code), "knob": None, "knob_value": None, "landed_ratio": 1.0}
            done = store.write_result(d, result, config_hash=chash, **extra)
        out.append(done)
    return out


def _allocated_front(
    cfg: DictConfig, work: AllocationWork, budgets: list[int], rows: list[dict], out_dir: Path, run_point
) -> list[dict]:
    """Front points of an allocated system, as _front gives a searched system: allocations landed (within
    5%) at targets across half the smallest budget to the largest (the cheapest allocation for a target
    out of reach), away from its evaluated points."""
    count_code = bool(cfg.budget.count_code)
    n = int(cfg.compare.front_points)
    label = work.sysm.label
    have = [
        float(_counted(r, count_code))
        for r in rows
        if system(r) == label and evaluated(r) and r.get("status") not in ("seed", "over_budget")
    ]
    out: list[dict] = []
    lo, hi = min(budgets) / 2, float(max(budgets))
    for _ in range(2):  # the second pass re-grids over what the system can reach
        grid = np.geomspace(lo, hi, n + 2)[1:-1]
        far = sorted(grid, key=lambda t: -min((abs(np.log(t / h)) for h in have), default=np.inf))
        for target in sorted(int(t) for t in far[: max(n - len(have), 0)]):
            landing = work.land(target, 0.05)
            if "does_not_fit" in landing:  # out of reach: the cheapest allocation, as a search stops at its smallest
                target = int(landing["does_not_fit"])
                landing = work.land(target, 0.05)
            if any(abs(np.log(landing["probed"] / h)) < np.log(1.02) for h in have):
                continue  # an evaluated point is already there
            print(f"{label} front point: {landing['probed']:,} B", flush=True)
            out.append(_allocated_point(cfg, work, 0, target, out_dir, run_point, tol=0.05))
            have.append(float(landing["probed"]))
        if len(have) >= n or not have:
            break
        lo = max(lo, min(have))
    return out
