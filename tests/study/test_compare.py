"""`bytegolf compare` through the real CLI: equal-bytes landings, does-not-fit rows, winners, resume."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bytegolf.artifact import file as artifact
from bytegolf.run import store
from bytegolf.study import reeval as precision
from tests.integration.test_run import TINY_ARGS, bytegolf

pytestmark = pytest.mark.slow

BUDGETS = (30_000, 1_000)
ONE_POINT = ["compare.front_points=0", "compare.seeds=1", "compare.allocated=null"]  # only the searched landings
# (the tests below count points; allocated systems are tested in test_compare_allocated.py)


def _compare(bundle: Path, out: Path):
    return bytegolf(
        "compare",
        f"bundle={bundle}",
        *TINY_ARGS,
        *ONE_POINT,
        "compare.formats=[scalar,clustered]",
        "compare.references=[]",
        "compare.calibrate.clustered.steps=0",
        "compare.embedding=null",
        f"compare.budgets=[{BUDGETS[0]},{BUDGETS[1]}]",
        "compare.samples=300",
        "codec=zstd",
        f"hydra.run.dir={out}",
        cwd=out.parent,
    )


def test_compare_lands_each_format_at_equal_bytes_and_resumes(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    proc = _compare(tiny_bundle, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        (int(p.parent.parent.name), p.parent.name.split("_")[0]): json.loads(p.read_text())
        for p in out.glob(f"points/*/*/{store.RESULT}")
    }
    assert set(rows) == {(b, f) for b in BUDGETS for f in ("scalar", "clustered")}
    for fmt, knob in (("scalar", "clip_k"), ("clustered", "codebook_size")):
        r = rows[(BUDGETS[0], fmt)]
        assert r["status"] == "ok" and r["knob"] == knob
        assert 0.995 * BUDGETS[0] <= r["final_bytes"] <= BUDGETS[0]
        assert r["landed_ratio"] == pytest.approx(r["final_bytes"] / BUDGETS[0])
        assert r["format_params"][knob] == r["knob_value"]
        (d,) = out.glob(f"points/{BUDGETS[0]}/{fmt}_*")
        assert (d / artifact.ARTIFACT_NAME).stat().st_size == r["final_bytes"]  # evaluated from the artifact file
        assert r["bpb"] > 0 and len(r["window_nll"]) == 4
        assert r["encoding_reused"] and r["stage_seconds"]["encode"] < 0.05  # the landed probe's encoding
        small = rows[(BUDGETS[1], fmt)]
        assert small["status"] == "does_not_fit" and small["counted_bytes"] > BUDGETS[1]
        assert small.get("bpb") is None
    assert f"budget {BUDGETS[0]:,} B" in proc.stdout and "winner: " in proc.stdout
    # each budget's ranking is a markdown table: a header, a rule and one row per system, every row as wide
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| system | setting | bytes | × budget | bpb | Δbpb [95% CI] | p | holm |"), table[0]
    assert set(table[1].strip("|").split("|")) == {"---"}
    assert {line.count("|") for line in table[:4]} == {table[0].count("|")}
    assert sum(line.startswith("| scalar ") or line.startswith("| clustered ") for line in table) == 4
    assert "\nprotocol: 4 windows × 64 tokens, sampled across the split (seed 0), bf16, no stride\n" in proc.stdout
    assert "no format fits this budget" in proc.stdout
    assert "probe scalar clip_k=" in proc.stdout and "probe clustered codebook_size=" in proc.stdout
    assert len(store.collect([out / "points"])) == 4 and (out / "results.parquet").is_file()
    assert len(list((out / "search").glob("*.json"))) == 2  # one probe cache per format

    again = _compare(tiny_bundle, out)  # same directory: nothing is encoded or evaluated again
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished already") == 4
    assert "probe " not in again.stdout + again.stderr


def test_a_system_is_not_searched_above_its_skip_and_the_ranking_says_why(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "skip"
    proc = bytegolf(
        "compare",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        *ONE_POINT,
        "compare.formats=[scalar]",
        "compare.references=[]",
        "compare.embedding=null",
        "+compare.skip.scalar={above: 10000, why: too slow here}",
        f"compare.budgets=[{BUDGETS[0]},{BUDGETS[1]}]",
        "compare.samples=300",
        "codec=zstd",
        f"hydra.run.dir={out}",
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"scalar at {BUDGETS[0]:,} B: not searched above 10,000 B (too slow here)" in proc.stdout
    assert "| scalar | - | not searched above 10,000 B: too slow here |" in proc.stdout
    assert {p.parent.parent.name for p in out.glob(f"points/*/*/{store.RESULT}")} == {str(BUDGETS[1])}
    bad = bytegolf("compare", f"bundle={tiny_bundle}", "+compare.skip.scalar={above: 0}", cwd=tmp_path)
    assert bad.returncode != 0 and "compare.skip.scalar must be {above: BYTES, why: TEXT}" in bad.stdout + bad.stderr


def test_compare_variants_of_one_format_are_systems_of_their_own(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "var"
    proc = bytegolf(
        "compare",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        *ONE_POINT,
        "+compare.variants={s3: {format: scalar, params: {bits: 3}}, s5: {format: scalar, params: {bits: 5}}}",
        "compare.formats=[s3,s5]",
        "compare.references=[]",
        f"compare.budgets=[{BUDGETS[0]}]",
        "compare.samples=300",
        "codec=zstd",
        f"hydra.run.dir={out}",
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {p.parent.name.split("_")[0]: json.loads(p.read_text()) for p in out.glob(f"points/*/*/{store.RESULT}")}
    assert set(rows) == {"s3", "s5"}
    for label, bits in (("s3", 3), ("s5", 5)):
        assert rows[label]["variant"] == label and rows[label]["format"] == "scalar"
        assert rows[label]["format_params"]["bits"] == bits
    assert "s3 at " in proc.stdout and "s5 at " in proc.stdout


def test_compare_rejects_a_malformed_variant() -> None:
    from bytegolf.errors import ConfigError
    from bytegolf.formats import REGISTRY
    from bytegolf.study.systems import _variants

    with pytest.raises(ConfigError, match=r"variants\.v: need"):
        _variants({"v": {"format": "nope"}}, REGISTRY)
    with pytest.raises(ConfigError, match="is a format's name"):
        _variants({"scalar": {"format": "scalar"}}, REGISTRY)
    assert _variants({"v": {"format": "scalar", "params": {"bits": 3}}}, REGISTRY) == {
        "v": ("scalar", {"bits": 3}, {}, {})
    }
    plan = {"rules": [{"match": "x", "params": {"bits": 8}}]}
    assert _variants({"v": {"format": "scalar", "plan": plan}}, REGISTRY)["v"][2] == plan


def test_search_references_takes_true_false_or_a_list_of_references() -> None:
    from omegaconf import OmegaConf

    from bytegolf.errors import ConfigError
    from bytegolf.study.systems import searched_references

    def cc(want: object) -> object:
        return OmegaConf.create({"references": ["pg_baseline", "pg_record"], "search_references": want})

    assert searched_references(cc(True)) == ["pg_baseline", "pg_record"]
    assert searched_references(cc(False)) == []
    assert searched_references(cc(["pg_record"])) == ["pg_record"]
    assert searched_references(cc(["pg_top", "pg_record"])) == ["pg_record"]  # pg_top is not compared
    with pytest.raises(ConfigError, match=r"\['pg_tpo'\] are not references"):
        searched_references(cc(["pg_tpo"]))
    with pytest.raises(ConfigError, match="true, false or a list"):
        searched_references(cc("pg_record"))


def test_compare_settings_for_an_unknown_name_fail_before_any_work(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = bytegolf(
        "compare", f"bundle={tiny_bundle}", "+compare.params.nope.bits=3", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    out = proc.stdout + proc.stderr  # Hydra's job logging writes the one-line error to stdout
    assert proc.returncode == 2 and "'nope', which is neither a format, a variant nor a reference" in out
    assert "Traceback" not in out and not (tmp_path / "search").exists()


def test_rules_that_set_the_knob_move_with_it() -> None:
    from bytegolf.search.budget import knob_for
    from bytegolf.study.systems import System

    plan = {"rules": [{"match": "emb", "params": {"bits": 7, "clip_k": 14.0}}, {"match": "q", "params": {"bits": 8}}]}
    sysm = System("r", "scalar", {"clip_k": 11.5}, knob_for("clip_k", 11.5), "brotli", {}, {}, plan, True)
    at = sysm.plan_at(23.0)["rules"]
    assert at[0]["params"] == {"bits": 7, "clip_k": 28.0} and at[1]["params"] == {"bits": 8}
    assert sysm.plan_at(None) == plan and sysm.plan_config(23.0).rules[0].params["clip_k"] == 28.0


def test_compare_ranks_a_reference_export_at_its_own_size_and_at_the_budget(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "ref"
    budget = 60_000
    proc = bytegolf(
        "compare",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        *ONE_POINT,
        "compare.formats=[scalar]",
        "compare.references=[pg_top]",
        f"compare.budgets=[{budget}]",
        "compare.samples=300",
        "codec=zstd",
        f"hydra.run.dir={out}",
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {p.parent.name.rsplit("_", 1)[0]: json.loads(p.read_text()) for p in out.glob(f"points/*/*/{store.RESULT}")}
    assert set(rows) == {"pg_top@own", "pg_top", "scalar"}
    own, landed = rows["pg_top@own"], rows["pg_top"]
    assert own["status"] == "own" and own["reference"] and own["codec"] == "brotli"  # its own codec and layout
    assert own["format_params"]["clip_k"] == 11.5 and own["lowrank_tensors"]  # LQER on its worst tensors
    assert landed["budget_bytes"] == budget and landed["final_bytes"] <= budget and landed["codec"] == "brotli"
    cfg = (out / "points" / str(budget)).glob("pg_top_*/config.yaml")
    text = next(cfg).read_text()  # the written config reproduces the point: its plan and layout are there
    assert "lowrank:" in text and "top_k: 3" in text and "grouping: all" in text
    assert "pg_top@own" in proc.stdout and "pg_top at its own size" in proc.stdout
    scalar_cfg = next((out / "points" / str(budget)).glob("scalar_*/config.yaml")).read_text()
    assert "match: tok_emb.weight" in scalar_cfg and "clip_q: 0.9999984" in scalar_cfg  # pg_record's embedding rule
    point = next((out / "points" / str(budget)).glob("scalar_*"))
    again = bytegolf(
        "run",
        "--config-dir",
        str(point),
        "--config-name",
        "config",
        f"hydra.run.dir={tmp_path / 'again'}",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    redo = json.loads((tmp_path / "again" / store.RESULT).read_text())
    assert (redo["final_bytes"], redo["bpb"]) == (rows["scalar"]["final_bytes"], rows["scalar"]["bpb"])


def test_a_reference_searched_back_to_its_own_setting_reuses_its_evaluation(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "twin"
    budget = 10**9  # out of the clip knob's reach: the landing is the least-error probe, here the export's own k
    proc = bytegolf(
        "compare",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        *ONE_POINT,
        "compare.formats=[]",
        "compare.references=[pg_record]",
        "+compare.knobs.pg_record={lo: 12.85, hi: 14.0}",  # the clip can only grow from k 12.85
        f"compare.budgets=[{budget}]",
        "compare.samples=300",
        f"hydra.run.dir={out}",
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    own_dir = next(out.glob("points/own/pg_record@own_*"))
    landed_dir = next(out.glob(f"points/{budget}/pg_record_*"))
    own, landed = (json.loads((d / store.RESULT).read_text()) for d in (own_dir, landed_dir))
    assert landed["status"] == "at_limit" and landed["knob_value"] == own["knob_value"] == 12.85
    assert landed["same_as"] == own_dir.name and "its evaluation is reused" in proc.stdout
    assert (landed_dir / "model.bgz").read_bytes() == (own_dir / "model.bgz").read_bytes()
    assert landed["artifact"] == str(landed_dir / "model.bgz") and (landed_dir / "config.yaml").is_file()
    assert (landed["bpb"], landed["final_bytes"]) == (own["bpb"], own["final_bytes"])
    assert landed["budget_bytes"] == landed["cap_bytes"] == budget and landed["fits_cap"]
    assert own["budget_bytes"] is None and own["status"] == "own"


def test_compare_accepts_every_group_it_uses(tmp_path: Path) -> None:
    groups = ["finetune.steps=200", "layout=role", "calib.windows=2", "eval.windows=8", "budget.count_code=true"]
    groups += ["plan=mixed", "model.num_layers=9", "data=stdlib", "codec=fair", "compare.calibrate.clustered.steps=5"]
    proc = bytegolf("compare", *groups, "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "steps: 200" in proc.stdout and "grouping: role" in proc.stdout and "steps: 5" in proc.stdout


@pytest.mark.parametrize(("override", "names"), [("format.bits=3", "format"), ("experiment=pg_top", "experiment")])
def test_compare_names_the_group_it_refuses(tmp_path: Path, override: str, names: str) -> None:
    proc = bytegolf("compare", override, cwd=tmp_path)
    assert proc.returncode == 2 and f"takes no {names} settings" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_calibrated_system_that_grows_past_the_budget_lands_again_below_it(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "cal"
    budget = BUDGETS[0]
    proc = bytegolf(
        "compare",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        *ONE_POINT,
        "compare.formats=[clustered]",
        "compare.references=[]",
        "compare.calibrate.clustered.steps=30",
        f"compare.budgets=[{budget}]",
        "codec=zstd",
        f"hydra.run.dir={out}",
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in out.glob(f"points/*/*/{store.RESULT}")]
    ranked = [r for r in rows if r.get("budget_bytes") == budget]
    assert len(ranked) == 1 and ranked[0]["final_bytes"] <= budget and ranked[0]["finetune"]["steps"] == 30
    for r in rows:
        if r is not ranked[0]:  # landings that calibration pushed over are set aside, never ranked
            assert r["status"] == "over_budget" and r["final_bytes"] > budget
    assert ("over the budget after calibration" in proc.stdout) == (len(rows) > 1)


def test_randomized_systems_get_a_seed_spread_and_every_system_a_front(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "front"
    budget = BUDGETS[0]
    proc = bytegolf(
        "compare",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        "compare.formats=[scalar,clustered]",
        "compare.references=[]",
        "compare.calibrate.clustered.steps=0",
        "compare.embedding=null",
        "compare.front_points=4",
        "compare.front_windows=2",
        "compare.seeds=2",
        "compare.allocated=null",
        f"compare.budgets=[{budget}]",
        "compare.samples=300",
        "codec=zstd",
        f"hydra.run.dir={out}",
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in out.glob(f"points/*/*/{store.RESULT}")]
    by = {f: [r for r in rows if r["format"] == f] for f in ("scalar", "clustered")}
    seeds = [r for r in rows if r["status"] == "seed"]
    assert [r["format"] for r in seeds] == ["clustered"] and seeds[0]["seed_budget"] == budget  # k-means only
    assert seeds[0]["budget_bytes"] is None and seeds[0]["bpb"] > 0
    landing = next(r for r in by["clustered"] if r.get("budget_bytes") == budget)
    assert seeds[0]["knob_value"] == landing["knob_value"] and seeds[0]["bpb"] != landing["bpb"]
    spread = abs(seeds[0]["bpb"] - landing["bpb"])
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| clustered |"))
    assert "seeds ±" in proc.stdout and f"| {spread / 2:.4f} |" in row  # the ranking's seed-spread column
    for fmt, rs in by.items():
        front = [r for r in rs if r["status"] == "front"]
        assert all(r["budget_bytes"] is None for r in front)
        assert {len(r["window_nll"]) for r in front} == {2}  # the cheaper evaluation of front points
        assert {len(r["window_nll"]) for r in rs if r["status"] != "front"} == {4}
        sizes = sorted({r["counted_bytes"] for r in rs if r["status"] != "seed"})
        assert len(sizes) >= 4, (fmt, sizes)  # the landing plus front points across [budget / 2, budget]
        assert sizes[0] < 0.8 * budget and sizes[-1] <= budget
    ranked = [r for r in rows if r.get("budget_bytes") == budget]
    assert sorted(r["format"] for r in ranked) == ["clustered", "scalar"]


def test_a_delta_inside_the_seed_spread_is_not_a_win() -> None:
    from bytegolf.measure.stats import PairedDelta
    from bytegolf.study.ranking import separable

    best = {"spread": 0.004}
    clear = {"delta": PairedDelta(0.010, 0.006, 0.014, 0.001, 1000, 0.95), "spread": None}
    inside = {"delta": PairedDelta(0.003, 0.001, 0.005, 0.01, 1000, 0.95), "spread": None}
    ci_zero = {"delta": PairedDelta(0.010, -0.001, 0.02, 0.08, 1000, 0.95), "spread": None}
    assert separable(clear, best) and not separable(inside, best) and not separable(ci_zero, {})
    assert separable(inside, {"spread": None})
    assert not separable({**clear, "p_adj": 0.06}, {}) and separable({**clear, "p_adj": 0.04}, {})  # after Holm


def test_precision_check_reevaluates_the_landed_artifacts(tiny_bundle: Path, tmp_path: Path) -> None:
    """Re-evaluated in the compare's own precision (bf16), every ranked pair's Δbpb comes back exactly
    (ratio 1); by default in the other one (fp32) the table is written all the same, with the verdict."""
    out = tmp_path / "cmp"
    assert _compare(tiny_bundle, out).returncode == 0
    # in a fresh process, as the compare's points were evaluated: bf16 sums depend on torch's thread count,
    # which earlier tests in this process may have changed
    done = subprocess.run([sys.executable, "-m", "bytegolf.study.reeval", str(out), "--precision", "bf16"])
    assert done.returncode == 0
    text = (out / "precision.md").read_text()
    assert "| 30,000 | clustered_" in text or "| 30,000 | scalar_" in text
    assert "| 1.000 |" in text and "within 10% of its bf16 value (1 pairs)" in text
    precision.main([str(out)])
    assert "Δbpb fp32" in (out / "precision.md").read_text()


def test_precision_check_names_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown precision 'fp8'"):
        precision.main([str(tmp_path), "--precision", "fp8"])
    with pytest.raises(SystemExit, match="no evaluated compare points"):
        precision.main([str(tmp_path)])


def test_equal_bytes_hold_on_the_written_file_not_on_the_probe(tiny_bundle: Path, tmp_path: Path) -> None:
    """The search probes with ans; fair writes smaller. The landed file still fills the budget."""
    out = tmp_path / "fair"
    budget = 24_000
    proc = bytegolf(
        "compare",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        *ONE_POINT,
        "compare.formats=[scalar]",
        "compare.references=[]",
        "compare.embedding=null",
        f"compare.budgets=[{budget}]",
        "compare.samples=300",
        "codec=fair",
        f"hydra.run.dir={out}",
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = [json.loads(p.read_text()) for p in out.glob(f"points/*/*/{store.RESULT}")]
    assert r["status"] == "ok" and (1 - 0.005) * budget <= r["final_bytes"] <= budget, (r["final_bytes"], proc.stdout)
    probes = json.loads(next((out / "search").glob("scalar_*.json")).read_text())["probes"]
    landed = next(p for p in probes if p["value"] == r["knob_value"])
    assert landed["final_bytes"] > r["final_bytes"]  # the probe codec measured it larger


def test_a_format_that_fits_only_through_the_artifacts_codec_is_landed_not_dropped(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """The probe codec (ans) says the cheapest setting is over the budget; fair, the artifact's codec, writes
    it under: the compare lands there (short) instead of reporting "does not fit", also when the second
    compare reads the probe from the first one's cache file (so it must encode it again to write it); and a
    short landing moves up to the dearer setting that the probe codec puts over the budget but fair writes under."""
    args = [f"bundle={tiny_bundle}", *TINY_ARGS, *ONE_POINT, "compare.formats=[hqq]", "compare.references=[]"]
    args += ["compare.embedding=null", "compare.knobs.hqq={lo: 1, hi: 2}", "compare.samples=100", "codec=fair"]
    first = bytegolf("compare", *args, "compare.budgets=[1000]", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    probe = int(re.search(r"does not fit: smallest ([\d,]+) B", first.stdout).group(1).replace(",", ""))
    out = tmp_path / "a"
    proc = bytegolf("compare", *args, f"compare.budgets=[{probe - 1}]", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "it fits through best" in proc.stdout, proc.stdout
    rows = [json.loads(p.read_text()) for p in out.glob(f"points/*/*/{store.RESULT}")]
    (r,) = [r for r in rows if r["status"] != "does_not_fit"]  # the first compare's 1,000 B row
    assert r["status"] == "short" and r["final_bytes"] <= probe - 1 and r["bpb"] is not None
    # just under 2-bit's probe-codec bytes, 1 bit lands short; fair writes 2 bits under the budget: it lands there
    (cache,) = (out / "search").glob("hqq_*.json")
    two = next(p["final_bytes"] for p in json.loads(cache.read_text())["probes"] if p["value"] == 2)
    up = tmp_path / "c"
    proc = bytegolf("compare", *args, f"compare.budgets=[{two - 1}]", f"hydra.run.dir={up}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "landed again at bits=2" in proc.stdout, proc.stdout
    (r,) = [json.loads(p.read_text()) for p in up.glob(f"points/*/*/{store.RESULT}")]
    assert r["knob_value"] == 2 and r["final_bytes"] <= two - 1 and r["bpb"] is not None
