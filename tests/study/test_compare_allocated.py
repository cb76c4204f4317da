"""Allocated systems in `bytegolf compare` (compare.allocated): budget-optimal per-tensor allocations, measured
once per compare directory, landed and evaluated at every budget, ranked with the others, resumed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bytegolf.artifact import file as artifact
from bytegolf.run import store
from tests.integration.test_run import TINY_ARGS, bytegolf

pytestmark = pytest.mark.slow

BUDGETS = (55_000, 45_000, 1_000)  # two the tiny model reaches, one it does not
ALLOCATED = "alloc_gptq"  # experiments/compare.yaml's default: GPTQ int3-8 and wide int6 blocks, 3 embeddings


def _compare(bundle: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return bytegolf(
        "compare",
        f"bundle={bundle}",
        *TINY_ARGS,
        "compare.front_points=0",
        "compare.seeds=1",
        "compare.formats=[scalar]",
        "compare.references=[]",
        "compare.embedding=null",
        f"++compare.allocated.{ALLOCATED}.tol=0.01",
        f"compare.budgets=[{','.join(map(str, BUDGETS))}]",
        "compare.samples=300",
        "codec=zstd",
        "threads=1",
        f"hydra.run.dir={out}",
        *extra,
        cwd=out.parent,
    )


def _rows(out: Path) -> dict[int, dict]:
    """The allocated system's result per budget."""
    rows = [json.loads(p.read_text()) for p in out.glob(f"points/*/{ALLOCATED}_*/{store.RESULT}")]
    return {r["budget_bytes"]: r for r in rows if r.get("budget_bytes")}


