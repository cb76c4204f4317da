"""The `bytegolf` command: verbs, each taking Hydra overrides."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bytegolf.errors import BytegolfError
from bytegolf.run import sweep

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "experiments"
USAGE = """usage: bytegolf VERB [hydra overrides...]

verbs:
  run       one point: quantize, write the artifact, decode it, evaluate (format=scalar format.bits=6 codec=brotli);
            -m sweeps (e.g. run -m format=scalar,clustered codec=zstd,brotli format.bits=3,4,6 hydra/launcher=joblib)
  train     train the default model and write a bundle (e.g. train.steps=700); with rate.init=CKPT finetune
            it storage-natively: export quantizer in the loop + rate.lam × code bits (e.g. rate.lam=0.5)
  compare   systems (reference exports, formats, allocations) at equal final bytes per budget, ranked with CIs
            (e.g. compare compare.budgets=[8e6,4e6] compare.formats=[scalar,clustered])
  allocate  per-tensor settings (of one format, or mixed formats per tensor) that minimise output error within
            the budget, evaluated (e.g. allocate budget.cap_bytes=8e6 'allocate.candidates=[{bits:4},{bits:6}]',
            candidates like {format: clustered, codebook_size: 256, match: "blocks.*.mlp.*"}, or allocate.knob=...)
  results   DIR... : every result.json under the dirs as one table (DIR/results.parquet and .csv)
  report    DIR : markdown report with frontier plots, rank agreement and reversals (DIR/report/)
  eval      ARTIFACT [overrides] : score an existing artifact (or run directory) without encoding it again:
            bpb with its interval and the protocol; eval.kld=true adds llama-perplexity's KLD table; by
            default under the config of the run that wrote it (e.g. eval outputs/runs/X eval.windows=0)
  list      formats|codecs|presets|systems : one line each, what it is and its cost where measured
  inspect   ARTIFACT : every stream's format, role, codec, stored and raw bytes and entropy bound; totals by role
  decode    ARTIFACT OUT.safetensors : the artifact's decoded weights (decoded as evaluation decodes them)

Presets: experiment=pg_baseline, experiment=pg_record, experiment=pg_top. Hydra flags (-m, --cfg job,
--help) work after run, train, compare and allocate; results, report, inspect and decode take no overrides.
A sweep started again with the same hydra.sweep.dir skips its finished points."""

log = logging.getLogger("bytegolf")

# Importing bytegolf.run.sweep registers the ${repo:}, ${cache:} and ${bytegolf_point:} resolvers (workers
# import it when they unpickle the task, before they compose their job's config).


def _plugins(group: str) -> dict[str, str]:
    """Formats or codecs that entry points of other distributions register: name -> target."""
    from bytegolf.codecs import REGISTRY as CODECS
    from bytegolf.formats import REGISTRY as FORMATS

    return {"format": FORMATS, "codec": CODECS}[group].plugins() if group in ("format", "codec") else {}


def _store_plugins() -> None:
    """Entry-point formats and codecs without a YAML become config choices (format=NAME) with their schema."""
    from hydra.core.config_store import ConfigStore

    from bytegolf.settings import plugin_schema

    for group in ("format", "codec"):
        for name, target in _plugins(group).items():
            if not (CONFIG_DIR / group / f"{name}.yaml").is_file():
                ConfigStore.instance().store(group=group, name=name, node=plugin_schema(group, name, target))


def _check_choices(overrides: list[str]) -> None:
    """Unknown config-group choices (format=nope) get a one-line error before Hydra starts."""
    for ov in overrides:
        key, sep, value = ov.lstrip("+~").partition("=")
        if not sep or "." in key or "/" in key or not (CONFIG_DIR / key).is_dir():
            continue
        known = sorted({p.stem for p in (CONFIG_DIR / key).glob("*.yaml")} | set(_plugins(key)))
        for choice in value.split(","):
            if choice and choice != "null" and choice not in known:
                raise BytegolfError(f"unknown {key} {choice!r}; known: {', '.join(known)}")


HINTS = {
    ("compare", "format"): "it ranks every format: choose them with compare.formats=[...] and set them with "
    "compare.params.<format>.<key>=...",
    ("compare", "experiment"): "presets are ranked as reference systems: compare.references=[pg_top, ...]",
}


def _check_groups(verb: str, config_name: str, overrides: list[str]) -> None:
    """An override of a config group the verb does not use gets a one-line error naming it."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml")).get("defaults", [])
    used = {str(k).removeprefix("optional ").split("/")[-1] for d in defaults if isinstance(d, dict) for k in d}
    for ov in overrides:
        if ov.startswith("-") or "=" not in ov:
            continue
        key = ov.lstrip("+~").partition("=")[0].split(".")[0].split("/")[0]
        if key == "hydra" or key not in {p.name for p in CONFIG_DIR.iterdir() if p.is_dir()} or key in used:
            continue
        hint = HINTS.get((verb, key), f"it uses {', '.join(sorted(used))}")
        raise BytegolfError(f"bytegolf {verb} takes no {key} settings ({ov!r}): {hint}")


