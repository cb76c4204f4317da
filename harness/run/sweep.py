"""Sweeps under Hydra: stable point directories, resume, format-specific keys, threads per job.

- A point's directory under the sweep dir is `<format>_<codec>_<config hash>` (the
  `bytegolf_point` resolver in `hydra.sweep.subdir`), so the same point always lands in the same
  place whatever its job number, and a killed sweep started again with the same
  `hydra.sweep.dir` finds its finished points and skips them (a finished point is a result.json
  whose config_hash matches). A point being run holds a claim file, so a duplicate job (or a second
  sweep on the same directory) skips it instead of writing beside it.
- A key of one format swept together with formats that lack it
  (`-m format=scalar,clustered format.bits=3,4,6`) applies where it exists: `prepare_multirun`
  turns it into a force-add override (`++format.bits=...`) and each job drops the format or codec
  keys its own format or codec does not take (recorded in result.json as `dropped_overrides`).
  The clustered jobs for bits=3,4,6 are then one point: the first runs it, the others skip it.
  A key that no swept format has is an error.
- Joblib jobs get torch threads = cpu_count // n_jobs (loky's OMP default, set explicitly with
  torch.set_num_threads); submitit jobs get cpus_per_task when that is set. `threads=N` wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import logging
import re
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from bytegolf.errors import BytegolfError
from bytegolf.run import store
from bytegolf.run.provenance import source_hash

log = logging.getLogger("bytegolf")
REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "experiments"
PARAM_GROUPS = ("format", "codec")  # groups whose keys depend on the chosen registry entry
LAUNCHERS = ("joblib", "submitit_local", "submitit_slurm")
ERROR = "error.json"
RUN_NAME_TAIL = 60  # characters of overrides a run directory's name keeps
FAILED: list[Path] = []  # points of the last multirun in this process that ended in error.json


def quiet_launcher_schema_warning() -> None:
    """experiments/hydra/launcher/*.yaml share the plugins' names on purpose (full configs with a
    _target_, so they stand alone); Hydra 1.3 still merges the same-name schema and warns."""
    for name in LAUNCHERS:
        warnings.filterwarnings("ignore", message=rf"\s*'hydra/launcher/{name}' is validated against ConfigStore")


def register_resolvers() -> None:
    """${repo:p}, ${cache:p} and ${bytegolf_point:} (the stable point directory name)."""

    def cache(p: str) -> str:
        from bytegolf.run.point import cache_dir

        return str(cache_dir() / p)

    resolvers = (
        ("repo", lambda p: str(REPO / p)),
        ("cache", cache),
        ("bytegolf_point", point_name),
        ("bytegolf_run", run_name),
    )
    for name, fn in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


# ------------------------------------------------------------------ point identity


def _setup() -> None:
    """At import: loky and submitit workers import this module when they unpickle the task (the
    task refers to it), before they compose their job's config and resolve hydra.sweep.subdir."""
    register_resolvers()
    quiet_launcher_schema_warning()


def known_params(kind: str, name: str) -> set[str] | None:
    """Constructor parameters of a registered format or codec (None: unknown name)."""
    import importlib

    from bytegolf.codecs import REGISTRY as CODECS
    from bytegolf.formats import REGISTRY as FORMATS

    registry = FORMATS if kind == "format" else CODECS
    if name not in registry:
        return None
    module, cls = registry[name].split(":")
    klass = getattr(importlib.import_module(module), cls)
    sig = inspect.signature(klass.__init__)
    return {p for p in sig.parameters if p != "self"} | {"name"}


def point_config(cfg: DictConfig, drop: bool = True) -> tuple[dict[str, Any], list[str]]:
    """The resolved config of a point (no hydra node) with the source tree's hash under "source" and,
    with drop, the format/codec keys removed because the chosen format or codec does not take them."""
    out: dict[str, Any] = {}
    for k in cfg:
        if k == "hydra":
            continue
        v = cfg[k]
        out[str(k)] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
    out = _portable(out)  # the same point in another clone (or cache dir) has the same key
    out["source"] = source_hash()  # a point computed by other code is another point
    dropped: list[str] = []
    if drop:
        for group in PARAM_GROUPS:
            node = out.get(group)
            if not isinstance(node, dict):
                continue
            known = known_params(group, str(node.get("name")))
            for key in sorted(set(node) - (known or set(node))):
                node.pop(key)
                dropped.append(f"{group}.{key}")
    return out, dropped


def _portable(node: Any) -> Any:
    """node with absolute paths under the repository or the cache written as ${repo:...} / ${cache:...}."""
    if isinstance(node, dict):
        return {k: _portable(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_portable(v) for v in node]
    if isinstance(node, str):
        from bytegolf.run.point import cache_dir

        for name, root in (("cache", str(cache_dir())), ("repo", str(REPO))):
            if node == root or node.startswith(root + "/"):
                return "${" + name + ":" + node[len(root) + 1 :] + "}"
    return node


def point_name(*, _root_: DictConfig) -> str:
    """Directory name of a point: <format>_<codec>_<config hash>."""
    conf, _ = point_config(_root_)
    fmt = conf.get("format", {}).get("name", "point") if isinstance(conf.get("format"), dict) else "point"
    codec = conf.get("codec", {}).get("name", "") if isinstance(conf.get("codec"), dict) else ""
    return "_".join(str(p) for p in (fmt, codec, store.config_hash(conf)) if p)


def run_name(*, _root_: DictConfig) -> str:
    """Directory name of a single run: the preset, or <format>_<codec>, then the command line's other overrides
    ("pg_top_format.bits=5"); a path value by its last part, characters a directory name should not hold
    as "-", and a long tail cut to a hash."""
    choices = _root_.hydra.runtime.choices
    preset = choices.get("experiment")
    head = str(preset) if preset else f"{_root_.format.name}_{_root_.codec.name}"
    named = {"experiment", "format", "codec"} if preset else {"experiment"}
    rest = [o for o in _root_.hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") not in named]
    rest = [re.sub(r"=.*/([^/]+)/?$", r"=\1", o) for o in rest]  # a path by its last part: bundle=bundle0
    tail = re.sub(r"[^A-Za-z0-9._=,+~-]", "-", ",".join(rest))
    if len(tail) > RUN_NAME_TAIL:
        tail = tail[: RUN_NAME_TAIL - 9] + "-" + hashlib.sha256(tail.encode()).hexdigest()[:8]
    return f"{head}_{tail}" if tail else head


