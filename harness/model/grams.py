"""Calibration: Gram matrices X Xᵀ of every weight matrix's inputs, gathered on training windows.

gram_matrices: the built-in GPT. input_grams: any module (the module and hf adapters): nn.Linear inputs, and
the inputs of weights the model uses through torch.nn.functional.linear or (declared) torch.einsum, weight
bank slices included.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from bytegolf.artifact.reshape import slice_name
from bytegolf.errors import ConfigError
from bytegolf.model.gpt import GPT, CastedLinear


@dataclass
class CalibConfig:
    """Windows of seq_len tokens taken from the start of the train shards."""

    windows: int = 16
    seq_len: int = 1024
    batch_size: int = 4
    # Sequential (GPTQ-style): each transformer block's Gram matrices come from the model whose earlier
    # blocks are already quantized (one calibration pass per block); tensors outside the blocks (the tied
    # embedding, whose Gram is the head input) last. False: every Gram from the unquantized model.
    sequential: bool = False


@torch.inference_mode()
def gram_matrices(
    model: GPT, windows: np.ndarray, device: str = "cpu", batch_size: int = 4, progress: bool = True
) -> tuple[dict[str, Tensor], int]:
    """Σ x xᵀ (fp32, on CPU) for each linear's input and for the tied head's input; plus the row count."""
    dev = torch.device(device)
    model.eval().to(dev)
    sums: dict[str, Tensor] = {}
    hooks = []

    def hook(name: str):
        def fn(_mod, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + x.T @ x

        return fn

    for mname, mod in model.named_modules():
        if isinstance(mod, CastedLinear):
            hooks.append(mod.register_forward_pre_hook(hook(f"{mname}.weight")))
    rows = 0
    try:
        for start in tqdm(range(0, len(windows), batch_size), desc="calibrate", disable=not progress, leave=False):
            ids = torch.from_numpy(windows[start : start + batch_size, :-1]).to(dev)
            h = model.hidden(ids).reshape(-1, model.cfg.model_dim).float()
            sums["tok_emb.weight"] = sums.get("tok_emb.weight", 0) + h.T @ h
            rows += h.shape[0]
    finally:
        for h in hooks:
            h.remove()
    return {k: v.cpu() for k, v in sums.items()}, rows


class _Weights:
    """A module's parameters by storage, to name the weight a functional call uses: a parameter itself (its
    name), or slice i of a parameter of 3+ dims, bank[i] (as a matrix: bank[i] with its middle dims folded
    into rows): f"{bank}[{i}]" (split) and the bank's own name (fold: the folded (L·out, in) matrix's Hessian
    is the sum of its slices' Grams)."""

    def __init__(self, module: nn.Module, rename: dict[str, str]) -> None:
        self.by_storage: dict[int, list[tuple[str, Tensor]]] = {}
        self.names: list[str] = []
        for name, p in module.named_parameters():
            if p.ndim >= 2 and p.numel():
                name = rename.get(name, name)
                self.names.append(name)
                self.by_storage.setdefault(p.untyped_storage().data_ptr(), []).append((name, p))

    def keys(self, w: Any) -> tuple[str, ...]:
        """The Gram keys of weight `w` (a 2-D tensor): () when it is no parameter or bank slice."""
        if not isinstance(w, Tensor) or w.ndim != 2 or not self.by_storage:
            return ()
        try:
            found = self.by_storage.get(w.untyped_storage().data_ptr(), ())
        except RuntimeError:  # a tensor without storage (a functional tensor, a tensor subclass)
            return ()
        for name, p in found:
            if p.ndim == 2:
                if w.data_ptr() == p.data_ptr() and w.shape == p.shape and w.stride() == p.stride():
                    return (name,)
                continue
            delta, s0 = w.storage_offset() - p.storage_offset(), p.stride(0)
            if s0 <= 0 or delta % s0 or not 0 <= delta // s0 < p.shape[0]:
                continue
            i = delta // s0
            sl = p[i]
            if sl.ndim > 2:
                if not sl.is_contiguous():
                    continue
                sl = sl.reshape(sl.shape[:-1].numel(), sl.shape[-1])
            if w.shape == sl.shape and w.stride() == sl.stride():
                return (slice_name(name, i), name)
        return ()


