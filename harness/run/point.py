"""One run point: quantize, write the artifact, decode it from disk, evaluate, record the result."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bytegolf.artifact import container, layout
from bytegolf.artifact import file as artifact
from bytegolf.codecs import get_codec
from bytegolf.data import evaldata
from bytegolf.data.windows import Windows, window_count
from bytegolf.errors import ConfigError
from bytegolf.fingerprint import file_fingerprint
from bytegolf.formats import EncodeContext, Encoded, get_format
from bytegolf.formats.scalar import clip_warning
from bytegolf.measure import accounting, codebytes, metrics, stats
from bytegolf.measure.evaluate import EvalResult, evaluate, protocol, unigram_bpb
from bytegolf.model import adapters, checkpoint
from bytegolf.quantize import encoder
from bytegolf.quantize.block_calibration import finetune
from bytegolf.quantize.encoder import encode_sequential
from bytegolf.quantize.plan import make_plan, plan_config
from bytegolf.run.provenance import git_revision, source_hash
from bytegolf.run.store import write_json_atomic

log = logging.getLogger("bytegolf")
ARTIFACT_GROUPS = ("model", "format", "codec", "layout", "plan", "calib", "finetune")  # what shapes an artifact
REPO = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("BYTEGOLF_CACHE", REPO / ".cache" / "bytegolf"))


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


class Stages:
    """Wall-clock seconds per named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        log.info("%s ...", name)
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def name_and_params(node: DictConfig) -> tuple[str, dict[str, Any]]:
    d = OmegaConf.to_container(node, resolve=True)
    assert isinstance(d, dict)
    return str(d.pop("name")), d


def reference_eval(model, windows, tables, cfg: DictConfig, fp: dict[str, str]) -> EvalResult:
    """The unquantized model's evaluation under cfg.eval, cached by the model's and data's fingerprints."""
    ev = OmegaConf.to_container(cfg.eval)
    ev.pop("kld", None)  # the reference's own eval does not depend on it
    if ev.get("stride", None) is None:
        ev.pop("stride", None)  # keys from before sliding evaluation stay valid
    if not ev.get("compile", False):
        ev.pop("compile", None)  # (and from before compiled evaluation)
    if not ev.get("documents", False):
        ev.pop("documents", None)  # (and from before document-isolated evaluation)
    path = cache_dir() / "ref" / f"{_key(fp, ev, cfg.device)}.json"
    if path.is_file():
        return EvalResult(**json.loads(path.read_text()))
    e, streams = cfg.eval, cfg.eval.get("streams")  # .get: configs written before streams have no such key
    r = evaluate(model, windows, tables, cfg.device, e.precision, e.batch_size, compile=e.compile, streams=streams)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, r.__dict__)
    return r


def artifact_key(cfg: DictConfig, fp: dict[str, str]) -> str:
    """The identity of an encoding and of the file it is written to: the model's and data's fingerprints, every
    setting that shapes the artifact, the seed, the device and the code."""
    shaping = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ARTIFACT_GROUPS if k in cfg}
    return _key("artifact", fp, shaping, cfg.seed, cfg.device, source_hash())


def reusable_artifact(key: str) -> dict[str, Any] | None:
    """The record of an earlier artifact with this key whose file is still there, unchanged; else None."""
    entry_path = cache_dir() / "artifacts" / f"{key}.json"
    if not entry_path.is_file():
        return None
    entry = json.loads(entry_path.read_text())
    src = Path(entry["artifact"])
    if not src.is_file() or file_fingerprint(src) != entry["fingerprint"]:
        return None
    return entry


def remember_artifact(key: str, path: Path, units: list[Encoded], finetune_report: dict[str, Any]) -> None:
    """Record a freshly written artifact under its encoding's key, for a later identical run to reuse."""
    entry = {
        "artifact": str(path.resolve()),
        "fingerprint": file_fingerprint(path),
        "nominal_bits": [u.nominal_bits for u in units],
        "finetune": finetune_report,
    }
    entry_path = cache_dir() / "artifacts" / f"{key}.json"
    entry_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(entry_path, entry)