def _report(text: str) -> None:
    """Print a summary once on the console, and put it in the run's log file too."""
    print(text, flush=True)
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@contextmanager
def _exit_on_error(*also: type[Exception]) -> Iterator[None]:
    """A task's failure as one logged `error:` line and exit status 2: BytegolfError and the types in also."""
    try:
        yield
    except (BytegolfError, *also) as exc:
        log.error("error: %s", exc)
        raise SystemExit(2) from None


def _set_threads(cfg: DictConfig) -> None:
    """torch's intra-op threads from the run's `threads` (0: torch's default)."""
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def run_task(cfg: DictConfig) -> dict | None:
    """Hydra task for `bytegolf run`: one point, skipped when its result is already there.

    In a sweep a failing point leaves error.json and the sweep goes on (the parent exits 1 at the end)."""
    from bytegolf.run.point import summary_line

    out = _output_dir()
    try:
        result, how = sweep.run_job(cfg, out)
    except BytegolfError as exc:
        log.error("error: %s", exc)
        if sweep.is_multirun():
            sweep.write_error(out, str(exc))
            return None
        raise SystemExit(2) from None
    if result is None:
        line = f"{out.name}: being run by another worker (claim {out / '.claim'}); skipped"
    else:
        line = summary_line(result) + (f" [finished already in {out}; skipped]" if how == "finished" else "")
        line += f"\n  written to {out}"
    _report(line)
    return result


def eval_task(cfg: DictConfig) -> dict | None:
    """Hydra task for `bytegolf eval ARTIFACT`: score an existing artifact file (eval.json in the output dir)."""
    from bytegolf.run.evaluation import eval_summary, evaluate_artifact
    from bytegolf.run.store import write_json_atomic

    out = _output_dir()
    with _exit_on_error():
        result = evaluate_artifact(cfg, Path(cfg.eval_artifact))
    write_json_atomic(out / "eval.json", result, strict=True)
    _report(eval_summary(result) + f"\n  written to {out / 'eval.json'}")
    return result


def compare_task(cfg: DictConfig) -> None:
    """Hydra task for `bytegolf compare`."""
    from bytegolf.study.compare import run_compare

    with _exit_on_error():
        _set_threads(cfg)
        run_compare(cfg, _output_dir())


def allocate_task(cfg: DictConfig) -> None:
    """Hydra task for `bytegolf allocate`."""
    from bytegolf.run.point import summary_line
    from bytegolf.search.allocate import describe, run_allocate

    with _exit_on_error():
        _set_threads(cfg)
        result = run_allocate(cfg, _output_dir())
    print(f"allocation: {describe(result['allocation'])}\n{summary_line(result)}", flush=True)


