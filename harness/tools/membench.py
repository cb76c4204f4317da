"""Peak memory of run, compare and allocate on a model about 4× the default (12 layers × 768 wide, MLP 3×).

Run: python -m bytegolf.tools.membench [--out DIR] [--layers 12] [--dim 768] [--mlp-mult 3] [--windows 8]
Builds the model (random init, seeded; memory does not depend on training) as a bundle next to the
default bundle's tokenizer and data, runs each verb as its own subprocess with the default settings
except the evaluation windows, and prints a markdown table of each one's peak RSS (the child's
ru_maxrss) and wall time. Target: every verb within 24 GiB on the 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bytegolf import markdown
from bytegolf.model.checkpoint import save_state_dict
from bytegolf.model.gpt import GPT, ModelConfig

REPO = Path(__file__).resolve().parents[2]


def make_bundle(out: Path, cfg: ModelConfig, default: Path) -> int:
    """Write a bundle with a seeded random model of shape `cfg` and the default bundle's tokenizer and data;
    returns the parameter count."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = GPT(cfg)
    save_state_dict(model.state_dict(), out / "model.safetensors")
    for f in ["tokenizer.model", *(p.name for p in default.glob("*_*.bin"))]:
        shutil.copy(default / f, out / f)
    return sum(p.numel() for p in model.parameters())


def peak(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """(peak RSS in GiB, seconds, exit status) of one subprocess; its output goes to `log`."""
    driver = (
        "import resource, subprocess, sys; "
        "rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
    )
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        res = subprocess.run([sys.executable, "-c", driver, *cmd], stdout=subprocess.PIPE, stderr=fh, text=True)
    dt = time.perf_counter() - t0
    lines = res.stdout.strip().splitlines()
    with open(log, "a") as fh:
        fh.write("\n".join(lines[:-1]))
    kib, rc = (int(v) for v in lines[-1].split())
    return kib / 2**20, dt, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="working directory (default: a temporary one, removed after)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--mlp-mult", type=int, default=3)
    ap.add_argument("--windows", type=int, default=8, help="evaluation windows of each verb")
    ap.add_argument("--budget", type=int, default=16_000_000, help="compare and allocate budget in bytes")
    args = ap.parse_args()
    tmp = None if args.out else tempfile.TemporaryDirectory()
    work = Path(args.out or tmp.name)
    cfg = ModelConfig(num_layers=args.layers, model_dim=args.dim, num_heads=12, num_kv_heads=4, mlp_mult=args.mlp_mult)
    bundle = work / "bundle"
    n = make_bundle(bundle, cfg, REPO / "results" / "default")
    default_params = 17_059_912  # results/default/model.safetensors
    common = [f"bundle={bundle}", f"eval.windows={args.windows}", "eval.sample=false"]
    verbs = {
        "run (scalar GPTQ int6, brotli)": ["run", "format=scalar", "format.gptq=true", f"hydra.run.dir={work}/run"],
        "compare (scalar, sparse_outlier searched; fair codec)": [
            "compare",
            f"compare.budgets=[{args.budget}]",
            "compare.formats=[scalar,sparse_outlier]",
            "compare.references=[]",
            "compare.allocated=null",
            "compare.seeds=1",
            "compare.front_points=0",
            f"hydra.run.dir={work}/compare",
        ],
        "allocate (scalar bits 2-8, brotli)": [
            "allocate",
            f"budget.cap_bytes={args.budget}",
            f"hydra.run.dir={work}/allocate",
        ],
    }
    shape = f"{args.layers} layers × {args.dim}, MLP {args.mlp_mult}×"
    print(f"model: {shape}: {n:,} parameters ({n / default_params:.1f}× the default)")
    print(f"torch threads {torch.get_num_threads()}, RAM limit of this table's target: 24 GiB\n")
    print(markdown.header(["verb", "peak RSS GiB", "seconds", "exit"], "lrrr"))
    for label, argv in verbs.items():
        gib, dt, rc = peak(["bytegolf", *argv, *common], work / f"{argv[0]}.log")
        print(markdown.row([label, f"{gib:.2f}", f"{dt:.0f}", str(rc)]), flush=True)
    print(f"\nlogs in {work}" if args.out else "")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
