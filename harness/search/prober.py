"""Probe encoder: encode + write one format at one knob value and measure its bytes (the search's `measure`).

A `Workspace` holds what every probe shares (state dict, plan settings, calibration Gram
matrices); an `Encoder` is one format's `measure(value)` for bytegolf.search.budget: it makes the plan at
that value, encodes, writes a probe artifact with the run's layout and codec, counts its final and
code bytes, deletes the file and returns a `Probe`. Probes are cached by knob value, in memory and
(optionally) in a JSON file, so a rerun or another budget's search does not encode again; the
last few encodings are kept so a landing is not encoded twice.

Compares running at once on one output directory share that file (`ProbeCache`): a probe being
computed is claimed as points are (bytegolf.run.store.claim: a claim file next to the cache, written
aside then hard-linked, a dead or stale taker's claim taken over), so a second process asking for
the same knob value waits and reads the first one's result instead of encoding it again; the file
is rewritten (merged with what is on disk) under a claim of its own.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.data import evaldata
from bytegolf.errors import ConfigError
from bytegolf.formats import EncodeContext, get_format
from bytegolf.measure import codebytes, metrics
from bytegolf.model import adapters
from bytegolf.quantize.encoder import group_units
from bytegolf.quantize.plan import PlanConfig, Rule, make_plan
from bytegolf.quantize.sensitivity import output_fishers
from bytegolf.run import store
from bytegolf.run.point import calibration_grams, calibration_windows, encode_units
from bytegolf.search.budget import Knob, Probe, with_setting

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("bytegolf")


def remove_stale_probes(folder: Path) -> list[Path]:
    """Delete the probe files (.probe-<name>-<pid>.bgz) of processes that no longer run, such as a search
    killed with SIGKILL; a live process's probe (another compare on the same folder) stays. Returns the
    removed paths."""
    removed = []
    for path in folder.glob(".probe-*-*.bgz"):
        pid = path.stem.rsplit("-", 1)[-1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Workspace:
    """What every probe of every format shares: the state dict, the plan settings, the Gram matrices."""

    def __init__(self, cfg: DictConfig) -> None:

        self.cfg = cfg
        self.adapter = ad = adapters.get_adapter(cfg.model)
        self.state = ad.load_state()
        model = ad.build(self.state) if cfg.calib.windows > 0 or ad.blockwise else None
        self.data = evaldata.load(cfg, ad, model) if model is not None else None
        fp = {"checkpoint": ad.fingerprint(), **ad.fingerprints(), **(self.data.fingerprints if self.data else {})}
        self.fingerprint = fp["checkpoint"]
        if cfg.calib.windows > 0:
            self.grams, self.rows = calibration_grams(ad, model, self.data, cfg, fp)
        else:
            self.grams, self.rows = {}, 0
        plan_cfg = OmegaConf.to_object(cfg.plan)
        assert isinstance(plan_cfg, PlanConfig)
        plan_cfg.rules = [r if isinstance(r, Rule) else Rule(**r) for r in plan_cfg.rules]
        self.plan_cfg = plan_cfg

    def sensitivities(self) -> dict[str, Any]:
        """Each weight's loss sensitivity (bytegolf.quantize.sensitivity) on the calibration windows, gathered once;
        the built-in GPT only."""
        if getattr(self, "_sens", None) is None:
            if self.adapter.name != "gpt" or self.data is None or not self.grams:
                raise ConfigError(
                    "the loss objective needs the built-in GPT and calibration windows (calib.windows > 0); "
                    "use objective output_error"
                )
            model = self.adapter.build(self.state)
            windows = calibration_windows(self.data, self.cfg)
            self._sens, _ = output_fishers(model, windows, self.cfg.device, self.cfg.calib.batch_size)
        return self._sens

    def context(self) -> EncodeContext:
        """The EncodeContext of every encode on this workspace (Gram matrices, device, seed)."""

        counts = dict.fromkeys(self.grams, self.rows)
        return EncodeContext(hessians=self.grams, hessian_counts=counts, device=self.cfg.device, seed=self.cfg.seed)


KEEP_ENCODINGS = 4  # encodings an Encoder keeps in memory (each about the model's fp32 size)


class ProbeCache:
    """Probes by knob value: in memory and, with a path, in a JSON file ({**header, "probes": [...]}) that
    the processes searching the same system on one output directory share.

    get(value, compute) computes a value's probe only when neither memory nor the file has it, and while it
    does so holds the claim `.claim-<file name>-<value>` next to the file: another process asking for the
    same value meanwhile polls (every `wait_s` seconds) until the result is in the file or the claim is
    gone (its holder failed or died: then it claims and computes itself)."""

    wait_s = 1.0  # seconds between looks at a value another process is computing
    lock_wait_s = 0.02  # seconds between tries to claim the file for a rewrite (held for milliseconds)

    def __init__(self, path: Path | None, header: dict[str, Any] | None = None) -> None:
        self.path, self.header = path, dict(header or {})
        self.probes: dict[float, Probe] = {}
        self.computed = 0  # probes this instance computed (the others came from memory or the file)
        self.load()

    def _read(self) -> dict[float, Probe]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            body = json.loads(self.path.read_text())
        except (OSError, ValueError):  # vanished between the look and the read
            return {}
        return {float(p["value"]): Probe(**p) for p in body.get("probes", [])}

    def load(self) -> None:
        """Add the file's probes that memory lacks."""
        for value, probe in self._read().items():
            self.probes.setdefault(value, probe)

    def get(self, value: float, compute: Callable[[float], Probe]) -> Probe:
        if value in self.probes:
            return self.probes[value]
        if self.path is None:
            self.probes[value] = probe = compute(value)
            self.computed += 1
            return probe
        name = f"{store.CLAIM}-{self.path.name}-{value!r}"
        waited = False
        while True:
            self.load()
            if value in self.probes:
                if waited:
                    log.info("probe %s=%g: computed by another process", self.path.stem, value)
                return self.probes[value]
            with store.claim(self.path.parent, name) as owned:
                if owned:
                    self.load()  # computed and released between the look and the claim
                    if value not in self.probes:
                        self.probes[value] = compute(value)
                        self.computed += 1
                        self.save()
                    return self.probes[value]
            if not waited:
                log.info("probe %s=%g: another process is computing it; waiting", self.path.stem, value)
                waited = True
            time.sleep(self.wait_s)

    def save(self) -> None:
        """Rewrite the file with memory's probes and the file's (another process's) together."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            with store.claim(self.path.parent, f"{store.CLAIM}-{self.path.name}-write") as owned:
                if owned:
                    self.load()
                    probes = [asdict(p) for p in sorted(self.probes.values(), key=lambda p: p.value)]
                    store.write_json_atomic(self.path, {**self.header, "probes": probes})
                    return
            time.sleep(self.lock_wait_s)


class Encoder:
    """measure(value): encode + write one format at one knob value; cached in memory and in a JSON file."""

    def __init__(
        self,
        ws: Workspace,
        fmt: str,
        params: dict[str, Any],
        knob: Knob | None,
        codec: str,
        codec_params: dict[str, Any],
        work_dir: Path,
        cache_file: Path | None = None,
        plan_at: Callable[[float], Any] | None = None,
        layout_cfg: dict[str, Any] | None = None,
    ) -> None:
        """plan_at(value): the PlanConfig at a knob value (default: the workspace's); layout_cfg: the
        layout settings (default: the run config's)."""
        self.ws, self.fmt, self.params, self.knob = ws, fmt, dict(params), knob
        self.plan_at, self.layout_cfg = plan_at, layout_cfg
        self.codec, self.codec_params = codec, dict(codec_params)
        self.work_dir, self.cache_file = work_dir, cache_file
        header = {"format": fmt, "params": self.params, "knob": asdict(knob) if knob else None, "codec": codec}
        self.probes = ProbeCache(cache_file, header)
        self.cache: dict[float, Probe] = self.probes.probes
        self.units: dict[float, list] = {}  # the last few probes' encodings, so a landing is not encoded again
        self.estimates: dict[float, float | None] = {}

    def params_at(self, value: float) -> dict[str, Any]:
        if self.knob is None:
            return dict(self.params)
        return with_setting(self.params, self.knob.name, self.knob.value(value))

    def estimate(self, value: float) -> float | None:
        """The plan's analytic bytes at value: every unit's Format.nominal_bits over 8, before any codec (the
        search scales it by what probes measured); None where a unit's format does not know its bits or the
        plan adds low-rank corrections."""
        if value not in self.estimates:
            plan_cfg = self.plan_at(value) if self.plan_at else self.ws.plan_cfg
            total: float | None = None
            if not getattr(plan_cfg.lowrank, "active", False):
                try:
                    plan = make_plan(self.ws.state, plan_cfg, self.fmt, self.params_at(value))
                    bits = [
                        get_format(g[0].format, **g[0].params).predict_bits({a.name: self.ws.state[a.name] for a in g})
                        for g in group_units(plan)
                    ]
                    total = None if any(b is None for b in bits) else sum(bits) / 8  # type: ignore[misc]
                except ConfigError:
                    total = None
            self.estimates[value] = total
        return self.estimates[value]

    def __call__(self, value: float) -> Probe:
        """The probe at value: from memory or the cache file, else encoded here (claimed while it is)."""
        return self.probes.get(value, self.encode)

    def encode(self, value: float) -> Probe:
        """Encode + write at value and measure (no cache)."""

        t0 = time.perf_counter()
        cfg = self.ws.cfg
        path = self.work_dir / f".probe-{self.fmt}-{os.getpid()}.bgz"  # own file: compares may share work_dir
        try:
            torch.manual_seed(cfg.seed)
            plan_cfg = self.plan_at(value) if self.plan_at else self.ws.plan_cfg
            plan = make_plan(self.ws.state, plan_cfg, self.fmt, self.params_at(value))
            units = encode_units(cfg, self.ws.state, plan, self.ws.context(), plan_cfg.lowrank, self.ws.data, False)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            lay = layout.LayoutConfig(**(self.layout_cfg if self.layout_cfg is not None else cfg.layout))
            written = artifact.write(path, units, self.codec, self.codec_params, lay)
            code = codebytes.artifact_code_bytes(path)["code_bytes"]
            err, rel = self.errors(units)
            seconds = round(time.perf_counter() - t0, 3)
            probe = Probe(value, written.final_bytes, code, seconds, output_error=err, rel_mse=rel)
            self.units[value] = units
            while len(self.units) > KEEP_ENCODINGS:
                self.units.pop(next(iter(self.units)))
        except ConfigError as exc:
            probe = Probe(value, None, 0, round(time.perf_counter() - t0, 3), str(exc))
        finally:
            path.unlink(missing_ok=True)
        name = self.knob.name if self.knob else "settings"
        log.info("probe %s %s=%g: %s", self.fmt, name, value, probe.final_bytes or probe.error)
        return probe

    def encoding(self, value: float) -> list | None:
        """The units encoded at value: the remembered ones, else encoded again (a probe read from the cache
        file has none); None where the format refuses the settings."""
        if value not in self.units:
            self.encode(value)
        return self.units.get(value)

    def errors(self, units: list) -> tuple[float | None, float | None]:
        """The encoding's pre-artifact errors as a run reports them: the parameter-weighted mean output error
        (bytegolf.measure.metrics.output_error; None without any Gram matrix) and rel MSE over the tensors
        the format encodes."""

        errs, weights, rels, sizes = [], [], [], []
        for unit in units:
            if unit.format == "passthrough":
                continue
            for spec in unit.tensors:
                rec = (unit.recon or {}).get(spec.name)
                if rec is None:
                    continue
                w = self.ws.state[spec.name].float()
                rels.append(metrics.rel_mse(w, rec.float()))
                sizes.append(w.numel())
                err, covered = metrics.tensor_output_error(spec.name, w, rec.float(), self.ws.grams)
                if covered:
                    errs.append(err)
                    weights.append(covered)
        out = metrics.weighted_mean(errs, weights) if errs else None
        return out, (metrics.weighted_mean(rels, sizes) if rels else None)


def probe_rows(search_dir: Path) -> list[dict[str, Any]]:
    """Every cached probe under a compare's search/ as a row: variant (the system's label), format, knob,
    value, final_bytes, code_bytes, rel_mse, output_error, seconds. Probes that did not encode are left out."""
    rows = []
    for path in sorted(search_dir.glob("*.json")):
        if path.name.endswith(".allocation.json"):
            continue
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        label = path.stem.rsplit("_", 1)[0]  # <label>_<config hash>
        knob = (body.get("knob") or {}).get("name")
        for p in body.get("probes", []):
            if p.get("final_bytes") is not None:
                rows.append({"variant": label, "format": body.get("format"), "knob": knob, **p})
    return rows
