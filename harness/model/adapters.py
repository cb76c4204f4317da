"""Model adapters: how a checkpoint becomes the tensors an artifact stores and, where possible, a model to
calibrate and evaluate (config group `model`, `model.name`).

The protocol (`ModelAdapter`):
  load_state() -> {name: tensor}   the tensors the artifact stores, under their state-dict names
  build(state) -> LM | None        a module holding exactly these weights, with token_nll(ids, targets) -> [B, T]
                                   NLL in nats and logits(ids) -> [B, T, V]; None: the adapter does not evaluate
  grams(model, windows, ...)       calibration Gram matrices Σ x xᵀ of each weight's matmul inputs, keyed by the
                                   weight's state-dict name, and the number of token rows seen
  fingerprints()                   what identifies the model beyond the checkpoint file (caches, result.json);
                                   for module, the source of every user module the process has imported

Adapters:
  gpt      the built-in Parameter Golf GPT (bytegolf.model.gpt); Grams as bytegolf.model.grams.gram_matrices.
  module   the user's code: model.file=PATH.py, model.build=NAME with NAME(state_dict) -> torch.nn.Module.
           Scoring: model.nll names a method (ids, targets) -> per-token NLL [B, T] (nats), else model.logits
           (default forward) names a method ids [B, T] -> logits [B, T, V] (a tuple's first element or an
           output's `.logits` is taken) and the adapter takes the cross-entropy. KL divergence needs logits.
  hf       a transformers causal LM saved with save_pretrained in model.path, loaded offline
           (local_files_only, HF_HUB_OFFLINE=1); its tokenizer comes from the same directory (bytegolf.data.evaldata).
           A tied output head is stored once, under the embedding's name, whose Gram is the head's input.
  weights  any state dict, no model: weight error and bytes only (bpb is not measured).

Calibration for module and hf (bytegolf.model.grams.input_grams): the input of every nn.Linear (key
f"{module}.weight"), of every torch.nn.functional.linear(x, W) whose W is a parameter (its name) or a slice
bank[i] of a weight bank (L, out, in) (f"{bank}[{i}]" for plan.reshape=split, and the bank's name, summed over
its slices, for fold), and of torch.einsum calls on the parameters model.einsum names (globs) used as x·Wᵀ.
Weights used otherwise (x @ W.T, a cast copy W.to(dtype)) get no Gram matrix, and formats that need one name
them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import site
import sys
import sysconfig
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from bytegolf.errors import ConfigError, DataError
from bytegolf.fingerprint import file_digest, file_fingerprint, files_fingerprint
from bytegolf.model import checkpoint

ADAPTERS = ("gpt", "module", "hf", "weights")


def _setting(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


class LM(nn.Module):
    """A user's (or transformers') module seen through the evaluation protocol: token_nll and logits."""

    def __init__(
        self,
        inner: nn.Module,
        logits_fn: Callable[[nn.Module, Tensor], Any] | None,
        nll_fn: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
        what: str = "model",
    ) -> None:
        super().__init__()
        self.inner = inner
        self._logits, self._nll, self._what = logits_fn, nll_fn, what

    def logits(self, ids: Tensor) -> Tensor:
        """Logits [B, T, V] for token ids [B, T]."""
        if self._logits is None:
            raise ConfigError(f"{self._what} has no logits method (set model.logits); KL divergence needs logits")
        out = self._logits(self.inner, ids)
        if hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor) or out.ndim != 3 or tuple(out.shape[:2]) != tuple(ids.shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(
                f"{self._what}: logits must have shape [B, T, V] = [{ids.shape[0]}, {ids.shape[1]}, V], got {got}"
            )
        return out

    def token_nll(self, ids: Tensor, targets: Tensor) -> Tensor:
        """Per-token negative log-likelihood in nats, shape [B, T]."""
        if self._nll is not None:
            nll = self._nll(self.inner, ids, targets)
            if not isinstance(nll, Tensor) or tuple(nll.shape) != tuple(targets.shape):
                got = tuple(nll.shape) if isinstance(nll, Tensor) else type(nll).__name__
                raise ConfigError(
                    f"{self._what}: the nll method must return per-token NLL of shape {tuple(targets.shape)}, got {got}"
                )
            return nll.float()
        logits = self.logits(ids).float()
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        return nll.view_as(targets)

    def forward(self, ids: Tensor, targets: Tensor) -> Tensor:
        return self.token_nll(ids, targets).mean()


@torch.inference_mode()
def linear_grams(
    model: nn.Module,
    windows: np.ndarray,
    device: str = "cpu",
    batch_size: int = 4,
    progress: bool = True,
    rename: dict[str, str] | None = None,
    einsum: Sequence[str] = (),
) -> tuple[dict[str, Tensor], int]:
    """Σ x xᵀ (fp32, CPU) of the inputs of the weights of `model` (an LM: its inner module's names) over windows
    (n, seq_len+1), keyed by weight name (then renamed by `rename`): every nn.Linear's, and those of weights
    used through F.linear or, for the parameters `einsum` names, torch.einsum (bytegolf.model.grams.input_grams);
    plus the token rows fed."""
    from bytegolf.model.grams import input_grams

    dev = torch.device(device)
    model.eval().to(dev)
    inner = model.inner if isinstance(model, LM) else model
    rows = 0
    with input_grams(inner, rename, einsum) as sums:
        for start in tqdm(range(0, len(windows), batch_size), desc="calibrate", disable=not progress, leave=False):
            ids = torch.from_numpy(windows[start : start + batch_size, :-1]).to(dev)
            model.logits(ids) if hasattr(model, "logits") else model(ids)
            rows += ids.numel()
    return {k: v.cpu() for k, v in sums.items()}, rows


def path_fingerprint(path: str | Path) -> str:
    """sha256 (16 hex digits) of a file, or of a directory's files (names and bytes, sorted)."""
    p = Path(path)
    if p.is_file():
        return file_fingerprint(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class ModelAdapter:
    """Base adapter: a checkpoint file, no model (see the module docstring for the protocol)."""

    name = "weights"
    evaluates = False
    #: block calibration (bytegolf.quantize.block_calibration) and sequential GPTQ know this adapter's block structure
    blockwise = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.checkpoint = str(_setting(cfg, "checkpoint"))

    def load_state(self) -> dict[str, Tensor]:
        """The tensors to store, by state-dict name."""
        return checkpoint.load_state_dict(self.checkpoint)

    def fingerprint(self) -> str:
        """The checkpoint's fingerprint (result.json fingerprints.checkpoint)."""
        return file_fingerprint(self.checkpoint)

    def fingerprints(self) -> dict[str, str]:
        """Fingerprints beyond the checkpoint's (the model's code); none here."""
        return {}

    def build(self, state: dict[str, Tensor]) -> nn.Module | None:
        """A model holding exactly `state` (None: no evaluation)."""
        return None

    def grams(
        self, model: nn.Module, windows: np.ndarray, device: str, batch_size: int, progress: bool = True
    ) -> tuple[dict[str, Tensor], int]:
        """Calibration Gram matrices keyed by weight name, and the token rows seen."""
        return linear_grams(model, windows, device, batch_size, progress, einsum=self.einsum())

    def einsum(self) -> list[str]:
        """The parameter globs model.einsum declares (weights the model uses through torch.einsum)."""
        names = _setting(self.cfg, "einsum") or []
        if isinstance(names, str):
            names = [names]
        return [str(n) for n in names]

    def vocab_size(self, model: nn.Module) -> int | None:
        """The model's vocabulary size where it is known (byte tables are padded to it)."""
        return None


class GPTAdapter(ModelAdapter):
    """The built-in Parameter Golf GPT."""

    name = "gpt"
    evaluates = True
    blockwise = True

    def build(self, state: dict[str, Tensor]) -> nn.Module:
        from bytegolf.model.gpt import ModelConfig

        c = self.cfg
        base = ModelConfig(rope_base=c.rope_base, logit_softcap=c.logit_softcap, qk_gain_init=c.qk_gain_init)
        return checkpoint.build_model(state, base)

    def grams(self, model, windows, device, batch_size, progress=True):
        from bytegolf.model.grams import gram_matrices

        return gram_matrices(model, windows, device, batch_size, progress=progress)

    def vocab_size(self, model: nn.Module) -> int | None:
        return int(model.cfg.vocab_size)


@functools.cache
def _installation_dirs() -> tuple[Path, ...]:
    """Where the interpreter's own and installed code lives: the standard library, site-packages (this
    environment's, the base interpreter's, the user's), a virtual environment's whole prefix, and bytegolf's
    package folder (for `python -m bytegolf.cli`'s __main__)."""
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    dirs = [Path(__file__).resolve().parents[1]]
    for paths in (sysconfig.get_paths(), sysconfig.get_paths(vars=base)):
        dirs += [Path(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib", "scripts") if k in paths]
    dirs += [Path(d) for d in site.getsitepackages()] + [Path(site.getusersitepackages())]
    if sys.prefix != sys.base_prefix:  # a virtual environment holds nothing but installed code
        dirs.append(Path(sys.prefix))
    return tuple(dict.fromkeys(d.resolve() for d in dirs))


_USER_FILE: dict[str, Path | None] = {}  # a module's __file__ -> its resolved path, None: not user code


def _user_file(module: Any) -> Path | None:
    """The source file of a module of the user's code, None for a module without one or one of the Python
    installation (standard library, site-packages, a virtual environment) or of bytegolf itself."""
    f = object.__getattribute__(module, "__dict__").get("__file__")  # (a lazily loaded module stays unloaded)
    if not isinstance(f, str) or not f:
        return None
    if f not in _USER_FILE:
        p = Path(f).resolve()
        installed = any(p.is_relative_to(d) for d in _installation_dirs()) or bool(
            {"site-packages", "dist-packages"} & set(p.parts)
        )
        _USER_FILE[f] = None if installed else p
    return _USER_FILE[f]


#: each imported user module's source digest, taken when first seen: the code in sys.modules does not change
#: when its file is edited later in the same process, so neither does the key that stands for it
_SOURCE_DIGEST: weakref.WeakKeyDictionary[ModuleType, str] = weakref.WeakKeyDictionary()


def user_modules() -> dict[Path, str]:
    """The source files of the user's code imported into this process (every module in sys.modules whose file
    lies outside the Python installation and bytegolf: a model.file glue and whatever it imported) and the
    digest of each file's bytes when its module was first seen."""
    out: dict[Path, str] = {}
    for name, mod in list(sys.modules.items()):
        if name == "bytegolf" or name.startswith("bytegolf.") or not isinstance(mod, ModuleType):
            continue  # (bytegolf.formats and bytegolf.codecs live outside its package folder)
        if (p := _user_file(mod)) is None:
            continue
        if mod not in _SOURCE_DIGEST:
            _SOURCE_DIGEST[mod] = file_digest(p)
        out[p] = _SOURCE_DIGEST[mod]
    return out


def load_user_module(path: str | Path) -> Any:
    """Import a Python file as a module of its own (its directory first on sys.path while it loads); the
    sources of the user modules it imports are fingerprinted as they are now (user_modules)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"model.file {path}: no such file")
    name = f"bytegolf_user_{hashlib.sha256(str(p).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ConfigError(f"model.file {path}: not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(p.parent))
    try:
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"model.file {path} does not import: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.remove(str(p.parent))
    user_modules()
    return mod


class ModuleAdapter(ModelAdapter):
    """The user's model code: model.build(state_dict) -> nn.Module, scored by model.nll or model.logits."""

    name = "module"
    evaluates = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.file, self.build_name = _setting(cfg, "file"), _setting(cfg, "build")
        if not self.file or not self.build_name:
            raise ConfigError(
                "model=module needs model.file=PATH.py and model.build=NAME (NAME(state_dict) -> nn.Module)"
            )
        self.logits_name, self.nll_name = _setting(cfg, "logits", "forward"), _setting(cfg, "nll")
        self.module = load_user_module(self.file)
        self.fn = getattr(self.module, str(self.build_name), None)
        if not callable(self.fn):
            raise ConfigError(f"model.build {self.build_name!r}: no such function in {self.file}")

    def code_files(self) -> list[Path]:
        """The model's code: the glue file and every other user module imported so far (user_modules), sorted."""
        return sorted(user_modules().keys() | {Path(str(self.file)).expanduser().resolve()})

    def fingerprints(self) -> dict[str, str]:
        """{"code": ...}: the paths and sources of code_files() as first imported, and model.einsum. Taken after
        build, it covers modules the build imported too."""
        digests = user_modules()
        code = files_fingerprint(self.code_files(), lambda p: digests.get(p) or file_digest(p))
        if einsum := self.einsum():  # how the code is read for calibration: the cached Grams depend on it
            code = hashlib.sha256(f"{code} einsum={sorted(einsum)}".encode()).hexdigest()[:16]
        return {"code": code}

    def _method(self, module: nn.Module, name: str | None, key: str):
        if name is None:
            return None
        if not callable(getattr(module, str(name), None)):
            raise ConfigError(f"model.{key}={name!r}: {type(module).__name__} from {self.file} has no such method")
        return lambda m, *args: getattr(m, str(name))(*args)

    def build(self, state: dict[str, Tensor]) -> nn.Module:
        try:
            module = self.fn(dict(state))
        except Exception as exc:
            raise ConfigError(
                f"model.build {self.build_name} in {self.file} failed: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"model.build {self.build_name} in {self.file} returned {type(module).__name__}, not a torch.nn.Module"
            )
        what = f"{type(module).__name__} ({self.file})"
        logits = self._method(module, self.logits_name, "logits")
        nll = self._method(module, self.nll_name, "nll")
        if logits is None and nll is None:
            raise ConfigError("model=module needs model.logits or model.nll (a method name)")
        return LM(module, logits, nll, what)


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ConfigError("model=hf needs the transformers package: pip install 'bytegolf[hf]'") from None
    return transformers


class HFAdapter(ModelAdapter):
    """A transformers causal LM in a local directory (config.json, weights, tokenizer), loaded offline."""

    name = "hf"
    evaluates = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        path = _setting(cfg, "path")
        if not path:
            raise ConfigError("model=hf needs model.path=DIR (a directory saved with save_pretrained)")
        self.path = Path(str(path)).expanduser()
        if not self.path.is_dir():
            raise ConfigError(f"model.path {self.path}: no such directory")
        if not (self.path / "config.json").is_file():
            raise ConfigError(f"model.path {self.path} has no config.json (save the model with save_pretrained)")
        self.tied: dict[str, str] = {}  # dropped head name -> the stored tensor it is tied to
        self._config = None

    def _auto(self):
        tf = _transformers()
        if self._config is None:
            try:
                self._config = tf.AutoConfig.from_pretrained(self.path, local_files_only=True)
            except Exception as exc:
                raise ConfigError(f"model.path {self.path}: cannot read config.json ({exc})") from None
        return tf

    def fingerprint(self) -> str:
        return path_fingerprint(self.path)

    def load_state(self) -> dict[str, Tensor]:
        tf = self._auto()
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True)
        except Exception as exc:
            raise DataError(f"model.path {self.path}: cannot load the model ({type(exc).__name__}: {exc})") from None
        state: dict[str, Tensor] = {}
        seen: dict[tuple, str] = {}
        for name, t in model.state_dict().items():
            key = (t.data_ptr(), tuple(t.shape), t.dtype)
            if t.numel() and key in seen:  # a tied tensor (the output head): stored once
                self.tied[name] = seen[key]
                continue
            seen[key] = name
            state[name] = t.detach().clone()
        return state

    def build(self, state: dict[str, Tensor]) -> nn.Module:
        tf = self._auto()
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(self._config)
        full = dict(state)
        for head, src in self.tied.items():
            full[head] = state[src]
        missing, unexpected = model.load_state_dict(full, strict=False)
        if unexpected or [k for k in missing if k not in self.tied]:
            raise DataError(f"{self.path}: state dict keys differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.eval()

        def logits(m: nn.Module, ids: Tensor) -> Tensor:
            return m(input_ids=ids, use_cache=False).logits

        return LM(model, logits, None, f"transformers model {self.path}")

    def grams(self, model, windows, device, batch_size, progress=True):
        return linear_grams(
            model, windows, device, batch_size, progress, rename=dict(self.tied.items()), einsum=self.einsum()
        )

    def vocab_size(self, model: nn.Module) -> int | None:
        self._auto()
        return int(self._config.vocab_size)

    def tokenizer(self):
        """The tokenizer saved next to the model (AutoTokenizer, offline)."""
        tf = self._auto()
        try:
            return tf.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as exc:
            raise ConfigError(
                f"model.path {self.path}: no tokenizer can be loaded ({type(exc).__name__}: {exc})"
            ) from None


def get_adapter(cfg: Any) -> ModelAdapter:
    """The adapter a `model` config names (model.name; a config without one is the built-in gpt)."""
    name = str(_setting(cfg, "name", "gpt") or "gpt")
    classes = {"gpt": GPTAdapter, "module": ModuleAdapter, "hf": HFAdapter, "weights": ModelAdapter}
    if name not in classes:
        raise ConfigError(f"unknown model adapter {name!r}; known: {', '.join(ADAPTERS)}")
    return classes[name](cfg)
