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

--streams: instead, a per-stream table of symbol streams: the int6 codes of the same quantization
(block matrices, one stream per tensor as grouping "tensor" stores them; tok_emb's int8 codes apart)
and k-means indices of format clustered (scalar K=16, d=1; vector K=256, d=4; on the matrices of
--cluster-layers only, to stay within a few minutes). Per codec (the `fair` preset, ans,
brotli-11, deepcabac where nncodec is installed) and the order-0 bound (n·H₀/8 per stream, summed):
bytes, bits per weight and encode / decode seconds, each blob written through the layout
(one symbol per byte, one worker) and read back and checked.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from bytegolf import markdown
from bytegolf.artifact import container, layout
from bytegolf.artifact import file as artifact
from bytegolf.codecs import StreamInfo, get_codec
from bytegolf.codecs.bounds import entropy_bound_bytes
from bytegolf.formats import EncodeContext
from bytegolf.formats.base import Encoded, Stream
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


STREAM_CODECS: list[tuple[str, str, dict[str, Any]]] = [
    ("ans", "ans", {}),
    ("brotli-11", "brotli", {"quality": 11, "lgwin": 24}),
    ("deepcabac", "deepcabac", {}),
]
CLUSTERED = [
    ("clustered K=16 d=1", {"codebook_size": 16, "dim": 1}),
    ("clustered K=256 d=4", {"codebook_size": 256, "dim": 4}),
]


def fair_params() -> dict[str, Any]:
    """The `fair` preset's parameters for codec best (experiments/codec/fair.yaml without its defaults)."""
    node = OmegaConf.to_container(OmegaConf.load(REPO / "experiments" / "codec" / "fair.yaml"))
    assert isinstance(node, dict)
    node.pop("defaults", None)
    return node


def symbol_units(units: list, keep: Any) -> tuple[list[Encoded], int]:
    """One unit per symbol "codes" stream of the kept units (so each is its own blob), and their weights."""
    out, weights = [], 0
    for u in units:
        if not u.tensors or not keep(u.tensors[0].name):
            continue
        streams = {n: s for n, s in u.streams.items() if s.role == "codes" and s.alphabet is not None}
        if streams:
            weights += sum(math.prod(t.shape) for t in u.tensors)
        for n, s in sorted(streams.items()):
            out.append(Encoded(u.format, list(u.tensors), {n: Stream(s.data, s.role, s.alphabet)}))
    return out, weights


def measure_streams(units: list[Encoded], codec: str, params: dict[str, Any]) -> dict[str, Any]:
    """Bytes and seconds of the units' streams written through the layout (one blob each) and read back."""
    layout.forget_compressed()
    t0 = time.perf_counter()
    _, blobs = layout.pack(units, codec, params, layout.LayoutConfig(), workers=1)
    t1 = time.perf_counter()
    for b in blobs:
        assert b.stored is not None
        if get_codec(b.codec, **b.params).decompress(b.stored, len(b.raw), b.info) != b.raw:
            raise AssertionError(f"{codec}: a blob does not round-trip")
    t2 = time.perf_counter()
    won: dict[str, int] = {}
    for b in blobs:
        won[b.codec] = won.get(b.codec, 0) + 1
    return {"bytes": sum(len(b.stored or b"") for b in blobs), "enc_s": t1 - t0, "dec_s": t2 - t1, "won": won}


def stream_table(state: dict[str, torch.Tensor], cluster_layers: list[str]) -> str:
    """The --streams table (markdown) and how its streams were made."""
    try:
        get_codec("deepcabac").compress(b"\0\1", StreamInfo(1, 2))
        codecs = list(STREAM_CODECS)
        note = ""
    except Exception as exc:  # ConfigError without nncodec
        codecs = [c for c in STREAM_CODECS if c[1] != "deepcabac"]
        note = f"deepcabac left out: {exc}\n"
    t0 = time.perf_counter()
    q = quantize(state)
    sets = [
        ("int6 codes, block matrices (per tensor)", *symbol_units(q, lambda n: n.startswith("blocks."))),
        ("int8 codes, tok_emb", *symbol_units(q, lambda n: n == "tok_emb.weight")),
    ]
    prefixes = tuple(f"blocks.{i}." for i in cluster_layers)
    chosen = {k: v for k, v in state.items() if v.ndim == 2 and k.startswith(prefixes)}
    for label, params in CLUSTERED:
        plan = make_plan(chosen, PlanConfig(), "clustered", dict(params))
        units = encoder.encode_state(chosen, plan, EncodeContext(), progress=False)
        sets.append((f"{label} indices, blocks {','.join(cluster_layers)}", *symbol_units(units, lambda n: True)))
    t_quant = time.perf_counter() - t0
    heads = ["stream", "symbols", "weights", "codec", "bytes", "bits/weight", "× bound", "enc s", "dec s"]
    lines = [markdown.header(heads, "lrrlrrrrr")]
    for label, units, weights in tqdm(sets, desc="stream table", unit="set"):
        streams = [s for u in units for s in u.streams.values()]
        n = sum(s.data.size for s in streams)
        bound = sum(entropy_bound_bytes(s.data.reshape(-1), s.alphabet) for s in streams)
        rows = [("order-0 bound", {"bytes": bound, "enc_s": math.nan, "dec_s": math.nan, "won": {}})]
        rows.append(("fair", measure_streams(units, "best", fair_params())))
        rows += [(name, measure_streams(units, codec, params)) for name, codec, params in codecs]
        for name, r in rows:
            if r["won"] and name == "fair":
                name += " (" + ", ".join(f"{k} {v}" for k, v in sorted(r["won"].items())) + ")"
            cells = [
                label,
                n,
                weights,
                name,
                f"{r['bytes']:,.0f}",
                f"{8 * r['bytes'] / weights:.4f}",
                f"{r['bytes'] / bound:.4f}" if bound else "-",
                "-" if math.isnan(r["enc_s"]) else f"{r['enc_s']:.2f}",
                "-" if math.isnan(r["dec_s"]) else f"{r['dec_s']:.2f}",
            ]
            lines.append(markdown.row(cells))
    head = (
        f"Streams made in {t_quant:.1f}s: int6 = scalar int6 SDClip k=12.85 RTN (no Hessians), tok_emb int8 "
        f"(the pg_record preset without GPTQ); clustered = format clustered, scope tensor, unweighted, on the "
        f"2-D matrices of blocks {','.join(cluster_layers)}. One blob per stream through the layout (one symbol "
        f"per byte), one worker; fair = best over experiments/codec/fair.yaml (blobs won per codec).\n{note}\n"
    )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(REPO / "results" / "default"), help="directory with model.safetensors")
    ap.add_argument("--checkpoint", help="model file (default: BUNDLE/model.safetensors)")
    ap.add_argument("--out", help="write the table here (.csv: CSV, else markdown)")
    ap.add_argument("--codecs", help="comma-separated subset of: " + ", ".join(c[0] for c in CODECS))
    ap.add_argument("--all", action="store_true", help="slow codecs (lzma-9e, zstd-22) with every grouping too")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for quantizing (0: default)")
    ap.add_argument("--streams", action="store_true", help="the per-stream table (fair, ans, brotli, deepcabac)")
    ap.add_argument("--cluster-layers", default="0", help="--streams: blocks whose matrices are clustered (0,4)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint or Path(args.bundle) / "model.safetensors")
    if args.streams:
        table = stream_table(checkpoint.load_state_dict(ckpt), args.cluster_layers.split(","))
        print(f"Model {ckpt}. " + table)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(f"Model {ckpt}. " + table)
        return
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
