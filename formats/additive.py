"""Additive (AQLM, arXiv 2401.06118) multi-codebook quantization.

Each row of W (d_out, d_in) is cut into groups of g consecutive weights (along the input
dimension; g must divide d_in). A group is approximated by the sum of M codewords, one from
each of M codebooks of K = 2^B vectors of length g, times one fp16 scale per output row.
The codebooks are shared by every tensor of the unit (stored once: a "family" or "global"
scope shares them across layers); codes and row scales are per tensor.

Objective, per tensor, f = Σ_rows e_r A e_rᵀ with e_r = W_r − s_r·ĉ_r and
  "output"            A = E[xxᵀ] = H / count, the whole matrix: f = tr(ΔW·XXᵀ·ΔWᵀ)/n, AQLM's
                      ‖(W − Ŵ)X‖², errors of different groups of a row compensate each other;
  "output_blockdiag"  only the g×g diagonal blocks of E[xxᵀ] (the coupling between groups dropped);
  "mse"               A = I (weight MSE);
  "auto" (default)    "output" when every tensor of the unit has a Hessian, else "mse".
The output objectives add damp·mean(diag A)·I to A (GPTQ's damping, default 0.01): without it the
encoder moves weights freely along directions the calibration inputs barely span, which
validation inputs do not leave alone. Measured on the default model (2×8 g8, 16,384 calibration
tokens, every tensor additive): damp 0 gives relative weight MSE up to 4.2 in the last layers and
2.2729 bpb; damp 0.01 gives 1.6912 bpb at the same calibration output error (8 windows).

Rate: num_codebooks is a real number x ≥ 1. Its integer part M = ⌊x⌋ is AQLM's number of
codebooks, used by every group. A fractional part φ = x − M adds one partial codebook used by
the round(φ·R) rows of each tensor (R rows) with the largest objective after the M-codebook
init (greedy: an extra codebook takes a similar share off each row's error, so the rows with
the most error gain the most). Its size grows with the n groups that use it,
K_p = min(2^B, ⌈n / ⌈16·g/B⌉⌉) (its codebook then costs about as many bits as its codes), so bytes
grow smoothly with x, also just above an integer (one row of 1024 weights: K_p = 8, ≈0.2 kB);
it costs a row mask (R bits, packed) and one ⌈log2 K_p⌉-bit code per group of the chosen rows.
Integer x is exactly AQLM M×B.

Init (AQLM): s_r = fp16 row norm, rows divided by it, then residual k-means M times (k-means++
seeded from ctx.seed + m, groups weighted by s_r²·mean diag of their block of A); when K is at
least the number of groups, the codebook simply holds every group (spare entries are 0).
Then rounds of
  (a) codes: for each column group j of a tensor (in a seeded random order per round), all rows
      at once: the cost of a new group vector c, the others of the row fixed, is
      s²·(cᵀA_jj c − 2cᵀt) + const with t = (A e)_j / s + A_jj c_old, where A e is the
      running product of the row error with the WHOLE A (so t carries the cross terms with every
      other group of the row, as AQLM's beam search does; block-diagonal and mse reduce to
      t = A_jj w_j / s and t = w_j / s). A beam over the codebooks (one pass, codebook 0..M−1;
      every hypothesis tries every codeword of that codebook, scored base + cᵀA_jj c +
      2cᵀ(A_jj c_rest − t) by one GEMM; hypotheses that differ only in the codebook being swapped
      are merged; rows with the partial codebook search it too, the others only the ⌊x⌋ full
      ones) proposes a tuple; a group takes it only if its exact fp64 cost is strictly lower, and
      then A e is updated (rank g, so the next groups see the change).
      AQLM carries whole-row hypotheses across groups; here the beam spans the codebooks of one
      group and the best is committed before the next group (greedy across groups, as GPTQ).
      A row whose recomputed fp64 objective came out higher keeps its old codes.
  (b) codebooks: exact least squares in the codewords, min f + ε‖θ − θ_old‖² (ridge
      ε = 1e-6·mean diagonal, keeps unused codewords where they were), solved by conjugate
      gradients preconditioned with the exact g×g block of each codeword, matrix-free (each
      product is Ĉ·A over the unit's rows) — or Adam on codebooks and scales (codebook_update);
  (c) scales: closed-form per-row least squares s_r = w_r A ĉ_rᵀ / ĉ_r A ĉ_rᵀ, rounded to fp16.
Each of (b) and (c) is kept only when f, evaluated with the codebooks and scales as stored,
does not rise. Rounds stop when f improves by less than tol (relative) or after max_rounds.
Block finetune of codebooks and scales: harness/quantize/block_calibration.py through `trainable`.

Decoding: Σ_m codebook_m[code_m] accumulated in fp32 in the order m = 0..M−1, plus the partial
codebook's codeword on its rows, times the row scale (fp16 read as fp32), cast to the tensor's
dtype; encode's `recon` runs the same code.
Bits (AQLM): per weight M·B/g + M·2^B·g·16/(d_out·d_in) + 16/d_in, codebooks counted once
per unit; plus, with a partial codebook, K_p·g·16 + Σ_tensors (R + rows·(d_in/g)·⌈log2 K_p⌉).

Measured on blocks.3.mlp.proj.weight (512×1024) of the 17M-parameter model with a Gram matrix
from 4096 calibration tokens, defaults (2×8 g8, beam 8, tol 1%, all 10 rounds run), one thread
on a busy 2-core machine: 30-36 s (k-means init ≈7 s, codes ≈17 s, codebooks ≈9 s; 29 s on two
threads); output error 0.00117 full, 0.00207 block-diagonal (21 s), 0.0250 mse (8 s, 3 rounds);
beam 4: 0.00121 in 25 s, beam 1: 0.00139 in 21 s; x = 2.5: 0.00037 in 46 s; x = 6.8: 109 s;
blocks.3.mlp.fc.weight (1024×512): 20 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bytegolf.errors import ConfigError
from bytegolf.formats.arrays import check_matrix, from_numpy, index_bits, symbol_dtype, to_numpy, torch_dtype
from bytegolf.formats.base import SCOPES, EncodeContext, Encoded, Format, Stream, TensorSpec, Trainable, meta_int
from bytegolf.formats.clustered import CODEBOOK_DTYPES
from bytegolf.formats.kmeans import assign, kmeans

OBJECTIVES = ("auto", "mse", "output", "output_blockdiag")
MODES = {"mse": "mse", "output": "full", "output_blockdiag": "blockdiag"}
UPDATES = ("lstsq", "adam")
BEAM_ELEMS = 1 << 22  # rows × hypotheses × codewords scored per beam-search chunk
CG_ITERS = 20  # conjugate-gradient iterations of the codebook least squares at most
CG_TOL = 1e-3  # ... stopping when the (preconditioned) residual fell by this factor
RIDGE = 1e-6
DEAD = 1e30  # beam-search cost of a dead or duplicate hypothesis


def reconstruct(
    codebooks: Tensor, codes: Tensor, scales: Tensor, partial: tuple[Tensor, Tensor, Tensor] | None = None
) -> Tensor:
    """fp32 (R, C) from fp32 codebooks (M, K, g), int64 codes (R, C/g, M), fp32 row scales (R,) and
    optionally a partial codebook: (codebook (K_p, g), its rows (n,) int64, their codes (n, C/g))."""
    acc = codebooks[0][codes[..., 0]]
    for m in range(1, codebooks.shape[0]):
        acc = acc + codebooks[m][codes[..., m]]
    if partial is not None:
        book, rows, pcodes = partial
        acc = acc.index_copy(0, rows, acc[rows] + book[pcodes])
    return acc.reshape(codes.shape[0], -1) * scales[:, None]


def aqlm_bits(shapes: list[tuple[int, int]], m: int, b: int, g: int, codebook_bits: int = 16) -> int:
    """Analytic bits of a unit: M·B bits per group, fp16 scale per row, M·2^B·g codebook entries once."""
    return sum(r * (c // g) * m * b + 16 * r for r, c in shapes) + m * 2**b * g * codebook_bits


def partial_size(groups: int, b: int, g: int, codebook_bits: int = 16) -> int:
    """Entries of a partial codebook used by `groups` groups: one per ⌈codebook_bits·g / B⌉ groups (so its
    codebook costs about as many bits as its codes), at most 2^B."""
    per = -(-codebook_bits * g // b)
    return min(2**b, -(-groups // per))


def partial_bits(shapes: list[tuple[int, int]], rows: list[int], kp: int, g: int, codebook_bits: int = 16) -> int:
    """Bits of a partial codebook of kp entries: the codebook, and per tensor with rows > 0 a row mask
    (one bit a row) and ⌈log2 kp⌉ bits per group of its rows."""
    if kp == 0:
        return 0
    per = sum(r + n * (c // g) * index_bits(kp) for (r, c), n in zip(shapes, rows, strict=True) if n > 0)
    return per + kp * g * codebook_bits


class Quad:
    """One tensor's objective Σ_r e_r A e_rᵀ over errors e (R, C) fp64, A full, block-diagonal or I."""

    def __init__(self, w: Tensor, a: Tensor | None, mode: str, g: int, row0: int, group0: int) -> None:
        self.r, self.c = w.shape
        self.g, self.j, self.mode = g, self.c // g, mode
        self.w64 = w.double()
        self.rows = slice(row0, row0 + self.r)
        self.groups = slice(group0, group0 + self.r * self.j)
        dev = w.device
        if a is None:
            self.a = None
            self.blocks = torch.eye(g, dtype=torch.float64, device=dev).expand(self.j, g, g)
        else:
            idx = torch.arange(self.j, device=dev)
            self.blocks = a.reshape(self.j, g, self.j, g)[idx, :, idx, :].contiguous()  # (J, g, g)
            self.a = a if mode == "full" else None
        self._f32: dict[str, Tensor] = {}

    def apply(self, e: Tensor) -> Tensor:
        """e·A for errors e (R, C) (A symmetric), in e's dtype."""
        if self.mode == "mse":
            return e
        if self.mode == "full":
            return e @ (self.a if e.dtype == torch.float64 else self._cast("a", self.a))
        b = self.blocks if e.dtype == torch.float64 else self._cast("b", self.blocks)
        return torch.einsum("rjg,jgh->rjh", e.reshape(e.shape[0], self.j, self.g), b).reshape(e.shape)

    def _cast(self, key: str, x: Tensor) -> Tensor:
        if key not in self._f32:
            self._f32[key] = x.float()
        return self._f32[key]

    def row_cost(self, e: Tensor) -> Tensor:
        return (e * self.apply(e)).sum(1)

    def sub(self, p: Tensor, j: int, rows: Tensor, delta: Tensor) -> None:
        """p[rows] −= (δ placed at column group j)·A, in place (p = e·A kept current when e[rows] changes by −δ)."""
        sl = slice(j * self.g, (j + 1) * self.g)
        if self.mode == "full":
            p.index_add_(0, rows, delta @ self.a[sl], alpha=-1)
        elif self.mode == "blockdiag":
            p[rows, sl] -= delta @ self.blocks[j]
        else:
            p[rows, sl] -= delta


