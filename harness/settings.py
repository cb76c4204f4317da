"""Configuration schemas (dataclasses registered with Hydra's ConfigStore)."""

from __future__ import annotations

import importlib
import inspect
import typing
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from bytegolf.artifact.layout import LayoutConfig
from bytegolf.codecs import REGISTRY as CODECS
from bytegolf.formats import REGISTRY as FORMATS
from bytegolf.model.gpt import ModelConfig
from bytegolf.model.grams import CalibConfig
from bytegolf.model.train import TrainConfig
from bytegolf.quantize.block_calibration import FinetuneConfig
from bytegolf.quantize.plan import PlanConfig

_MODEL_DOC = """A model adapter (`name`: gpt, module, hf, weights; bytegolf.model.adapters), its checkpoint
(safetensors or torch state dict) and the settings its tensors do not carry.

The shape fields are the built-in GPT's (bytegolf.model.gpt.ModelConfig, its vocabulary from the tokenizer); `train`
uses them, `run` reads the shape off the checkpoint. module: `file`, `build`, `logits` / `nll` (method names),
`einsum` (globs of the parameters the model uses through torch.einsum, whose inputs calibration then gathers); hf:
`path` (a save_pretrained directory)."""
_NOT_SETTINGS = ("vocab_size", "tied_embed_init_std")  # the tokenizer's size; an init constant
_SHAPE_TYPES = typing.get_type_hints(ModelConfig)
ModelGroupConfig = make_dataclass(
    "ModelGroupConfig",
    [
        ("checkpoint", str, field(default=MISSING)),
        ("name", str, field(default="gpt")),
        ("file", str | None, field(default=None)),
        ("build", str | None, field(default=None)),
        ("logits", str | None, field(default="forward")),
        ("nll", str | None, field(default=None)),
        ("einsum", list[str], field(default_factory=list)),
        ("path", str | None, field(default=None)),
        *[
            (f.name, _SHAPE_TYPES[f.name], field(default=f.default))
            for f in fields(ModelConfig)
            if f.name not in _NOT_SETTINGS
        ],
    ],
    namespace={"__doc__": _MODEL_DOC},
)


@dataclass
class DataConfig:
    """Tokenizer and shard globs (kind text: globs of raw text files); with `build`, `train` first makes them from
    `corpus` (glob; null: stdlib). `dir`: a dataset folder the globs may name as `${.dir}`; data=parameter_golf
    requires it (and `tokenizer`): its train/val are `${.dir}/fineweb_train_*.bin` and `${.dir}/fineweb_val_*.bin`.
    Required like the globs, so that a group's `dir: ???` stays required (OmegaConf keeps a default over `???`):
    a data YAML that does not use it sets `dir: null`."""

    tokenizer: str | None = MISSING
    train: str | None = MISSING
    val: str = MISSING
    dir: str | None = MISSING
    kind: str = "shards"  # shards (Parameter Golf token files) or text (raw text files: bytegolf.data.evaldata)
    corpus: str | None = None
    build: bool = False
    vocab_size: int = 1024
    val_fraction: float = 0.04


@dataclass
class EvalConfig:
    """Non-overlapping validation windows (windows=0: all): the first ones, or with `sample` a sample
    drawn across all validation files with `seed`. stride (null: the windows as they are): sliding
    evaluation, windows `stride` tokens apart each scoring its last `stride` tokens (bytegolf.measure.evaluate);
    documents: document-isolated windows (no context across a BOS; `windows` counts documents;
    bytegolf.data.windows.Windows.documents);
    kld: also KL divergence and top-1 agreement against the unquantized model (a second forward pass);
    compile: the forward through torch.compile (faster on long evaluations, after a one-off compile);
    batch_size: windows per forward (null: 1024 tokens' worth on the CPU, 16 on CUDA); streams: batches
    evaluated at once on the CPU, each on one core (null: torch's thread count; bytegolf.measure.evaluate)."""

    windows: int = 256
    seq_len: int = 1024
    batch_size: int | None = None
    streams: int | None = None
    precision: str = "bf16"
    sample: bool = True
    seed: int = 0
    stride: int | None = None
    documents: bool = False
    kld: bool = False
    compile: bool = False


@dataclass
class BudgetConfig:
    """The byte cap; `count_code` adds the decoder's code bytes to the artifact's."""

    cap_bytes: int = 16_000_000
    count_code: bool = False


def plugin_schema(kind: str, name: str, target: str) -> type:
    """A dataclass with a `name` field plus the constructor parameters of a registered class."""
    module, cls = target.split(":")
    klass = getattr(importlib.import_module(module), cls)
    hints = typing.get_type_hints(klass.__init__)
    fields: list[Any] = [("name", str, field(default=name))]
    for p in inspect.signature(klass.__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        default = p.default if p.default is not inspect.Parameter.empty else MISSING
        if isinstance(default, (list, dict)):
            fields.append((p.name, hints.get(p.name, Any), field(default_factory=lambda d=default: d)))
        else:
            fields.append((p.name, hints.get(p.name, Any), field(default=default)))
    return make_dataclass(f"{kind.title()}_{name}", fields)


def register() -> None:
    """Put every schema into Hydra's ConfigStore (formats and codecs straight from their registries)."""
    cs = ConfigStore.instance()
    cs.store(group="model", name="base_model", node=ModelGroupConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="eval", name="base_eval", node=EvalConfig)
    cs.store(group="calib", name="base_calib", node=CalibConfig)
    cs.store(group="layout", name="base_layout", node=LayoutConfig)
    cs.store(group="plan", name="base_plan", node=PlanConfig)
    cs.store(group="budget", name="base_budget", node=BudgetConfig)
    cs.store(group="train", name="base_train", node=TrainConfig)
    cs.store(group="finetune", name="base_finetune", node=FinetuneConfig)
    for name, target in FORMATS.items():
        cs.store(group="format", name=f"base_{name}", node=plugin_schema("format", name, target))
    for name, target in CODECS.items():
        cs.store(group="codec", name=f"base_{name}", node=plugin_schema("codec", name, target))