def calibration_windows(ed: evaldata.EvalData, cfg: DictConfig) -> np.ndarray:
    return ed.calib_windows(cfg.calib.seq_len, cfg.calib.windows)


def calibration_grams(
    ad: adapters.ModelAdapter, model, ed: evaldata.EvalData | None, cfg: DictConfig, fp: dict[str, str]
) -> tuple[dict[str, torch.Tensor], int]:
    """The calibration Gram matrices (cached by checkpoint, calibration data and settings); none for an
    adapter without a model (model=weights)."""
    if cfg.calib.windows <= 0 or model is None or ed is None:
        return {}, 0
    calib = {k: v for k, v in OmegaConf.to_container(cfg.calib).items() if k != "sequential"}  # same Grams
    parts = [fp["checkpoint"], fp["train"], calib]
    if ad.name != "gpt":  # the same weights under other code (or another tokenizer) are another model
        parts += [ad.name, fp.get("code"), fp.get("tokenizer"), "F.linear"]  # Grams of F.linear/einsum uses too
    path = cache_dir() / "calib" / f"{_key(*parts)}.safetensors"
    if path.is_file():
        from safetensors.torch import load_file

        g = load_file(str(path))
        return g, int(g.pop("__rows__").item())
    grams, rows = ad.grams(model, calibration_windows(ed, cfg), cfg.device, cfg.calib.batch_size)
    checkpoint.save_state_dict({**grams, "__rows__": torch.tensor([rows])}, path)
    return grams, rows


TIED_EMBEDDING = "tok_emb.weight"


def embedding_warning(plan: list) -> str | None:
    """A warning when the plan stores the tied embedding below int8 (compare gives it pg_record's int8 rule;
    a run quantizes it with the run's format unless plan=embedding_int8 or a rule says otherwise), else None."""
    a = next((a for a in plan if a.name == TIED_EMBEDDING), None)
    if a is None or a.format == "passthrough" or (a.format == "scalar" and int(a.params.get("bits", 0)) >= 8):
        return None
    if a.format == "kquant" and a.params.get("type") in ("Q6_K", "Q8_0"):  # llama.cpp's output-tensor types
        return None  # (the gguf_* presets: +0.014 bpb for all of Q4_K_M on the default model)
    setting = f"{a.format} {a.params['bits']}-bit" if "bits" in a.params else a.format
    return (
        f"the tied embedding {TIED_EMBEDDING} is stored by {setting}, where compare gives it pg_record's int8 "
        "rule (int6 there costs +0.37 bpb on the default model): add plan=embedding_int8 for the same rule"
    )


def check_formats(plan: list) -> None:
    """Build every format the plan names with its settings once: bad settings raise ConfigError naming them."""
    seen = set()
    for a in plan:
        key = (a.format, json.dumps(a.params, sort_keys=True, default=str))
        if key not in seen:
            seen.add(key)
            get_format(a.format, **a.params)


