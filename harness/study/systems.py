"""What `bytegolf compare` ranks: its systems built from the config (formats with compare.params, named
variants, the reference presets with their plan, codec and layout, allocated systems), the compare.*
settings schema, the budgets and the per-system skips, and each point's run config."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

from bytegolf.codecs import get_codec
from bytegolf.codecs.best import candidate_spec
from bytegolf.errors import ConfigError
from bytegolf.formats import REGISTRY, get_format
from bytegolf.quantize.lqer import LowRankPlan
from bytegolf.quantize.plan import PlanConfig, Rule, format_defaults, merge_settings
from bytegolf.search import budget as search
from bytegolf.search import candidates, knapsack, tables
from bytegolf.study.analysis import PG_REFERENCES, REFERENCE_SYSTEMS

log = logging.getLogger("bytegolf")
PRESETS = Path(__file__).resolve().parents[2] / "experiments" / "experiment"
REFERENCES = REFERENCE_SYSTEMS  # the references a compare knows by name (Parameter Golf's, llama.cpp's GGUF mixes)
EMBEDDING = "tok_emb.weight"  # the tied embedding, which compare.embedding (scalar settings) quantizes
WRAPPERS = ("passthrough", "lowrank")  # formats that are not systems of their own by default


@dataclass
class System:
    """What the compare ranks: a format with its settings and rate knob, a plan, a layout and a codec.

    `reference`: a Parameter Golf export, also evaluated at its own size; its plan rules that set the
    knob move with it in proportion (the recipe's per-tensor clip multiples scale together). Other
    systems' rules (the embedding plan) stay fixed. `gguf`: its points write model.gguf and count its size
    (a gguf_* preset; bytegolf.run.point.run_point)."""

    label: str
    fmt: str
    params: dict[str, Any]
    knob: search.Knob | None
    codec: str
    codec_params: dict[str, Any]
    layout: dict[str, Any]
    plan: dict[str, Any]
    reference: bool = False
    finetune: dict[str, Any] = field(default_factory=dict)  # block calibration settings over the run's
    allocation: AllocationSpec | None = None  # an allocated system (compare.allocated): no knob, no search
    gguf: bool = False  # a GGUF reference: its counted size is its GGUF file's, ranked at its own size only

    def plan_at(self, value: float | None) -> dict[str, Any]:
        """The plan settings at a knob value (a reference's rules that set the knob scaled by value / default)."""
        plan = dict(self.plan)
        k = self.knob
        default = self.params.get(k.name) if k else None
        fixed = not self.reference or k is None or value is None or k.integer
        if fixed or not isinstance(default, (int, float)) or default <= 0:
            return plan
        factor = float(k.value(value)) / float(default)
        rules = []
        for r in plan.get("rules") or []:
            r = dict(r)
            if k.name in (r.get("params") or {}) and (r.get("format") in (None, self.fmt)):
                r["params"] = {**r["params"], k.name: float(r["params"][k.name]) * factor}
            rules.append(r)
        plan["rules"] = rules
        return plan

    def plan_config(self, value: float | None):
        """plan_at as the PlanConfig the encoder uses."""

        d = self.plan_at(value)
        rules = [Rule(**r) for r in d.get("rules") or []]
        lowrank = LowRankPlan(**(d.get("lowrank") or {}))
        return PlanConfig(
            **{**{k: v for k, v in d.items() if k not in ("rules", "lowrank")}, "rules": rules, "lowrank": lowrank}
        )


def _container(node: Any) -> dict[str, Any]:
    out = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    assert isinstance(out, dict)
    return out


def _group_defaults(group: str, name: str) -> dict[str, Any]:
    """Settings of experiments/<group>/<name>.yaml (without its defaults list); {} when there is none."""
    path = PRESETS.parent / group / f"{name}.yaml"
    if not path.is_file():
        return {}
    node = _container(OmegaConf.load(path))
    node.pop("defaults", None)
    return node


def reference_system(name: str, cfg: DictConfig) -> tuple[str, dict[str, Any], dict[str, Any], dict, dict, bool]:
    """(format, params, codec with name, layout, plan, gguf) of an experiment preset, over the compare's settings.

    name PRESET+CODEC: the preset's encoding through CODEC (its defaults) instead of the preset's codec, and no
    GGUF file: gguf_q4_k_m+fair is Q4_K_M's blocks through bytegolf's fair codec, its container counted."""
    preset, plus, codec_over = name.partition("+")
    path = PRESETS / f"{preset}.yaml"
    if not path.is_file() or (plus and not codec_over):
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise ConfigError(f"compare.references: unknown preset {name!r}; known: {known} (and PRESET+CODEC)")
    node = _container(OmegaConf.load(path))
    gguf = bool(node.pop("gguf", False)) and not codec_over
    groups = {"format": None, "codec": None}
    for entry in node.pop("defaults", []):
        if isinstance(entry, dict):
            for k, v in entry.items():
                key = str(k).removeprefix("override ").strip().lstrip("/")
                if key in groups:
                    groups[key] = str(v)
    fmt = groups["format"]
    if fmt is None:
        raise ConfigError(f"compare.references: preset {name} names no format")
    params = merge_settings(format_defaults(fmt), node.get("format") or {})
    if codec_over:  # a codec config of experiments/codec/ (fair: the codec best with fair's candidates)
        codec = _codec_choice(codec_over)
    else:
        codec_name = groups["codec"] or str(cfg.codec.name)
        codec = {"name": codec_name, **merge_settings(_group_defaults("codec", codec_name), node.get("codec") or {})}
    lay, plan = _lay_plan(node, cfg)
    return fmt, params, codec, lay, plan, gguf


def _lay_plan(node: dict[str, Any], cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """A preset's layout and plan over the compare's (the plan's rules are the preset's own)."""
    lay = merge_settings(_container(cfg.layout), node.get("layout") or {})
    own = {k: v for k, v in _container(cfg.plan).items() if k not in ("rules", "lowrank")}  # the recipe's own rules
    return lay, merge_settings(own, node.get("plan") or {})


def _codec_choice(name: str) -> dict[str, Any]:
    """The codec (with name) that `codec=NAME` picks: experiments/codec/NAME.yaml over its base codec's defaults
    (fair: best with fair's candidates), or the registered codec NAME with its defaults."""
    path = PRESETS.parent / "codec" / f"{name}.yaml"
    if not path.is_file():
        return {"name": name}
    node = _container(OmegaConf.load(path))
    bases = [str(e).removeprefix("base_") for e in node.pop("defaults", []) if str(e).startswith("base_")]
    return {"name": bases[0] if bases else name, **node}


@dataclass
class CompareConfig:
    """Formats (null: every registered one but passthrough and lowrank; []: none), reference presets (each at its
    own size and, those in search_references (true: all), searched to every budget), budgets in bytes, search and
    bootstrap settings.

    params: per-format settings over the YAML defaults, e.g. {scalar: {bits: 8}};
    knobs: per-format knob ranges, e.g. {scalar: {lo: 2.0, hi: 30.0}} (keys lo, hi, log, integer);
    variants: named settings of one format compared as systems of their own, listed in `formats`
    by their label, e.g. {rows: {format: sparse_outlier, params: {layout: row}}}; params and knobs
    then take the label as key; calibrate: per-system block calibration (finetune) settings over the
    run's, e.g. {clustered: {steps: 200}} (ClusComp's calibration step); allocated: named systems whose
    point at each budget is the budget-optimal per-tensor allocation over candidates (bytegolf.search.allocate's
    candidate and knob language), e.g. {mix: {format: scalar, candidates: [{bits: 4}, {bits: 6}]}};
    embedding: scalar settings for the tied embedding in every format's plan (null: the format quantizes
    it like any matrix; allocated systems take the embedding's settings from their candidates)."""

    formats: list[str] | None = None
    references: list[str] = field(default_factory=lambda: list(PG_REFERENCES))
    search_references: Any = True  # true: every reference; false: none; a list: those references
    budgets: list[float] = field(default_factory=lambda: [16e6, 4e6, 3e6, 2e6])
    params: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, Any] = field(default_factory=dict)
    calibrate: dict[str, Any] = field(default_factory=dict)
    allocated: dict[str, Any] | None = field(default_factory=dict)  # null: no allocated system
    embedding: dict[str, Any] | None = None
    probe_codec: dict[str, Any] | None = None
    tol: float = 0.005
    max_probes: int = 24
    samples: int = 1000
    level: float = 0.95
    rank_by: str = "bpb"  # bpb, or kld (mean KL(ref||quant) per token; needs eval.kld=true)
    seeds: int = 2  # randomized encoders (k-means, AQLM init) are run with this many seeds at every landing
    front_points: int = 0  # evaluated points per system across the budgets' range (landings count)
    front_windows: int = 0  # eval windows of a front point (0: the landings' eval.windows)
    skip: dict[str, Any] = field(default_factory=dict)  # per system {above: bytes, why: text}: budgets not searched


def register() -> None:

    ConfigStore.instance().store(name="base_compare", node=CompareConfig, package="compare")


def _variants(node: dict[str, Any], registry: dict[str, str]) -> dict[str, tuple[str, dict, dict, dict]]:
    """compare.variants as label -> (format, params, plan, layout), checked (plan and layout over the compare's)."""
    out = {}
    for label, v in node.items():
        if label in registry:
            raise ConfigError(f"compare.variants: label {label!r} is a format's name; pick another")
        if (
            not isinstance(v, dict)
            or v.get("format") not in registry
            or set(v) - {"format", "params", "plan", "layout"}
        ):
            raise ConfigError(
                f"compare.variants.{label}: need {{format: <one of {', '.join(sorted(registry))}>, params: {{...}}}}"
                " (and optionally plan: {...}, layout: {...})"
            )
        out[label] = (
            str(v["format"]),
            dict(v.get("params") or {}),
            dict(v.get("plan") or {}),
            dict(v.get("layout") or {}),
        )
    return out


ALLOCATED_KEYS = (
    "format",
    "params",
    "candidates",
    "knob",
    "objective",
    "tol",
    "max_rounds",
    "max_states",
    "plan",
    "layout",
)


@dataclass
class AllocationSpec:
    """An allocated system's allocation settings (compare.allocated.<name>): its checked candidates (the
    entry's candidates, then those along its knob) and how the allocation lands (bytegolf.search.tables.land)."""

    candidates: list[Any]  # bytegolf.search.candidates.Candidate
    tol: float
    max_rounds: int
    max_states: int
    objective: str = "auto"  # bytegolf.search.allocate.OBJECTIVES

    def ident(self) -> dict[str, Any]:
        """What a point of the system depends on beyond its run config (part of its point key)."""
        return {
            "candidates": [c.as_dict() for c in self.candidates],
            "tol": self.tol,
            "max_rounds": self.max_rounds,
            "max_states": self.max_states,
            "objective": self.objective,
        }


def _allocated(
    node: dict[str, Any], taken: set[str], tol: float
) -> dict[str, tuple[str, dict[str, Any], dict, dict, AllocationSpec]]:
    """compare.allocated as name -> (format, params, plan, layout, spec), checked before any work (plan and
    layout over the compare's; tol defaults to compare.tol). Errors name the entry."""

    out = {}
    for name, v in node.items():
        where = f"compare.allocated.{name}"
        if name in taken:
            raise ConfigError(f"{where}: {name!r} is already a format, variant or reference; pick another name")
        if not isinstance(v, dict) or set(v) - set(ALLOCATED_KEYS):
            raise ConfigError(
                f"{where}: need {{format: F, candidates: [...]}} and optionally knob, params, objective, tol, "
                f"max_rounds, max_states, plan, layout; got {v!r}"
            )
        fmt = v.get("format")
        if fmt not in REGISTRY:
            raise ConfigError(f"{where}: unknown format {fmt!r}; known: {', '.join(sorted(REGISTRY))}")
        params = merge_settings(format_defaults(str(fmt)), dict(v.get("params") or {}))
        cands = candidates.check_candidates(str(fmt), params, v.get("candidates"), v.get("knob"), where=where)
        spec = AllocationSpec(
            cands,
            float(v.get("tol", tol)),
            int(v.get("max_rounds", 5)),
            int(v.get("max_states", knapsack.MAX_STATES)),
            str(v.get("objective", "auto")),
        )
        if not 0 < spec.tol < 1 or spec.max_rounds < 1 or spec.max_states < 1:
            raise ConfigError(f"{where}: need 0 < tol < 1, max_rounds >= 1 and max_states >= 1")
        if spec.objective not in tables.OBJECTIVES:
            raise ConfigError(f"{where}.objective: {spec.objective!r} is not one of {', '.join(tables.OBJECTIVES)}")
        out[str(name)] = (str(fmt), params, dict(v.get("plan") or {}), dict(v.get("layout") or {}), spec)
    return out


def skips(cc: Any) -> dict[str, tuple[int, str]]:
    """compare.skip as label -> (bytes, why): that system is not searched to budgets above bytes, for the
    stated reason (printed, and listed in the budget's ranking)."""
    node = OmegaConf.to_container(cc.skip, resolve=True) if cc.get("skip") else {}
    out = {}
    for label, entry in (node or {}).items():
        above = entry.get("above") if isinstance(entry, dict) else None
        why = entry.get("why") if isinstance(entry, dict) else None
        if isinstance(above, bool) or not isinstance(above, (int, float)) or not above > 0 or not why:
            raise ConfigError(
                f"compare.skip.{label} must be {{above: BYTES, why: TEXT}} (budgets above BYTES not searched), "
                f"got {entry!r}"
            )
        out[str(label)] = (int(above), str(why))
    return out


def parse_budgets(values: list[float]) -> list[int]:
    out = []
    for v in values:
        if not v > 0:
            raise ConfigError(f"compare.budgets: every budget must be a positive number of bytes, got {v!r}")
        out.append(int(v))
    return out


def point_cfg(
    cfg: DictConfig, sysm: System, params: dict[str, Any], budget: int, value: float | None = None
) -> DictConfig:
    """The run config of one point of a system (`bytegolf run` with it reproduces the point): its format
    settings, plan at the knob value, layout and codec, and cap = budget (0: no budget)."""
    c = cfg.copy()
    with open_dict(c):
        c.pop("compare", None)
        c.format = OmegaConf.create({"name": sysm.fmt, **params})
        c.codec = OmegaConf.create({"name": sysm.codec, **sysm.codec_params})
        c.layout = OmegaConf.create(sysm.layout)
        c.plan = OmegaConf.merge(OmegaConf.structured(PlanConfig), sysm.plan_at(value))
        if sysm.finetune:
            c.finetune = OmegaConf.merge(c.finetune, sysm.finetune)
        c.budget.cap_bytes = budget or c.budget.cap_bytes
        if sysm.gguf:  # (only then: other points' configs, and so their hashes, stay as they were)
            c.gguf = True
    return c


def systems(cfg: DictConfig) -> tuple[list[System], tuple[str, dict[str, Any]] | None]:
    """Every system the compare ranks, checked before any work, and the probe codec (None: each
    system's own codec)."""

    cc = cfg.compare
    variants = _variants(OmegaConf.to_container(cc.variants, resolve=True) or {}, REGISTRY)
    refs = [str(r) for r in (cc.get("references") or [])]
    names = list(cc.formats) if cc.formats is not None else [f for f in REGISTRY if f not in WRAPPERS] + list(variants)
    node = OmegaConf.to_container(cc.allocated, resolve=True) if cc.get("allocated") else {}
    assert isinstance(node, dict)
    allocated = _allocated(node, {*REGISTRY, *variants, *refs}, float(cc.tol))
    if not (names or refs or allocated):
        raise ConfigError("compare: need at least one format, reference or allocated system")
    searched_references(cc)  # a bad compare.search_references fails before any work
    extra_params = OmegaConf.to_container(cc.params, resolve=True) or {}
    knob_over = OmegaConf.to_container(cc.knobs, resolve=True) or {}
    calibrate = OmegaConf.to_container(cc.calibrate, resolve=True) or {}
    embedding = OmegaConf.to_container(cc.embedding, resolve=True) if cc.get("embedding") else None
    for key in (*extra_params, *knob_over, *calibrate, *skips(cc)):  # entries for systems left out are unused
        if key not in names and key not in REGISTRY and key not in variants and key not in refs:
            raise ConfigError(
                f"compare.params/knobs/calibrate/skip name {key!r}, which is neither a format, a variant nor a "
                "reference"
            )
    codec = _container(cfg.codec)
    codec_name = str(codec.pop("name"))
    probe_codec = None
    if cc.get("probe_codec"):
        pc = _container(cc.probe_codec)
        probe_codec = (str(pc.pop("name")), pc)

        get_codec(probe_codec[0], **probe_codec[1])
        offered = [candidate_spec(c)[0] for c in codec.get("candidates", [])] if codec_name == "best" else []
        if (
            probe_codec[0] not in offered
        ):  # a probe_codec codec outside the compare's candidates could land files over budget
            log.info(
                "compare.probe_codec %s is not among codec %s's candidates: probes use %s",
                probe_codec[0],
                codec_name,
                codec_name,
            )
            probe_codec = None

    out: list[System] = []
    for label in [*refs, *names]:
        reference = label in refs and label not in names
        gguf = False
        if reference:
            fmt, params, ref_codec, lay, plan, gguf = reference_system(label, cfg)
            params = merge_settings(params, extra_params.get(label, {}))
            c_name = str(ref_codec.pop("name"))
            c_params = ref_codec
        else:
            fmt, own, v_plan, v_lay = variants.get(label, (label, {}, {}, {}))
            params = merge_settings(format_defaults(fmt), own, extra_params.get(label, {}))
            c_name, c_params = codec_name, dict(codec)
            lay = merge_settings(_container(cfg.layout), v_lay)
            plan = merge_settings(_container(cfg.plan), v_plan)
            if embedding and not v_plan.get("rules"):  # Parameter Golf's embedding rule goes first
                rule = {"match": EMBEDDING, "format": "scalar", "params": dict(embedding)}
                plan["rules"] = [rule, *(plan.get("rules") or [])]
        instance = get_format(fmt, **params)
        if instance.rate_knob and params.get(instance.rate_knob) is None:  # a default the format resolves
            params = {**params, instance.rate_knob: getattr(instance, instance.rate_knob)}  # (scalar's clip_k)

        get_codec(c_name, **c_params)
        over = dict(knob_over.get(label) or {})
        name = str(over.pop("name", None) or instance.rate_knob or "") or None  # a path: base.clip_k
        if name and search.setting(params, name) is None:
            raise ConfigError(f"compare.knobs.{label}.name: {label} has no setting {name!r}")
        knob = search.knob_for(name, search.setting(params, name) if name else None, over)
        tune = dict(calibrate.get(label) or {})
        out.append(System(label, fmt, params, knob, c_name, c_params, lay, plan, reference, tune, gguf=gguf))
    for label, (fmt, params, a_plan, a_lay, spec) in allocated.items():  # the candidates set the embedding
        lay = merge_settings(_container(cfg.layout), a_lay)
        plan = merge_settings(_container(cfg.plan), a_plan)
        out.append(System(label, fmt, params, None, codec_name, dict(codec), lay, plan, allocation=spec))
    return out, probe_codec


def searched_references(cc: Any) -> list[str]:
    """The references searched to every budget: compare.search_references true (all), false (none) or a
    list (those of them in compare.references)."""
    refs = list(cc.get("references") or [])
    want = cc.get("search_references", True)
    if isinstance(want, bool):
        return refs if want else []
    if isinstance(want, str) or not hasattr(want, "__iter__"):
        raise ConfigError(f"compare.search_references must be true, false or a list of references, got {want!r}")
    unknown = [str(r) for r in want if r not in refs and r not in REFERENCES]
    if unknown:
        raise ConfigError(f"compare.search_references: {unknown} are not references (known: {sorted(REFERENCES)})")
    return [str(r) for r in want if r in refs]  # one left out of compare.references is not compared at all