# ------------------------------------------------------------------ before Hydra starts


def prepare_multirun(config_name: str, args: list[str]) -> list[str]:
    """Make format/codec keys that only some swept formats or codecs have force-add overrides.

    args: the command line after the verb (Hydra flags pass through untouched)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    params = [
        o
        for o in parsed
        if o.type == OverrideType.CHANGE and "." in o.key_or_group and o.key_or_group.split(".")[0] in PARAM_GROUPS
    ]
    if not params:
        return args
    choices: dict[str, list[str]] = {}
    for o in parsed:
        if o.key_or_group in (*PARAM_GROUPS, "experiment") and o.type == OverrideType.CHANGE:
            vals = list(o.sweep_string_iterator()) if o.is_discrete_sweep() else [o.get_value_element_as_str()]
            choices[o.key_or_group] = vals
    if not any(len(v) > 1 for v in choices.values()):
        return args
    combos = [dict(zip(choices, vals, strict=True)) for vals in itertools.product(*choices.values())]
    has: dict[str, list[str]] = {o.key_or_group: [] for o in params}
    missing = object()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for combo in combos:
            cfg = compose(config_name, overrides=[f"{k}={v}" for k, v in combo.items()])
            for key in has:
                if OmegaConf.select(cfg, key, default=missing) is not missing:
                    has[key].append(combo_label(combo))
    out = list(args)
    for o in params:
        key = o.key_or_group
        if not has[key]:
            swept = ", ".join(combo_label(c) for c in combos)
            raise BytegolfError(f"{key}: no swept choice has this key ({swept})")
        if len(has[key]) < len(combos):
            out[args.index(o.input_line)] = "++" + o.input_line
            log.info("%s applies only to %s", key, ", ".join(has[key]))
    return out


def combo_label(combo: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in combo.items())


# ------------------------------------------------------------------ inside a job


def job_threads(cfg: DictConfig) -> int:
    """torch threads for this job (see threads_for), from the running job's launcher config."""
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
    except ValueError:
        launcher = None
    return threads_for(int(cfg.get("threads", 0)), launcher)


