"""The real `bytegolf run` command on a tiny bundle, and its one-line errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bytegolf.artifact import file as artifact

TINY_ARGS = [
    "eval.windows=4",
    "eval.seq_len=64",
    "calib.windows=4",
    "calib.seq_len=64",
    "plan.passthrough_max_numel=1024",
]


def bytegolf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bytegolf.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def tiny_run(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("run")
    args = [
        "run",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        "format.bits=4",
        "format.clip_k=4",
        "format.gptq=true",
        "codec=zstd",
        f"hydra.run.dir={out}",
    ]
    return out, bytegolf(*args, cwd=out)


def test_run_writes_artifact_config_log_and_result(tiny_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, proc = tiny_run
    assert proc.returncode == 0, proc.stderr
    assert "scalar+zstd:" in proc.stdout and "bits/weight" in proc.stdout and "bpb" in proc.stdout
    assert proc.stdout.count("scalar+zstd:") == 1, proc.stdout  # the summary is printed once
    assert f"written to {out}" in proc.stdout  # the output directory is named
    assert "scalar+zstd:" in (out / "run.log").read_text()  # and the summary is in the log
    r = json.loads((out / "result.json").read_text())
    for key in (
        "format",
        "codec",
        "params",
        "final_bytes",
        "bits_per_weight",
        "nominal_bits_per_weight",
        "rel_mse",
        "output_error",
        "val_loss",
        "bpb",
        "ref_bpb",
        "seconds",
        "git_revision",
        "fingerprints",
    ):
        assert key in r, key
    assert r["final_bytes"] == (out / artifact.ARTIFACT_NAME).stat().st_size
    assert r["bits_per_weight"] == pytest.approx(r["final_bytes"] * 8 / r["params"])
    assert 0 < r["rel_mse"] < 0.1 and 0 < r["output_error"] < 0.1
    assert set(r["fingerprints"]) == {"checkpoint", "tokenizer", "val", "train"}
    assert abs(sum(v["share"] for v in r["bytes_by_role"].values()) - 1) < 1e-9
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "run.log").is_file()
    assert "bytes by role: codes" in proc.stdout


def test_same_config_gives_a_byte_identical_artifact(
    tiny_run: tuple[Path, subprocess.CompletedProcess], tiny_bundle: Path, tmp_path: Path
) -> None:
    out, _ = tiny_run
    args = ["run", f"bundle={tiny_bundle}", *TINY_ARGS, "format.bits=4", "format.clip_k=4", "format.gptq=true"]
    proc = bytegolf(*args, "codec=zstd", "reuse=false", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["artifact_reused_from"] is None and "encode" in r["stage_seconds"]  # encoded again
    assert (tmp_path / artifact.ARTIFACT_NAME).read_bytes() == (out / artifact.ARTIFACT_NAME).read_bytes()


def test_an_identical_encoding_reuses_the_artifact(
    tiny_run: tuple[Path, subprocess.CompletedProcess], tiny_bundle: Path, tmp_path: Path
) -> None:
    out, _ = tiny_run
    args = ["run", f"bundle={tiny_bundle}", *TINY_ARGS, "format.bits=4", "format.clip_k=4", "format.gptq=true"]
    proc = bytegolf(*args, "codec=zstd", "eval.kld=true", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = json.loads((out / "result.json").read_text())
    r = json.loads((tmp_path / "result.json").read_text())
    # the fixture's own file, or the one it reused in its turn (the cache outlives a test session)
    assert r["artifact_reused_from"] in {
        str((out / artifact.ARTIFACT_NAME).resolve()),
        first["artifact_reused_from"],
    } - {None}
    assert "encode" not in r["stage_seconds"] and "reusing the artifact" in proc.stdout + proc.stderr
    assert (tmp_path / artifact.ARTIFACT_NAME).read_bytes() == (out / artifact.ARTIFACT_NAME).read_bytes()
    for key in ("final_bytes", "nominal_bits_per_weight", "rel_mse", "output_error", "bpb", "bytes_by_role"):
        assert r[key] == first[key], key
    assert r["kld"] is not None  # the evaluation setting changed, the encoding did not
    other = bytegolf(*args, "codec=zlib", f"hydra.run.dir={tmp_path / 'zlib'}", cwd=tmp_path)  # another artifact
    assert json.loads((tmp_path / "zlib" / "result.json").read_text())["artifact_reused_from"] is None, other.stderr


def test_artifact_decodes_alone(tiny_run: tuple[Path, subprocess.CompletedProcess], tiny_bundle: Path) -> None:
    from bytegolf.model import checkpoint

    out, _ = tiny_run
    decoded, _ = artifact.read(out / artifact.ARTIFACT_NAME)
    original = checkpoint.load_state_dict(tiny_bundle / "model.safetensors")
    assert set(decoded) == set(original)
    assert all(decoded[k].shape == original[k].shape and decoded[k].dtype == original[k].dtype for k in original)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("format=nope", "unknown format 'nope'"),
        ("codec=nope", "unknown codec 'nope'"),
        ("format.bits=0", "bits must be an integer in 2..8"),
        ("format.group_size=48", "not divisible by group_size 48"),
        ("model.checkpoint=/nonexistent/model.safetensors", "checkpoint not found"),
        ("format.bits=abc", "format.bits"),
        ("layout.packing=nibble", "unknown layout packing 'nibble'"),
    ],
)
def test_bad_overrides_end_in_a_clear_error(tiny_bundle: Path, tmp_path: Path, override: str, message: str) -> None:
    proc = bytegolf("run", f"bundle={tiny_bundle}", *TINY_ARGS, override, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_bad_format_settings_fail_before_the_reference_evaluation(tiny_bundle: Path, tmp_path: Path) -> None:
    rule = "plan.rules=[{match: 'blocks.0.*.weight', params: {bits: 1}}]"  # a rule's settings are checked too
    for bad in ("format.bits=0", rule):
        proc = bytegolf("run", f"bundle={tiny_bundle}", *TINY_ARGS, bad, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "bits must be an integer in 2..8" in out, out[-2000:]
        assert "plan ..." in out and "eval_reference ..." not in out and "calibrate ..." not in out


def test_train_builds_a_bundle_that_run_accepts(tmp_path: Path) -> None:
    from bytegolf.data import corpus

    root, _ = corpus.stdlib_files()
    pattern = str(root / "json" / "*.py")
    data_dir = tmp_path / "data"
    proc = bytegolf(
        "train",
        f"data.corpus={pattern}",
        "data.build=true",
        "data.vocab_size=512",
        "data.val_fraction=0.3",
        f"data.tokenizer={data_dir}/tokenizer.model",
        f"data.train={data_dir}/train_*.bin",
        f"data.val={data_dir}/val_*.bin",
        "model.num_layers=2",
        "model.model_dim=64",
        "model.num_heads=4",
        "model.num_kv_heads=2",
        "train.steps=3",
        "train.seq_len=64",
        "train.batch_seqs=2",
        "train.eval_every=0",
        "train.precision=fp32",
        f"out={tmp_path / 'bundle'}",
        f"hydra.run.dir={tmp_path / 'train'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads((tmp_path / "bundle" / "model.json").read_text())
    assert stats["steps"] == 3 and stats["tokens_seen"] == 3 * 2 * 64
    assert stats["val_bpb"] > 0 and stats["unigram_bpb"] > 0
    assert (tmp_path / "bundle" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step 1 loss" in (tmp_path / "train" / "train.log").read_text()  # progress, in the run dir's log
    proc = bytegolf(
        "run",
        f"bundle={tmp_path / 'bundle'}",
        *TINY_ARGS,
        "calib.windows=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "result.json").read_text())["params"] > 0


def test_mixed_plan_runs_every_family_in_its_own_format(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = bytegolf("run", f"bundle={tiny_bundle}", *TINY_ARGS, "plan=mixed", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    fmts = {t["name"]: t["format"] for t in r["tensors"]}
    assert fmts["tok_emb.weight"] == "scalar" and fmts["blocks.0.attn.c_q.weight"] == "scalar"
    assert fmts["blocks.0.mlp.fc.weight"] == "sparse_outlier" and r["bytes_by_role"]["outliers"]["bytes"] > 0


def test_an_extra_serializer_records_and_prints_its_bytes_by_part(tiny_bundle: Path, tmp_path: Path) -> None:
    """A serializer that reorders rows stores their permutation: its bytes by part name it, and the parts
    add up to the file's bytes."""
    entry = "[{name: rows, codec: zstd, layout: {reorder: ['blocks.*.mlp.fc.weight'], transpose: true}}]"
    args = ["codec=zstd", f"extra_codecs={entry}", f"hydra.run.dir={tmp_path}"]
    proc = bytegolf("run", f"bundle={tiny_bundle}", *TINY_ARGS, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "result.json").read_text())["extra_codecs"]["rows"]
    parts = rows["bytes_by_role"]
    assert parts["perm"] > 0 and parts["codes"] > parts["perm"] and parts["scales"] > 0
    assert abs(sum(parts.values()) - rows["final_bytes"]) <= len(parts)  # each part rounded to 0.1 B
    assert f"perm {parts['perm']:,.0f} B" in proc.stdout + proc.stderr


