"""Models compared at equal final bytes: the same export system searched to the same budgets on each
model (one `bytegolf compare` directory per model), every model's landing at a budget paired with a
baseline model's landing by the document bootstrap over their shared window sample, each model's
rate–quality front drawn on one plot, and, where the compares rank several systems, Kendall's tau
between two models' rankings.

    python -m bytegolf.study.crossmodel --out results/seeds/rate --baseline default --baseline plain \\
        default=DIR plain=DIR lam0.3=DIR ...
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bytegolf import markdown
from bytegolf.errors import BytegolfError
from bytegolf.measure.stats import PairedDelta, kendall_tau_b, paired_bootstrap
from bytegolf.run import store
from bytegolf.study import plots
from bytegolf.study.ranking import evaluated


def model_points(models: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """Evaluated points of each model's compare directory: `system` keeps what the compare ranked the
    point as, `variant` (the series in plots) becomes the model."""
    from bytegolf.study.analysis import system

    out = {}
    for name, d in models.items():
        rows = [r for r in store.load_results([d]) if evaluated(r) and r.get("status") not in ("seed", "over_budget")]
        if not rows:
            raise BytegolfError(f"crossmodel: no evaluated point under {d} (model {name!r})")
        out[name] = [{**r, "system": system(r), "variant": name} for r in rows]
    return out


def landing(rows: list[dict[str, Any]], budget: int, system: str | None = None) -> dict[str, Any] | None:
    """The system's point at budget; system None: the best (least bpb) there. None where there is none."""
    here = [r for r in rows if r.get("budget_bytes") == budget and system in (None, r.get("system"))]
    return min(here, key=lambda r: r["bpb"]) if here else None


def paired(a: dict[str, Any], b: dict[str, Any], samples: int, level: float) -> PairedDelta:
    """bpb(a) − bpb(b) with a document-bootstrap CI; a BytegolfError where the windows differ."""
    if a["window_bytes"] != b["window_bytes"] or a.get("window_docs") != b.get("window_docs"):
        raise BytegolfError(
            f"crossmodel: {a['variant']} and {b['variant']} were scored on different windows (eval settings differ)"
        )
    docs = np.asarray(a["window_docs"]) if a.get("window_docs") is not None else None
    return paired_bootstrap(
        np.asarray(a["window_nll"]), np.asarray(b["window_nll"]), np.asarray(a["window_bytes"]), samples, level,
        groups=docs,
    )  # fmt: skip


def table(
    points: dict[str, list[dict[str, Any]]], baselines: list[str], samples: int = 2000, level: float = 0.95
) -> str:
    """Markdown: per budget, system and model, bytes, knob, bpb, unquantized bpb and Δbpb against each
    baseline model's landing of the same system; where the compares rank several systems, each model's
    best at the budget is paired with each baseline's best too."""
    budgets = sorted({r["budget_bytes"] for rs in points.values() for r in rs if r.get("budget_bytes")}, reverse=True)
    systems = sorted({r["system"] for rs in points.values() for r in rs})
    head = ["budget", "system", "model", "final bytes", "knob", "bpb", "unquantized bpb"]
    head += [f"Δbpb vs {b} [{level:.0%} CI, documents]" for b in baselines]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for budget in budgets:
        for sysname in systems + (["best"] if len(systems) > 1 else []):
            pick = None if sysname == "best" else sysname
            for name, rows in points.items():
                r = landing(rows, budget, pick)
                if r is None:
                    lines.append(f"| {budget:,} | {sysname} | {name} | — | — | not landed | |" + " |" * len(baselines))
                    continue
                knob = f"{r['knob']} {r['knob_value']:.4g}" if r.get("knob_value") is not None else "—"
                label = f"best: {r['system']}" if pick is None else sysname
                cells = [f"{budget:,}", label, name, f"{r['final_bytes']:,}", knob]
                cells += [f"{r['bpb']:.4f}", f"{r['ref_bpb']:.4f}"]
                for b in baselines:
                    other = landing(points[b], budget, pick)
                    if b == name or other is None:
                        cells.append("—")
                    else:
                        d = paired(r, other, samples, level)
                        cells.append(f"{d.delta:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]" + (" *" if d.significant else ""))
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n`*`: the CI excludes 0. Negative Δ: the model is better than the baseline.\n"


