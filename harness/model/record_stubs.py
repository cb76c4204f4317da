"""Run a Parameter Golf record's train_gpt.py forward pass on the CPU under `model=module`.

A leading record's train_gpt.py is written for 8xH100: at import it needs FlashAttention 3
(`from flash_attn_interface import flash_attn_func, flash_attn_varlen_func`) and Triton (`import triton`,
`import triton.language as tl`, `from triton.tools.tensor_descriptor import TensorDescriptor`, kernels defined
with `@triton.jit` and `tl.constexpr` annotations), it decorates a function with a module-level `@torch.compile`
(the Newton-Schulz step of its Muon optimizer), and its depth recurrence is off when the model is built
(`GPT.looping_active = False`; training switches it on at `enable_looping_at`), so a glue that forgets to switch
it on evaluates a different, silently wrong model. A glue file uses this module *before* importing the record:

    from bytegolf.model import record_stubs

    tg = record_stubs.import_record("train_gpt")  # stand-ins installed, torch.compile the identity meanwhile
    ...
    model = tg.GPT(tg.Hyperparameters()).eval()   # eval(): the record's MLP runs a Triton kernel when training
    model.load_state_dict(state_dict)
    record_stubs.enable_looping(model)            # the recurrence the record evaluates with

or, step by step, `record_stubs.install()` then `with record_stubs.no_compile(): import train_gpt`.

What each stand-in is for (none is imported from, or copies, a record):
  flash_attn_interface  flash_attn_func(q, k, v, softmax_scale=None, causal=False, ..., window_size=(-1, -1))
                        and flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                        max_seqlen_k, ...) in FlashAttention 3's layout: q (B, T, H, D), k and v (B, S, Hkv, D)
                        (grouped-query: query head h reads kv head h // (H // Hkv)), output (B, T, H, D); varlen
                        packs the batch as (total, H, D) with documents at cu_seqlens. Computed with torch's
                        scaled_dot_product_attention; causal aligns the last query with the last key, as FA3 does.
  triton, triton.language, triton.tools.tensor_descriptor
                        import-time names only: `triton.jit` (a kernel object that raises when launched),
                        `triton.cdiv`, `tl.constexpr` (evaluated in the kernels' annotations at import) and
                        `TensorDescriptor`. The records use Triton for training-only paths (the fused softcapped
                        cross-entropy of `GPT.forward(ids, targets)` when FUSED_CE_ENABLED, the fused
                        LeakyReLU² MLP when the module is in training mode); the evaluation path
                        (`GPT.forward_logits` on a model in eval mode) calls no kernel. A launched stand-in
                        kernel raises RuntimeError naming itself.
  torch.compile         the identity while the record imports (no_compile, restored after): the module-level
                        `@torch.compile` would otherwise load dynamo and inductor at import for a function the
                        forward pass never calls.

A stand-in is installed only where the real module cannot be imported (a GPU machine with flash_attn_interface
and triton keeps them), unless install(force=True). Nothing CUDA-only runs at a record's import; its forward
runs on CPU tensors in float32 (the record's bfloat16 casts are its training and eval scripts', not the
model's). Records with a SmearGate read a module global BOS_ID that only the record's data loader sets (to 1):
set it in the glue (`tg.BOS_ID = 1`) or the BOS mask compares against None.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the recurrence flag of the Parameter Golf records (GPT.looping_active; also read by their TTT LoRA code)
LOOPING_ATTRS = ("looping_active",)

STUB_MARK = "__bytegolf_record_stub__"


# ---- flash_attn_interface -----------------------------------------------------------------------------------


def _unsupported(**given: Any) -> None:
    bad = [k for k, v in given.items() if v]
    if bad:
        raise NotImplementedError(
            f"flash_attn_interface stand-in (bytegolf record_stubs): {', '.join(bad)} unsupported"
        )


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float | None, causal: bool, window: tuple[int, int]) -> Tensor:
    """One sequence batch in FA layout: q (B, T, H, D), k/v (B, S, Hkv, D) -> (B, T, H, D)."""
    t, s, h, hkv = q.size(1), k.size(1), q.size(2), k.size(2)
    if h % hkv:
        raise ValueError(f"flash_attn stand-in: {h} query heads are not a multiple of {hkv} kv heads")
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, heads, len, D), SDPA's layout
    if hkv != h:  # grouped-query attention: query head i reads kv head i // (h // hkv)
        k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
    left, right = window
    mask = None
    if causal or left >= 0 or right >= 0:
        i = torch.arange(t, device=q.device)[:, None] + (s - t)  # bottom-right aligned, as FlashAttention
        j = torch.arange(s, device=q.device)[None, :]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device)
        if causal:
            mask &= j <= i
        if left >= 0:
            mask &= j >= i - left
        if right >= 0 and not causal:
            mask &= j <= i + right
    if causal and t == s and left < 0:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return y.transpose(1, 2)


def flash_attn_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    softmax_scale: float | None = None,
    causal: bool = False,
    qv: Tensor | None = None,
    q_descale: Tensor | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int = 0,
    softcap: float = 0.0,
    num_splits: int = 1,
    pack_gqa: bool | None = None,
    deterministic: bool = False,
    sm_margin: int = 0,
    return_attn_probs: bool = False,
) -> Tensor:
    """FlashAttention 3's flash_attn_func on any device: q (B, T, H, D), k, v (B, S, Hkv, D) -> (B, T, H, D)."""
    _unsupported(
        qv=qv is not None,
        descale=any(x is not None for x in (q_descale, k_descale, v_descale)),
        attention_chunk=bool(attention_chunk),
        softcap=bool(softcap),
        return_attn_probs=return_attn_probs,
    )
    return _attend(q, k, v, softmax_scale, causal, tuple(window_size))