@dataclass
class Partial:
    """The partial codebook (index m of the codebook stack): kp entries, used by rows where active."""

    m: int
    kp: int
    active: Tensor  # (n_rows,) bool
    rows: list[int]  # rows chosen per tensor


class Problem:
    """The unit's tensors (one Quad each), flattened groups (N, g) and their rows."""

    def __init__(self, quads: list[Quad], n_rows: int, g: int) -> None:
        self.quads, self.n_rows, self.g = quads, n_rows, g
        self.group_row = torch.cat(
            [torch.arange(q.rows.start, q.rows.stop, device=q.w64.device).repeat_interleave(q.j) for q in quads]
        )
        self.wg = torch.cat([q.w64.reshape(-1, g) for q in quads]).float()
        self.energy = float(sum(q.row_cost(q.w64).sum() for q in quads))  # f at Ŵ = 0

    def chat(self, cb: Tensor, codes: Tensor, q: Quad) -> Tensor:
        """ĉ (R, C) in cb's dtype for tensor q: Σ_m cb[m][code_m]."""
        c = codes[q.groups]
        acc = cb[0][c[:, 0]]
        for m in range(1, cb.shape[0]):
            acc = acc + cb[m][c[:, m]]
        return acc.reshape(q.r, q.c)

    def errors(self, cb: Tensor, codes: Tensor, scales: Tensor, q: Quad) -> Tensor:
        return q.w64 - scales.double()[q.rows][:, None] * self.chat(cb.double(), codes, q)

    def row_costs(self, cb: Tensor, codes: Tensor, scales: Tensor) -> Tensor:
        """(n_rows,) fp64 per-row objective."""
        return torch.cat([q.row_cost(self.errors(cb, codes, scales, q)) for q in self.quads])

    def total(self, cb: Tensor, codes: Tensor, scales: Tensor) -> float:
        return float(self.row_costs(cb, codes, scales).sum())