def test_a_preset_overrides_the_run_defaults(tmp_path: Path) -> None:
    """experiment=pg_top sets extra_codecs (its per-group serializer) over run.yaml's empty list."""
    proc = bytegolf("run", "experiment=pg_top", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name: per_group" in proc.stdout and "top_k: 3" in proc.stdout and "clip_k: 11.5" in proc.stdout


def test_sequential_gptq_runs_and_is_recorded(tiny_bundle: Path, tmp_path: Path) -> None:
    args = ["format.bits=3", "format.gptq=true", "calib.sequential=true", "codec=zstd", f"hydra.run.dir={tmp_path}"]
    proc = bytegolf("run", f"bundle={tiny_bundle}", *TINY_ARGS, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["fits_cap"] and r["bpb"] > 0 and "sequential: true" in (tmp_path / ".hydra" / "config.yaml").read_text()


def test_a_bits_change_with_the_int6_clip_is_warned(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = bytegolf("run", f"bundle={tiny_bundle}", *TINY_ARGS, "format.bits=4", "codec=zstd",
                    f"hydra.run.dir={tmp_path}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "warning: scalar bits=4 with clip_k left at 12.85, which is tuned for int6" in proc.stdout + proc.stderr


def test_a_run_directory_is_named_by_its_preset_and_overrides(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = bytegolf("run", f"bundle={tiny_bundle}", *TINY_ARGS, "format.bits=4", "format.clip_k=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    head, tail = run.name.split("_scalar_brotli_")  # <time>_<format>_<codec>_<overrides>
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", head), run.name
    # the bundle path by its last part; the overrides past 60 characters cut to a hash of them all
    assert tail.startswith(f"bundle={tiny_bundle.name},eval.windows=4,eval.seq_len=64,") and len(tail) == 60
    assert re.fullmatch(r".*-[0-9a-f]{8}", tail), tail
    assert f"written to {run}" in proc.stdout
    r = json.loads((run / "result.json").read_text())
    assert r["protocol"] == "4 windows × 64 tokens, sampled across the split (seed 0), bf16, no stride"


def test_a_tied_embedding_below_int8_is_warned_and_the_compares_rule_is_one_override_away(
    tiny_run: tuple[Path, subprocess.CompletedProcess], tiny_bundle: Path, tmp_path: Path
) -> None:
    _, proc = tiny_run  # format.bits=4 on every matrix, the embedding included
    assert "the tied embedding tok_emb.weight is stored by scalar 4-bit" in proc.stdout + proc.stderr
    args = ["run", f"bundle={tiny_bundle}", *TINY_ARGS, "format.bits=4", "format.clip_k=4", "plan=embedding_int8"]
    ruled = bytegolf(*args, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert ruled.returncode == 0, ruled.stderr[-2000:]
    assert "tied embedding" not in ruled.stdout + ruled.stderr
    tensors = {t["name"]: t for t in json.loads((tmp_path / "result.json").read_text())["tensors"]}
    assert tensors["tok_emb.weight"]["nominal_bits"] / tensors["tok_emb.weight"]["params"] > 8  # int8 + scales


def test_a_run_scores_document_isolated_windows_on_request(tiny_bundle: Path, tmp_path: Path) -> None:
    from bytegolf.data import shards

    args = ["run", f"bundle={tiny_bundle}", *TINY_ARGS, "format.bits=8", "eval.documents=true"]
    proc = bytegolf(*args, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "result.json").read_text())
    val = shards.read_shards(sorted(tiny_bundle.glob("val_*.bin")))
    docs = int((val == 1).sum())  # the tiny split's documents, every one scored whole
    assert r["protocol"].startswith(f"{docs} documents, document-isolated windows of 64 tokens")
    assert r["eval_tokens"] == val.size - docs and len(r["window_nll"]) == docs
    assert "document-isolated" in proc.stdout
