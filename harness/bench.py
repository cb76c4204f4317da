"""Speed benchmark on the default bundle: encode+serialize+decode (RTN, GPTQ) and evaluation tokens/s.

Run: python -m bytegolf.bench [--bundle DIR] [--device cpu] [--windows 16]
Prints a markdown table; targets (2 CPU cores): RTN round trip ≤ 5 s, GPTQ ≤ 90 s.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from bytegolf import artifact, checkpoint, data, layout, shards, tokenizer
from bytegolf.calibration import gram_matrices
from bytegolf.evaluate import evaluate
from bytegolf.formats import EncodeContext
from bytegolf.plan import PlanConfig, make_plan

REPO = Path(__file__).resolve().parent.parent


def _roundtrip(state, plan, ctx, codec: str, params: dict) -> tuple[float, float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        units = artifact.encode_state(state, plan, ctx, progress=False)
        t1 = time.perf_counter()
        written = artifact.write(Path(tmp) / "m.bgz", units, codec, params, layout.LayoutConfig())
        t2 = time.perf_counter()
        decoded, _ = artifact.read(Path(tmp) / "m.bgz")
        artifact.verify_bit_exact(decoded, units)
        t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, written.final_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(REPO / "results" / "default"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--windows", type=int, default=16, help="evaluation windows of 1024 tokens")
    ap.add_argument("--calib-windows", type=int, default=16)
    args = ap.parse_args()
    b = Path(args.bundle)
    state = checkpoint.load_state_dict(b / "model.safetensors")
    model = checkpoint.build_model(state)
    sp = tokenizer.load_tokenizer(b / "tokenizer.model")
    tables = tokenizer.byte_tables(sp, model.cfg.vocab_size)
    val = data.windows(shards.read_shards(sorted(b.glob("val_*.bin"))), 1024, args.windows)
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
        enc, wr, dec, size = _roundtrip(state, plan, ctx, codec, cparams)
        rows.append(
            (label, f"{size:,} B", enc + wr + dec, f"encode {enc:.2f} s, write {wr:.2f} s, read+verify {dec:.2f} s")
        )

    for precision in ("fp32", "bf16"):
        t0 = time.perf_counter()
        r = evaluate(model, val, tables, args.device, precision, progress=False)
        dt = time.perf_counter() - t0
        rows.append(
            (f"evaluation {precision}", f"{r.tokens / dt:,.0f} tokens/s", dt, f"loss {r.loss:.5f} bpb {r.bpb:.5f}")
        )

    print(f"device {args.device}, torch threads {torch.get_num_threads()}, bundle {b}")
    print("| step | size / rate | seconds | detail |\n|---|---:|---:|---|")
    for label, what, sec, detail in rows:
        print(f"| {label} | {what} | {sec:.2f} | {detail} |")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