@pytest.fixture(scope="module")
def compared(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("alloc") / "cmp"
    proc = _compare(tiny_bundle, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_an_allocated_system_lands_every_budget_and_is_ranked(compared: tuple) -> None:
    out, proc = compared
    rows = _rows(out)
    assert set(rows) == set(BUDGETS)
    for budget in BUDGETS[:2]:
        r = rows[budget]
        assert r["variant"] == ALLOCATED and r["format"] == "scalar" and r["status"] == "ok"
        assert 0.99 * budget <= r["final_bytes"] <= budget and r["fits_cap"]
        assert r["counted_bytes"] == r["final_bytes"] and r["landed_ratio"] == pytest.approx(r["final_bytes"] / budget)
        (d,) = out.glob(f"points/{budget}/{ALLOCATED}_*")
        assert (d / artifact.ARTIFACT_NAME).stat().st_size == r["final_bytes"]
        assert r["bpb"] > 0 and len(r["window_nll"]) == 4 and r["knob"] is None
        a = r["allocation"]
        assert a["objective"] == "loss" and 0 < a["predicted_error"] < 10  # the default on the GPT: nats of loss
        assert sum(a["settings"].values()) == 13  # the 12 block matrices and the tied embedding
        assert all(k.endswith(("@blocks.*", "@tok_emb.weight")) for k in a["settings"])
        for name in ("plan.yaml", "config.yaml", "allocation.json", "allocation.md"):
            assert (d / name).is_file(), name
    assert len(rows[BUDGETS[0]]["allocation"]["settings"]) > 1  # really mixed
    a0, a1 = (rows[b]["allocation"]["predicted_error"] for b in BUDGETS[:2])
    assert a1 > a0  # fewer bytes, more expected loss
    small = rows[BUDGETS[2]]
    assert small["status"] == "does_not_fit" and small["counted_bytes"] > BUDGETS[2] and small.get("bpb") is None
    # measured once for every budget, then allocated per budget from the tables
    assert proc.stdout.count(f"{ALLOCATED}: measuring 13 units × 17 candidates") == 1
    assert len(list((out / "search").glob(f"{ALLOCATED}_*.allocation.json"))) == 1
    # ranked with the searched format, in the printed ranking and in results.parquet
    for budget in BUDGETS[:2]:
        block = proc.stdout.split(f"### budget {budget:,} B")[1].split("### budget ")[0]
        line = next(x for x in block.splitlines() if x.startswith(f"| {ALLOCATED} |"))
        assert f"| {rows[budget]['final_bytes']:,} |" in line and f"| {rows[budget]['bpb']:.4f} |" in line
        assert "| scalar |" in block
    assert f"| {ALLOCATED} | - | does not fit (smallest" in proc.stdout
    df = store.collect([out / "points"])
    mine = df[df["variant"] == ALLOCATED]
    assert sorted(mine["budget_bytes"]) == sorted(BUDGETS) and (out / "results.parquet").is_file()


def test_the_allocated_point_and_its_plan_reproduce_the_artifact(
    tiny_bundle: Path, compared: tuple, tmp_path: Path
) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from bytegolf import settings
    from bytegolf.cli import CONFIG_DIR
    from bytegolf.quantize.plan import PlanConfig
    from bytegolf.run.point import run_point

    out, _ = compared
    r = _rows(out)[BUDGETS[0]]
    point = Path(r["artifact"]).parent
    stored = (point / artifact.ARTIFACT_NAME).read_bytes()
    # `bytegolf run` with the point's config.yaml
    again = bytegolf(
        "run", "--config-dir", str(point), "--config-name", "config", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr[-3000:]
    redo = json.loads((tmp_path / "a" / store.RESULT).read_text())
    assert (redo["final_bytes"], redo["bpb"]) == (r["final_bytes"], r["bpb"])
    assert (tmp_path / "a" / artifact.ARTIFACT_NAME).read_bytes() == stored
    # plan.yaml as the plan of a plain run with the system's format settings and codec (plan=NAME once copied)
    node = OmegaConf.load(point / "plan.yaml")
    assert node.pop("defaults") == ["base_plan", "_self_"] and len(node.rules) == 13
    settings.register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        args = [
            f"bundle={tiny_bundle}",
            *TINY_ARGS,
            "eval.sample=true",
            "eval.precision=bf16",  # the compare's evaluation
            "format.gptq=true",
            "format.act_order=true",
            "codec=zstd",
        ]
        cfg = compose("run", overrides=args)
    with open_dict(cfg):
        cfg.plan = OmegaConf.merge(OmegaConf.structured(PlanConfig), node)
        cfg.threads = 1
    (tmp_path / "b").mkdir()
    plain = run_point(cfg, tmp_path / "b")
    assert (plain["final_bytes"], plain["bpb"]) == (r["final_bytes"], r["bpb"])
    assert (tmp_path / "b" / artifact.ARTIFACT_NAME).read_bytes() == stored


def test_a_resumed_compare_neither_measures_nor_evaluates_again(tiny_bundle: Path, compared: tuple) -> None:
    out, _ = compared
    (cache,) = (out / "search").glob(f"{ALLOCATED}_*.allocation.json")
    stamp = cache.stat().st_mtime_ns
    again = _compare(tiny_bundle, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished already") == 2 * len(BUDGETS)  # scalar's and the allocated system's
    assert "measuring" not in again.stdout and cache.stat().st_mtime_ns == stamp  # nothing encoded or landed
    # other allocation settings are other points: landed and evaluated anew from the same measurement
    moved = _compare(tiny_bundle, out, f"++compare.allocated.{ALLOCATED}.tol=0.02")
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert moved.stdout.count("finished already") == len(BUDGETS)  # only scalar's
    assert "measuring" not in moved.stdout
    assert len(list(out.glob(f"points/{BUDGETS[0]}/{ALLOCATED}_*"))) == 2


def _systems(bundle: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from bytegolf import settings
    from bytegolf.cli import CONFIG_DIR
    from bytegolf.study import systems

    settings.register()
    systems.register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("compare", overrides=[f"bundle={bundle}", *overrides])
    return systems.systems(cfg)[0]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{format: nope, candidates: [{bits: 4}]}", r"compare\.allocated\.bad: unknown format 'nope'; known: "),
        ("{format: scalar, candidates: []}", r"compare\.allocated\.bad\.candidates is empty: give settings of scalar"),
        ("{format: scalar}", r"compare\.allocated\.bad\.candidates is empty"),
        ("{format: scalar, candidates: [{bits: 9}]}", r"compare\.allocated\.bad\.candidates\[0\] bits=9 is rejected"),
        ("{format: scalar, candidats: [{bits: 4}]}", r"compare\.allocated\.bad: need \{format: F, candidates"),
        ("{format: scalar, candidates: [{bits: 4}], tol: 2}", r"compare\.allocated\.bad: need 0 < tol < 1"),
        (
            "{format: scalar, candidates: [{bits: 4}], objective: bpb}",
            r"compare\.allocated\.bad\.objective: 'bpb' is not one of auto, loss, output_error",
        ),
    ],
)
def test_a_bad_allocated_entry_is_a_config_error_naming_it(tiny_bundle: Path, entry: str, message: str) -> None:
    from bytegolf.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _systems(tiny_bundle, f"+compare.allocated.bad={entry}")


def test_allocated_systems_are_checked_and_listed(tiny_bundle: Path) -> None:
    from bytegolf.errors import ConfigError

    ranked = _systems(tiny_bundle, "compare.formats=[]", "compare.references=[]")
    assert [s.label for s in ranked] == [ALLOCATED]  # formats=[]: no format, only the allocated system
    (s,) = ranked
    assert s.knob is None and s.allocation is not None and len(s.allocation.candidates) == 17
    assert not s.plan.get("rules")  # compare.embedding is not added: the candidates set the embedding
    with pytest.raises(ConfigError, match=r"compare\.allocated\.scalar: 'scalar' is already a format"):
        _systems(tiny_bundle, "+compare.allocated.scalar={format: scalar, candidates: [{bits: 4}]}")
    assert [s.label for s in _systems(tiny_bundle, "compare.allocated=null", "compare.references=[]")][-1] != ALLOCATED


def test_a_bad_allocated_entry_fails_in_one_line_before_any_work(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = bytegolf(
        "compare",
        f"bundle={tiny_bundle}",
        "+compare.allocated.bad={format: nope, candidates: [{bits: 4}]}",
        f"hydra.run.dir={tmp_path / 'c'}",
        cwd=tmp_path,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "compare.allocated.bad: unknown format 'nope'" in text
    assert "Traceback" not in text and not (tmp_path / "c" / "search").exists()
    assert len([x for x in text.strip().splitlines() if "compare.allocated.bad" in x]) == 1


MIX = (
    "+compare.allocated.mix={format: scalar, objective: output_error, candidates: [{bits: 3, match: 'blocks.*'},"
    " {bits: 5, match: 'blocks.*'}, {format: clustered, codebook_size: 16, match: 'blocks.*.mlp.*'},"
    " {bits: 6, match: tok_emb.weight}]}"
)


def test_a_randomized_allocated_system_gets_seed_points_and_a_front(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "front"
    budget = 30_000  # between mix's cheapest (≈19 kB) and richest (≈37 kB) allocations: the k-means MLPs are chosen
    proc = bytegolf(
        "compare",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        "compare.formats=[]",
        "compare.references=[]",
        f"~compare.allocated.{ALLOCATED}",
        MIX,
        "compare.front_points=3",
        "compare.seeds=2",
        f"compare.budgets=[{budget}]",
        "codec=zstd",
        "threads=1",
        f"hydra.run.dir={out}",
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in out.glob(f"points/*/mix_*/{store.RESULT}")]
    assert {r["variant"] for r in rows} == {"mix"} and proc.stdout.count("mix: measuring") == 1
    (landed,) = [r for r in rows if r.get("budget_bytes") == budget]
    assert landed["final_bytes"] <= budget and landed["allocation"]["formats"].get("clustered")
    (seed,) = [r for r in rows if r["status"] == "seed"]  # k-means: the landing again with seed + 1
    assert seed["seed_budget"] == budget and seed["budget_bytes"] is None and seed["bpb"] != landed["bpb"]
    assert "seeds ±" in proc.stdout
    front = [r for r in rows if r["status"] == "front"]
    assert front and all(r["budget_bytes"] is None and r["allocation"] for r in front)
    sizes = sorted({r["counted_bytes"] for r in rows if r["status"] != "seed"})
    assert len(sizes) >= 3 and sizes[0] < 0.8 * budget, sizes


def test_the_objective_is_part_of_an_allocated_points_key(tiny_bundle: Path) -> None:
    keys = {}
    for objective in ("loss", "output_error"):
        entry = f"{{format: scalar, objective: {objective}, candidates: [{{bits: 4}}, {{bits: 6}}]}}"
        (sysm,) = [s for s in _systems(tiny_bundle, f"+compare.allocated.mine={entry}") if s.label == "mine"]
        assert sysm.allocation.objective == objective
        keys[objective] = sysm.allocation.ident()
    assert keys["loss"] != keys["output_error"]  # a resumed compare with another objective re-evaluates
