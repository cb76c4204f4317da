"""Scoring an artifact that already exists: decode it from disk, evaluate it, and report bpb with its interval.

`bytegolf eval ARTIFACT` quantizes nothing: it reads the file, checks it decodes, and evaluates the decoded
model under the configured protocol (the run's own one when the artifact sits in a run directory), with
llama-perplexity's KL-divergence table against the unquantized model when `eval.kld` is set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from bytegolf.artifact import file as artifact
from bytegolf.data import evaldata
from bytegolf.errors import ConfigError
from bytegolf.measure import stats
from bytegolf.measure.evaluate import evaluate, protocol
from bytegolf.measure.fidelity import kld_table
from bytegolf.model import adapters
from bytegolf.run.point import reference_eval
from bytegolf.run.provenance import git_revision, source_hash

BOOTSTRAP_SAMPLES = 2000


def bpb_interval(nll: list[float], nbytes: list[int], docs: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bpb over a bootstrap of documents (every window of a drawn document counts)."""
    counts = stats.resample_counts(len(nll), BOOTSTRAP_SAMPLES, 0, docs)
    r = stats.resampled_ratios(np.asarray(nll)[None, :], np.asarray(nbytes), counts, 1 / stats.LN2)[:, 0]
    return float(np.quantile(r, (1 - level) / 2)), float(np.quantile(r, (1 + level) / 2))


def evaluate_artifact(cfg: DictConfig, path: Path) -> dict[str, Any]:
    """The bpb of an artifact file's decoded model, its document-bootstrap interval, Δbpb against the
    unquantized model with its paired interval, the protocol, and (eval.kld) the KL-divergence statistics."""
    t0 = time.perf_counter()
    if not path.is_file():
        raise ConfigError(f"eval: no artifact file at {path}")
    decoded, _ = artifact.read(path)
    ad = adapters.get_adapter(cfg.model)
    state = ad.load_state()
    missing = sorted(set(state) - set(decoded))
    if missing:
        raise ConfigError(
            f"eval: {path} holds no tensor {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''} of "
            f"model={ad.name}: was it written for another model?"
        )
    ref_model = ad.build(state)
    if ref_model is None:
        raise ConfigError(f"eval: model={ad.name} has no model to evaluate (weights only)")
    ed = evaldata.load(cfg, ad, ref_model)
    fp = {"checkpoint": ad.fingerprint(), **ad.fingerprints(), **ed.fingerprints}
    ref = reference_eval(ref_model, ed.val, ed.tables, cfg, fp)
    e = cfg.eval
    res = evaluate(
        ad.build(decoded),
        ed.val,
        ed.tables,
        cfg.device,
        e.precision,
        e.batch_size,
        reference=ref_model if e.get("kld", False) else None,
        compile=e.compile,
        streams=e.get("streams"),
    )
    docs = np.asarray(ed.val_docs)
    lo, hi = bpb_interval(res.window_nll, res.window_bytes, docs)
    delta = stats.paired_bootstrap(
        np.asarray(res.window_nll), np.asarray(ref.window_nll), np.asarray(res.window_bytes), BOOTSTRAP_SAMPLES,
        groups=docs,
    )  # fmt: skip
    return {
        "artifact": str(path),
        "final_bytes": path.stat().st_size,
        "bpb": res.bpb,
        "bpb_ci": [lo, hi],
        "ref_bpb": ref.bpb,
        "delta_bpb": res.bpb - ref.bpb,
        "delta_bpb_ci": [delta.lo, delta.hi],
        "val_loss": res.loss,
        "ppl": res.ppl,
        "eval_windows": len(res.window_nll),
        "eval_tokens": res.tokens,
        "eval_bytes": res.bytes,
        "eval_precision": e.precision,
        "eval_stride": e.get("stride", None),
        "protocol": protocol(e, len(res.window_nll)),
        "kld": res.kld,
        "window_nll": res.window_nll,
        "window_bytes": res.window_bytes,
        "seconds": round(time.perf_counter() - t0, 3),
        "git_revision": git_revision(),
        "source_hash": source_hash(),
    }


def eval_summary(r: dict[str, Any]) -> str:
    """What `bytegolf eval` prints: bpb ± interval and Δbpb under the named protocol, then the KLD table."""
    lo, hi = r["bpb_ci"]
    dlo, dhi = r["delta_bpb_ci"]
    head = (
        f"{r['artifact']}: {r['final_bytes']:,} B; bpb {r['bpb']:.4f} [{lo:.4f}, {hi:.4f}], "
        f"Δbpb {r['delta_bpb']:+.4f} [{dlo:+.4f}, {dhi:+.4f}] vs the unquantized {r['ref_bpb']:.4f}\n"
        f"  protocol: {r['protocol']}; 95% intervals from a bootstrap over documents; {r['seconds']:.1f}s"
    )
    return head + ("\n" + kld_table(r["kld"]) if r.get("kld") else "")
