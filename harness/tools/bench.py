"""Speed benchmark on the default bundle: encode+serialize+decode (RTN, GPTQ), GPTQ encoding by one and by
several worker processes (encode_jobs), and evaluation tokens/s against the machine's matmul ceiling.

Run: python -m bytegolf.tools.bench [--bundle DIR] [--device cpu] [--windows 16] [--encode-jobs 2] [--repeats 3]
[--codebooks] (adds the compare's two slowest steps: an additive probe and a ClusComp landing, about 7 min)
Prints a markdown table; targets (2 CPU cores): RTN round trip ≤ 5 s, GPTQ ≤ 90 s, evaluation ≥ 80 % of
the fp32 ceiling. Evaluation is timed three ways: as before streams (one stream on all threads, batch 8),
with the defaults (one single-threaded stream per thread, batch 1), and with eval.compile (torch.compile,
batch 8; its first call, which compiles, is timed apart). The fastest of `repeats` runs counts.

The ceiling: sustained matmul GFLOP/s (square n×n by (n×n)ᵀ matmuls back to back for a second, F.linear
as the model's linears call it, n the model's widest linear, at torch's current thread count) over the
model's forward FLOPs per token (`forward_flops_per_token`). It is measured before every timed evaluation
and once after, and the best taken, as the evaluation's best run is: a busy machine lowers both sides of
the fraction alike. The fastest single matmul (a burst, some 5% above the sustained rate on these cores)
is printed beside it, with the evaluation's fraction of that too.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bytegolf import markdown
from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.data import bundle as data
from bytegolf.data import shards, tokenizer
from bytegolf.formats import EncodeContext
from bytegolf.measure.evaluate import CPU_BATCH_TOKENS, eval_streams, evaluate
from bytegolf.model import checkpoint
from bytegolf.model.gpt import ModelConfig
from bytegolf.model.grams import gram_matrices
from bytegolf.quantize import encoder
from bytegolf.quantize.block_calibration import FinetuneConfig, finetune
from bytegolf.quantize.plan import PlanConfig, Rule, make_plan

REPO = Path(__file__).resolve().parents[2]
SEQ_LEN = 1024
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Matmul FLOPs of one forward per token at window length seq_len: 2·(weights of every linear: q, k, v,
    out, MLP in and out per layer, and the tied output head) plus causal attention's QKᵀ and AV, 2·model_dim
    each per (query, visible key) pair, a query seeing (seq_len + 1) / 2 keys on average."""
    d = cfg.model_dim
    kv = cfg.num_kv_heads * (d // cfg.num_heads)
    hidden = cfg.mlp_mult * d
    per_layer = 2 * d * d + 2 * d * kv + 2 * d * hidden
    weights = cfg.num_layers * per_layer + cfg.vocab_size * d
    attention = cfg.num_layers * 2 * (2 * d) * (seq_len + 1) // 2
    return 2 * weights + attention


def matmul_gflops(n: int, dtype: torch.dtype, seconds: float = 1.0, device: str = "cpu") -> tuple[float, float]:
    """(sustained, peak) GFLOP/s of n×n by (n×n)ᵀ matmuls in dtype (F.linear, as the model's linears call
    it) run back to back for `seconds` (at least 3), at torch's current thread count: the rate over the
    whole run and the fastest single matmul's."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x, w = (torch.randn(n, n, generator=g).to(dev, dtype) for _ in range(2))

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    F.linear(x, w)  # warm-up
    sync()
    best, count, start = float("inf"), 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        F.linear(x, w)
        sync()
        best, count = min(best, time.perf_counter() - t0), count + 1
    flop = 2 * n**3
    return flop * count / (time.perf_counter() - start) / 1e9, flop / best / 1e9


def _roundtrip(state, plan, ctx, codec: str, params: dict) -> tuple[float, float, float, int, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        units = encoder.encode_state(state, plan, ctx, progress=False)
        t1 = time.perf_counter()
        written = artifact.write(Path(tmp) / "m.bgz", units, codec, params, layout.LayoutConfig())
        t2 = time.perf_counter()
        decoded, _ = artifact.read(Path(tmp) / "m.bgz")
        artifact.verify_bit_exact(decoded, units)
        t3 = time.perf_counter()
        blob = (Path(tmp) / "m.bgz").read_bytes()
    return t1 - t0, t2 - t1, t3 - t2, written.final_bytes, blob


def _encode_seconds(state, plan, ctx, codec: str, params: dict, jobs: int) -> tuple[float, bytes]:
    """Seconds to encode the plan with `jobs` worker processes, and the artifact's bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        units = encoder.encode_state(state, plan, ctx, progress=False, jobs=jobs)
        dt = time.perf_counter() - t0
        artifact.write(Path(tmp) / "m.bgz", units, codec, params, layout.LayoutConfig())
        return dt, (Path(tmp) / "m.bgz").read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(REPO / "results" / "default"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--windows", type=int, default=16, help="evaluation windows of 1024 tokens")
    ap.add_argument("--calib-windows", type=int, default=16)
    ap.add_argument("--encode-jobs", type=int, default=2, help="worker processes for the parallel GPTQ encode")
    ap.add_argument("--repeats", type=int, default=3, help="evaluations per precision (the fastest is reported)")
    ap.add_argument("--codebooks", action="store_true", help="also time an additive probe and a ClusComp landing")
    args = ap.parse_args()
    b = Path(args.bundle)
    state = checkpoint.load_state_dict(b / "model.safetensors")
    model = checkpoint.build_model(state)
    sp = tokenizer.load_tokenizer(b / "tokenizer.model")
    tables = tokenizer.byte_tables(sp, model.cfg.vocab_size)
    val = data.windows(shards.read_shards(sorted(b.glob("val_*.bin"))), SEQ_LEN, args.windows)
    rows = []

    t0 = time.perf_counter()
    calib = data.windows(shards.read_shards(sorted(b.glob("train_*.bin"))), 1024, args.calib_windows)
    grams, n = gram_matrices(model, calib, args.device, progress=False)
    rows.append(("calibration Gram matrices", f"{args.calib_windows}×1024 tokens", time.perf_counter() - t0, ""))
    ctx = EncodeContext(hessians=grams, hessian_counts=dict.fromkeys(grams, n), device=args.device)

    for label, fmt, codec, cparams in [
        (
            "RTN int8 (pg_baseline) + zlib-9",
            {"bits": 8, "clip": "percentile", "scale_floor": 1 / 127, "round_stored": False},
            "zlib",
            {"level": 9},
        ),
        ("RTN int6 sdclip + zstd-3", {"bits": 6}, "zstd", {"level": 3}),
        ("GPTQ int6 sdclip + zstd-3", {"bits": 6, "gptq": True}, "zstd", {"level": 3}),
        ("GPTQ int6 act-order + brotli-11", {"bits": 6, "gptq": True, "act_order": True}, "brotli", {"quality": 11}),
    ]:
        plan = make_plan(state, PlanConfig(), "scalar", fmt)
        enc, wr, dec, size, blob = _roundtrip(state, plan, ctx, codec, cparams)
        rows.append(
            (label, f"{size:,} B", enc + wr + dec, f"encode {enc:.2f} s, write {wr:.2f} s, read+verify {dec:.2f} s")
        )
        if fmt.get("gptq") and not fmt.get("act_order"):
            rows.append(_parallel_row(state, plan, ctx, codec, cparams, enc, blob, args.encode_jobs))
    rows += _fair_rows(state, ctx)
    if args.codebooks:
        train = shards.read_shards(sorted(b.glob("train_*.bin")))
        rows += _codebook_rows(state, model, ctx, data.windows(train, 1024, args.calib_windows))

    flops = forward_flops_per_token(model.cfg, SEQ_LEN)
    n = max(model.cfg.model_dim, model.cfg.mlp_mult * model.cfg.model_dim)
    threads = torch.get_num_threads()
    cpu = torch.device(args.device).type == "cpu"
    defaults = (
        f"defaults: {eval_streams(None, torch.device('cpu'), False, False)} streams × 1 thread, "
        f"batch {max(1, CPU_BATCH_TOKENS // SEQ_LEN)}"
        if cpu
        else "defaults: 1 stream, batch 16"
    )
    modes = {  # label: evaluate's keyword arguments
        f"1 stream × {threads} threads, batch 8": {"batch_size": 8, "streams": 1},
        defaults: {},
        "eval.compile, batch 8": {"batch_size": 8, "compile": True},
    }
    for precision, dtype in PRECISIONS.items():
        samples, timed = [], {}  # (sustained, peak) matmul rates, taken between the evaluations
        for label, kw in modes.items():
            if kw.get("compile"):  # the one-off compile is not timed (it is reported apart)
                t0 = time.perf_counter()
                evaluate(model, val, tables, args.device, precision, progress=False, **kw)
                compile_s = time.perf_counter() - t0
            dt, r = float("inf"), None
            for _ in range(max(1, args.repeats)):
                samples.append(matmul_gflops(n, dtype, device=args.device))
                t0 = time.perf_counter()
                r = evaluate(model, val, tables, args.device, precision, progress=False, **kw)
                dt = min(dt, time.perf_counter() - t0)
            timed[label] = dt, r
        samples.append(matmul_gflops(n, dtype, device=args.device))
        sustained, peak = (max(col) for col in zip(*samples, strict=True))
        ceiling, peak_ceiling = sustained * 1e9 / flops, peak * 1e9 / flops
        rows.append(
            (
                f"matmul {precision} ({n}×{n}·{n}×{n}ᵀ)",
                f"{sustained:,.1f} GFLOP/s",
                None,
                f"ceiling {ceiling:,.0f} tokens/s at {flops / 1e6:.2f} MFLOP/token (window {SEQ_LEN}); "
                f"fastest single matmul {peak:,.1f} GFLOP/s",
            )
        )
        for label, (dt, r) in timed.items():
            assert r is not None
            rate = r.tokens / dt
            first = f"; first call {compile_s:.0f} s" if "compile" in label else ""
            rows.append(
                (
                    f"evaluation {precision}, {label}",
                    f"{rate:,.0f} tokens/s",
                    dt,
                    f"{rate / ceiling:.0%} of the ceiling, {rate / peak_ceiling:.0%} of the single-matmul peak "
                    f"({rate * flops / 1e9:.1f} GFLOP/s); "
                    f"loss {r.loss:.6f} bpb {r.bpb:.6f}{first}",
                )
            )

    print(f"device {args.device}, torch threads {torch.get_num_threads()}, bundle {b}")
    print(markdown.header(["step", "size / rate", "seconds", "detail"], "lrrl"))
    for label, what, sec, detail in rows:
        print(markdown.row([label, what, "" if sec is None else f"{sec:.2f}", detail]))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def _fair_rows(state, ctx) -> list[tuple]:
    """Writing one compare landing (GPTQ int6 act-order at k 40, about 4.3 MB) through the fair codec, with
    its screen as shipped and as it was (256 KiB at 0.2%, which left most per-tensor blobs unscreened)."""
    fair = OmegaConf.to_container(OmegaConf.load(REPO / "experiments" / "codec" / "fair.yaml"))
    assert isinstance(fair, dict)
    fair = {k: v for k, v in fair.items() if k != "defaults"}
    plan = make_plan(state, PlanConfig(), "scalar", {"bits": 6, "clip_k": 40.0, "gptq": True, "act_order": True})
    units = encoder.encode_state(state, plan, ctx, progress=False)
    rows = []
    screens = [("as shipped", fair["screen"], fair["margin"]), ("before: 256 KiB at 0.2%", 262144, 0.002)]
    for label, screen, margin in screens:
        layout.forget_compressed()
        params = {**fair, "screen": screen, "margin": margin}
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            written = artifact.write(Path(tmp) / "m.bgz", units, "best", params, layout.LayoutConfig())
            t1 = time.perf_counter()
            artifact.read(Path(tmp) / "m.bgz")
            t2 = time.perf_counter()
        detail = f"screen {screen:,} B at {margin:g}; write {t1 - t0:.2f} s, read {t2 - t1:.2f} s"
        rows.append((f"fair write of a 4 MB landing, {label}", f"{written.final_bytes:,} B", t2 - t0, detail))
    return rows


def _codebook_rows(state, model, ctx, windows) -> list[tuple]:
    """The compare's two slowest steps: one additive probe (AQLM at 1.5 codebooks, about the 4 MB landing, full
    output objective, written through ans) and one clustered landing (K 128 encode plus the compare's ClusComp
    calibration, compare.calibrate.clustered), each under pg_record's int8 embedding rule as in the compare."""
    cc = OmegaConf.load(REPO / "experiments" / "compare.yaml").compare
    emb = Rule(match="tok_emb.weight", format="scalar", params=OmegaConf.to_container(cc.embedding))
    tune = FinetuneConfig(**OmegaConf.to_container(cc.calibrate.clustered))
    rows = []
    steps = [
        ("additive probe, 1.5 codebooks", "additive", {"num_codebooks": 1.5}),
        ("clustered landing, K 128 + ClusComp", "clustered", {"codebook_size": 128}),
    ]
    for label, fmt, params in steps:
        plan = make_plan(state, PlanConfig(rules=[emb]), fmt, params)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            units = encoder.encode_state(state, plan, ctx, progress=False)
            t1 = time.perf_counter()
            detail = f"encode {t1 - t0:.1f} s"
            if fmt == "clustered":
                units, report = finetune(units, model, windows, tune, ctx.device, progress=False)
                detail += f", calibration {time.perf_counter() - t1:.1f} s ({tune.steps} steps of {tune.batch_size})"
                detail += f", loss {report['loss_before']:.4f} -> {report['loss_after']:.4f} nats"
            t2 = time.perf_counter()
            written = artifact.write(Path(tmp) / "m.bgz", units, "ans", {}, layout.LayoutConfig())
            detail += f", write (ans) {time.perf_counter() - t2:.1f} s"
        rows.append((label, f"{written.final_bytes:,} B", time.perf_counter() - t0, detail))
    return rows


def _parallel_row(state, plan, ctx, codec: str, params: dict, seconds: float, blob: bytes, jobs: int) -> tuple:
    """The table row comparing the plan's encode by `jobs` worker processes with the one-process encode
    (seconds, its artifact's bytes), plus one process at the workers' thread count (what threads alone do)."""
    threads = torch.get_num_threads()
    par, par_blob = _encode_seconds(state, plan, ctx, codec, params, jobs)
    worker_threads = max(1, threads // jobs)
    torch.set_num_threads(worker_threads)
    try:
        one, one_blob = _encode_seconds(state, plan, ctx, codec, params, 1)
    finally:
        torch.set_num_threads(threads)
    same = "identical" if par_blob == blob == one_blob else "DIFFERENT"
    return (
        f"GPTQ int6 encode, encode_jobs 1 vs {jobs}",
        f"×{seconds / par:.2f}",
        par,
        f"1 job × {threads} threads {seconds:.2f} s, {jobs} jobs × {worker_threads} threads {par:.2f} s "
        f"(1 job × {worker_threads} threads {one:.2f} s); artifacts {same}",
    )


if __name__ == "__main__":
    main()
