"""The budgeted mixed-precision allocator: the greedy on hand-made tables, and real allocations on the tiny model."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bytegolf.artifact import file as artifact
from bytegolf.errors import ConfigError
from bytegolf.search import allocate, candidates, tables
from bytegolf.search import knapsack as allocation
from tests.integration.test_run import TINY_ARGS, bytegolf

# (bytes, error) per candidate of three items; B's middle point lies above the chord of its neighbours.
TABLES = [
    [(100, 10.0), (200, 4.0), (300, 3.0)],
    [(100, 8.0), (150, 7.0), (250, 1.0)],
    [(50, 5.0), (60, 2.0), (400, 0.0)],
]


def _total(choice: list[int]) -> tuple[float, float]:
    return (
        sum(TABLES[i][c][0] for i, c in enumerate(choice)),
        sum(TABLES[i][c][1] for i, c in enumerate(choice)),
    )


def _optimum(budget: float) -> float:
    fits = [_total(list(c)) for c in itertools.product(range(3), repeat=3) if _total(list(c))[0] <= budget]
    return min(e for _, e in fits)


def test_lower_hull_skips_non_convex_and_dominated_points() -> None:
    assert allocation.lower_hull(TABLES[0]) == [0, 1, 2]
    assert allocation.lower_hull(TABLES[1]) == [0, 2]
    assert allocation.lower_hull([(10, 1.0), (5, 3.0), (20, 1.0), (7, 3.5), (30, 0.5)]) == [1, 0, 4]


def test_greedy_finds_the_known_optimum_and_respects_every_budget() -> None:
    choice = allocation.allocate_greedy(TABLES, 560)
    assert choice == [1, 2, 1]
    assert _total(choice) == (510, 7.0) and _optimum(560) == 7.0
    # from the richest choice it downgrades (least error per byte saved first) to the same answer
    assert allocation.allocate_greedy(TABLES, 560, start=[2, 2, 2]) == [1, 2, 1]
    for budget in range(250, 1001, 10):
        choice = allocation.allocate_greedy(TABLES, budget)
        assert _total(choice)[0] <= budget
        assert choice[1] != 1  # the non-convex point is never chosen
    assert allocation.allocate_greedy(TABLES, 950) == [2, 2, 2]
    assert allocation.allocate_greedy(TABLES, 250) == [0, 0, 0]


def test_greedy_rejects_a_budget_below_the_cheapest() -> None:
    with pytest.raises(ConfigError, match="does not fit: cheapest allocation is 250 bytes"):
        allocation.allocate_greedy(TABLES, 249)


def test_land_corrects_an_artifact_that_comes_out_over_the_budget() -> None:
    units = [tables.Unit([f"t{i}"], 1, 1.0, True, [b for b, _ in t], [e for _, e in t]) for i, t in enumerate(TABLES)]

    def write(choice: list[int]) -> int:  # 40 B of header, and 25 B more for each unit above its cheapest
        return sum(TABLES[i][c][0] + (25 if c else 0) for i, c in enumerate(choice)) + 40

    choice, counted, rounds = tables.land(units, write, 600, 0.01, 5)
    assert [r["counted_bytes"] for r in rounds] == [290, 625, 550]  # cheapest, over by 25 B, corrected
    assert rounds[1]["predicted_bytes"] == 550
    assert choice == [2, 0, 1] and counted == 550
    with pytest.raises(ConfigError, match="does not fit: cheapest allocation is 290 bytes"):
        tables.land(units, write, 289, 0.01, 5)


def test_candidates_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"allocate\.candidates is empty"):
        candidates.check_candidates("scalar", {}, [])
    with pytest.raises(ConfigError, match=r"allocate.candidates\[1\] bits=9 is rejected by format scalar"):
        candidates.check_candidates("scalar", {}, [{"bits": 4}, {"bits": 9}])
    with pytest.raises(ConfigError, match="not a mapping"):
        candidates.check_candidates("scalar", {}, [4])
    assert [c.params for c in candidates.check_candidates("scalar", {"bits": 6}, [{"bits": 3}])] == [{"bits": 3}]


def test_candidates_mix_formats_match_tensors_and_follow_a_knob() -> None:
    run = {"bits": 6, "clip": "sdclip", "clip_k": 12.85}
    cands = candidates.check_candidates(
        "scalar",
        run,
        [{"bits": 8, "match": "tok_emb.weight"}, {"format": "clustered", "codebook_size": 16, "match": ["*.mlp.*"]}],
        [{"name": "clip_k", "steps": 5}, {"format": "sparse_outlier", "name": "base.bits", "values": [3, 4]}],
    )
    assert [c.label for c in cands] == [
        "bits=8@tok_emb.weight",
        "clustered:codebook_size=16@*.mlp.*",
        "clip_k=3.0",  # bytegolf.search.budget.KNOBS["clip_k"]: 3..256 on a log scale, 5 steps
        "clip_k=9.118",
        "clip_k=27.713",
        "clip_k=84.229",
        "clip_k=256.0",
        "sparse_outlier:base.bits=3",
        "sparse_outlier:base.bits=4",
    ]
    emb, clus = cands[0], cands[1]
    assert emb.applies(["tok_emb.weight"]) and not emb.applies(["blocks.0.mlp.fc.weight"])
    assert clus.applies(["blocks.0.mlp.fc.weight"]) and not clus.applies(["blocks.0.attn.c_q.weight"])
    assert clus.settings["codebook_size"] == 16 and clus.settings["dim"] == 4  # over clustered's defaults
    assert cands[-1].settings["base"] == {"name": "scalar", "bits": 4, "group_size": 0, "clip": "sdclip"} | {
        "clip_k": 4.0,
        "gptq": True,
    }
    # a tensor's settings: over what the plan gave it for the run's format, else the named format's
    from bytegolf.quantize.plan import Assignment

    a = Assignment("blocks.0.mlp.fc.weight", "scalar", {**run, "bits": 5})
    assert candidates.unit_settings(a, "scalar", cands[2]) == {**run, "bits": 5, "clip_k": 3.0}
    assert candidates.unit_settings(a, "scalar", clus) == clus.settings
    # integer knob over a given range: bits 3..6, repeats dropped; a knob with params under it; duplicates dropped
    bits = candidates.check_candidates("scalar", run, [{"bits": 4}], {"name": "bits", "lo": 3, "hi": 6, "steps": 10})
    assert [c.params for c in bits] == [{"bits": 4}, {"bits": 3}, {"bits": 5}, {"bits": 6}]
    ck = candidates.check_candidates("scalar", run, [], {"values": [4, 8], "params": {"bits": 4}})
    assert [c.params for c in ck] == [{"bits": 4, "clip_k": 4}, {"bits": 4, "clip_k": 8}]  # default name: rate knob


@pytest.mark.parametrize(
    ("given", "knob", "message"),
    [
        ([{"format": "nope", "bits": 4}], None, r"allocate.candidates\[0\]: unknown format 'nope'; known: additive"),
        ([{"format": "clustered", "bits": 4}], None, r"candidates\[0\]: format clustered has no setting 'bits' \(its"),
        ([{"bits": 4, "clip_q": 0.9, "kbits": 3}], None, r"format scalar has no setting 'kbits'"),
        ([], None, r"allocate\.candidates is empty: give settings of scalar"),
        (None, None, r"allocate\.candidates is empty"),
        ([], {"name": "rank"}, r"allocate.knob: format scalar has no knob 'rank' \(its rate knob: clip_k\)"),
        ([], {"format": "clustered", "name": "bits"}, r"format clustered has no knob 'bits' \(its rate knob: codebook"),
        ([], {"format": "bogus"}, r"allocate.knob: unknown format 'bogus'"),
        ([], {"nme": "bits"}, r"allocate.knob: unknown keys \['nme'\]"),
        ([], {"values": [4], "steps": 3}, r"give values, or steps with the range"),
        ([], [{"values": [4]}, {"name": "x"}], r"allocate.knob\[1\]: format scalar has no knob 'x'"),
        ([{"format": "basis_delta"}], None, r"candidates\[0\]: scope family cannot differ from the run format's"),
        ([{"bits": 4, "match": 3}], None, r"match must be a glob or a list of globs"),
    ],
)
def test_candidate_errors_are_one_line(given: list | None, knob: dict | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        candidates.check_candidates("scalar", {"bits": 6, "clip": "sdclip", "clip_k": 12.85}, given, knob)
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------ the allocation is optimal


def _brute(tables: list, budget: float) -> float:
    fits = [allocation.totals(tables, c) for c in itertools.product(*(range(len(t)) for t in tables))]
    return min(e for b, e in fits if b <= budget)


def test_exact_beats_the_greedy_where_a_large_step_fits_instead_of_a_small_one() -> None:
    tables = [[(10, 10.0), (20, 0.0)], [(10, 10.0), (15, 4.0)]]  # slopes 1.0 and 1.2; 10 B to spend
    assert allocation.allocate_greedy(tables, 30) == [0, 1]  # the steeper small step, then the big one no longer fits
    assert allocation.totals(tables, [0, 1]) == (25, 14.0)
    sol = allocation.allocate(tables, 30)
    assert sol.choice == [1, 0] and (sol.bytes, sol.error) == (30, 10.0) and sol.exact
    assert sol.error == _brute(tables, 30)
    # an option above its hull can be the optimum too: 12 B to spend, B's 14 B point is out of reach
    tables = [[(10, 10.0), (22, 0.0)], [(10, 10.0), (12, 9.0), (30, 0.0)]]
    assert allocation.lower_hull(tables[1]) == [0, 2]
    assert allocation.allocate(tables, 22).choice == [0, 1] and allocation.allocate(tables, 22).error == 19.0
    assert allocation.allocate(tables, 32).choice == [1, 0] and allocation.allocate(tables, 32).error == 10.0


def test_allocate_equals_brute_force_on_random_instances() -> None:
    rng = random.Random(0)
    greedy_worse = 0
    for _ in range(200):
        n, m = rng.randint(2, 6), rng.randint(2, 4)
        tables = [[(rng.randint(1, 60), round(rng.uniform(0, 10), 3)) for _ in range(m)] for _ in range(n)]
        lo = sum(min(b for b, _ in t) for t in tables)
        hi = sum(max(b for b, _ in t) for t in tables)
        budget = rng.randint(lo, hi)
        best = _brute(tables, budget)
        sol = allocation.allocate(tables, budget)
        assert sol.exact and sol.bytes <= budget and sol.error == pytest.approx(best, abs=1e-9)
        assert allocation.totals(tables, sol.choice) == (sol.bytes, sol.error)
        exact = allocation.allocate_exact(tables, budget)
        assert exact is not None and allocation.totals(tables, exact)[1] == pytest.approx(best, abs=1e-9)
        greedy_worse += allocation.totals(tables, allocation.allocate_greedy(tables, budget))[1] > best + 1e-9
    assert greedy_worse == 10  # instances where the convex-hull greedy alone is not optimal


def test_allocate_equals_a_dynamic_program_over_bytes_on_larger_instances() -> None:
    rng = random.Random(1)
    for _ in range(5):
        n = 25
        tables = [[(rng.randint(1, 40), rng.uniform(0, 10)) for _ in range(5)] for _ in range(n)]
        budget = sum(min(b for b, _ in t) for t in tables) + 200
        # best[b]: least error of the units so far within exactly-at-most b bytes
        best = [0.0] * (budget + 1)
        for t in tables:
            best = [
                min((best[b - tb] + te for tb, te in t if tb <= b), default=float("inf")) for b in range(budget + 1)
            ]
        sol = allocation.allocate(tables, budget)
        assert sol.exact and sol.bytes <= budget and sol.error == pytest.approx(best[budget], rel=1e-12)


def test_allocate_falls_back_to_the_greedy_when_the_frontier_is_too_large() -> None:
    tables = [[(10, 10.0), (20, 0.0)], [(10, 10.0), (15, 4.0)]]
    sol = allocation.allocate(tables, 30, max_states=1)
    assert sol.choice == [0, 1] and sol.error == 14.0 and not sol.exact
    with pytest.raises(ConfigError, match="does not fit: cheapest allocation is 20 bytes"):
        allocation.allocate(tables, 19)
    # a start off the hull begins at the richest hull point that costs no more
    assert allocation.allocate_greedy([[(10, 10.0), (12, 9.0), (30, 0.0)]], 29, start=[1]) == [0]


def test_plan_rules_name_each_tensors_format_and_reproduce_the_settings(tiny_bundle: Path) -> None:
    from bytegolf.model.checkpoint import load_state_dict
    from bytegolf.quantize.plan import PlanConfig, Rule, make_plan

    run = {"bits": 6, "clip": "sdclip", "clip_k": 12.85}
    cands = candidates.check_candidates(
        "scalar", run, [{"bits": 8}, {"format": "clustered", "codebook_size": 16}, {"bits": 4}]
    )
    units = [
        tables.Unit([n], 1, 1.0, True) for n in ("tok_emb.weight", "blocks.0.mlp.fc.weight", "blocks.1.attn.c_q.weight")
    ]
    user = [Rule("tok_emb.weight", None, {"clip": "percentile"}), Rule("blocks.0.attn.c_k.weight", "clustered", {})]
    rules = allocate.plan_rules(user, ["blocks.0.attn.c_k.weight"], "scalar", units, cands)
    assert [(r.match, r.format, r.params) for r in rules] == [
        ("tok_emb.weight", "scalar", {"clip": "percentile", "bits": 8}),
        ("blocks.0.mlp.fc.weight", "clustered", {"codebook_size": 16}),
        ("blocks.1.attn.c_q.weight", "scalar", {"bits": 4}),
        ("blocks.0.attn.c_k.weight", "clustered", {}),
    ]
    plan = {
        a.name: a
        for a in make_plan(
            load_state_dict(tiny_bundle / "model.safetensors"),
            PlanConfig(passthrough_max_numel=1024, rules=rules),
            "scalar",
            run,
        )
    }
    assert plan["tok_emb.weight"].params == {**run, "bits": 8, "clip": "percentile"}
    assert plan["blocks.0.mlp.fc.weight"].format == "clustered"
    assert plan["blocks.0.mlp.fc.weight"].params == cands[1].settings
    assert (plan["blocks.1.attn.c_q.weight"].format, plan["blocks.1.attn.c_q.weight"].params) == (
        "scalar",
        {**run, "bits": 4},
    )
    assert plan["blocks.1.mlp.fc.weight"].params == run  # not allocated here: the run's format as before


# ------------------------------------------------------------------ the tiny model, for real


def _cfg(bundle: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from bytegolf import settings
    from bytegolf.cli import CONFIG_DIR

    settings.register()
    allocate.register()
    # output_error unless overridden: its prediction is exactly the evaluated output_error (tested below)
    args = [f"bundle={bundle}", *TINY_ARGS, "codec=zstd", "threads=1", "allocate.objective=output_error", *overrides]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("allocate", overrides=args)


@pytest.fixture(scope="module")
def uniform(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    """Results of one setting for every quantized tensor: bits=4 and bits=5."""
    from omegaconf import open_dict

    from bytegolf.run.point import run_point

    out = {}
    for bits in (4, 5):
        cfg = _cfg(tiny_bundle, f"format.bits={bits}")
        with open_dict(cfg):
            cfg.pop("allocate")
        out[bits] = run_point(cfg, tmp_path_factory.mktemp(f"uniform{bits}"))
    return out


@pytest.fixture(scope="module")
def allocated(tiny_bundle: Path, uniform: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Allocations at the bytes of uniform bits=4 ("equal") and halfway to those of bits=5 ("between")."""
    u4, u5 = uniform[4]["final_bytes"], uniform[5]["final_bytes"]
    out = {}
    for key, budget in (("equal", u4), ("between", (u4 + u5) // 2)):
        d = tmp_path_factory.mktemp(f"allocate_{key}")
        out[key] = (d, budget, allocate.run_allocate(_cfg(tiny_bundle, f"budget.cap_bytes={budget}"), d))
    return out


def test_allocation_lands_within_one_percent_and_beats_uniform(uniform: dict, allocated: dict) -> None:
    u4, u5 = uniform[4], uniform[5]
    for out, budget, r in allocated.values():
        assert 0.99 * budget <= r["final_bytes"] <= budget
        assert r["final_bytes"] == (out / artifact.ARTIFACT_NAME).stat().st_size
        assert r["allocation"]["status"] == "ok" and r["fits_cap"]
        # the objective is the reported aggregate output error: prediction and measurement agree
        assert r["allocation"]["predicted_error"] == pytest.approx(r["output_error"], rel=1e-9)
        assert r["bpb"] > 0 and len(r["window_nll"]) == 4
    _, _, eq = allocated["equal"]
    assert eq["final_bytes"] <= u4["final_bytes"] and eq["output_error"] <= u4["output_error"]
    _, _, mid = allocated["between"]
    assert len(mid["allocation"]["settings"]) > 1  # really mixed: some tensors at 4 bits or less, some above
    assert mid["output_error"] < u4["output_error"]  # the best uniform setting that fits this budget
    # and below time-sharing between the two uniform settings at the same bytes
    t = (mid["final_bytes"] - u4["final_bytes"]) / (u5["final_bytes"] - u4["final_bytes"])
    assert mid["output_error"] < (1 - t) * u4["output_error"] + t * u5["output_error"]


def test_allocation_files_and_reusable_plan(tiny_bundle: Path, allocated: dict) -> None:
    from bytegolf.model.checkpoint import load_state_dict
    from bytegolf.quantize.plan import PlanConfig, Rule, make_plan

    out, _, r = allocated["between"]
    body = json.loads((out / "allocation.json").read_text())
    units = body["units"]
    assert len(units) == 13 and sum(u["bytes"] for u in units) == body["allocated_bytes"]
    assert sum(u["error"] for u in units) == pytest.approx(body["predicted_error"])
    chosen = {u["tensors"][0]: u["setting"]["bits"] for u in units}
    md = (out / "allocation.md").read_text()
    assert "| tok_emb.weight |" in md and "| tensor | params | setting |" in md
    node = OmegaConf.to_container(OmegaConf.load(out / "plan.yaml"))
    assert node.pop("defaults") == ["base_plan", "_self_"]
    cfg = PlanConfig(**{**node, "rules": [Rule(**x) for x in node["rules"]]})
    plan = make_plan(load_state_dict(tiny_bundle / "model.safetensors"), cfg, "scalar", {"bits": 6})
    assert {a.name: a.params["bits"] for a in plan if a.format == "scalar"} == chosen
    assert {t["name"]: t["nominal_bits"] / t["params"] for t in r["tensors"] if t["format"] == "scalar"} == (
        pytest.approx({n: b for n, b in chosen.items()}, abs=0.6)
    )


MIXED = (
    "allocate.candidates=[{bits: 4, match: tok_emb.weight}, {bits: 8, match: tok_emb.weight},"
    ' {bits: 3, match: "blocks.*"}, {bits: 4, match: "blocks.*"},'
    ' {bits: 5, match: "blocks.*"}, {format: clustered, codebook_size: 16, match: "blocks.*.mlp.*"},'
    ' {format: clustered, codebook_size: 64, match: "blocks.*.mlp.*"}]',
    'allocate.knob={format: sparse_outlier, name: fraction, values: [0.02, 0.1], match: "blocks.*.attn.*"}',
)


@pytest.fixture(scope="module")
def mixed(tiny_bundle: Path, uniform: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """An allocation over candidates of three formats, halfway between the bytes of uniform bits=4 and bits=5."""
    budget = (uniform[4]["final_bytes"] + uniform[5]["final_bytes"]) // 2
    d = tmp_path_factory.mktemp("allocate_mixed")
    return d, budget, allocate.run_allocate(_cfg(tiny_bundle, f"budget.cap_bytes={budget}", *MIXED), d)


def test_mixed_format_allocation_lands_and_its_plan_reproduces_it(
    tiny_bundle: Path, uniform: dict, mixed: tuple
) -> None:
    from bytegolf.model.checkpoint import load_state_dict
    from bytegolf.quantize.plan import PlanConfig, Rule, make_plan

    out, budget, r = mixed
    assert 0.99 * budget <= r["final_bytes"] <= budget and r["allocation"]["status"] == "ok"
    assert r["allocation"]["exact"] is True
    # the evaluated artifact is the measured one: prediction and measurement of the objective agree
    assert r["allocation"]["predicted_error"] == pytest.approx(r["output_error"], rel=1e-9)
    assert r["output_error"] < uniform[4]["output_error"]
    body = json.loads((out / "allocation.json").read_text())
    assert len(body["candidates"]) == 9 and body["candidates"][-1]["params"] == {"fraction": 0.1}
    rows = {u["tensors"][0]: u for u in body["units"]}
    assert rows["tok_emb.weight"]["label"] == "bits=4@tok_emb.weight"  # 8 bits would cost 15 kB more
    assert len(rows["tok_emb.weight"]["candidates"]) == 2  # only its own candidates apply
    assert (
        len(rows["blocks.0.mlp.fc.weight"]["candidates"]) == 5
        and len(rows["blocks.0.attn.c_q.weight"]["candidates"]) == 5
    )
    assert sum(body["formats"].values()) == 13 and body["formats"] == r["allocation"]["formats"]
    assert body["formats"] == {"clustered": 2, "scalar": 11}  # both MLP up-projections clustered
    assert rows["blocks.0.mlp.fc.weight"]["label"] == "clustered:codebook_size=64@blocks.*.mlp.*"
    # plan.yaml: a rule per tensor naming its format; make_plan gives every tensor what was measured
    node = OmegaConf.to_container(OmegaConf.load(out / "plan.yaml"))
    node.pop("defaults")
    assert all(x["format"] in ("scalar", "clustered", "sparse_outlier") for x in node["rules"])
    cfg = PlanConfig(**{**node, "rules": [Rule(**x) for x in node["rules"]]})
    run = {k: v for k, v in body["format_params"].items()}
    plan = {a.name: a for a in make_plan(load_state_dict(tiny_bundle / "model.safetensors"), cfg, "scalar", run)}
    for name, u in rows.items():
        assert plan[name].format == u["format"]
        assert {k: plan[name].params[k] for k in u["setting"]} == u["setting"]
    assert {t["name"]: t["format"] for t in r["tensors"] if t["name"] in rows} == {
        n: u["format"] for n, u in rows.items()
    }


def test_the_loss_objective_lands_and_weighs_each_tensor_by_its_loss_sensitivity(
    tiny_bundle: Path, uniform: dict, tmp_path: Path
) -> None:
    budget = (uniform[4]["final_bytes"] + uniform[5]["final_bytes"]) // 2
    r = allocate.run_allocate(_cfg(tiny_bundle, f"budget.cap_bytes={budget}", "allocate.objective=loss"), tmp_path)
    a = r["allocation"]
    assert a["objective"] == "loss" and 0.99 * budget <= r["final_bytes"] <= budget and a["status"] == "ok"
    body = json.loads((tmp_path / "allocation.json").read_text())
    for u in body["units"]:  # errors in nats: each option's loss increase, falling as bits rise
        errs = [c["error"] for c in u["candidates"]]
        assert all(e >= 0 for e in errs) and errs[0] > errs[-1], u["tensors"]
    assert a["predicted_error"] == pytest.approx(sum(u["error"] for u in body["units"]), rel=1e-9)


def test_cli_errors_are_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    base = ["allocate", f"bundle={tiny_bundle}", *TINY_ARGS, "codec=zstd", f"hydra.run.dir={tmp_path / 'a'}"]
    proc = bytegolf(*base, "allocate.candidates=[]", cwd=tmp_path)
    assert proc.returncode == 2 and "error: allocate.candidates is empty" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    proc = bytegolf(*base, "budget.cap_bytes=1000", "allocate.candidates=[{bits:3},{bits:4}]", cwd=tmp_path)
    assert proc.returncode == 2 and "error: does not fit: cheapest allocation is " in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    proc = bytegolf(*base, "allocate.candidates=[]", "allocate.knob={name: rank, values: [4]}", cwd=tmp_path)
    assert (
        proc.returncode == 2 and "error: allocate.knob: format scalar has no knob 'rank'" in proc.stdout + proc.stderr
    )
    proc = bytegolf(*base, "allocate.objective=bpb", cwd=tmp_path)
    assert "error: allocate.objective: 'bpb' is not one of auto, loss, output_error" in proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = bytegolf(*base, "allocate.candidates=[{format: clustered, bits: 4}]", cwd=tmp_path)
    assert "error: allocate.candidates[0]: format clustered has no setting 'bits'" in proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