def flash_attn_varlen_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    seqused_q: Tensor | None = None,
    seqused_k: Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    qv: Tensor | None = None,
    q_descale: Tensor | None = None,
    k_descale: Tensor | None = None,
    v_descale: Tensor | None = None,
    window_size: tuple[int, int] = (-1, -1),
    attention_chunk: int = 0,
    softcap: float = 0.0,
    num_splits: int = 1,
    pack_gqa: bool | None = None,
    deterministic: bool = False,
    sm_margin: int = 0,
    return_attn_probs: bool = False,
) -> Tensor:
    """FlashAttention 3's flash_attn_varlen_func: packed q (total_q, H, D), k, v (total_k, Hkv, D), document b
    at rows cu_seqlens[b]:cu_seqlens[b + 1]; each document attends only within itself. -> (total_q, H, D)."""
    _unsupported(
        seqused=seqused_q is not None or seqused_k is not None,
        qv=qv is not None,
        descale=any(x is not None for x in (q_descale, k_descale, v_descale)),
        attention_chunk=bool(attention_chunk),
        softcap=bool(softcap),
        return_attn_probs=return_attn_probs,
    )
    out = q.new_zeros((*q.shape[:-1], v.size(-1)))
    bq, bk = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for (q0, q1), (k0, k1) in zip(itertools.pairwise(bq), itertools.pairwise(bk), strict=True):
        if q1 > q0:
            out[q0:q1] = _attend(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], softmax_scale, causal, window_size)[0]
    return out


# ---- triton -------------------------------------------------------------------------------------------------


class _Kernel:
    """What `@triton.jit` makes of a kernel here: definable, indexable by a grid, never launchable."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.__name__ = fn, getattr(fn, "__name__", "kernel")
        self.__doc__ = getattr(fn, "__doc__", None)

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"Triton kernel {self.__name__} launched, but triton is bytegolf's import-time stand-in "
            "(bytegolf.model.record_stubs): this is a training-only path; evaluate with the model in eval mode "
            "through its logits (forward_logits), or install triton and run on a GPU"
        )


def _jit(fn: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
    """`@triton.jit` and `@triton.jit(...)`."""
    return _Kernel(fn) if fn is not None else _Kernel


class _Unavailable:
    """A Triton name the stand-in does not provide: importable and annotatable, an error when called."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self.name} called, but triton is bytegolf's import-time stand-in (record_stubs)")

    def __repr__(self) -> str:
        return f"<stand-in {self.name}>"