def threads_for(threads: int, launcher: Any, cpus: int | None = None) -> int:
    """threads when > 0; else cpu_count // n_jobs under joblib (n_jobs -1: one job per CPU), else
    cpus_per_task under submitit when set, else 0 (torch's default)."""
    if threads > 0:
        return threads
    if launcher is None:
        return 0
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        if cpus is None:
            import joblib

            cpus = joblib.cpu_count()
        n = int(launcher.get("n_jobs") or -1)
        eff = n if n > 0 else max(1, cpus + 1 + n)
        return max(1, cpus // eff)
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher.get("cpus_per_task"))
    return 0


def is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def task_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def run_job(cfg: DictConfig, out_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """Run one point into out_dir unless it is finished or running elsewhere.

    Returns (result, how): how is "ran", "finished" (skipped, result from disk) or "running"
    (another worker holds the point; result None)."""
    import torch

    from bytegolf.run.point import run_point

    multirun = is_multirun()
    conf, dropped = point_config(cfg, drop=multirun)
    chash = store.config_hash(conf)
    done = store.finished(out_dir, chash)
    if done is not None:
        return done, "finished"
    if dropped:
        log.info("not applicable to %s/%s, ignored: %s", conf["format"]["name"], conf["codec"]["name"], dropped)
        with open_dict(cfg):
            for group in PARAM_GROUPS:
                cfg[group] = OmegaConf.create(conf[group])
    threads = job_threads(cfg)
    if threads:
        with open_dict(cfg):
            cfg.threads = threads
    with store.claim(out_dir) as owned:
        if not owned:
            return None, "running"
        done = store.finished(out_dir, chash)  # finished between our check and our claim
        if done is not None:
            return done, "finished"
        result = run_point(cfg, out_dir)
        result = store.write_result(
            out_dir,
            result,
            config_hash=chash,
            status="ok",
            overrides=task_overrides(),
            dropped_overrides=dropped,
            threads=torch.get_num_threads(),
        )
    with contextlib.suppress(FileNotFoundError):
        (out_dir / ERROR).unlink()
    return result, "ran"


def write_error(out_dir: Path, message: str) -> None:
    """A failed point of a sweep leaves error.json (not result.json: a resumed sweep retries it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    store.write_json_atomic(out_dir / ERROR, {"status": "error", "error": message, "overrides": task_overrides()})


try:  # the callback base class is Hydra's; this module imports without Hydra's plugins too
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]


class AggregateCallback(Callback):
    """After a multirun (in the parent): write results.parquet/.csv into the sweep dir and print them."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        FAILED[:] = [p.parent for p in sorted(sweep_dir.glob(f"*/{ERROR}")) if not (p.parent / store.RESULT).is_file()]
        for d in FAILED:
            log.error("failed: %s (see %s)", d.name, d / ERROR)
        try:
            df = store.collect([sweep_dir])
        except BytegolfError as exc:
            log.warning("%s", exc)
            return
        paths = store.save_table(df, sweep_dir / "results")
        print(store.summary(df), flush=True)
        print(f"{len(df)} points -> {paths[0]} and {paths[1].name}", flush=True)


_setup()