def encode_units(
    cfg: DictConfig,
    state: dict[str, torch.Tensor],
    plan: list,
    ctx: EncodeContext,
    lowrank,
    ed: evaldata.EvalData | None,
    progress: bool = True,
) -> list[Encoded]:
    """The plan's encoding: all at once on the unquantized model's Grams (by `encode_jobs` worker
    processes when > 1, the same bytes), or block by block with calib.sequential (each block's Grams from
    the model whose earlier blocks are quantized; one process)."""
    if not cfg.calib.get("sequential", False) or cfg.calib.windows <= 0:
        jobs = cfg.get("encode_jobs", 1)
        return encoder.encode_state(state, plan, ctx, progress, lowrank, jobs=1 if jobs is None else jobs)
    ad = adapters.get_adapter(cfg.model)
    if not ad.evaluates or ed is None:
        raise ConfigError(f"calib.sequential needs a model to calibrate; model={ad.name} has none")
    windows = calibration_windows(ed, cfg)

    def grams_of(current: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        return ad.grams(ad.build(current), windows, cfg.device, cfg.calib.batch_size, progress=False)

    return encode_sequential(state, plan, ctx, grams_of, lowrank)


def run_point(cfg: DictConfig, out_dir: Path, units: list[Encoded] | None = None) -> dict[str, Any]:
    """Run one point of the grid and write result.json (plus the artifact) into out_dir.

    units: this config's encoding when the caller already has it (compare's landed probe); it is
    written, decoded, checked and evaluated exactly as a fresh one would be."""
    t_start = time.perf_counter()
    if cfg.get("eval") is not None:  # eval.windows=-3 would evaluate the whole split: fail before any work
        window_count(cfg.eval.get("windows", 0))
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    st = Stages()
    fmt_name, fmt_params = name_and_params(cfg.format)
    codec_name, codec_params = name_and_params(cfg.codec)
    if fmt_name == "scalar" and (warning := clip_warning(fmt_params)):
        log.warning("warning: %s", warning)
    lay = layout.LayoutConfig(**cfg.layout)
    get_codec(codec_name, **codec_params)  # bad codec settings fail before any work is done
    extra_serializers = serializers(list(cfg.get("extra_codecs") or []), lay)

    with st("load"):
        ad = adapters.get_adapter(cfg.model)
        state = ad.load_state()
        encoder.check_finite(state)  # NaN/Inf weights end here, before evaluation and calibration
        ref_model = ad.build(state)
        ed = evaldata.load(cfg, ad, ref_model) if ref_model is not None else None
        fp = {"checkpoint": ad.fingerprint(), **ad.fingerprints(), **(ed.fingerprints if ed else {})}
    with st("plan"):  # bad format settings (the run's or a rule's) fail here, before evaluation and calibration
        plan_cfg = plan_config(cfg.plan)
        plan = make_plan(state, plan_cfg, fmt_name, fmt_params)
        check_formats(plan)
        if warning := embedding_warning(plan):
            log.warning("warning: %s", warning)
    with st("eval_reference"):
        ref = reference_eval(ref_model, ed.val, ed.tables, cfg, fp) if ed else None
    with st("calibrate"):
        grams, rows = calibration_grams(ad, ref_model, ed, cfg, fp)
    reused = units is not None
    key = artifact_key(cfg, fp) if units is None and cfg.get("reuse", True) else None
    earlier = reusable_artifact(key) if key else None
    path = out_dir / artifact.ARTIFACT_NAME
    if earlier is not None:  # an identical encoding was written before: its file is this run's artifact
        log.info("reusing the artifact of an identical encoding: %s", earlier["artifact"])
        with st("write"):
            if Path(earlier["artifact"]).resolve() != path.resolve():
                shutil.copyfile(earlier["artifact"], path)
            manifest = container.read_manifest(path)
            written = artifact.Written([], path.stat().st_size, container.stored_sizes(path), [], manifest)
        with st("decode"):
            decoded, units = artifact.read(path)
            for unit, bits in zip(units, earlier["nominal_bits"], strict=True):
                unit.nominal_bits, unit.recon = bits, {t.name: decoded[t.name] for t in unit.tensors}
        ft_report = earlier["finetune"]
    else:
        with st("encode"):
            if units is None:
                counts = dict.fromkeys(grams, rows)
                ctx = EncodeContext(hessians=grams, hessian_counts=counts, device=cfg.device, seed=cfg.seed)
                units = encode_units(cfg, state, plan, ctx, plan_cfg.lowrank, ed)
            elif [t.name for u in units for t in u.tensors] != [a.name for g in encoder.group_units(plan) for a in g]:
                raise ConfigError("run_point: the given encoding does not cover this plan's tensors")
        with st("finetune"):
            units, ft_report = _finetune(units, ref_model, ed, cfg, ad)
        with st("write"):
            written = artifact.write(path, units, codec_name, codec_params, lay)
        with st("decode"):
            decoded, _ = artifact.read(path)
            artifact.verify_bit_exact(decoded, units)
        if key:
            remember_artifact(key, path, units, ft_report)
    gguf = _write_gguf(out_dir, units, decoded, st) if cfg.get("gguf", False) else None
    with st("extra_codecs"):
        extra = _extra_codecs(out_dir, units, extra_serializers, decoded)
    with st("metrics"):
        tensor_rows = _tensor_metrics(state, decoded, units, grams)
        storage = accounting.storage_summary(units, written.manifest["units"], written.blob_stored, written.final_bytes)
        code = codebytes.artifact_code_bytes(path)
    with st("eval"):
        res = None
        if ed is not None:
            model = ad.build(decoded)
            reference = ref_model if cfg.eval.get("kld", False) else None  # lockstep: KLD needs both models' logits
            res = evaluate(
                model,
                ed.val,
                ed.tables,
                cfg.device,
                cfg.eval.precision,
                cfg.eval.batch_size,
                reference=reference,
                compile=cfg.eval.compile,
                streams=cfg.eval.get("streams"),
            )

    params = sum(t.numel() for t in state.values())
    final_bytes = gguf["gguf_bytes"] if gguf else written.final_bytes  # a GGUF run counts its GGUF file
    total_bytes = final_bytes + code["code_bytes"]
    counted = total_bytes if cfg.budget.count_code else final_bytes
    quantized = [r for r in tensor_rows if r["format"] != "passthrough"]
    weights = [r["params"] for r in quantized]
    nominal = sum(u.nominal_bits for u in units)
    result = {
        "format": fmt_name,
        "codec": codec_name,
        "format_params": fmt_params,
        "codec_params": codec_params,
        "layout": OmegaConf.to_container(cfg.layout),
        "params": params,
        "final_bytes": final_bytes,
        "bits_per_weight": final_bytes * 8 / params,
        **(gguf or {}),
        "nominal_bits_per_weight": nominal / params,
        "code_bytes": code["code_bytes"],
        "total_bytes": total_bytes,
        "codecs_used": code["codecs"],
        "fits_cap": counted <= cfg.budget.cap_bytes,
        "cap_bytes": cfg.budget.cap_bytes,
        "cap_counts_code": cfg.budget.count_code,
        "rel_mse": metrics.weighted_mean([r["rel_mse"] for r in quantized], weights),
        "sqnr_db": metrics.weighted_mean([r["sqnr_db"] for r in quantized], weights),
        "output_error": metrics.weighted_mean(
            [r["output_error"] for r in quantized], [r["output_error_params"] for r in quantized]
        ),
        "output_error_covers": _output_error_covers(quantized),
        **(eval_fields(res, ref, ed.val_docs, ed.val, cfg.eval) if res and ref and ed else _unmeasured(ad)),
        **storage,
        "tensors": tensor_rows,
        "seconds": round(time.perf_counter() - t_start, 3),
        "stage_seconds": st.seconds,
        "encoding_reused": reused,
        "artifact_reused_from": earlier["artifact"] if earlier else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": cfg.device,
        "git_revision": git_revision(),
        "source_hash": source_hash(),
        "fingerprints": fp,
        "calibration_rows": rows,
        "artifact": str(path),
        "extra_codecs": extra,
        "finetune": ft_report,
        "lowrank_tensors": [t.name for u in units if u.format == "lowrank" for t in u.tensors]
        + [
            t["name"]
            for u in units
            for p in u.meta.get("parts", [])
            if p.get("format") == "lowrank"
            for t in p["tensors"]
        ],
    }
    write_json_atomic(out_dir / "result.json", result)
    return result


def _write_gguf(out_dir: Path, units: list[Encoded], decoded: dict[str, torch.Tensor], st: Stages) -> dict[str, Any]:
    """`gguf: true`: model.gguf beside the artifact (kquant blocks verbatim, passthrough tensors F16/F32), read
    back by gguf-py and checked bit for bit against the decoded model (ArtifactError otherwise). Its size is the
    run's final_bytes; the container's stays as container_bytes."""
    from bytegolf.run import gguf_file

    path = out_dir / gguf_file.GGUF_NAME
    with st("gguf"):
        size = gguf_file.write_gguf(path, gguf_file.gguf_tensors(units))
        gguf_file.verify_gguf(path, decoded)
    container_bytes = (out_dir / artifact.ARTIFACT_NAME).stat().st_size
    return {"gguf": True, "gguf_bytes": size, "gguf_file": str(path), "container_bytes": container_bytes}


BOOTSTRAP_SAMPLES = 2000  # document resamples behind a run's bpb and Δbpb intervals


def eval_fields(res: EvalResult, ref: EvalResult, docs: np.ndarray, val: Windows, eval_cfg: Any) -> dict[str, Any]:
    """result.json's evaluation fields: bpb and Δbpb against the unquantized model, each with its 95%
    document-bootstrap interval, the protocol in words, and the bpb of a unigram model fitted on the evaluated
    tokens themselves (a run worse than it has lost the model)."""
    docs = np.asarray(docs)
    lo, hi = stats.bpb_interval(res.window_nll, res.window_bytes, docs, BOOTSTRAP_SAMPLES)
    delta = stats.paired_bootstrap(
        np.asarray(res.window_nll), np.asarray(ref.window_nll), np.asarray(res.window_bytes), BOOTSTRAP_SAMPLES,
        groups=docs,
    )  # fmt: skip
    return {
        "val_loss": res.loss,
        "ppl": res.ppl,
        "bpb": res.bpb,
        "bpb_ci": [lo, hi],
        "ref_val_loss": ref.loss,
        "ref_bpb": ref.bpb,
        "delta_bpb": res.bpb - ref.bpb,
        "delta_bpb_ci": [delta.lo, delta.hi],
        "unigram_bpb": unigram_bpb(targets := val.targets(), targets, res.bytes),
        "protocol": protocol(eval_cfg, len(res.window_nll)),
        "eval_windows": len(res.window_nll),
        "eval_tokens": res.tokens,
        "eval_bytes": res.bytes,
        "eval_precision": eval_cfg.precision,
        "eval_stride": eval_cfg.get("stride", None),
        "kld": res.kld,
        "window_nll": res.window_nll,
        "window_bytes": res.window_bytes,
        "ref_window_nll": ref.window_nll,
        "window_docs": docs.tolist(),
    }


def unigram_warning(r: dict[str, Any]) -> str | None:
    """A warning when a result's bpb is worse than a unigram model's on the same tokens, else None."""
    if r.get("bpb") is None or r.get("unigram_bpb") is None or r["bpb"] <= r["unigram_bpb"]:
        return None
    if r.get("ref_bpb") is not None and r["ref_bpb"] > r["unigram_bpb"]:
        return (
            f"the unquantized model's bpb {r['ref_bpb']:.4f} is already worse than a unigram model's "
            f"{r['unigram_bpb']:.4f} on the same tokens: an untrained model, or data from another tokenizer?"
        )
    return (
        f"bpb {r['bpb']:.4f} is worse than a unigram model's {r['unigram_bpb']:.4f} on the same tokens: the "
        "quantized model has lost what it learned (too few bits, or a clip tuned for another width?)"
    )


def _unmeasured(ad: adapters.ModelAdapter) -> dict[str, Any]:
    """result.json's evaluation fields for an adapter without a model: null, and why."""
    keys = ("val_loss", "ppl", "bpb", "ref_val_loss", "ref_bpb", "delta_bpb", "kld", "window_nll", "window_bytes")
    return {
        **dict.fromkeys(keys),
        "bpb_measured": False,
        "bpb_not_measured": f"model={ad.name} has no model to evaluate: weight error and bytes only",
    }


def _finetune(units, ref_model, ed: evaldata.EvalData | None, cfg: DictConfig, ad: adapters.ModelAdapter):
    """ClusComp-style block calibration of codebooks and scales (codes frozen), when finetune.steps > 0."""
    if "finetune" not in cfg or cfg.finetune.steps <= 0:
        return units, {"steps": 0}
    if not ad.blockwise:
        raise ConfigError(
            f"finetune.steps > 0 (block calibration) needs the built-in model's blocks; model={ad.name} has none "
            "(set finetune.steps=0)"
        )
    ft_cfg = OmegaConf.to_object(cfg.finetune)
    n_win = ft_cfg.windows or cfg.calib.windows
    if ed is None or ed.files is None or not ed.files.train or n_win <= 0:
        raise ConfigError("finetune needs train shards and windows > 0 (finetune.windows or calib.windows)")
    windows = ed.calib_windows(cfg.calib.seq_len, n_win)
    return finetune(units, ref_model, windows, ft_cfg, cfg.device, seed=cfg.seed)


def serializers(
    entries: list[Any], lay: layout.LayoutConfig
) -> list[tuple[str, str, dict[str, Any], layout.LayoutConfig]]:
    """extra_codecs entries as (name, codec, params, layout), checked: a codec name (its defaults, the
    run's layout) or a mapping {name, codec, params, layout}."""
    out = []
    for entry in entries:
        if isinstance(entry, str):
            out.append((entry, entry, get_codec(entry).config(), lay))
            continue
        e = OmegaConf.to_container(entry, resolve=True) if isinstance(entry, DictConfig) else dict(entry)
        unknown = set(e) - {"name", "codec", "params", "layout"}
        if unknown or "codec" not in e:
            raise ConfigError(
                f"extra_codecs entry {e!r}: needs codec (and name, params, layout), not {sorted(unknown)}"
            )
        codec, params = str(e["codec"]), dict(e.get("params") or {})
        get_codec(codec, **params)
        entry_lay = layout.LayoutConfig(**e["layout"]) if e.get("layout") else lay
        out.append((str(e.get("name") or codec), codec, params, entry_lay))
    return out


def _extra_codecs(
    out_dir: Path, units, entries: list[tuple[str, str, dict, layout.LayoutConfig]], decoded
) -> dict[str, dict]:
    """The same streams through other serializers (see `serializers`): bytes only, each file decoded and checked."""
    out = {}
    params = sum(v.numel() for v in decoded.values())
    for name, codec, codec_params, entry_lay in entries:
        path = out_dir / f"model.{name}.bgz"
        t0 = time.perf_counter()
        written = artifact.write(path, units, codec, codec_params, entry_lay)
        t1 = time.perf_counter()
        again, _ = artifact.read(path)
        if any(not torch.equal(again[k], v) for k, v in decoded.items()):
            raise ConfigError(f"serializer {name} did not round-trip the artifact")
        code = codebytes.artifact_code_bytes(path)["code_bytes"]
        blob_codecs = [b["codec"] for b in container.read_manifest(path)["blobs"]]
        roles = accounting.role_report(units, written.manifest["units"], written.blob_stored, written.final_bytes)
        out[name] = {
            "final_bytes": written.final_bytes,
            "bytes_by_role": {role: v["bytes"] for role, v in roles.items()},
            "bits_per_weight": written.final_bytes * 8 / params,
            "code_bytes": code,
            "blob_codecs": {c: blob_codecs.count(c) for c in sorted(set(blob_codecs))},
            "layout": entry_lay.describe(),
            "seconds_write": round(t1 - t0, 3),
            "seconds_read": round(time.perf_counter() - t1, 3),
        }
    return out


def _tensor_metrics(state, decoded, units, grams) -> list[dict]:
    """Per-tensor error measures of the decoded weights against the originals: rel_mse and SQNR over the whole
    tensor, output error per matrix (per slice for a weight bank; metrics.tensor_output_error)."""
    rows = []
    for unit in tqdm(units, desc="metrics", unit="unit", leave=False):
        unit_numel = sum(math.prod(t.shape) for t in unit.tensors) or 1
        for spec in unit.tensors:
            w, w_hat = state[spec.name], decoded[spec.name]
            rel = metrics.rel_mse(w.float(), w_hat.float()) if w.is_floating_point() else 0.0
            out_err, covered = metrics.tensor_output_error(spec.name, w.float(), w_hat.float(), grams)
            rows.append(
                {
                    "name": spec.name,
                    "format": unit.format,
                    "params": w.numel(),
                    "rel_mse": rel,
                    "sqnr_db": metrics.sqnr_db(rel),
                    "output_error": out_err,
                    "output_error_params": covered,  # the params it covers (all, or a bank's slices with Grams)
                    "nominal_bits": unit.nominal_bits * w.numel() / unit_numel,
                }
            )
    return rows


def _output_error_covers(quantized: list[dict]) -> dict[str, Any]:
    """What the aggregate output error covers: the quantized tensors and params with a Gram matrix, of all
    quantized params, and the tensors without one (in full or, for a bank, some slices)."""
    return {
        "tensors": sum(1 for r in quantized if r["output_error_params"]),
        "params": sum(r["output_error_params"] for r in quantized),
        "of_params": sum(r["params"] for r in quantized),
        "missing": [r["name"] for r in quantized if r["output_error_params"] < r["params"]],
    }


def _output_err(r: dict[str, Any]) -> str:
    """The summary's output error, with the share of quantized weights it covers when that is not all."""
    cov = r.get("output_error_covers")
    if not cov or not cov["of_params"] or cov["params"] >= cov["of_params"]:
        return f"output_err {r['output_error']:.3e}"
    share = min(round(100 * cov["params"] / cov["of_params"], 1), 99.9)  # 99.96% is not 100%
    return f"output_err {r['output_error']:.3e} ({share:g}% of quantized weights)"


def _parts(by_role: dict[str, float] | None) -> str:
    """A serializer's bytes by part as the summary prints them, or "" where a result predates them."""
    return f" ({', '.join(f'{k} {v:,.0f} B' for k, v in by_role.items())})" if by_role else ""


def summary_line(r: dict[str, Any]) -> str:
    """The summary a run prints: one line of results, one of where the bytes went."""
    roles = sorted(r["bytes_by_role"].items(), key=lambda kv: -kv[1]["bytes"])
    shares = ", ".join(f"{name} {v['bytes']:,.0f} B ({v['share']:.1%})" for name, v in roles)
    extra = "".join(
        f"\n  {name}: {x['final_bytes']:,} B, {x['final_bytes'] / r['final_bytes'] - 1:+.2%} vs {r['codec']}"
        + _parts(x.get("bytes_by_role"))
        for name, x in (r.get("extra_codecs") or {}).items()
    )
    over = r.get("bytes_over_bound")
    bound = f"; {over:.3f}× the entropy bound" if over else ""
    k = r.get("kld")
    kld = f" KLD {k['mean']:.4g}±{k['se']:.2g} top-1 {k['top1_agreement']:.1%}" if k else ""
    warning = unigram_warning(r)
    gguf = (
        f" (model.gguf, the counted file; container {r['format']}+{r['codec']} {r['container_bytes']:,} B)"
        if r.get("gguf_bytes")
        else ""
    )
    return (
        f"{r['format']}+{'gguf' if gguf else r['codec']}: {r['final_bytes']:,} B{gguf} (+{r['code_bytes']:,} B code; "
        f"{r['bits_per_weight']:.3f} bits/weight, "
        f"nominal {r['nominal_bits_per_weight']:.3f}) rel_mse {r['rel_mse']:.3e} {_output_err(r)} "
        f"{bpb_phrase(r)}{kld}"
        f"{'' if r['fits_cap'] else ' DOES NOT FIT the cap'} in {r['seconds']:.1f}s\n"
        + (f"  protocol: {r['protocol']}; 95% intervals from a bootstrap over documents\n" if r.get("protocol") else "")
        + f"  bytes by role: {shares}{bound}{extra}"
        + (f"\n  WARNING: {warning}" if warning else "")
    )


def bpb_phrase(r: dict[str, Any]) -> str:
    """ "bpb 1.8903 [1.86, 1.92] (Δ +0.0027 [+0.0019, +0.0035] vs 1.8876)", the intervals where the result has them."""
    if r.get("bpb") is None:
        return "bpb not measured"
    ci = r.get("bpb_ci")
    dci = r.get("delta_bpb_ci")
    bpb = f"bpb {r['bpb']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
    delta = f"Δ {r['delta_bpb']:+.4f}" + (f" [{dci[0]:+.4f}, {dci[1]:+.4f}]" if dci else "")
    return f"{bpb} ({delta} vs {r['ref_bpb']:.4f})"
