"""Validation loss, perplexity and bits-per-byte on fixed windows, optionally sliding, with fidelity to a reference.

Blocks and windows. The scored tokens are the targets of n non-overlapping *blocks* of seq_len
targets (the windows `data.sample_windows` cuts). By default each block is also the window the
model sees, so a token's context starts at its block's start. With a stride s < seq_len (sliding
evaluation, as Parameter Golf records do with stride 64) every run of consecutive blocks is
covered by windows of seq_len tokens that start s tokens apart: the run's first window scores all
its seq_len targets, every later one only its last s (the last window of a run ends at the run's
end and scores what is left), so every token is scored exactly once, with at least seq_len − s
tokens of context once past the run's first window. The scored tokens, and hence the byte
count bpb divides by, are the same for every stride; per-block NLL sums (window_nll) stay aligned
with the blocks for paired statistics.

Document-isolated evaluation (`eval.documents`, bytegolf.data.windows.Windows.documents) makes each document
a block of its own length, scored in windows that start inside it and score only its targets.

With a `reference` model, both models run in lockstep on the same windows (twice the compute) and
the result carries llama.cpp-style KL-divergence statistics of the evaluated model against the
reference over the scored tokens (see bytegolf.measure.fidelity).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from bytegolf.data.tokenizer import ByteTables
from bytegolf.data.windows import Windows
from bytegolf.errors import ConfigError
from bytegolf.measure.fidelity import FidelityAccumulator

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BATCH_TOKENS = 1024  # tokens per forward on the CPU by default (one 1024-token window was fastest)


@dataclass
class EvalResult:
    """Totals plus per-block NLL sums (nats) and byte counts, for paired statistics; `kld`: the
    fidelity statistics against the reference model (bytegolf.measure.fidelity.summarize) when one was given."""

    loss: float
    ppl: float
    bpb: float
    tokens: int
    bytes: int
    window_nll: list[float] = field(repr=False)
    window_bytes: list[int] = field(repr=False)
    kld: dict[str, float] | None = None


def protocol(eval_cfg: Any, windows: int) -> str:
    """The evaluation protocol in words: how many windows of how many tokens, how they were drawn, the
    precision and the stride ("256 windows × 1024 tokens sampled across the split (seed 0), bf16, no stride")."""
    seq_len = int(eval_cfg.seq_len)
    if eval_cfg.get("sample", False):
        drawn = f"sampled across the split (seed {int(eval_cfg.get('seed', 0))})"
    else:
        drawn = "the whole split" if int(eval_cfg.windows) == 0 else "from the start of the split"
    stride = eval_cfg.get("stride", None)
    slide = f"sliding, stride {int(stride)}" if stride else "no stride"
    if eval_cfg.get("documents", False):
        isolated = f"{windows} documents, document-isolated windows of {seq_len} tokens"
        return f"{isolated}, {drawn}, {eval_cfg.precision}, {slide}"
    return f"{windows} windows × {seq_len} tokens, {drawn}, {eval_cfg.precision}, {slide}"


def unigram_bpb(fit_tokens: np.ndarray, targets: np.ndarray, n_bytes: int, vocab: int = 0) -> float:
    """Bits per byte, over `targets` (which stand for n_bytes bytes), of an add-one unigram model fitted on
    fit_tokens (vocab: at least the tokens seen)."""
    vocab = max(int(vocab), int(fit_tokens.max()) + 1, int(targets.max()) + 1)
    counts = np.bincount(fit_tokens.ravel(), minlength=vocab).astype(np.float64) + 1
    return float(-np.log2(counts / counts.sum())[targets].sum() / n_bytes)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Autocast context for an evaluation or training precision name."""
    if precision not in DTYPES:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {sorted(DTYPES)}")
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32")