def _einsum_axis(eq: str, wsub: str, xsub: str) -> int | None:
    """The axis of x that `eq` contracts with the last axis of a 2-D weight used as x·Wᵀ (out[..., o] =
    Σ_i x[..., i]·W[o, i], every other axis of x kept), or None when the weight is used otherwise."""
    lhs, arrow, out = eq.partition("->")
    if not arrow:  # implicit output: the letters seen once, in order, after any ellipsis
        letters = lhs.replace(",", "").replace(".", "")
        out = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    xl = xsub.replace("...", "")
    if len(wsub) != 2 or wsub[0] == wsub[1] or "." in wsub or len(set(xl)) != len(xl):
        return None
    o, i = wsub
    if i not in xl or i in out or o not in out or o in xl or any(c != i and c not in out for c in xl):
        return None
    if "..." in xsub:
        pre, post = xsub.split("...", 1)
        return pre.index(i) if i in pre else post.index(i) - len(post)
    return xsub.index(i)


@contextmanager
def input_grams(
    module: nn.Module, rename: dict[str, str] | None = None, einsum: Sequence[str] = ()
) -> Iterator[dict[str, Tensor]]:
    """While active, Σ x xᵀ (fp32, on the inputs' device) of the inputs of the module's weights accumulate in
    the dict it yields, keyed by weight name (then renamed by `rename`):
      - every nn.Linear's input (a forward pre-hook), f"{module}.weight";
      - every torch.nn.functional.linear(x, W) call made outside an nn.Linear whose W is a parameter (its
        name) or a slice bank[i] of a parameter of 3+ dims (f"{bank}[{i}]", and the bank's name summed over
        its slices; see _Weights);
      - every torch.einsum(eq, x, W) (either operand order) whose W is a parameter or bank slice named by a
        glob in `einsum` and is used as x·Wᵀ; a declared weight used otherwise is a ConfigError.
    Calls through names bound before entry (`from torch.nn.functional import linear`) are not seen.
    F.linear and torch.einsum are restored on exit, also on error."""
    rename = rename or {}
    sums: dict[str, Tensor] = {}
    weights = _Weights(module, rename)
    declared = set()
    for pattern in einsum:
        hit = [n for n in weights.names if fnmatch.fnmatchcase(n, str(pattern))]
        if not hit:
            raise ConfigError(f"model.einsum: {pattern!r} matches no weight parameter of the model")
        declared.update(hit)
    depth = [0]  # > 0 inside an nn.Linear (its own F.linear call is counted by the pre-hook)

    def add(keys: tuple[str, ...], x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        g = x.T @ x
        for k in keys:
            sums[k] = sums[k] + g if k in sums else g.clone()

    def pre_hook(name: str):
        def fn(_mod, args):
            depth[0] += 1
            add((name,), args[0])

        return fn

    def post_hook(_mod, _args, _out):
        depth[0] -= 1

    orig_linear, orig_einsum = F.linear, torch.einsum

    def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if not depth[0] and (keys := weights.keys(weight)):
            add(keys, input)
        return orig_linear(input, weight, bias)

    def einsum_(*args: Any) -> Tensor:
        if not depth[0] and declared and args and isinstance(args[0], str):
            ops = args[1:]
            if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
                ops = tuple(ops[0])
            eq = args[0].replace(" ", "")
            subs = eq.partition("->")[0].split(",")
            for wi in range(len(ops) if len(ops) == 2 and len(subs) == 2 else 0):
                keys = weights.keys(ops[wi])
                if not keys or keys[-1] not in declared:
                    continue
                axis = _einsum_axis(eq, subs[wi], subs[1 - wi])
                if axis is None:
                    raise ConfigError(
                        f"model.einsum: {keys[0]} is used in torch.einsum({args[0]!r}) other than as x·Wᵀ "
                        "(its last axis contracted with an axis of x, every other axis of x kept); "
                        "calibration cannot take its Gram matrix: remove it from model.einsum"
                    )
                add(keys, ops[1 - wi].movedim(axis, -1))
                break
        return orig_einsum(*args)

    hooks = []
    for n, mod in module.named_modules():
        if isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_pre_hook(pre_hook(rename.get(f"{n}.weight", f"{n}.weight"))))
            hooks.append(mod.register_forward_hook(post_hook, always_call=True))
    F.linear, torch.einsum = linear, einsum_
    try:
        yield sums
    finally:
        F.linear, torch.einsum = orig_linear, orig_einsum
        for h in hooks:
            h.remove()


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def block_index(name: str) -> int | None:
    """The transformer block a tensor belongs to ("blocks.3.mlp.fc.weight" -> 3), None outside the blocks."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None
