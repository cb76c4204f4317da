"""Markdown table of the run directories under a folder: bytes per codec, errors, bpb, time, memory.

Usage: python -m bytegolf.tools.study_table DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from bytegolf.run.store import read_result


def main() -> None:
    root = Path(sys.argv[1])
    rows = []
    for path in sorted(root.glob("*/result.json")):
        r = read_result(path)
        if r is None:
            continue
        extra = r.get("extra_codecs", {})
        cols = [
            path.parent.name,
            f"{r['nominal_bits_per_weight']:.3f}",
            f"{r['rel_mse']:.4f}",
            f"{r['output_error']:.4f}",
            f"{r['final_bytes']:,}",
            ", ".join(f"{k} {v['final_bytes']:,}" for k, v in extra.items()) or "-",
            f"{r['bits_per_weight']:.3f}",
            f"{r['bpb']:.4f}",
            f"{r['delta_bpb']:+.4f}",
            f"{r['stage_seconds'].get('encode', 0) + r['stage_seconds'].get('finetune', 0):.0f}",
            f"{r['peak_rss_mb'] / 1024:.1f}",
        ]
        rows.append("| " + " | ".join(cols) + " |")
    if not rows:
        raise SystemExit(f"error: no */result.json under {root}")
    head = (
        f"| point | nominal bits/w | rel MSE | output err | {r['codec']} bytes | other codecs (bytes) | "
        "bits/w | bpb | Δbpb | encode s | peak RSS GB |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