def ranking_tau(a: Path, b: Path, pairs: list[tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """Kendall tau-b between the bpb of the systems landed in both compares (does a ranking found on one
    model hold on the other?), with its p-value and the systems: per budget both ranked, or per
    (budget in a, budget in b) pair, e.g. budgets at equal bits per weight on models of other sizes."""
    from bytegolf.study.analysis import system

    def landed(d: Path) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        for r in store.load_results([d]):
            if r.get("budget_bytes") and evaluated(r) and r.get("bpb") is not None:
                out.setdefault(int(r["budget_bytes"]), {})[system(r)] = float(r["bpb"])
        return out

    la, lb = landed(a), landed(b)
    if pairs is None:
        pairs = [(x, x) for x in sorted(set(la) & set(lb), reverse=True)]
    rows = []
    for ba, bb in pairs:
        ra, rb = la.get(ba, {}), lb.get(bb, {})
        names = sorted(set(ra) & set(rb))
        tau, p = kendall_tau_b(np.array([ra[n] for n in names]), np.array([rb[n] for n in names]))
        rows.append({"budget": ba, "budget_b": bb, "systems": names, "tau": tau, "p": p})
    return rows


def _tau_pairs(specs: list[str]) -> list[tuple[int, int]] | None:
    """`--tau A:B` options as (budget of the first model, budget of the second) pairs."""
    try:
        return [(int(float(x)), int(float(y))) for x, y in (s.split(":") for s in specs)] if specs else None
    except ValueError:
        raise SystemExit(f"crossmodel: --tau takes BUDGET_A:BUDGET_B in bytes, got {specs}") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bytegolf.study.crossmodel", description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="NAME=COMPARE_DIR, one per model")
    ap.add_argument("--baseline", action="append", default=[], help="a model NAME every model is paired with")
    ap.add_argument("--out", type=Path, required=True, help="directory for table.md and front.png")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument(
        "--tau", action="append", default=[], metavar="A:B",
        help="rank the first model at budget A against the second at budget B (repeatable; default: equal budgets)",
    )  # fmt: skip
    ns = ap.parse_args(argv)
    models = {}
    for item in ns.models:
        name, sep, d = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"crossmodel: expected NAME=DIR, got {item!r}")
        models[name] = Path(d)
    unknown = [b for b in ns.baseline if b not in models]
    if unknown:
        raise SystemExit(f"crossmodel: baseline {unknown[0]!r} is not one of the models ({', '.join(models)})")
    points = model_points(models)
    ns.out.mkdir(parents=True, exist_ok=True)
    text = table(points, ns.baseline, ns.samples)
    names = list(models)
    pairs = _tau_pairs(ns.tau)
    if pairs and len(names) < 2:
        raise SystemExit("crossmodel: --tau needs two models (NAME=DIR NAME=DIR)")
    model_pairs = [(names[0], names[1])] if pairs else [(x, y) for i, x in enumerate(names) for y in names[i + 1 :]]
    results = [(x, y, t) for x, y in model_pairs for t in ranking_tau(models[x], models[y], pairs)]
    for x, y, t in results if pairs else []:
        if len(t["systems"]) < 2:
            raise SystemExit(
                f"crossmodel: --tau {t['budget']}:{t['budget_b']}: {len(t['systems'])} system(s) landed in both "
                f"{x} and {y} at those budgets (need 2)"
            )
    taus = [
        [
            x,
            t["budget"],
            y,
            t["budget_b"],
            len(t["systems"]),
            ", ".join(t["systems"]),
            f"{t['tau']:.3f}",
            f"{t['p']:.3g}",
        ]
        for x, y, t in results
        if len(t["systems"]) >= 2
    ]
    if taus:
        heads = ["model", "budget", "model", "budget", "n", "systems in both", "Kendall tau-b (bpb)", "p"]
        text += "\nDo the systems rank the same way on both models?\n\n" + markdown.grid(heads, taus, "lrlrrlrr")
    (ns.out / "table.md").write_text(text)
    rows = [r for rs in points.values() for r in rs]
    plots.frontier(rows, "bpb", "bits per byte (sampled windows)", ns.out / "front.png", series="model")
    print(text)
    print(f"-> {ns.out / 'table.md'}, {ns.out / 'front.png'}")


if __name__ == "__main__":
    main()
