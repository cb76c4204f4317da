"""results/allocate/table.md: allocation vs uniform scalar at each budget (run by run.sh)."""

import json
from pathlib import Path

import numpy as np

from harness.stats import paired_bootstrap

HERE = Path(__file__).resolve().parent
print("| budget (B) | plan | final bytes | landed | rel MSE | output error | bpb | Δbpb vs fp | vs uniform (95% CI) |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
for budget in (8_000_000, 6_000_000):
    alloc = json.loads((HERE / f"alloc_{budget}" / "result.json").read_text())
    (upath,) = (HERE / "uniform" / "points" / str(budget)).glob("scalar_*/result.json")
    uni = json.loads(upath.read_text())
    d = paired_bootstrap(
        np.asarray(alloc["window_nll"]), np.asarray(uni["window_nll"]), np.asarray(alloc["window_bytes"])
    )
    hist = ", ".join(f"{k} ×{v}" for k, v in alloc["allocation"]["settings"].items())
    for label, r, vs in (
        (f"allocate: {hist}", alloc, f"{d.delta:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]"),
        (f"uniform bits=6, clip_k={uni['format_params']['clip_k']:g}", uni, "-"),
    ):
        print(
            f"| {budget:,} | {label} | {r['final_bytes']:,} | {r['final_bytes'] / budget:.4f} | {r['rel_mse']:.4e} "
            f"| {r['output_error']:.4e} | {r['bpb']:.4f} | {r['delta_bpb']:+.4f} | {vs} |"
        )
