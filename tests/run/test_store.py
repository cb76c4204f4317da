"""The result store: config hashes, claims, atomic files, the aggregated table."""

from __future__ import annotations

import json
import os
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