def dedupe_dead(hyp: Tensor, m: int) -> Tensor:
    """(n, H) bool: hypotheses equal to an earlier one on every codebook but m (their swaps would repeat)."""
    h = hyp.shape[1]
    if h == 1:
        return torch.zeros(hyp.shape[:2], dtype=torch.bool, device=hyp.device)
    keep = torch.ones(hyp.shape[2], dtype=torch.bool, device=hyp.device)
    keep[m] = False
    x = hyp[:, :, keep]
    eq = (x[:, :, None, :] == x[:, None, :, :]).all(-1)  # (n, H, H)
    earlier = torch.ones(h, h, dtype=torch.bool, device=hyp.device).tril(-1)  # [h2, h1]: h1 < h2
    return (eq & earlier).any(-1)


def score_tables(a: Tensor, cb: Tensor, cand: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per codebook m: its candidate codewords c (Kc, g), c·a, and [2c, 1, cᵀa c]ᵀ (g + 2, Kc), so that one
    GEMM [z, base, 1]·[2c, 1, cᵀa c]ᵀ = base + cᵀa c + 2 c·z scores every candidate of every hypothesis."""
    out = []
    for m, ids in enumerate(cand):
        cm = cb[m][ids]
        cma = cm @ a
        ones = torch.ones(cm.shape[0], 1, dtype=cm.dtype, device=cm.device)
        out.append((cm, cma, torch.cat([2 * cm, ones, (cma * cm).sum(1, keepdim=True)], 1).T.contiguous()))
    return out


def beam_search(
    t: Tensor,
    a: Tensor,
    cb: Tensor,
    codes: Tensor,
    beam: int,
    cand: list[Tensor] | None = None,
    tables: list[tuple[Tensor, Tensor, Tensor]] | None = None,
) -> Tensor:
    """Code tuples (n, M) minimising φ(c) = cᵀ a c − 2 cᵀ t_i over c = Σ_m cb[m][code_m] for each row i.

    t (n, g), a (g, g) symmetric PSD, cb (M, K, g), codes (n, M) the start. cand[m]: the code ids
    codebook m may use (default all); tables: score_tables(a, cb, cand) when the caller has them.
    One pass over the codebooks; the beam starts from the current codes, so its best is never worse
    than the start up to rounding (the caller checks in fp64).
    """
    n, mm = codes.shape
    dev = t.device
    cand = cand or [torch.arange(cb.shape[1], device=dev)] * mm
    tables = tables or score_tables(a, cb, cand)
    rows = torch.arange(n, device=dev)[:, None]
    hyp = codes[:, None, :].clone()  # (n, H, M)
    alive = torch.ones(n, 1, dtype=torch.bool, device=dev)
    c = cb[torch.arange(mm, device=dev)[None, None, :], hyp].sum(2)  # (n, H, g)
    ac = c @ a
    ones = torch.ones(n, 1, 1, dtype=t.dtype, device=dev)
    for m in range(mm):
        cm, cma, caug_t = tables[m]
        kc = cm.shape[0]
        u = cb[m][hyp[..., m]]
        cr, acr = c - u, ac - u @ a
        z = acr - t[:, None, :]
        base = (cr * (z - t[:, None, :])).sum(-1)  # φ of the hypothesis without codebook m
        base = base.masked_fill(~alive | dedupe_dead(hyp, m), DEAD)  # finite: no inf·0 in the GEMM
        h = hyp.shape[1]
        zaug = torch.cat([z, base[..., None], ones.expand(n, h, 1)], -1)
        cost = (zaug.reshape(n * h, -1) @ caug_t).reshape(n, h, kc)
        if m == mm - 1:  # the last codebook: only the best tuple is needed
            val, pos = cost.reshape(n, h * kc).min(1, keepdim=True)
        else:
            val, pos = torch.topk(cost.reshape(n, h * kc), min(beam, h * kc), dim=1, largest=False)
        src, k = pos // kc, pos % kc
        hyp = hyp[rows, src].clone()
        hyp[..., m] = cand[m][k]
        c = cr[rows, src] + cm[k]
        ac = acr[rows, src] + cma[k]
        alive = val < DEAD / 2
    return hyp[:, 0]


class Additive(Format):
    """M shared codebooks of 2^B g-vectors (a fractional M adds a partial one); each group of g
    weights = sum of codewords × row scale."""

    name = "additive"
    randomized = True  # codebook init (k-means++) and group order draw from ctx.seed
    rate_knob = "num_codebooks"

    def __init__(
        self,
        num_codebooks: float = 2.0,
        codebook_bits: int = 8,
        group_size: int = 8,
        beam_width: int = 8,
        objective: str = "auto",
        codebook_update: str = "lstsq",
        max_rounds: int = 10,
        tol: float = 0.01,
        kmeans_iters: int = 20,
        codebook_dtype: str = "fp16",
        adam_steps: int = 100,
        adam_lr: float = 1e-4,
        scope: str = "tensor",
        damp: float = 0.01,
    ) -> None:
        x = num_codebooks
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not (math.isfinite(x) and 1 <= x <= 16):
            raise ConfigError(f"additive: num_codebooks must be a number in 1..16, got {num_codebooks!r}")
        for key, val, lo, hi in (
            ("codebook_bits", codebook_bits, 1, 16),
            ("group_size", group_size, 1, 1 << 16),
            ("beam_width", beam_width, 1, 1 << 10),
            ("max_rounds", max_rounds, 0, 1 << 20),
            ("kmeans_iters", kmeans_iters, 0, 1 << 20),
            ("adam_steps", adam_steps, 0, 1 << 20),
        ):
            if not isinstance(val, int) or isinstance(val, bool) or not lo <= val <= hi:
                raise ConfigError(f"additive: {key} must be an integer in {lo}..{hi}, got {val!r}")
        if objective not in OBJECTIVES:
            raise ConfigError(f"additive: objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if codebook_update not in UPDATES:
            raise ConfigError(f"additive: codebook_update must be one of {', '.join(UPDATES)}, got {codebook_update!r}")
        if codebook_dtype not in CODEBOOK_DTYPES:
            raise ConfigError(
                f"additive: codebook_dtype must be one of {', '.join(CODEBOOK_DTYPES)}, got {codebook_dtype!r}"
            )
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise ConfigError(f"additive: tol must be >= 0, got {tol!r}")
        if isinstance(adam_lr, bool) or not isinstance(adam_lr, (int, float)) or not adam_lr > 0:
            raise ConfigError(f"additive: adam_lr must be > 0, got {adam_lr!r}")
        if scope not in SCOPES:
            raise ConfigError(f"additive: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not (math.isfinite(damp) and damp >= 0):
            raise ConfigError(f"additive: damp must be a finite number >= 0, got {damp!r}")
        self.num_codebooks, self.codebook_bits, self.group_size = num_codebooks, codebook_bits, group_size
        self.beam_width, self.objective, self.codebook_update = beam_width, objective, codebook_update
        self.max_rounds, self.tol, self.kmeans_iters = max_rounds, float(tol), kmeans_iters
        self.codebook_dtype, self.adam_steps, self.adam_lr = codebook_dtype, adam_steps, float(adam_lr)
        self.scope, self.damp = scope, float(damp)

    # ---------------------------------------------------------------- helpers

    def _store(self, codebooks: Tensor) -> Tensor:
        """Codebooks rounded to the storage dtype, as fp32."""
        return codebooks.to(CODEBOOK_DTYPES[self.codebook_dtype]).float()

    def _resolve(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> str:
        if self.objective != "auto":
            return self.objective
        return "output" if all(name in ctx.hessians for name in tensors) else "mse"

    def _problem(self, tensors: dict[str, Tensor], ctx: EncodeContext, objective: str) -> tuple[Problem, Tensor]:
        g = self.group_size
        mode = MODES[objective]
        quads, scales = [], []
        row0 = group0 = 0
        for name, t in tensors.items():
            check_matrix(self.name, name, t)
            r, c = t.shape
            if c % g:
                raise ConfigError(f"additive: tensor {name} has rows of length {c}, not divisible by group_size {g}")
            w = t.detach().to(ctx.device, torch.float32)
            norm = w.double().pow(2).sum(1).sqrt().to(torch.float16)
            if not bool(torch.isfinite(norm).all()):
                raise ConfigError(f"additive: tensor {name} has a row whose norm overflows the fp16 scale")
            scales.append(torch.where(norm > 0, norm, torch.ones_like(norm)).float())
            a = None
            if mode != "mse":
                if name not in ctx.hessians:
                    raise ConfigError(
                        f"additive: objective {objective!r} needs a Hessian for tensor {name}, none was collected"
                    )
                h = ctx.hessians[name]
                if tuple(h.shape) != (c, c):
                    raise ConfigError(
                        f"additive: Hessian of tensor {name} has shape {tuple(h.shape)}, expected {(c, c)}"
                    )
                h = h.to(ctx.device, torch.float64) / max(1, int(ctx.hessian_counts.get(name, 1)))
                if not bool(torch.isfinite(h).all()):
                    raise ConfigError(f"additive: Hessian of tensor {name} holds NaN or inf")
                a = (h + h.T) / 2
                a.diagonal().add_(self.damp * float(a.diagonal().mean()))
            quads.append(Quad(w, a, mode, g, row0, group0))
            row0, group0 = row0 + r, group0 + r * (c // g)
        return Problem(quads, row0, g), torch.cat(scales)

    def _kmeans(self, x: Tensor, k: int, weights: Tensor | None, seed: int) -> tuple[Tensor, Tensor]:
        """Codebook (k, g) as stored and codes (n,) for points x (n, g); every point its own entry when k ≥ n."""
        n = x.shape[0]
        if k >= n:
            book = torch.zeros(k, x.shape[1], device=x.device)
            book[:n] = x
            return self._store(book), torch.arange(n, device=x.device)
        res = kmeans(x, k, weights=weights, iters=self.kmeans_iters, seed=seed)
        book = self._store(res.centroids)
        return book, assign(x, book)

    def _init(self, prob: Problem, scales: Tensor, seed: int) -> tuple[Tensor, Tensor, Partial | None]:
        """Residual k-means: codebooks (M_tot, K + 1, g) as stored (entry K is the zero "none" codeword),
        codes (N, M_tot), and the partial codebook's rows (None without one)."""
        mi = math.floor(self.num_codebooks)
        frac = float(self.num_codebooks) - mi
        kk, g = 2**self.codebook_bits, self.group_size
        n, dev = prob.wg.shape[0], prob.wg.device
        resid = prob.wg / scales[prob.group_row][:, None]
        diag = torch.cat([q.blocks.diagonal(dim1=1, dim2=2).mean(1).repeat(q.r) for q in prob.quads]).float()
        mean = float(diag.mean())
        diag = diag.clamp_min(mean * 1e-6) if mean > 0 else torch.ones_like(diag)
        weights = scales[prob.group_row].pow(2) * diag
        weights = weights.clamp_min(float(weights.max()) * 1e-12) if float(weights.max()) > 0 else None
        sel = [math.floor(frac * q.r + 0.5) for q in prob.quads]
        mt = mi + (1 if sum(sel) > 0 else 0)
        codebooks = torch.zeros(mt, kk + 1, g, device=dev)
        codes = torch.full((n, mt), kk, dtype=torch.int64, device=dev)
        for m in range(mi):
            codebooks[m, :kk], codes[:, m] = self._kmeans(resid, kk, weights, seed + m)
            resid = resid - codebooks[m][codes[:, m]]
        if mt == mi:
            return codebooks, codes, None
        cost = prob.row_costs(codebooks, codes, scales)
        active = torch.zeros(prob.n_rows, dtype=torch.bool, device=dev)
        for q, k in zip(prob.quads, sel, strict=True):
            if k > 0:
                top = torch.argsort(cost[q.rows], descending=True, stable=True)[:k]
                active[q.rows.start + top] = True
        grp = active[prob.group_row]
        cbits = 8 * torch.empty(0, dtype=CODEBOOK_DTYPES[self.codebook_dtype]).element_size()
        kp = partial_size(int(grp.sum()), self.codebook_bits, g, cbits)
        book, pc = self._kmeans(resid[grp], kp, None if weights is None else weights[grp], seed + mi)
        codebooks[mi, :kp] = book
        codes[grp, mi] = pc
        return codebooks, codes, Partial(mi, kp, active, sel)

    def _free(self, codebooks: Tensor, part: Partial | None) -> Tensor:
        """(M_tot, K + 1) bool: the codewords that exist (the none slot and a partial codebook's tail do not)."""
        kk = codebooks.shape[1] - 1
        free = torch.zeros(codebooks.shape[:2], dtype=torch.bool, device=codebooks.device)
        free[:, :kk] = True
        if part is not None:
            free[part.m, part.kp :] = False
        return free

    def _update_codes(
        self, prob: Problem, cb: Tensor, codes: Tensor, scales: Tensor, part: Partial | None, seed: int, rc: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One round of beam search, group column by group column, with exact fp64 acceptance; rc: the
        current per-row objective. Returns the new codes and their per-row objective (never above rc)."""
        mt, kk = cb.shape[0], cb.shape[1] - 1
        dev = cb.device
        new = codes.clone()
        cb64 = cb.double()
        cand = [torch.arange(kk, device=dev)] * mt
        if part is not None:
            cand[part.m] = torch.arange(part.kp, device=dev)
        gen = torch.Generator().manual_seed(int(seed))
        for q in prob.quads:
            order = torch.randperm(q.j, generator=gen).tolist()
            s = scales.double()[q.rows]
            qc = new[q.groups].view(q.r, q.j, mt)  # a view: writes go to `new`
            chat = self.chat_rows(cb64, qc)  # (R, J, g)
            e = q.w64 - s[:, None] * chat.reshape(q.r, q.c)
            p = q.apply(e)
            # row sets and how many codebooks they use: the partial codebook's rows search all of them
            sets = [(torch.arange(q.r, device=dev), mt)]
            if part is not None:
                act = part.active[q.rows]
                sets = [(act.nonzero().flatten(), mt), ((~act).nonzero().flatten(), part.m)]
            step = max(1, BEAM_ELEMS // ((self.beam_width if mt > 1 else 1) * kk))
            for j in order:
                a = q.blocks[j]
                c_old = chat[:, j].clone()
                t = p[:, j * q.g : (j + 1) * q.g] / s[:, None] + c_old @ a
                prop = qc[:, j].clone()
                t32, a32 = t.float(), a.float()
                tables = score_tables(a32, cb, cand)
                for rows, nb in sets:
                    for r0 in range(0, rows.shape[0], step):
                        r = rows[r0 : r0 + step]
                        prop[r, :nb] = beam_search(
                            t32[r], a32, cb[:nb], qc[r, j, :nb], self.beam_width, cand[:nb], tables[:nb]
                        )
                c_new = cb64[torch.arange(mt, device=dev)[None, :], prop].sum(1)
                phi_old = (c_old * (c_old @ a - 2 * t)).sum(1)
                phi_new = (c_new * (c_new @ a - 2 * t)).sum(1)
                better = phi_new < phi_old
                if not bool(better.any()):
                    continue
                idx = better.nonzero().flatten()
                qc[idx, j] = prop[idx]
                chat[idx, j] = c_new[idx]
                q.sub(p, j, idx, s[idx, None] * (c_new[idx] - c_old[idx]))
        rc_new = prob.row_costs(cb, new, scales)
        worse = rc_new > rc
        return torch.where(worse[prob.group_row][:, None], codes, new), torch.where(worse, rc, rc_new)

    @staticmethod
    def chat_rows(cb: Tensor, qc: Tensor) -> Tensor:
        """(R, J, g) group vectors Σ_m cb[m][qc[..., m]] for codes qc (R, J, M)."""
        acc = cb[0][qc[..., 0]]
        for m in range(1, cb.shape[0]):
            acc = acc + cb[m][qc[..., m]]
        return acc

    def _lstsq(self, prob: Problem, cb: Tensor, codes: Tensor, scales: Tensor, free: Tensor) -> Tensor:
        """Codebooks minimising f + ε‖θ − θ_old‖² by block-Jacobi preconditioned conjugate gradients."""
        mt, k1, g = cb.shape
        n_p = mt * k1
        dev = cb.device
        idx = codes + torch.arange(mt, device=dev) * k1  # (N, M) unknown per codebook
        fm = free.reshape(n_p, 1).double()
        old = cb.double().reshape(n_p, g) * fm
        s64 = scales.double()

        def gather(v: Tensor, q: Quad) -> Tensor:
            return v[idx[q.groups]].sum(1).reshape(q.r, q.c)

        def scatter(y: Tensor, q: Quad, out: Tensor) -> None:
            yg = y.reshape(-1, g)
            for m in range(mt):
                out.index_add_(0, idx[q.groups, m], yg)

        b = torch.zeros(n_p, g, dtype=torch.float64, device=dev)
        dblk = torch.zeros(n_p, g, g, dtype=torch.float64, device=dev)
        for q in prob.quads:
            s = s64[q.rows]
            scatter(s[:, None] * q.apply(q.w64), q, b)
            blk = (s.pow(2)[:, None, None, None] * q.blocks[None]).reshape(-1, g, g)  # (R·J, g, g)
            for m in range(mt):
                dblk.index_add_(0, idx[q.groups, m], blk)
        tr = dblk.diagonal(dim1=1, dim2=2).mean(1)
        used = (tr > 0) & free.reshape(-1)
        eps = RIDGE * float(tr[used].mean()) if bool(used.any()) else 1.0
        eye = torch.eye(g, dtype=torch.float64, device=dev)
        dblk = torch.where(free.reshape(-1, 1, 1), dblk + eps * eye, eye)
        chol, info = torch.linalg.cholesky_ex(dblk)
        if bool((info != 0).any()):  # numerically indefinite blocks: fall back to their diagonal
            chol = torch.where(
                (info != 0)[:, None, None], dblk.diagonal(dim1=1, dim2=2).clamp_min(eps).sqrt().diag_embed(), chol
            )
        b = (b + eps * old) * fm

        def matvec(v: Tensor) -> Tensor:  # the products with A in fp32 (the result is checked in fp64)
            out = eps * v
            for q in prob.quads:
                s = s64[q.rows][:, None]
                scatter(s * q.apply((s * gather(v, q)).float()).double(), q, out)
            return out * fm

        def precond(r: Tensor) -> Tensor:
            return torch.cholesky_solve(r[..., None], chol)[..., 0] * fm

        x = old.clone()
        r = b - matvec(x)
        z = precond(r)
        p = z.clone()
        rz = float((r * z).sum())
        stop = CG_TOL**2 * rz
        for _ in range(CG_ITERS):
            if rz <= stop:
                break
            ap = matvec(p)
            pap = float((p * ap).sum())
            if not pap > 0:
                break
            alpha = rz / pap
            x += alpha * p
            r -= alpha * ap
            z = precond(r)
            rz_new = float((r * z).sum())
            p = z + (rz_new / rz) * p
            rz = rz_new
        return (x * fm).reshape(mt, k1, g).float()

    def _rescale(self, prob: Problem, cb: Tensor, codes: Tensor, scales: Tensor) -> Tensor:
        """Per-row least-squares scale given ĉ, rounded to fp16 (old scale where undefined)."""
        num, den = [], []
        for q in prob.quads:
            c = prob.chat(cb.double(), codes, q)
            ac = q.apply(c)
            num.append((ac * q.w64).sum(1))
            den.append((ac * c).sum(1))
        nu, de = torch.cat(num), torch.cat(den)
        new = (nu / de.clamp_min(1e-300)).to(torch.float16).float()
        ok = (de > 0) & torch.isfinite(new) & (new != 0)
        return torch.where(ok, new, scales)

    def _adam(
        self, prob: Problem, cb: Tensor, codes: Tensor, scales: Tensor, free: Tensor, ref: float
    ) -> tuple[Tensor, Tensor]:
        fm = free[..., None].float()
        book = cb.clone().requires_grad_(True)
        s = scales.clone().requires_grad_(True)
        opt = torch.optim.Adam([book, s], lr=self.adam_lr)
        ws = [q.w64.float() for q in prob.quads]
        for _ in range(self.adam_steps):
            opt.zero_grad()
            bk = book * fm
            loss = sum(
                q.row_cost(w - s[q.rows][:, None] * prob.chat(bk, codes, q)).sum()
                for q, w in zip(prob.quads, ws, strict=True)
            )
            (loss / max(ref, 1e-30)).backward()
            opt.step()
        new_s = s.detach().to(torch.float16).float()
        new_s = torch.where(torch.isfinite(new_s) & (new_s != 0), new_s, scales)
        return self._store(book.detach() * fm), new_s

    # ---------------------------------------------------------------- protocol

    def predict_bits(self, tensors: dict[str, Tensor]) -> float | None:
        """AQLM's bits of the unit (aqlm_bits) plus its partial codebook's (partial_bits), as encode will store
        them: ⌊x⌋ codebooks, the round((x − ⌊x⌋)·R) rows of each tensor with the partial one."""
        g = self.group_size
        if any(t.ndim != 2 or t.shape[1] % g for t in tensors.values()):
            return None
        shapes = [(int(t.shape[0]), int(t.shape[1])) for t in tensors.values()]
        mi = math.floor(self.num_codebooks)
        sel = [math.floor((self.num_codebooks - mi) * r + 0.5) for r, _ in shapes]
        cbits = 8 * torch.empty(0, dtype=CODEBOOK_DTYPES[self.codebook_dtype]).element_size()
        groups = sum(n * (c // g) for (_, c), n in zip(shapes, sel, strict=True))
        kp = partial_size(groups, self.codebook_bits, g, cbits) if groups else 0
        return float(aqlm_bits(shapes, mi, self.codebook_bits, g, cbits) + partial_bits(shapes, sel, kp, g, cbits))

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        if not tensors:
            raise ConfigError("additive: a unit needs at least one tensor")
        bits, g = self.codebook_bits, self.group_size
        kk = 2**bits
        objective = self._resolve(tensors, ctx)
        prob, scales = self._problem(tensors, ctx, objective)
        codebooks, codes, part = self._init(prob, scales, ctx.seed)
        if not bool(torch.isfinite(codebooks).all()):
            raise ConfigError(f"additive: codebooks of {', '.join(tensors)} overflow {self.codebook_dtype}")
        free = self._free(codebooks, part)
        ref = prob.energy if prob.energy > 0 else 1.0
        rc = prob.row_costs(codebooks, codes, scales)
        obj = float(rc.sum())
        history, trace = [obj / ref], [obj / ref]
        rounds = 0
        for i in range(self.max_rounds):
            prev = obj
            codes, rc = self._update_codes(prob, codebooks, codes, scales, part, ctx.seed + 7919 * (i + 1), rc)
            obj = float(rc.sum())
            trace.append(obj / ref)
            if self.codebook_update == "lstsq":
                steps = [("cb", self._store(self._lstsq(prob, codebooks, codes, scales, free)), scales)]
            else:
                steps = [("both", *self._adam(prob, codebooks, codes, scales, free, ref))]
            for kind, cb_new, s_new in steps:
                if bool(torch.isfinite(cb_new).all()):
                    rc_new = prob.row_costs(cb_new, codes, s_new)
                    if float(rc_new.sum()) <= obj:
                        codebooks, scales, rc, obj = cb_new, s_new, rc_new, float(rc_new.sum())
                trace.append(obj / ref)
                if kind == "cb":
                    s_new = self._rescale(prob, codebooks, codes, scales)
                    rc_new = prob.row_costs(codebooks, codes, s_new)
                    if float(rc_new.sum()) <= obj:
                        scales, rc, obj = s_new, rc_new, float(rc_new.sum())
                    trace.append(obj / ref)
            rounds += 1
            history.append(obj / ref)
            if prev <= 0 or prev - obj < self.tol * prev:
                break

        mi = codebooks.shape[0] - (part is not None)
        store_dt = CODEBOOK_DTYPES[self.codebook_dtype]
        cpu_cb = codebooks[:mi, :kk].cpu().to(store_dt)
        cb32 = cpu_cb.float()
        streams = {"codebooks": Stream(to_numpy(cpu_cb), "codebook")}
        if part is not None:
            cpu_pb = codebooks[part.m, : part.kp].cpu().to(store_dt)
            pb32 = cpu_pb.float()
            streams["partial_codebook"] = Stream(to_numpy(cpu_pb), "codebook")
            active = part.active.cpu()
        codes, scales = codes.cpu(), scales.cpu()
        specs, recon = [], {}
        for i, ((name, t), q) in enumerate(zip(tensors.items(), prob.quads, strict=True)):
            qc = codes[q.groups].reshape(q.r, q.j, -1)
            ts = scales[q.rows].to(torch.float16)
            streams[f"{i}.codes"] = Stream(qc[..., :mi].numpy().astype(symbol_dtype(kk)), "codes", kk)
            streams[f"{i}.scales"] = Stream(to_numpy(ts), "scales")
            extra = None
            if part is not None and part.rows[i] > 0:
                mask = active[q.rows]
                rows = mask.nonzero().flatten()
                pcodes = qc[rows, :, part.m]
                streams[f"{i}.partial_rows"] = Stream(np.packbits(mask.numpy()), "mask")
                streams[f"{i}.partial_codes"] = Stream(pcodes.numpy().astype(symbol_dtype(part.kp)), "codes", part.kp)
                extra = (pb32, rows, pcodes)
            recon[name] = reconstruct(cb32, qc[..., :mi], ts.float(), extra).to(t.dtype)
            specs.append(TensorSpec.of(name, t))
        meta = {
            "num_codebooks": mi,
            "codebook_bits": bits,
            "group_size": g,
            "codebook_dtype": self.codebook_dtype,
            "partial_size": 0 if part is None else part.kp,
            "partial_rows": 0 if part is None else sum(part.rows),
            "objective": objective,
            "rounds": rounds,
            "history": history,
            "trace": trace,
        }
        shapes = [(q.r, q.c) for q in prob.quads]
        cbits = 8 * cpu_cb.element_size()
        nominal = aqlm_bits(shapes, mi, bits, g, cbits)
        if part is not None:
            nominal += partial_bits(shapes, part.rows, part.kp, g, cbits)
        return Encoded(self.name, specs, streams, meta, recon, float(nominal))

    @staticmethod
    def _partial(enc: Encoded, i: int, rows: int, g: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """The partial codebook's (codebook, rows, codes) for tensor i, None where it has none."""
        if f"{i}.partial_rows" not in enc.streams:
            return None
        meta = enc.meta
        book = from_numpy(enc.streams["partial_codebook"].data, CODEBOOK_DTYPES[meta["codebook_dtype"]]).float()
        mask = np.unpackbits(np.ascontiguousarray(enc.streams[f"{i}.partial_rows"].data), count=rows).astype(bool)
        idx = torch.from_numpy(np.flatnonzero(mask).astype(np.int64))
        codes = np.ascontiguousarray(enc.streams[f"{i}.partial_codes"].data).astype(np.int64)
        return book.reshape(-1, g), idx, torch.from_numpy(codes).reshape(idx.shape[0], -1)

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        meta = enc.meta
        mm, kk, g = int(meta["num_codebooks"]), 2 ** meta_int(meta, "codebook_bits", 0, 32), int(meta["group_size"])
        cb = from_numpy(enc.streams["codebooks"].data, CODEBOOK_DTYPES[meta["codebook_dtype"]]).float()
        cb = cb.reshape(mm, kk, g)
        out = {}
        for i, spec in enumerate(enc.tensors):
            r, c = spec.shape
            codes = torch.from_numpy(np.ascontiguousarray(enc.streams[f"{i}.codes"].data).astype(np.int64))
            scales = from_numpy(enc.streams[f"{i}.scales"].data, torch.float16).float()
            w = reconstruct(cb, codes.reshape(r, c // g, mm), scales, self._partial(enc, i, r, g))
            out[spec.name] = w.to(torch_dtype(spec.dtype))
        return out

    def config(self) -> dict[str, Any]:
        return dict(vars(self))

    def trainable(self, enc: Encoded, device: str | torch.device) -> Trainable:
        """The codebooks (the partial one too) and the row scales over the frozen codes."""
        meta = enc.meta
        mm, g = int(meta["num_codebooks"]), int(meta["group_size"])
        codes = [
            torch.from_numpy(enc.streams[f"{i}.codes"].data.astype(np.int64)).reshape(s.shape[0], -1, mm).to(device)
            for i, s in enumerate(enc.tensors)
        ]
        parts = [self._partial(enc, i, s.shape[0], g) for i, s in enumerate(enc.tensors)]
        parts = [None if p is None else (p[1].to(device), p[2].to(device)) for p in parts]
        cb_dtype = CODEBOOK_DTYPES[meta["codebook_dtype"]]
        dtypes = {"codebooks": cb_dtype}
        if "partial_codebook" in enc.streams:
            dtypes["partial_codebook"] = cb_dtype
        dtypes.update((f"{i}.scales", torch.float16) for i in range(len(enc.tensors)))

        def rebuild(v: dict[str, Tensor]) -> dict[str, Tensor]:
            cb = v["codebooks"].reshape(mm, -1, g)
            out = {}
            for i, s in enumerate(enc.tensors):
                p = parts[i]
                extra = None if p is None else (v["partial_codebook"].reshape(-1, g), p[0], p[1])
                out[s.name] = reconstruct(cb, codes[i], v[f"{i}.scales"], extra)
            return out

        return Trainable(dtypes, rebuild)