def train_task(cfg: DictConfig) -> None:
    """Hydra task for `bytegolf train`: build the corpus data if needed, train, write the bundle."""
    from bytegolf.data import bundle as data
    from bytegolf.model.gpt import ModelConfig
    from bytegolf.model.train import TrainConfig, train

    if cfg.get("rate") is not None and cfg.rate.get("init"):
        return _rate_task(cfg)
    with _exit_on_error(ValueError):  # ValueError: a model shape that does not divide
        _set_threads(cfg)
        tok = Path(cfg.data.tokenizer)
        if cfg.data.build and not tok.is_file():
            log.info("building corpus data into %s", tok.parent)
            data.build_corpus_data(tok.parent, cfg.data.corpus, cfg.data.vocab_size, cfg.data.val_fraction)
        files = data.DataFiles.locate(cfg.data.tokenizer, cfg.data.train, cfg.data.val)
        tcfg = OmegaConf.to_object(cfg.train)
        assert isinstance(tcfg, TrainConfig)
        shape = {f.name: cfg.model[f.name] for f in dataclasses.fields(ModelConfig) if f.name in cfg.model}
        mcfg = ModelConfig(**shape, vocab_size=cfg.data.vocab_size)
        out = Path(cfg.out) if cfg.out else _output_dir() / "bundle"
        stats = train(tcfg, files, out, mcfg, cfg.device)
    print(
        f"bundle {out}: val_loss {stats['val_loss']:.4f} val_bpb {stats['val_bpb']:.4f} "
        f"({stats['steps']} steps, {stats['tokens_seen']:,} tokens, {stats['train_seconds'] / 60:.1f} min)"
    )


def _rate_task(cfg: DictConfig) -> None:
    """`bytegolf train rate.init=CKPT ...`: storage-native finetuning of a checkpoint (bytegolf.model.ratetrain)."""
    from bytegolf.data import bundle as data
    from bytegolf.data import shards
    from bytegolf.model import checkpoint
    from bytegolf.model.ratetrain import RateConfig, rate_finetune

    with _exit_on_error(TypeError):  # TypeError: an unknown rate setting
        _set_threads(cfg)
        settings = {k: v for k, v in OmegaConf.to_container(cfg.rate, resolve=True).items() if k != "init"}
        rcfg = RateConfig(**settings)
        files = data.DataFiles.locate(cfg.data.tokenizer, cfg.data.train, cfg.data.val)
        if not files.train:
            raise BytegolfError(f"rate: no train shards match {cfg.data.train}")
        model = checkpoint.build_model(checkpoint.load_state_dict(cfg.rate.init))
        out = Path(cfg.out) if cfg.out else _output_dir() / "bundle"
        stats = rate_finetune(model, shards.read_shards(files.train), rcfg, out, cfg.device)
    last = stats["history"][-1] if stats["history"] else {"loss": float("nan"), "code_bits_per_weight": float("nan")}
    print(
        f"rate-finetuned {out / 'model.safetensors'}: lam {rcfg.lam} {stats['steps']} steps "
        f"({stats['tokens_seen']:,} tokens, {stats['seconds'] / 60:.1f} min); last loss {last['loss']:.4f}, "
        f"codes {last['code_bits_per_weight']:.3f} bits/weight"
    )


TASKS = {
    "run": ("run", run_task),
    "train": ("train", train_task),
    "compare": ("compare", compare_task),
    "allocate": ("allocate", allocate_task),
    "eval": ("run", eval_task),
}


def results_main(args: list[str]) -> None:
    """`bytegolf results DIR... [--out STEM]`: aggregate, save parquet + CSV, print."""
    import argparse

    from bytegolf.run import store

    ap = argparse.ArgumentParser(prog="bytegolf results", description="every result.json under DIRs as one table")
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="output stem (default: FIRST_DIR/results)")
    ns = ap.parse_args(args)
    df = store.collect(ns.dirs)
    paths = store.save_table(df, ns.out or ns.dirs[0] / "results")
    print(store.summary(df))
    print(f"{len(df)} points -> {paths[0]} and {paths[1]}")


