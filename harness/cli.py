"""The `bytegolf` command: verbs, each taking Hydra overrides."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.errors import BytegolfError

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "experiments"
USAGE = """usage: bytegolf VERB [hydra overrides...]

verbs:
  run     one point: quantize, write the artifact, decode it, evaluate (e.g. format=scalar format.bits=6 codec=brotli)
  train   train the default model and write a bundle (e.g. train.steps=1000)

Presets: experiment=pg_baseline, experiment=pg_record. Hydra flags (-m, --cfg job, --help) work after the verb."""

log = logging.getLogger("bytegolf")


def _register_resolvers() -> None:
    from harness.runner import cache_dir

    if not OmegaConf.has_resolver("repo"):
        OmegaConf.register_new_resolver("repo", lambda p: str(REPO / p))
        OmegaConf.register_new_resolver("cache", lambda p: str(cache_dir() / p))


def _check_choices(overrides: list[str]) -> None:
    """Unknown config-group choices (format=nope) get a one-line error before Hydra starts."""
    for ov in overrides:
        key, sep, value = ov.lstrip("+~").partition("=")
        if not sep or "." in key or "/" in key or not (CONFIG_DIR / key).is_dir():
            continue
        known = sorted(p.stem for p in (CONFIG_DIR / key).glob("*.yaml"))
        for choice in value.split(","):
            if choice and choice != "null" and choice not in known:
                raise BytegolfError(f"unknown {key} {choice!r}; known: {', '.join(known)}")


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def run_task(cfg: DictConfig) -> dict | None:
    """Hydra task for `bytegolf run`."""
    from harness.runner import run_point, summary_line

    try:
        result = run_point(cfg, _output_dir())
    except BytegolfError as exc:
        log.error("error: %s", exc)
        raise SystemExit(2) from None
    line = summary_line(result)
    log.info(line)
    print(line, flush=True)
    return result


def train_task(cfg: DictConfig) -> None:
    """Hydra task for `bytegolf train`: build the corpus data if needed, train, write the bundle."""
    import torch

    from harness import data
    from harness.model import ModelConfig
    from harness.train import TrainConfig, train

    try:
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        tok = Path(cfg.data.tokenizer)
        if cfg.data.build and not tok.is_file():
            log.info("building corpus data into %s", tok.parent)
            data.build_corpus_data(tok.parent, cfg.data.corpus, cfg.data.vocab_size, cfg.data.val_fraction)
        files = data.DataFiles.locate(cfg.data.tokenizer, cfg.data.train, cfg.data.val)
        tcfg = OmegaConf.to_object(cfg.train)
        assert isinstance(tcfg, TrainConfig)
        m = cfg.model
        mcfg = ModelConfig(
            vocab_size=cfg.data.vocab_size,
            num_layers=m.num_layers,
            model_dim=m.model_dim,
            num_heads=m.num_heads,
            num_kv_heads=m.num_kv_heads,
            mlp_mult=m.mlp_mult,
            rope_base=m.rope_base,
            logit_softcap=m.logit_softcap,
            qk_gain_init=m.qk_gain_init,
        )
        out = Path(cfg.out) if cfg.out else _output_dir() / "bundle"
        stats = train(tcfg, files, out, mcfg, cfg.device)
    except BytegolfError as exc:
        log.error("error: %s", exc)
        raise SystemExit(2) from None
    print(
        f"bundle {out}: val_loss {stats['val_loss']:.4f} val_bpb {stats['val_bpb']:.4f} "
        f"({stats['steps']} steps, {stats['tokens_seen']:,} tokens, {stats['train_seconds'] / 60:.1f} min)"
    )


TASKS = {"run": ("run", run_task), "train": ("train", train_task)}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `bytegolf` console script."""
    import hydra

    from harness import settings

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in TASKS:
        print(USAGE, file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    verb, overrides = args[0], args[1:]
    try:
        _check_choices(overrides)
    except BytegolfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _register_resolvers()
    settings.register()
    config_name, task = TASKS[verb]
    sys.argv = [f"bytegolf {verb}", *overrides]
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)()


if __name__ == "__main__":
    main()
