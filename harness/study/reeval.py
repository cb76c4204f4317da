"""Does a cheaper evaluation precision change a compare's verdicts? Re-evaluates every landed artifact of a
compare directory in another precision on the same windows, and sets each ranked pair's
Δbpb (a point against its budget's best) beside the Δbpb the compare measured.

Run: python -m bytegolf.study.reeval DIR [--precision P] [--tolerance 0.1] [--budget BYTES ...]
(default P: fp32 when the compare evaluated in bf16, its default, else bf16)
Prints a markdown table and writes it to DIR/precision.md. The verdict: every Δbpb in the new precision is
within `tolerance` (relative) of the measured one, or the pairs that are not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from bytegolf import markdown
from bytegolf.artifact import file as artifact
from bytegolf.data import evaldata
from bytegolf.errors import ConfigError
from bytegolf.measure.evaluate import DTYPES, evaluate
from bytegolf.model import adapters
from bytegolf.run.store import load_results
from bytegolf.run.sweep import register_resolvers
from bytegolf.study.ranking import evaluated, ranking


def reevaluate(row: dict[str, Any], precision: str, device: str = "cpu") -> float:
    """bpb of a point's artifact (its directory's model.bgz) evaluated in `precision` on the point's windows."""
    out = Path(row["path"])
    path = out / artifact.ARTIFACT_NAME
    if not path.is_file():
        raise ConfigError(f"{out}: no artifact {artifact.ARTIFACT_NAME} to re-evaluate (rerun the compare)")
    cfg = OmegaConf.load(out / "config.yaml")
    ad = adapters.get_adapter(cfg.model)
    ref_model = ad.build(ad.load_state())
    ed = evaldata.load(cfg, ad, ref_model)
    decoded, _ = artifact.read(path)
    ev = cfg.eval
    res = evaluate(
        ad.build(decoded),
        ed.val,
        ed.tables,
        device,
        precision,
        ev.get("batch_size"),
        progress=False,
        compile=bool(ev.get("compile", False)),
        streams=ev.get("streams"),
    )
    if res.window_bytes != row["window_bytes"]:
        raise ConfigError(f"{out}: the re-evaluation scored other windows than the stored result")
    return res.bpb


def pairs(rows: list[dict[str, Any]], budgets: list[int]) -> list[dict[str, Any]]:
    """Each budget's ranked points against its best: (budget, name, best name, Δbpb as measured)."""
    out = []
    for b in budgets:
        ranked = [e for e in ranking(rows, b, samples=10, level=0.95) if e["row"].get("bpb") is not None]
        if not ranked:
            continue
        best = ranked[0]["row"]
        out.extend(
            {"budget": b, "row": e["row"], "best": best, "delta": e["row"]["bpb"] - best["bpb"]} for e in ranked[1:]
        )
    return out


def table(checked: list[dict[str, Any]], precision: str, stored: str, tolerance: float) -> tuple[str, bool]:
    """Markdown table of the pairs and whether every Δbpb stayed within tolerance."""
    lines = [markdown.header(["budget", "system", "vs best", f"Δbpb {stored}", f"Δbpb {precision}", "ratio"], "rllrrr")]
    ok = True
    for c in checked:
        ratio = c["delta_new"] / c["delta"] if c["delta"] else float("nan")
        within = bool(np.isfinite(ratio) and abs(ratio - 1) <= tolerance)
        ok &= within
        mark = "" if within else " ✗"
        lines.append(
            markdown.row(
                [
                    c["budget"],
                    c["name"],
                    c["best_name"],
                    f"{c['delta']:+.4f}",
                    f"{c['delta_new']:+.4f}",
                    f"{ratio:.3f}{mark}",
                ]
            )
        )
    verdict = "within" if ok else "NOT within"
    lines.append(f"\nEvery Δbpb in {precision} {verdict} {tolerance:.0%} of its {stored} value ({len(checked)} pairs).")
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--precision", default=None, help="default: the other of fp32/bf16")
    p.add_argument("--tolerance", type=float, default=0.1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget", type=int, action="append", help="only this budget's pairs (repeatable)")
    a = p.parse_args(argv)
    if a.precision is not None and a.precision not in DTYPES:
        raise SystemExit(f"error: unknown precision {a.precision!r}; choose one of {sorted(DTYPES)}")
    register_resolvers()
    try:
        return _check(a)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None


def _check(a: argparse.Namespace) -> int:
    rows = [r for r in load_results([a.dir]) if evaluated(r)]
    if not rows:
        raise SystemExit(f"{a.dir}: no evaluated compare points")
    stored = {r.get("eval_precision") for r in rows}
    if len(stored) != 1:
        raise SystemExit(f"{a.dir}: points were evaluated in different precisions {sorted(map(str, stored))}")
    if a.precision is None:
        a.precision = "fp32" if stored == {"bf16"} else "bf16"
    budgets = sorted({int(r["budget_bytes"]) for r in rows if r.get("budget_bytes")}, reverse=True)
    budgets = [b for b in budgets if not a.budget or b in a.budget]
    todo = pairs(rows, budgets)
    bpb: dict[str, float] = {}
    for i, row in enumerate({id(r): r for t in todo for r in (t["row"], t["best"])}.values()):
        print(f"[{i + 1}] {row['path']}", file=sys.stderr, flush=True)
        bpb[row["path"]] = reevaluate(row, a.precision, a.device)
    checked = [
        {
            "budget": t["budget"],
            "name": Path(t["row"]["path"]).name,
            "best_name": Path(t["best"]["path"]).name,
            "delta": t["delta"],
            "delta_new": bpb[t["row"]["path"]] - bpb[t["best"]["path"]],
        }
        for t in todo
    ]
    text, ok = table(checked, a.precision, stored.pop(), a.tolerance)
    print(text)
    (a.dir / "precision.md").write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
