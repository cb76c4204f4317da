"""GPTQ (Frantar et al. 2022): quantize a matrix column by column, pushing each column's error
onto the columns not yet quantized through the upper Cholesky factor of the inverse Hessian.

The quantization grid is the caller's (fixed up front from the original weights, "static
groups"); this module only decides the integer codes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bytegolf.errors import ConfigError

# (column values (rows,), original column index) -> (integer codes (rows,), dequantized values (rows,))
ColumnQuantizer = Callable[[Tensor, int], tuple[Tensor, Tensor]]


def inverse_hessian_factor(h: Tensor, damp: float, name: str, tries: int = 4) -> Tensor:
    """Upper Cholesky factor U of (H + λI)⁻¹ with λ = damp·mean(diag H); λ grows 10× per failed try."""
    h64 = h.double()
    mean_diag = float(torch.diagonal(h64).mean())
    eye = torch.eye(h64.shape[0], dtype=h64.dtype, device=h64.device)
    d = damp
    for _ in range(tries):
        lower, info = torch.linalg.cholesky_ex(h64 + d * mean_diag * eye)
        if int(info) == 0:
            u, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and bool(torch.isfinite(u).all()):
                return u.float()
        d = d * 10 if d > 0 else 1e-3
    raise ConfigError(f"GPTQ: Hessian of tensor {name} is not positive definite even with damping {d / 10:g}")


def gptq_quantize(
    w: Tensor,
    hessian: Tensor,
    quantize: ColumnQuantizer,
    *,
    name: str,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> Tensor:
    """Integer codes (rows, cols) for the fp32 matrix `w` given H = Σ x xᵀ over its inputs (cols, cols).

    Dead input columns (diag H = 0) are zeroed; with act_order, columns are visited by
    descending diag H and the codes returned in the original column order.
    """
    rows, cols = w.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ConfigError(f"GPTQ: Hessian of tensor {name} has shape {tuple(hessian.shape)}, expected {(cols, cols)}")
    if not bool(torch.isfinite(hessian).all()):
        raise ConfigError(f"GPTQ: Hessian of tensor {name} holds NaN or inf")
    w = w.float().clone()
    h = hessian.to(device=w.device, dtype=torch.float32).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(cols, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    order = perm.tolist()
    u = inverse_hessian_factor(h, damp, name)

    codes = torch.zeros(rows, cols, dtype=torch.int32, device=w.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            q, deq = quantize(col, order[i1 + i])
            codes[:, i1 + i] = q
            err = (col - deq) / u1[i, i]
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes[:, torch.argsort(perm)]