def eval_streams(streams: int | None, device: torch.device, lockstep: bool, compiled: bool) -> int:
    """How many windows `evaluate` runs at once: `streams` (None: torch's CPU thread count), but 1 on
    CUDA, with a reference model (lockstep) or compiled, each a single stream."""
    if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or streams < 1):
        raise ConfigError(f"eval.streams must be a positive integer or null, got {streams!r}")
    if device.type != "cpu" or lockstep or compiled:
        return 1
    return torch.get_num_threads() if streams is None else streams


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    windows: np.ndarray | Windows,
    tables: ByteTables,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    batch_size: int | None = None,
    progress: bool = True,
    reference: torch.nn.Module | None = None,
    compile: bool = False,
    streams: int | None = None,
) -> EvalResult:
    """Evaluate on windows (an array of shape (n, seq_len+1): non-overlapping, or `Windows`); loss is the
    mean NLL per scored token in nats. With `reference`, also the KL-divergence statistics against it.
    compile: run the model's token_nll through torch.compile (fused kernels; a one-off compile of tens of
    seconds per process and shape, so for long evaluations; the last batch is padded to the same shape).
    batch_size: windows per forward (None: on the CPU as many as make CPU_BATCH_TOKENS tokens, at least one,
    so that a batch's activations stay in cache; 16 on CUDA).
    streams: batches evaluated at once on the CPU, each in its own thread running torch on one core
    (None: as many as torch's threads; see `eval_streams`); on 2 cores two single-threaded streams are
    faster than one stream on two threads. Batches shrink so that every stream has one. While streams
    run, torch's thread count is 1 for the whole process; it is restored after, on errors too."""
    device = torch.device(device)
    w = windows if isinstance(windows, Windows) else Windows.from_array(windows)
    if batch_size is None:
        batch_size = max(1, CPU_BATCH_TOKENS // w.seq_len) if device.type == "cpu" else 16
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"eval.batch_size must be at least 1, got {batch_size}")
    model.eval().to(device)
    fid = None
    if reference is not None:
        if not (hasattr(model, "logits") and hasattr(reference, "logits")):
            raise ConfigError("eval.kld needs models that expose logits(ids)")
        reference.eval().to(device)
        fid = FidelityAccumulator()
    compiled = compile and fid is None
    n_streams = eval_streams(streams, device, fid is not None, compiled)
    if n_streams > 1:
        batch_size = min(batch_size, -(-len(w) // n_streams))
    token_nll = torch.compile(model.token_nll, dynamic=False) if compiled else model.token_nll
    seq = w.seq_len
    pos = torch.arange(seq, device=device)[None, :]

    @torch.inference_mode()
    def forward(start: int) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
        """The NLL of the windows from `start` on (one batch), and for fidelity (logits, reference logits,
        targets). Runs in a stream's thread: inference mode and autocast are per thread."""
        stop = min(start + batch_size, len(w))
        rows = w.batch(start, stop)
        if compiled and stop - start < batch_size:  # one shape, one compile
            rows = np.concatenate([rows, np.repeat(rows[-1:], batch_size - (stop - start), axis=0)])
        chunk = torch.from_numpy(rows).to(device)
        ids, targets = chunk[:, :-1], chunk[:, 1:]
        with autocast(device, precision):
            if fid is None:
                return token_nll(ids, targets)[: stop - start], None
            logits = model.logits(ids).float()
            ref_logits = reference.logits(ids).float()
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        return nll.view_as(targets), (logits, ref_logits, targets)

    block_nll = np.zeros(w.block_first.size, dtype=np.float64)
    scored = 0
    starts = range(0, len(w), batch_size)
    bar = tqdm(total=len(starts), desc="eval", unit="batch", disable=not progress, leave=False)
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(n_streams, thread_name_prefix="eval") if n_streams > 1 else None
    if pool is not None:
        torch.set_num_threads(1)
    try:
        results = pool.map(forward, starts) if pool is not None else map(forward, starts)
        for start, (nll, lockstep) in zip(starts, results, strict=True):
            stop = min(start + batch_size, len(w))
            # the scored targets of a window lie in one block or straddle two: split them at the boundary
            first = w.starts[start:stop] + 1  # stream position of each window's target 0
            frm, to = w.score_from[start:stop], w.score_to[start:stop]
            b0 = np.searchsorted(w.block_first, first + frm, side="right") - 1
            b1 = np.searchsorted(w.block_first, first + to - 1, side="right") - 1
            cut = np.where(b1 != b0, w.block_first[b1] - first, to)
            frm_t = torch.from_numpy(frm).to(device)[:, None]
            to_t = torch.from_numpy(to).to(device)[:, None]
            cut_t = torch.from_numpy(cut).to(device)[:, None]
            nll_d = nll.double()
            head = torch.where((pos >= frm_t) & (pos < cut_t), nll_d, 0.0).sum(dim=1).cpu().numpy()
            np.add.at(block_nll, b0, head)
            split = np.flatnonzero(b1 != b0)
            if split.size:
                tail = torch.where((pos >= cut_t) & (pos < to_t), nll_d, 0.0).sum(dim=1).cpu().numpy()
                np.add.at(block_nll, b1[split], tail[split])
            scored += int((to - frm).sum())
            if lockstep is not None:
                logits, ref_logits, targets = lockstep
                mask = (pos >= frm_t) & (pos < to_t)
                fid.update(ref_logits[mask], logits[mask], targets[mask])
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(threads)
    byte_counts = w.block_bytes(tables)
    tokens = int(w.block_len.sum())
    if scored != tokens:  # cannot happen for windows built here; a hand-made Windows may be inconsistent
        raise ConfigError(f"evaluation windows score {scored} tokens, but their blocks hold {tokens}")
    total_nll = math.fsum(block_nll.tolist())
    total_bytes = int(byte_counts.sum())
    loss = total_nll / tokens
    return EvalResult(
        loss=loss,
        ppl=math.exp(loss),
        bpb=total_nll / math.log(2) / total_bytes,
        tokens=tokens,
        bytes=total_bytes,
        window_nll=block_nll.tolist(),
        window_bytes=[int(b) for b in byte_counts],
        kld=fid.summary() if fid is not None else None,
    )
