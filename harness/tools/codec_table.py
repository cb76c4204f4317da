"""Codec × packing × grouping table on a model's int6 codes (Parameter Golf record style).

Run: python -m bytegolf.tools.codec_table --bundle results/default --out results/codecs/table.md
(or --checkpoint FILE; --out *.csv writes CSV). The model is quantized once like the
pg_record preset — scalar int6, symmetric, SDClip k = 12.85, one fp16 scale per row; tok_emb int8
with the percentile clip — but by round to nearest, without Hessians: GPTQ moves individual codes,
not their distribution, so the codes' statistics (entropy, bytes per codec) are close to GPTQ's.
Then the same units are written with every codec, packing and grouping (floats byte-shuffled),
read back and checked, and timed.

Columns: total bytes (the artifact file), codes bytes (the codes role's share of the stored bytes;
with grouping "all" split in proportion to the packed sizes), codes bytes / order-0 bound
(n·H₀/8 summed over the codes streams), encode and decode MB/s of the raw stream bytes (one
symbol per byte): layout + codec + file, and file + codec + unpack. ans always codes one symbol
per item, so it has no "bits" rows; lzma-9e and zstd-22 (≈1 MB/s) run with grouping "role" only
unless --all. About 4-5 minutes for the 17M-parameter baseline on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bytegolf.artifact import container, layout
from bytegolf.artifact import file as artifact
from bytegolf.formats import EncodeContext
from bytegolf.measure import accounting
from bytegolf.model import checkpoint
from bytegolf.quantize import encoder
from bytegolf.quantize.plan import PlanConfig, Rule, make_plan

REPO = Path(__file__).resolve().parents[2]
FORMAT = ("scalar", {"bits": 6, "symmetric": True, "clip": "sdclip", "clip_k": 12.85, "gptq": False})
EMBED_RULE = Rule(
    "tok_emb.weight",
    params={"bits": 8, "clip": "percentile", "clip_q": 0.9999984, "gptq": False, "round_stored": False},
)
CODECS: list[tuple[str, str, dict[str, Any]]] = [
    ("raw", "raw", {}),
    ("zlib-9", "zlib", {"level": 9}),
    ("lzma-9e", "lzma", {"preset": 9, "extreme": True}),
    ("zstd-3", "zstd", {"level": 3}),
    ("zstd-22", "zstd", {"level": 22}),
    ("brotli-11", "brotli", {"quality": 11, "lgwin": 24}),
    ("ans", "ans", {}),
    ("ans-rows", "ans", {"histogram": "rows", "rows": 64, "chunk": 512}),
]
SLOW = {"lzma-9e", "zstd-22"}  # ≈1 MB/s: only with grouping "role" unless --all
COLUMNS = ["codec", "packing", "grouping", "total_bytes", "codes_bytes", "codes_over_bound", "enc_MBps", "dec_MBps"]


def quantize(state: dict[str, torch.Tensor]) -> list:
    plan = make_plan(state, PlanConfig(rules=[EMBED_RULE]), FORMAT[0], dict(FORMAT[1]))
    return encoder.encode_state(state, plan, EncodeContext(), progress=False)


def measure(units: list, codec: str, params: dict[str, Any], cfg: layout.LayoutConfig, tmp: Path) -> dict[str, Any]:
    path = tmp / "m.bgz"
    t0 = time.perf_counter()
    w = artifact.write(path, units, codec, params, cfg)
    t1 = time.perf_counter()
    manifest, blobs = container.read_artifact(path)
    back = layout.unpack(manifest["units"], blobs)
    t2 = time.perf_counter()
    for u, v in zip(units, back, strict=True):
        for name, s in u.streams.items():
            if s.data.tobytes() != v.streams[name].data.tobytes():
                raise AssertionError(f"{codec} {cfg}: stream {name} of {u.tensors[0].name} does not round-trip")
    roles = accounting.role_report(units, w.manifest["units"], w.blob_stored, w.final_bytes)
    raw = sum(r["raw"] for name, r in roles.items() if name != "header")
    return {
        "total_bytes": w.final_bytes,
        "codes_bytes": round(roles["codes"]["bytes"]),
        "codes_over_bound": roles["codes"]["ratio"],
        "enc_MBps": raw / (t1 - t0) / 1e6,
        "dec_MBps": raw / (t2 - t1) / 1e6,
        "header_bytes": roles["header"]["bytes"],
        "codes_bound": roles["codes"]["bound"],
        "raw_bytes": raw,
    }


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * 3 + "---:|" * (len(COLUMNS) - 3)]
    for r in rows:
        cells = [
            r["codec"],
            r["packing"],
            r["grouping"],
            f"{r['total_bytes']:,}",
            f"{r['codes_bytes']:,}",
            f"{r['codes_over_bound']:.4f}",
            f"{r['enc_MBps']:.1f}",
            f"{r['dec_MBps']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(REPO / "results" / "default"), help="directory with model.safetensors")
    ap.add_argument("--checkpoint", help="model file (default: BUNDLE/model.safetensors)")
    ap.add_argument("--out", help="write the table here (.csv: CSV, else markdown)")
    ap.add_argument("--codecs", help="comma-separated subset of: " + ", ".join(c[0] for c in CODECS))
    ap.add_argument("--all", action="store_true", help="slow codecs (lzma-9e, zstd-22) with every grouping too")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for quantizing (0: default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint or Path(args.bundle) / "model.safetensors")
    chosen = set(args.codecs.split(",")) if args.codecs else {c[0] for c in CODECS}
    unknown = chosen - {c[0] for c in CODECS}
    if unknown:
        sys.exit(f"codec_table: unknown codecs {sorted(unknown)}; choose from {[c[0] for c in CODECS]}")
    state = checkpoint.load_state_dict(ckpt)
    t0 = time.perf_counter()
    units = quantize(state)
    t_quant = time.perf_counter() - t0
    combos = [
        (label, name, params, packing, grouping)
        for label, name, params in CODECS
        if label in chosen
        for packing in layout.PACKINGS
        if not (name == "ans" and packing == "bits")  # ans always codes one symbol per item
        for grouping in layout.GROUPINGS
        if args.all or label not in SLOW or grouping == "role"
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, params, packing, grouping in tqdm(combos, desc="codec table", unit="combo"):
            cfg = layout.LayoutConfig(grouping=grouping, packing=packing, shuffle=True)
            rows.append(
                {
                    "codec": label,
                    "packing": packing,
                    "grouping": grouping,
                    **measure(units, name, params, cfg, Path(tmp)),
                }
            )
    params_n = sum(t.numel() for t in state.values())
    head = (
        f"Model {ckpt} ({params_n:,} parameters), quantized in {t_quant:.1f}s: scalar int6 SDClip k=12.85 RTN "
        f"(no Hessians), tok_emb int8; codes order-0 bound {rows[0]['codes_bound']:,.0f} B "
        f"of {rows[0]['raw_bytes']:,} raw stream bytes; floats byte-shuffled.\n\n"
    )
    md = render(rows, "md")
    print(head + md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(rows, "csv") if out.suffix == ".csv" else head + md)


if __name__ == "__main__":
    main()