class _TensorDescriptor:
    """triton.tools.tensor_descriptor.TensorDescriptor: only its name is needed at import."""

    @classmethod
    def from_tensor(cls, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("TensorDescriptor.from_tensor called, but triton is bytegolf's stand-in (record_stubs)")


def _module(name: str, doc: str, fallback: bool = False, **attrs: Any) -> ModuleType:
    mod = ModuleType(name, doc)
    mod.__dict__.update(attrs)
    setattr(mod, STUB_MARK, True)
    if fallback:  # other names (tl.bfloat16, tl.program_id, ...) appear only inside kernel bodies

        def fallback(attr: str) -> _Unavailable:
            if attr.startswith("__"):  # inspect and importlib probe __file__, __spec__, ...: absent, as usual
                raise AttributeError(attr)
            return _Unavailable(f"{name}.{attr}")

        mod.__getattr__ = fallback  # type: ignore[method-assign]
    return mod


def _triton_modules() -> dict[str, ModuleType]:
    doc = "bytegolf.model.record_stubs stand-in: import-time names of {} only; kernels cannot be launched."
    lang = _module("triton.language", doc.format("triton.language"), fallback=True, constexpr=type("constexpr", (), {}))
    desc = _module("triton.tools.tensor_descriptor", doc.format("TensorDescriptor"), TensorDescriptor=_TensorDescriptor)
    tools = _module("triton.tools", doc.format("triton.tools"), tensor_descriptor=desc)
    triton = _module(
        "triton",
        doc.format("triton"),
        fallback=True,
        jit=_jit,
        cdiv=lambda a, b: -(-a // b),
        language=lang,
        tools=tools,
    )
    for m in (triton, tools):
        m.__path__ = []  # a package: `import triton.language` finds the submodule in sys.modules
    return {m.__name__: m for m in (triton, lang, tools, desc)}


def _flash_modules() -> dict[str, ModuleType]:
    mod = _module(
        "flash_attn_interface",
        "bytegolf.model.record_stubs stand-in for FlashAttention 3: torch scaled_dot_product_attention.",
        flash_attn_func=flash_attn_func,
        flash_attn_varlen_func=flash_attn_varlen_func,
    )
    return {"flash_attn_interface": mod}


# ---- install ------------------------------------------------------------------------------------------------


def _importable(name: str) -> bool:
    mod = sys.modules.get(name)
    if mod is not None:
        return not getattr(mod, STUB_MARK, False)
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def install(force: bool = False) -> list[str]:
    """Put the stand-ins in sys.modules where the real packages are missing (all of them with force=True);
    returns the names installed. Idempotent; uninstall() removes them."""
    installed = []
    for top, make in (("flash_attn_interface", _flash_modules), ("triton", _triton_modules)):
        if _importable(top) and not force:
            continue
        if not force and getattr(sys.modules.get(top), STUB_MARK, False):
            continue  # already ours
        for name, mod in make().items():
            sys.modules[name] = mod
            installed.append(name)
    return installed


def uninstall() -> list[str]:
    """Remove this module's stand-ins from sys.modules (modules that imported them keep their references)."""
    gone = [name for name, mod in list(sys.modules.items()) if getattr(mod, STUB_MARK, False)]
    for name in gone:
        del sys.modules[name]
    return gone


def _identity_compile(model: Any = None, **kwargs: Any) -> Any:
    """torch.compile's call forms, compiling nothing: compile(fn), compile(fn, ...), compile(...)(fn)."""
    return model if model is not None else (lambda fn: fn)


@contextlib.contextmanager
def no_compile() -> Iterator[None]:
    """torch.compile is the identity inside the block (restored after, also on error)."""
    real = torch.compile
    torch.compile = _identity_compile  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = real  # type: ignore[assignment]


def import_record(name_or_path: str | Path = "train_gpt", force: bool = False) -> ModuleType:
    """install() the stand-ins, then import a record's file under no_compile(): a module name on sys.path (a
    glue's own folder is, while bytegolf loads it) or a path to a .py file (imported as its stem)."""
    install(force=force)
    p = Path(name_or_path)
    with no_compile():
        if p.suffix != ".py":
            return importlib.import_module(str(name_or_path))
        name = p.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(p.resolve()):
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, p.resolve())
        if spec is None or spec.loader is None:
            raise ImportError(f"{p}: not a Python file")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return mod


# ---- the recurrence switch ----------------------------------------------------------------------------------


def enable_looping(model: nn.Module, attrs: tuple[str, ...] = LOOPING_ATTRS, on: bool = True) -> int:
    """Switch a record's depth recurrence on (the looped layers run num_loops + 1 times, as the record
    evaluates): set every attribute in `attrs` on the model and its submodules that have it. Returns how many
    were set; ValueError when none has it, so a model without the switch is not taken for one switched on."""
    count = 0
    for module in model.modules():
        for attr in attrs:
            if isinstance(getattr(module, attr, None), bool):
                setattr(module, attr, on)
                count += 1
    if not count:
        raise ValueError(f"{type(model).__name__} has no recurrence switch ({', '.join(attrs)})")
    return count


def looping_enabled(model: nn.Module, attrs: tuple[str, ...] = LOOPING_ATTRS) -> bool:
    """Whether every recurrence switch in the model is on (False where it has none)."""
    flags = [getattr(m, a) for m in model.modules() for a in attrs if isinstance(getattr(m, a, None), bool)]
    return bool(flags) and all(flags)


__all__ = [
    "LOOPING_ATTRS",
    "enable_looping",
    "flash_attn_func",
    "flash_attn_varlen_func",
    "import_record",
    "install",
    "looping_enabled",
    "no_compile",
    "uninstall",
]
