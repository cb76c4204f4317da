"""Scoring an artifact that already exists: decode it from disk, evaluate it, and report bpb with its interval.

`bytegolf eval ARTIFACT` quantizes nothing: it reads the file, checks it decodes, and evaluates the decoded
model under the configured protocol (the run's own one when the artifact sits in a run directory), with
llama-perplexity's KL-divergence table against the unquantized model when `eval.kld` is set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bytegolf.artifact import file as artifact
from bytegolf.data import evaldata
from bytegolf.errors import ConfigError
from bytegolf.measure.evaluate import evaluate
from bytegolf.measure.fidelity import kld_table
from bytegolf.model import adapters
from bytegolf.run.point import bpb_phrase, eval_fields, reference_eval, unigram_warning
from bytegolf.run.provenance import git_revision, source_hash


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
    return {
        "artifact": str(path),
        "final_bytes": path.stat().st_size,
        **eval_fields(res, ref, ed.val_docs, ed.val, e),
        "seconds": round(time.perf_counter() - t0, 3),
        "git_revision": git_revision(),
        "source_hash": source_hash(),
    }


def eval_summary(r: dict[str, Any]) -> str:
    """What `bytegolf eval` prints: bpb ± interval and Δbpb under the named protocol, then the KLD table."""
    head = (
        f"{r['artifact']}: {r['final_bytes']:,} B; {bpb_phrase(r)}\n"
        f"  protocol: {r['protocol']}; 95% intervals from a bootstrap over documents; {r['seconds']:.1f}s"
    )
    warning = unigram_warning(r)
    return head + (f"\n  WARNING: {warning}" if warning else "") + ("\n" + kld_table(r["kld"]) if r.get("kld") else "")
