"""The budgeted mixed-precision allocator: the greedy on hand-made tables, and real allocations on the tiny model."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bytegolf import allocate, artifact
from bytegolf.errors import ConfigError
from tests.test_run import TINY_ARGS, bytegolf

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
    assert allocate.lower_hull(TABLES[0]) == [0, 1, 2]
    assert allocate.lower_hull(TABLES[1]) == [0, 2]
    assert allocate.lower_hull([(10, 1.0), (5, 3.0), (20, 1.0), (7, 3.5), (30, 0.5)]) == [1, 0, 4]


def test_greedy_finds_the_known_optimum_and_respects_every_budget() -> None:
    choice = allocate.allocate_greedy(TABLES, 560)
    assert choice == [1, 2, 1]
    assert _total(choice) == (510, 7.0) and _optimum(560) == 7.0
    # from the richest choice it downgrades (least error per byte saved first) to the same answer
    assert allocate.allocate_greedy(TABLES, 560, start=[2, 2, 2]) == [1, 2, 1]
    for budget in range(250, 1001, 10):
        choice = allocate.allocate_greedy(TABLES, budget)
        assert _total(choice)[0] <= budget
        assert choice[1] != 1  # the non-convex point is never chosen
    assert allocate.allocate_greedy(TABLES, 950) == [2, 2, 2]
    assert allocate.allocate_greedy(TABLES, 250) == [0, 0, 0]


def test_greedy_rejects_a_budget_below_the_cheapest() -> None:
    with pytest.raises(ConfigError, match="does not fit: cheapest allocation is 250 bytes"):
        allocate.allocate_greedy(TABLES, 249)


def test_land_corrects_an_artifact_that_comes_out_over_the_budget() -> None:
    units = [allocate.Unit([f"t{i}"], 1, 1.0, True, [b for b, _ in t], [e for _, e in t]) for i, t in enumerate(TABLES)]

    def write(choice: list[int]) -> int:  # 40 B of header, and 25 B more for each unit above its cheapest
        return sum(TABLES[i][c][0] + (25 if c else 0) for i, c in enumerate(choice)) + 40

    choice, counted, rounds = allocate.land(units, write, 600, 0.01, 5)
    assert [r["counted_bytes"] for r in rounds] == [290, 625, 550]  # cheapest, over by 25 B, corrected
    assert rounds[1]["predicted_bytes"] == 550
    assert choice == [2, 0, 1] and counted == 550
    with pytest.raises(ConfigError, match="does not fit: cheapest allocation is 290 bytes"):
        allocate.land(units, write, 289, 0.01, 5)


def test_candidates_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"allocate\.candidates is empty"):
        allocate.check_candidates("scalar", {}, [])
    with pytest.raises(ConfigError, match=r"allocate.candidates\[1\] bits=9 is rejected by format scalar"):
        allocate.check_candidates("scalar", {}, [{"bits": 4}, {"bits": 9}])
    with pytest.raises(ConfigError, match="not a mapping"):
        allocate.check_candidates("scalar", {}, [4])
    assert allocate.check_candidates("scalar", {"bits": 6}, [{"bits": 3}]) == [{"bits": 3}]


# ------------------------------------------------------------------ the tiny model, for real


def _cfg(bundle: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from bytegolf import settings
    from bytegolf.cli import CONFIG_DIR

    settings.register()
    allocate.register()
    args = [f"bundle={bundle}", *TINY_ARGS, "codec=zstd", "threads=1", *overrides]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("allocate", overrides=args)


@pytest.fixture(scope="module")
def uniform(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    """Results of one setting for every quantized tensor: bits=4 and bits=5."""
    from omegaconf import open_dict

    from bytegolf.runner import run_point

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
    from bytegolf.checkpoint import load_state_dict
    from bytegolf.plan import PlanConfig, Rule, make_plan

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


def test_cli_errors_are_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    base = ["allocate", f"bundle={tiny_bundle}", *TINY_ARGS, "codec=zstd", f"hydra.run.dir={tmp_path / 'a'}"]
    proc = bytegolf(*base, "allocate.candidates=[]", cwd=tmp_path)
    assert proc.returncode == 2 and "error: allocate.candidates is empty" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    proc = bytegolf(*base, "budget.cap_bytes=1000", "allocate.candidates=[{bits:3},{bits:4}]", cwd=tmp_path)
    assert proc.returncode == 2 and "error: does not fit: cheapest allocation is " in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
