"""bits-per-byte against a hand-computed example; sliding windows; KL divergence against a reference."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bytegolf.data import bundle as data
from bytegolf.data import shards, tokenizer
from bytegolf.data.tokenizer import ByteTables
from bytegolf.data.windows import Windows, eval_windows
from bytegolf.errors import ConfigError
from bytegolf.measure.evaluate import evaluate
from bytegolf.measure.fidelity import summarize, token_stats
from bytegolf.model import checkpoint


class Uniform(torch.nn.Module):
    """A 'model' that assigns probability 1/4 to every token of a vocab of 4."""

    def token_nll(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.full(targets.shape, math.log(4.0), dtype=torch.float64)


def test_bpb_matches_hand_computation() -> None:
    # vocab: 0 = control (boundary, 0 bytes), 1 = "▁ab" (2 + leading space), 2 = "c" (1), 3 = byte token (1)
    tables = ByteTables(
        base_bytes=np.array([0, 2, 1, 1]),
        has_leading_space=np.array([False, True, False, False]),
        is_boundary=np.array([True, False, False, False]),
        drop_space_after_boundary=True,
    )
    windows = np.array([[0, 1, 2, 3], [3, 1, 1, 0]])
    # window 0 targets 1,2,3 after 0,1,2: (2 + 0, space dropped after boundary) + 1 + 1 = 4
    # window 1 targets 1,1,0 after 3,1,1: (2+1) + (2+1) + 0 = 6
    r = evaluate(Uniform(), windows, tables, progress=False)
    assert r.window_bytes == [4, 6]
    assert r.tokens == 6 and r.bytes == 10
    assert math.isclose(r.loss, math.log(4))
    assert math.isclose(r.bpb, 6 * 2 / 10)  # 2 bits per token, 6 tokens, 10 bytes
    assert math.isclose(r.ppl, 4.0)


# ---- sliding windows ---------------------------------------------------------------------------


class TargetIsNll(torch.nn.Module):
    """A 'model' whose NLL of each target is the target's id: sums show which tokens were scored."""

    def token_nll(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return targets.double()


def _ones(vocab: int) -> ByteTables:
    return ByteTables(np.ones(vocab, dtype=np.int64), np.zeros(vocab, bool), np.zeros(vocab, bool), False)


def _coverage(w: Windows) -> np.ndarray:
    seen = np.zeros(w.tokens.size, dtype=np.int64)
    for s, f in zip(w.starts, w.score_from, strict=True):
        seen[s + 1 + f : s + 1 + w.seq_len] += 1
    return seen


@pytest.mark.parametrize("stride", [None, 10, 7, 3, 1])
@pytest.mark.parametrize("seed", [None, 5])  # the first blocks (one run), or a seeded sample (runs with gaps)
def test_sliding_windows_score_every_block_target_exactly_once(stride: int | None, seed: int | None) -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    starts = data.window_starts(tokens.size, 10, 40, seed)
    w = Windows.sliding(tokens, starts, 10, stride)
    expected = np.zeros(tokens.size, dtype=np.int64)
    for a in starts:
        expected[a + 1 : a + 11] = 1
    assert np.array_equal(_coverage(w), expected)
    assert w.scored_tokens == 400 and int(w.starts.max()) + 10 < tokens.size
    in_run = w.score_from > 0  # a later window of a run keeps at least seq_len − stride tokens of context
    assert (w.score_from[in_run] >= 10 - (stride or 10)).all()
    if stride in (None, 10):  # the blocks themselves, exactly today's windows
        assert np.array_equal(w.batch(0, len(w)), data.sample_windows(tokens, 10, 40, seed)[0])
        assert not w.score_from.any()
    # the targets' ids as NLL: each block's sum is exactly the sum of its own targets
    r = evaluate(TargetIsNll(), w, _ones(1000), batch_size=4, progress=False)
    assert r.tokens == 400 and r.bytes == 400 and r.window_bytes == [10] * 40
    assert r.window_nll == [float(tokens[a + 1 : a + 11].astype(np.int64).sum()) for a in starts]


def test_sliding_window_counts_and_scored_ranges() -> None:
    w = Windows.sliding(np.arange(100), np.array([0, 10, 20]), 10, 4)  # one run of 30 targets
    # the first window scores 10 targets; 20 more in windows of 4: 5 windows; no remainder
    assert w.starts.tolist() == [0, 4, 8, 12, 16, 20] and w.score_from.tolist() == [0, 6, 6, 6, 6, 6]
    w = Windows.sliding(np.arange(100), np.array([0, 10, 50]), 10, 6)  # runs [0, 20) and [50, 60)
    # run 1: first window, then 6 + a last window of 4 ending at the run's end; run 2: one window
    assert w.starts.tolist() == [0, 6, 10, 50] and w.score_from.tolist() == [0, 4, 6, 0]


@pytest.mark.parametrize("stride", [0, -1, 11, True, 2.5, "4"])
def test_bad_stride_is_a_config_error_naming_the_key(stride: object) -> None:
    with pytest.raises(ConfigError, match=r"eval\.stride must be an integer in 1\.\.10"):
        Windows.sliding(np.arange(100), np.array([0, 10]), 10, stride)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_eval(tiny_bundle: Path, one_thread: None) -> tuple:
    state = checkpoint.load_state_dict(tiny_bundle / "model.safetensors")
    model = checkpoint.build_model(state)
    sp = tokenizer.load_tokenizer(tiny_bundle / "tokenizer.model")
    tables = tokenizer.byte_tables(sp, model.cfg.vocab_size)
    tokens = shards.read_shards([tiny_bundle / "val_000000.bin"])
    torch.manual_seed(1)
    noisy = {k: v + 0.02 * torch.randn_like(v) if v.ndim == 2 else v for k, v in state.items()}
    return model, checkpoint.build_model(noisy), tables, tokens


def _old_evaluate(model, windows: np.ndarray, tables: ByteTables, batch_size: int) -> tuple[list[float], int]:
    """Evaluation as it was before sliding windows: per-window NLL sums and the byte total."""
    sums = []
    with torch.inference_mode():  # the model's inference path, as evaluate runs it
        for i in range(0, len(windows), batch_size):
            chunk = torch.from_numpy(windows[i : i + batch_size])
            sums.extend(model.token_nll(chunk[:, :-1], chunk[:, 1:]).double().sum(dim=1).tolist())
    return sums, int(tables.count(windows[:, :-1], windows[:, 1:]).sum())


def test_stride_equal_to_the_window_gives_exactly_the_non_overlapping_result(tiny_eval: tuple) -> None:
    model, _, tables, tokens = tiny_eval
    cfg = OmegaConf.create({"seq_len": 64, "windows": 6, "sample": False, "seed": 0, "stride": None})
    w, docs = eval_windows(tokens, cfg)
    arr, arr_docs = data.sample_windows(tokens, 64, 6)
    assert np.array_equal(docs, arr_docs)
    old_nll, old_bytes = _old_evaluate(model, arr, tables, 4)
    for windows in (w, arr, Windows.sliding(tokens, data.window_starts(tokens.size, 64, 6), 64, 64)):
        r = evaluate(model, windows, tables, batch_size=4, progress=False)
        assert r.window_nll == old_nll  # bit for bit
        assert r.loss == math.fsum(old_nll) / (6 * 64) and r.tokens == 6 * 64 and r.bytes == old_bytes
        assert r.bpb == math.fsum(old_nll) / math.log(2) / old_bytes and r.kld is None


def test_sliding_scores_the_same_tokens_and_bytes_with_more_context(tiny_eval: tuple) -> None:
    model, _, tables, tokens = tiny_eval
    base = {"seq_len": 64, "windows": 6, "sample": False, "seed": 0}
    plain = evaluate(model, eval_windows(tokens, OmegaConf.create(base))[0], tables, progress=False)
    w, _ = eval_windows(tokens, OmegaConf.create({**base, "stride": 16}))
    assert len(w) == 1 + 5 * 64 // 16 and w.scored_tokens == 6 * 64
    slid = evaluate(model, w, tables, batch_size=5, progress=False)
    assert slid.tokens == plain.tokens == 384 and slid.bytes == plain.bytes
    assert slid.window_bytes == plain.window_bytes
    assert slid.window_nll[0] == pytest.approx(plain.window_nll[0], rel=1e-6)  # the first block: same context
    assert abs(slid.loss - plain.loss) > 1e-4  # later blocks see more context
    assert slid.bpb == pytest.approx(math.fsum(slid.window_nll) / math.log(2) / slid.bytes, rel=1e-12)


def test_kld_in_lockstep_with_the_reference(tiny_eval: tuple) -> None:
    model, noisy, tables, tokens = tiny_eval
    arr, _ = data.sample_windows(tokens, 64, 3)
    same = evaluate(model, arr, tables, progress=False, reference=model)
    assert same.kld is not None and same.kld["tokens"] == 3 * 64
    assert same.kld["mean"] == 0.0 and same.kld["p99_9"] == 0.0 and same.kld["top1_agreement"] == 1.0
    assert same.kld["rms_dp"] == 0.0
    r = evaluate(noisy, arr, tables, progress=False, reference=model, batch_size=2)
    assert r.loss == evaluate(noisy, arr, tables, progress=False).loss  # the NLL does not change with kld
    with torch.no_grad():  # every token's KLD from the whole logits at once
        ids = torch.from_numpy(arr)
        st = token_stats(model.logits(ids[:, :-1]), noisy.logits(ids[:, :-1]), ids[:, 1:])
    expected = summarize(st.kld.numpy(), st.top1.numpy(), st.dp.numpy())
    assert r.kld == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert 0 < r.kld["mean"] < 1 and r.kld["p99"] > r.kld["p50"] > 0  # a random tiny model: top-1 flips easily
    sliding = Windows.sliding(tokens, data.window_starts(tokens.size, 64, 3), 64, 16)
    slid = evaluate(noisy, sliding, tables, progress=False, reference=model)
    assert slid.kld is not None and slid.kld["tokens"] == 3 * 64


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bytegolf.cli", "run", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


RUN_ARGS = ["eval.windows=4", "eval.seq_len=64", "calib.windows=0", "plan.passthrough_max_numel=1024", "codec=zstd"]


def test_run_records_kld_and_stride(tiny_bundle: Path, tmp_path: Path) -> None:
    args = [f"bundle={tiny_bundle}", *RUN_ARGS, "format.bits=4", "eval.kld=true", "eval.stride=16"]
    proc = _run(*args, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["eval_stride"] == 16 and r["eval_tokens"] == 4 * 64 and len(r["window_nll"]) == 4
    k = r["kld"]
    assert k["tokens"] == r["eval_tokens"] and 0 < k["mean"] < 0.1 and k["p99"] >= k["p50"] > 0
    assert 0 <= k["top1_agreement"] <= 1 and k["rms_dp"] > 0
    assert " KLD " in proc.stdout
    proc = _run(f"bundle={tiny_bundle}", *RUN_ARGS, "eval.stride=65", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "eval.stride must be an integer in 1..64 (eval.seq_len) or null, got 65" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_compiled_evaluation_matches_eager_with_a_padded_last_batch(tiny_eval: tuple) -> None:
    """eval.compile: the same NLL per block (to fp32 rounding) and the same token and byte counts,
    with 7 windows in batches of 4 (the last one padded to the compiled shape and cut back)."""
    model, _, tables, tokens = tiny_eval
    w, _ = eval_windows(tokens, OmegaConf.create({"seq_len": 64, "windows": 7, "sample": False, "stride": None}))
    eager = evaluate(model, w, tables, batch_size=4, progress=False)
    fused = evaluate(model, w, tables, batch_size=4, progress=False, compile=True)
    assert (fused.tokens, fused.bytes, len(fused.window_nll)) == (eager.tokens, eager.bytes, 7)
    np.testing.assert_allclose(fused.window_nll, eager.window_nll, rtol=1e-5)
    assert fused.bpb == pytest.approx(eager.bpb, rel=1e-6)


# ---- streams ------------------------------------------------------------------------------------


def test_streams_give_the_single_stream_result_and_restore_threads(tiny_eval: tuple) -> None:
    """Two streams (each a thread running torch on one core) give the one-stream result bit for bit
    at one window per batch, the same to fp32 rounding with shrunk batches, and leave torch's thread
    count as it was; bad values are errors naming eval.streams."""
    model, _, tables, tokens = tiny_eval
    arr, _ = data.sample_windows(tokens, 64, 5)
    threads = torch.get_num_threads()
    one = evaluate(model, arr, tables, batch_size=1, progress=False, streams=1)
    two = evaluate(model, arr, tables, batch_size=1, progress=False, streams=2)
    assert two.window_nll == one.window_nll and (two.bpb, two.bytes) == (one.bpb, one.bytes)
    big = evaluate(model, arr, tables, batch_size=8, progress=False, streams=2)  # batches of 3 and 2
    np.testing.assert_allclose(big.window_nll, one.window_nll, rtol=1e-6)
    assert torch.get_num_threads() == threads
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match=r"eval\.streams"):
            evaluate(model, arr, tables, progress=False, streams=bad)
    with pytest.raises(ConfigError, match=r"eval\.batch_size"):
        evaluate(model, arr, tables, progress=False, batch_size=0)


class FailsOnThirdBatch(torch.nn.Module):
    """A 'model' that scores two batches and fails on the third."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def token_nll(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("batch 3 failed")
        return torch.ones(targets.shape, dtype=torch.float64)


def test_a_failing_stream_raises_and_restores_threads() -> None:
    threads = torch.get_num_threads()
    windows = np.ones((6, 5), dtype=np.int64)
    with pytest.raises(RuntimeError, match="batch 3 failed"):
        evaluate(FailsOnThirdBatch(), windows, _ones(4), batch_size=1, progress=False, streams=2)
    assert torch.get_num_threads() == threads


def test_unigram_bpb_known_answer_and_the_run_warning() -> None:
    from bytegolf.measure.evaluate import unigram_bpb
    from bytegolf.run.point import unigram_warning

    fit = np.tile(np.arange(4), 25)  # 4 tokens equally often: p = 1/4 each, 2 bits a token
    targets = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    assert unigram_bpb(fit, targets, n_bytes=16) == pytest.approx(1.0)  # 8 targets × 2 bits / 16 bytes
    assert unigram_bpb(fit, targets, n_bytes=16, vocab=8) > 1.0  # unseen tokens take probability mass
    assert unigram_warning({"bpb": 1.2, "unigram_bpb": 1.0}).startswith("bpb 1.2000 is worse than a unigram")
    assert unigram_warning({"bpb": 0.9, "unigram_bpb": 1.0}) is None
    untrained = unigram_warning({"bpb": 1.3, "ref_bpb": 1.2, "unigram_bpb": 1.0})
    assert untrained.startswith("the unquantized model's bpb 1.2000 is already worse than a unigram")
    assert unigram_warning({"bpb": None, "unigram_bpb": 1.0}) is None
