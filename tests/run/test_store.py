"""The result store: config hashes, claims, atomic files, the aggregated table."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from bytegolf.errors import BytegolfError
from bytegolf.run import store


def test_config_hash_is_stable_and_ignores_threads_and_hydra() -> None:
    a = {"format": {"name": "scalar", "bits": 4}, "codec": {"name": "zstd"}, "threads": 0}
    b = {"codec": {"name": "zstd"}, "format": {"bits": 4, "name": "scalar"}, "threads": 8, "hydra": {"x": 1}}
    assert store.config_hash(a) == store.config_hash(b)
    assert len(store.config_hash(a)) == 12
    assert store.config_hash(a) != store.config_hash({**a, "format": {"name": "scalar", "bits": 5}})


def _result(**kw) -> dict:
    return {"format": "scalar", "codec": "zstd", "final_bytes": 100, "bpb": 1.5, **kw}


def test_finished_needs_the_same_config_hash(tmp_path: Path) -> None:
    assert store.finished(tmp_path, "abc") is None
    store.write_result(tmp_path, _result(), config_hash="abc")
    assert store.finished(tmp_path, "abc")["status"] == "ok"
    assert store.finished(tmp_path, "abd") is None
    (tmp_path / store.RESULT).write_text('{"format": "scalar", "final_b')  # a torn file is not a result
    assert store.finished(tmp_path, "abc") is None
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_claim_is_exclusive_and_stale_claims_are_taken_over(tmp_path: Path) -> None:
    with store.claim(tmp_path) as first:
        assert first and (tmp_path / store.CLAIM).is_file()
        with store.claim(tmp_path) as second:
            assert not second  # this process is alive and the claim is fresh
    assert not (tmp_path / store.CLAIM).exists()
    (tmp_path / store.CLAIM).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with store.claim(tmp_path) as third:
        assert not third  # another host's fresh claim is honoured
    os.utime(tmp_path / store.CLAIM, (0, 0))
    with store.claim(tmp_path) as fourth:
        assert fourth  # ... until it goes stale


def _race(out_dir: Path, start, owners) -> None:
    start.wait()
    with store.claim(out_dir) as owned:
        if owned:
            owners.put(os.getpid())
            time.sleep(0.3)  # hold it while the others look


def test_claim_has_one_owner_when_workers_race(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        start, owners = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(tmp_path / str(round_), start, owners)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=30)
        won = []
        while not owners.empty():
            won.append(owners.get())
        assert len(won) == 1, f"round {round_}: {len(won)} workers owned one point"
        assert not (tmp_path / str(round_) / store.CLAIM).exists()
        assert [f.name for f in (tmp_path / str(round_)).iterdir()] == []  # no aside copies left


def test_table_flattens_scalars_and_drops_lists(tmp_path: Path) -> None:
    for i, bits in enumerate((4, 6)):
        d = tmp_path / f"p{i}"
        d.mkdir()
        r = _result(format_params={"bits": bits}, window_nll=[1.0, 2.0], bytes_by_role={"codes": {"bytes": 9.0}})
        store.write_result(d, r, config_hash=f"h{i}")
    hidden = tmp_path / ".submitit" / "x"
    hidden.mkdir(parents=True)
    store.write_result(hidden, _result(), config_hash="hidden")
    (tmp_path / "p0" / "other.json").write_text("{}")
    df = store.table(store.load_results([tmp_path]))
    assert len(df) == 2 and list(df.columns[:3]) == ["format", "codec", "status"]
    assert sorted(df["format.bits"]) == [4, 6] and list(df["role.codes.bytes"]) == [9.0, 9.0]
    assert "window_nll" not in df.columns and set(df["config_hash"]) == {"h0", "h1"}
    paths = store.save_table(df, tmp_path / "out" / "results")
    assert [p.name for p in paths] == ["results.parquet", "results.csv"] and all(p.stat().st_size for p in paths)


def test_collect_on_a_directory_without_results_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text('{"something": "else"}')
    with pytest.raises(BytegolfError, match=r"no bytegolf result\.json"):
        store.collect([tmp_path])


def test_a_source_change_changes_the_point_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    from bytegolf.run import sweep

    cfg = OmegaConf.create({"format": {"name": "scalar", "bits": 6}, "codec": {"name": "zstd"}})
    before, _ = sweep.point_config(cfg)
    monkeypatch.setattr(sweep, "source_hash", lambda: "another-tree")
    after, _ = sweep.point_config(cfg)
    assert after["source"] == "another-tree" and store.config_hash(before) != store.config_hash(after)


def test_results_from_two_source_trees_are_flagged() -> None:
    assert store.mixed_sources([{"source_hash": "a"}, {"source_hash": "a"}]) == ""
    assert "2 source trees (a, b)" in store.mixed_sources([{"source_hash": "a"}, {"source_hash": "b"}])


def test_the_point_key_does_not_depend_on_where_the_clone_lives(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    from bytegolf.run import sweep

    def key(repo: str) -> str:
        monkeypatch.setattr(sweep, "REPO", Path(repo))
        monkeypatch.setenv("BYTEGOLF_CACHE", f"{repo}/.cache/bytegolf")
        cfg = OmegaConf.create({"bundle": f"{repo}/results/default", "data": {"val": f"{repo}/.cache/bytegolf/v.bin"}})
        conf, _ = sweep.point_config(cfg)
        assert conf["bundle"] == "${repo:results/default}" and conf["data"]["val"] == "${cache:v.bin}"
        return store.config_hash(conf)

    assert key("/tmp/clone_a") == key("/srv/clone_b")


def _reject(token: str) -> None:
    raise ValueError(f"non-standard JSON constant {token}")


def _nonfinite_result(**kw) -> dict:
    import numpy as np

    r = _result(
        rel_mse=float("nan"),
        sqnr_db=float("inf"),
        output_error=np.float32("nan"),
        delta_bpb=-float("inf"),
        bits_per_weight=np.float64(2.5),
        kld={"mean": 0.25, "se": float("nan"), "tokens": 1, "top1_agreement": 1.0},
        window_nll=[1.0, float("inf"), float("nan")],
        tensors=[{"name": "w", "rel_mse": 0.0, "sqnr_db": float("inf"), "output_error": float("nan")}],
        shape=(2, 3),
    )
    return {**r, **kw}


def test_result_json_is_strict_json_with_null_for_nan_and_inf(tmp_path: Path) -> None:
    store.write_result(tmp_path, _nonfinite_result(), config_hash="h")
    text = (tmp_path / store.RESULT).read_text()
    assert "NaN" not in text and "Infinity" not in text
    raw = json.loads(text, parse_constant=_reject)  # a strict parser takes it
    assert (raw["rel_mse"], raw["sqnr_db"], raw["output_error"], raw["delta_bpb"]) == (None, None, None, None)
    assert raw["bits_per_weight"] == 2.5 and raw["bpb"] == 1.5 and raw["shape"] == [2, 3]
    assert raw["window_nll"] == [1.0, None, None]
    assert raw["kld"] == {"mean": 0.25, "se": None, "tokens": 1, "top1_agreement": 1.0}
    assert raw["tensors"] == [{"name": "w", "rel_mse": 0.0, "sqnr_db": None, "output_error": None}]
    assert json.dumps(raw, allow_nan=False)


def test_a_null_metric_reads_back_as_missing(tmp_path: Path) -> None:
    import math

    from bytegolf.study.analysis import number

    store.write_result(tmp_path, _nonfinite_result(bpb=None), config_hash="h")
    r = store.finished(tmp_path, "h")
    assert math.isnan(r["rel_mse"]) and math.isnan(r["output_error"]) and math.isnan(r["sqnr_db"])
    assert math.isnan(r["tensors"][0]["sqnr_db"]) and r["tensors"][0]["rel_mse"] == 0.0
    assert math.isnan(r["kld"]["se"]) and r["kld"]["mean"] == 0.25
    assert r["bpb"] is None and r["delta_bpb"] is None  # null by design (not measured) stays null
    raw = json.loads((tmp_path / store.RESULT).read_text())
    assert math.isnan(number(raw, "output_error")) and number(raw, "bits_per_weight") == 2.5
    df = store.collect([tmp_path])
    assert df["rel_mse"].isna().all() and df["bits_per_weight"].tolist() == [2.5]


def test_the_run_summary_prints_a_read_back_result_with_unmeasured_errors(tmp_path: Path) -> None:
    from bytegolf.run.point import summary_line

    r = _nonfinite_result(
        codec="zstd",
        code_bytes=10,
        nominal_bits_per_weight=6.0,
        delta_bpb=0.01,
        ref_bpb=1.49,
        fits_cap=True,
        seconds=1.0,
        bytes_by_role={"codes": {"bytes": 100, "share": 1.0}},
    )
    store.write_result(tmp_path, r, config_hash="h")
    line = summary_line(store.finished(tmp_path, "h"))
    assert "rel_mse nan output_err nan bpb 1.5000" in line and "KLD 0.25±nan" in line


def test_other_json_files_keep_nan_unless_strict(tmp_path: Path) -> None:
    store.write_json_atomic(tmp_path / "cache.json", {"x": float("nan"), "y": float("inf")})
    assert json.loads((tmp_path / "cache.json").read_text())["y"] == float("inf")  # read back as written
    store.write_json_atomic(tmp_path / "strict.json", {"x": float("nan")}, strict=True)
    assert json.loads((tmp_path / "strict.json").read_text(), parse_constant=_reject) == {"x": None}
    store.write_json_atomic(tmp_path / store.RESULT, {"x": float("nan")}, strict=False)
    assert "NaN" in (tmp_path / store.RESULT).read_text()


def _evaluated(bpb: float, windows: int, precision: str) -> dict:
    return {
        "format": "scalar",
        "codec": "zlib",
        "path": f"/x/scalar_zlib_{windows}{precision}",
        "final_bytes": 1_234_567,
        "bpb": bpb,
        "bpb_ci": [bpb - 0.01, bpb + 0.02],
        "delta_bpb": 0.005,
        "delta_bpb_ci": [0.001, 0.009],
        "eval_windows": windows,
        "eval_tokens": windows * 1024,
        "eval_precision": precision,
        "window_nll": [1.0] * windows,
    }


def test_results_print_a_markdown_table_with_intervals_and_warn_on_mixed_protocols() -> None:
    same = [_evaluated(1.9, 256, "bf16"), _evaluated(1.95, 256, "bf16")]
    text = store.summary(store.table(same))
    lines = text.splitlines()
    assert lines[0].startswith("| point | format | codec | final bytes |") and set(lines[1].strip("|").split("|")) == {
        "---"
    }
    assert "| scalar_zlib_256bf16 | scalar | zlib | 1,234,567 |" in lines[2]
    assert "1.9000 [1.8900, 1.9200]" in text and "+0.0050 [+0.0010, +0.0090]" in text
    assert "protocol: 256 windows × 1024 tokens, bf16, no stride" in text and "WARNING" not in text
    assert store.mixed_protocols(same) == ""

    mixed = [*same, _evaluated(1.7, 64, "fp32")]
    warning = store.mixed_protocols(mixed)
    assert warning.startswith("the results mix 2 evaluation protocols (2 under 256 windows") and "1 under 64" in warning
    text = store.summary(store.table(mixed))
    assert "WARNING: the rows mix 2 evaluation protocols" in text and "| protocol |" in text.splitlines()[0]