def report_main(args: list[str]) -> None:
    """`bytegolf report DIR [--out DIR]`: markdown + PNG report of the results under DIR."""
    import argparse

    from bytegolf.study.report import write_report

    ap = argparse.ArgumentParser(prog="bytegolf report", description="markdown report with plots of a results dir")
    ap.add_argument("dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="report directory (default: DIR/report)")
    ap.add_argument("--samples", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument(
        "--correction", choices=["holm", "bh", "none"], default="holm", help="multiple-comparison correction"
    )
    ns = ap.parse_args(args)
    path = write_report(ns.dir, ns.out or ns.dir / "report", samples=ns.samples, correction=ns.correction)
    print(f"report: {path}")


def inspect_main(args: list[str]) -> None:
    """`bytegolf inspect ARTIFACT`."""
    from bytegolf.tools.inspection import inspect_main as main_

    main_(args)


def decode_main(args: list[str]) -> None:
    """`bytegolf decode ARTIFACT OUT.safetensors`."""
    from bytegolf.tools.inspection import decode_main as main_

    main_(args)


def list_main(args: list[str]) -> None:
    """`bytegolf list formats|codecs|presets|systems`: one line each."""
    from bytegolf.tools.catalog import KINDS, render

    if len(args) != 1 or args[0] not in KINDS:
        raise BytegolfError(f"usage: bytegolf list {'|'.join(KINDS)}")
    print(render(args[0]))


PLAIN = {
    "list": list_main,
    "results": results_main,
    "report": report_main,
    "inspect": inspect_main,
    "decode": decode_main,
}


def _task_help(verb: str, config_name: str, overrides: list[str]) -> str:
    """A Hydra verb's help: groups, choices and every key with its YAML comment (under the given overrides)."""
    from hydra import compose, initialize_config_dir

    from bytegolf.confighelp import task_help

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=[o for o in overrides if "=" in o and not o.startswith("-")])
    return task_help(verb, config_name, cfg)


def _eval_overrides(args: list[str]) -> list[str]:
    """`eval ARTIFACT [overrides]` as Hydra arguments: the artifact's path as a key, the run's own composed
    config (DIR/.hydra/config.yaml beside the artifact) as the base when there is one, and the output
    written beside the artifact (DIR/eval/<time>)."""
    if not args or "=" in args[0] or args[0].startswith("-"):
        raise BytegolfError("usage: bytegolf eval ARTIFACT [overrides]: the artifact file (or its run directory) first")
    path = Path(args[0]).resolve()
    if path.is_dir():
        path = path / "model.bgz"
    if not path.is_file():
        raise BytegolfError(f"eval: no artifact file at {path}")
    base = []
    if (path.parent / ".hydra" / "config.yaml").is_file():
        base = ["--config-dir", str(path.parent / ".hydra"), "--config-name", "config"]
    where = f"hydra.run.dir='{path.parent / 'eval' / '${now:%Y-%m-%d_%H-%M-%S}'}'"
    return [*base, f"++eval_artifact='{path}'", where, *args[1:]]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `bytegolf` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in (*TASKS, *PLAIN):
        print(USAGE, file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    import hydra

    from bytegolf import settings

    verb, overrides = args[0], args[1:]
    if verb in PLAIN:
        try:
            PLAIN[verb](overrides)
        except BytegolfError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    from bytegolf.search import allocate
    from bytegolf.study import systems

    settings.register()
    systems.register()
    allocate.register()
    try:
        if verb == "eval":
            overrides = _eval_overrides(overrides)
        _store_plugins()
        _check_choices(overrides)
        _check_groups(verb, TASKS[verb][0], overrides)
        if verb == "run" and ("-m" in overrides or "--multirun" in overrides):
            overrides = sweep.prepare_multirun("run", overrides)
    except BytegolfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    config_name, task = TASKS[verb]
    if {"--help", "-h"} & set(overrides):
        print(_task_help(verb, config_name, [o for o in overrides if o not in ("--help", "-h")]))
        return
    sys.argv = [f"bytegolf {verb}", *overrides]
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)()
    if sweep.FAILED:
        print(f"error: {len(sweep.FAILED)} point(s) failed; see error.json in {sweep.FAILED[0]}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
