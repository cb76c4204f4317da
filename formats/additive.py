"""Additive (AQLM-style) multi-codebook quantization.

Each row of W (d_out, d_in) is cut into groups of g consecutive weights (along the input
dimension; g must divide d_in). A group is approximated by the sum of M codewords, one from
each of M codebooks of K = 2^B vectors of length g, times one fp16 scale per output row.
The M codebooks are shared by every tensor of the unit (stored once: a "family" or "global"
scope shares them across layers); codes and row scales are per tensor.

Objective f = Σ_rows (W_r − s_r·ĉ_r)ᵀ A (W_r − s_r·ĉ_r) with A = I ("mse": weight MSE) or,
for "output", the block-diagonal part of the calibration Gram matrix E[xxᵀ] = H / count:
only the g×g diagonal blocks of XXᵀ for the columns of each group are used (the coupling
between groups is dropped), so every group's cost is independent — the simplification
that keeps the beam search and the codebook solve local.

Init (AQLM): s_r = fp16 row norm, rows divided by it, then residual k-means M times
(k-means++ seeded from ctx.seed + m). When K is at least the number of groups, the
codebook simply holds every group (k-means' optimum; the spare entries are 0).
Then rounds of
  (a) codes: a beam search over the codebooks (one pass, codebook 0..M−1; at each step every
      hypothesis in the beam swaps its code of that codebook for each of its beam_width best
      replacements, found by exact nearest-neighbour search in the A-whitened space, which
      is the incremental cost ‖(u − c_k)ᵀL‖², A = LLᵀ); hypotheses that differ only in the
      codebook being swapped are merged so the beam holds distinct tuples. A group takes the
      beam's best tuple only if its exact (fp64) cost is strictly lower than its current one,
      so a round never raises f;
  (b) codebooks: exact least squares given codes (ridge 1e-6·mean diag towards the old values,
      which keeps unused codewords where they were) — dense normal equations when they are small,
      otherwise block-coordinate sweeps over the M codebooks — or Adam on codebooks and scales;
  (c) scales: closed-form per-row least squares (lstsq mode), rounded to fp16.
Each of (b) and (c) is kept only when f, evaluated with the codebooks and scales as stored,
does not rise. Rounds stop when f improves by less than tol (relative) or after max_rounds.

Decoding: Σ_m codebook_m[code_m] accumulated in fp32 in the order m = 0..M−1, times the row
scale (fp16 read as fp32), cast to the tensor's dtype; encode's `recon` runs the same code.
Bits (AQLM): per weight M·B/g + M·2^B·g·16/(d_out·d_in) + 16/d_in, codebooks counted once
per unit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from formats.base import EncodeContext, Encoded, Format, Stream, TensorSpec, Trainable
from formats.clustered import CODEBOOK_DTYPES, SCOPES, check_matrix, symbol_dtype
from formats.kmeans import assign, kmeans, nearest
from formats.passthrough import from_numpy, to_numpy, torch_dtype
from harness.errors import ConfigError

OBJECTIVES = ("mse", "output")
UPDATES = ("lstsq", "adam")
GROUP_CHUNK = 1 << 16  # groups per beam-search / cost chunk
DENSE_LIMIT = 4096  # largest normal-equation system solved directly
SWEEPS = 3  # block-coordinate sweeps over the codebooks beyond DENSE_LIMIT
RIDGE = 1e-6


def reconstruct(codebooks: Tensor, codes: Tensor, scales: Tensor) -> Tensor:
    """fp32 (R, C) from fp32 codebooks (M, K, g), int64 codes (R, C/g, M) and fp32 row scales (R,)."""
    acc = codebooks[0][codes[..., 0]]
    for m in range(1, codebooks.shape[0]):
        acc = acc + codebooks[m][codes[..., m]]
    return acc.reshape(codes.shape[0], -1) * scales[:, None]


def aqlm_bits(shapes: list[tuple[int, int]], m: int, b: int, g: int, codebook_bits: int = 16) -> int:
    """Analytic bits of a unit: M·B bits per group, fp16 scale per row, M·2^B·g codebook entries once."""
    return sum(r * (c // g) * m * b + 16 * r for r, c in shapes) + m * 2**b * g * codebook_bits


class Problem:
    """All groups of a unit, flattened: weights (N, g), their row and A-block indices, the objective."""

    def __init__(self, wg: Tensor, row: Tensor, a_id: Tensor | None, a: Tensor | None, n_rows: int) -> None:
        self.wg, self.row, self.a_id, self.a, self.n_rows = wg, row, a_id, a, n_rows
        self.wg64 = wg.double()
        self.energy = float(self.cost(self.wg64).sum())  # f at Ŵ = 0

    def chunks(self) -> list[slice]:
        n = self.wg.shape[0]
        return [slice(s, min(n, s + GROUP_CHUNK)) for s in range(0, n, GROUP_CHUNK)]

    def cost(self, err: Tensor) -> Tensor:
        """Per-group eᵀAe (fp64) for errors err (N, g) in weight space (e = W − s·ĉ)."""
        if self.a is None:
            return err.pow(2).sum(1)
        out = torch.empty(err.shape[0], dtype=torch.float64, device=err.device)
        for sl in self.chunks():
            e = err[sl]
            out[sl] = torch.einsum("ni,nij,nj->n", e, self.a[self.a_id[sl]], e)
        return out

    def approx(self, codebooks: Tensor, codes: Tensor) -> Tensor:
        """ĉ (N, g) fp64: Σ_m codebook_m[code_m]."""
        cb = codebooks.double()
        acc = cb[0][codes[:, 0]]
        for m in range(1, cb.shape[0]):
            acc = acc + cb[m][codes[:, m]]
        return acc

    def group_cost(self, codebooks: Tensor, codes: Tensor, scales: Tensor) -> Tensor:
        s = scales.double()[self.row][:, None]
        return self.cost(self.wg64 - s * self.approx(codebooks, codes))

    def total(self, codebooks: Tensor, codes: Tensor, scales: Tensor) -> float:
        return float(self.group_cost(codebooks, codes, scales).sum())


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


def beam_search(t: Tensor, cb: Tensor, codes: Tensor, beam: int) -> Tensor:
    """Best code tuples (n, M) for targets t (n, g) under codebooks cb (M, K, g) (same, whitened, space).

    The beam starts from the current codes; one pass over the codebooks; returns the best
    hypothesis of the final beam (never worse than the start up to rounding).
    """
    n, (mm, kk, _) = t.shape[0], cb.shape
    hyp = codes[:, None, :].clone()  # (n, H, M)
    alive = torch.ones(n, 1, dtype=torch.bool, device=t.device)
    recon = cb[torch.arange(mm, device=t.device)[None, None, :], hyp].sum(2)  # (n, H, g)
    for m in range(mm):
        last = m == mm - 1
        h = hyp.shape[1]
        kq = 1 if last else min(beam, kk)
        u = t[:, None, :] - recon + cb[m][hyp[..., m]]  # target for codebook m given the others
        dist, idx = nearest(u.reshape(n * h, -1), cb[m], kq)
        dist, idx = dist.reshape(n, h, kq), idx.reshape(n, h, kq)
        dead = ~alive | dedupe_dead(hyp, m)
        dist = dist.masked_fill(dead[:, :, None], float("inf"))
        width = 1 if last else min(beam, h * kq)
        val, pos = torch.topk(dist.reshape(n, h * kq), width, dim=1, largest=False)
        src = pos // kq
        rows = torch.arange(n, device=t.device)[:, None]
        new_code = idx.reshape(n, h * kq).gather(1, pos)
        hyp = hyp[rows, src].clone()
        hyp[..., m] = new_code
        recon = t[:, None, :] - (u[rows, src] - cb[m][new_code])
        alive = torch.isfinite(val)
    return hyp[:, 0]


class Additive(Format):
    """M shared codebooks of 2^B g-vectors; each group of g weights = sum of M codewords × row scale."""

    name = "additive"
    rate_knob = "num_codebooks"

    def __init__(
        self,
        num_codebooks: int = 1,
        codebook_bits: int = 8,
        group_size: int = 8,
        beam_width: int = 8,
        objective: str = "mse",
        codebook_update: str = "lstsq",
        max_rounds: int = 10,
        tol: float = 0.01,
        kmeans_iters: int = 20,
        codebook_dtype: str = "fp16",
        adam_steps: int = 100,
        adam_lr: float = 1e-4,
        scope: str = "tensor",
    ) -> None:
        for key, val, lo, hi in (
            ("num_codebooks", num_codebooks, 1, 16),
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
        if not isinstance(tol, (int, float)) or not tol >= 0:
            raise ConfigError(f"additive: tol must be >= 0, got {tol!r}")
        if not isinstance(adam_lr, (int, float)) or not adam_lr > 0:
            raise ConfigError(f"additive: adam_lr must be > 0, got {adam_lr!r}")
        if scope not in SCOPES:
            raise ConfigError(f"additive: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.num_codebooks, self.codebook_bits, self.group_size = num_codebooks, codebook_bits, group_size
        self.beam_width, self.objective, self.codebook_update = beam_width, objective, codebook_update
        self.max_rounds, self.tol, self.kmeans_iters = max_rounds, float(tol), kmeans_iters
        self.codebook_dtype, self.adam_steps, self.adam_lr = codebook_dtype, adam_steps, float(adam_lr)
        self.scope = scope

    # ---------------------------------------------------------------- helpers

    def _store(self, codebooks: Tensor) -> Tensor:
        """Codebooks rounded to the storage dtype, as fp32."""
        return codebooks.to(CODEBOOK_DTYPES[self.codebook_dtype]).float()

    def _problem(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> tuple[Problem, list[Tensor]]:
        g = self.group_size
        wgs, rows, a_ids, blocks, scales = [], [], [], [], []
        row0 = a0 = 0
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
            j = c // g
            wgs.append(w.reshape(r * j, g))
            rows.append(torch.arange(r, device=w.device).repeat_interleave(j) + row0)
            if self.objective == "output":
                if name not in ctx.hessians:
                    raise ConfigError(
                        f"additive: objective 'output' needs a Hessian for tensor {name}, none was collected"
                    )
                h = ctx.hessians[name]
                if tuple(h.shape) != (c, c):
                    raise ConfigError(
                        f"additive: Hessian of tensor {name} has shape {tuple(h.shape)}, expected {(c, c)}"
                    )
                h = h.to(ctx.device, torch.float64) / max(1, int(ctx.hessian_counts.get(name, 1)))
                if not bool(torch.isfinite(h).all()):
                    raise ConfigError(f"additive: Hessian of tensor {name} holds NaN or inf")
                idx = torch.arange(j, device=h.device)
                blk = h.reshape(j, g, j, g)[idx, :, idx, :]  # (j, g, g) diagonal blocks
                blocks.append((blk + blk.transpose(1, 2)) / 2)
                a_ids.append((torch.arange(j, device=w.device) + a0).repeat(r))
                a0 += j
            row0 += r
        wg = torch.cat(wgs)
        row = torch.cat(rows)
        a_id = torch.cat(a_ids) if blocks else None
        a = torch.cat(blocks) if blocks else None
        return Problem(wg, row, a_id, a, row0), scales

    def _init(self, prob: Problem, scales: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """Residual k-means M times on the normalised groups: codebooks (M, K, g) as stored, codes (N, M)."""
        mm, kk, g = self.num_codebooks, 2**self.codebook_bits, self.group_size
        n = prob.wg.shape[0]
        dev = prob.wg.device
        resid = prob.wg / scales[prob.row][:, None]
        weights = scales[prob.row].pow(2)
        if prob.a is not None:
            diag = prob.a.diagonal(dim1=1, dim2=2).mean(1).float()
            mean = float(diag.mean())
            diag = diag.clamp_min(mean * 1e-6) if mean > 0 else torch.ones_like(diag)
            weights = weights * diag[prob.a_id]
        weights = weights.clamp_min(float(weights.max()) * 1e-12) if float(weights.max()) > 0 else None
        codebooks = torch.zeros(mm, kk, g, device=dev)
        codes = torch.zeros(n, mm, dtype=torch.int64, device=dev)
        for m in range(mm):
            if kk >= n:  # every group its own codeword: k-means' optimum
                codebooks[m, :n] = resid
                codebooks[m] = self._store(codebooks[m])
                codes[:, m] = torch.arange(n, device=dev)
            else:
                res = kmeans(resid, kk, weights=weights, iters=self.kmeans_iters, seed=seed + m)
                codebooks[m] = self._store(res.centroids)
                codes[:, m] = assign(resid, codebooks[m])
            resid = resid - codebooks[m][codes[:, m]]
        return codebooks, codes

    def _whiten(self, prob: Problem) -> Tensor | None:
        """L (nA, g, g) with A = L Lᵀ per block (eigen-factor, exact for PSD blocks), or None for mse."""
        if prob.a is None:
            return None
        lam, vec = torch.linalg.eigh(prob.a)
        return (vec * lam.clamp_min(0.0).sqrt()[:, None, :]).float()

    def _update_codes(
        self, prob: Problem, codebooks: Tensor, codes: Tensor, scales: Tensor, lmat: Tensor | None
    ) -> Tensor:
        """One beam-search round; a group keeps its old codes unless the new ones are strictly better."""
        t = prob.wg / scales[prob.row][:, None]
        new = codes.clone()
        if lmat is None:
            for sl in prob.chunks():
                new[sl] = beam_search(t[sl], codebooks, codes[sl], self.beam_width)
        else:
            order = torch.argsort(prob.a_id, stable=True)
            counts = torch.bincount(prob.a_id, minlength=lmat.shape[0]).tolist()
            start = 0
            for a, cnt in enumerate(counts):
                for s in range(start, start + cnt, GROUP_CHUNK):
                    idx = order[s : min(start + cnt, s + GROUP_CHUNK)]
                    la = lmat[a]
                    new[idx] = beam_search(t[idx] @ la, codebooks @ la, codes[idx], self.beam_width)
                start += cnt
        old_cost = prob.group_cost(codebooks, codes, scales)
        new_cost = prob.group_cost(codebooks, new, scales)
        better = new_cost < old_cost
        return torch.where(better[:, None], new, codes)

    def _normal(self, prob: Problem, codes: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
        """Normal equations of all M·K codewords jointly, unknowns ordered (m, k).

        mse: G (P, P) scalar (the g coordinates decouple), rhs (P, g); output: G (P, P, g, g), rhs (P, g).
        """
        mm, kk, g = self.num_codebooks, 2**self.codebook_bits, self.group_size
        p = mm * kk
        omega = scales.double()[prob.row].pow(2)
        target = prob.wg64 / scales.double()[prob.row][:, None]  # (N, g)
        idx = codes + torch.arange(mm, device=codes.device) * kk  # (N, M) unknown index per codebook
        rhs = torch.zeros(p, g, dtype=torch.float64, device=target.device)
        if prob.a is None:
            pair = (idx[:, :, None] * p + idx[:, None, :]).reshape(-1)
            gs = torch.bincount(pair, weights=omega.repeat_interleave(mm * mm), minlength=p * p).reshape(p, p)
            for i in range(mm):
                rhs.index_add_(0, idx[:, i], omega[:, None] * target)
            return gs, rhs
        gm = torch.zeros(p * p, g, g, dtype=torch.float64, device=target.device)
        for sl in prob.chunks():
            wa = omega[sl, None, None] * prob.a[prob.a_id[sl]]  # (n, g, g)
            rt = torch.einsum("nij,nj->ni", wa, target[sl])
            for i in range(mm):
                rhs.index_add_(0, idx[sl, i], rt)
                for j in range(mm):
                    gm.index_add_(0, idx[sl, i] * p + idx[sl, j], wa)
        return gm.reshape(p, p, g, g), rhs

    def _solve(self, gm: Tensor, rhs: Tensor, old: Tensor) -> Tensor:
        """Ridge-regularised solve of the normal equations towards the old values (P, g)."""
        p, g = rhs.shape
        if gm.ndim == 2:  # scalar (mse) system shared by the g coordinates
            diag = gm.diagonal()
            eps = RIDGE * float(diag[diag > 0].mean()) if bool((diag > 0).any()) else 1.0
            chol = torch.linalg.cholesky(gm + eps * torch.eye(p, dtype=gm.dtype, device=gm.device))
            return torch.cholesky_solve(rhs + eps * old, chol)
        full = gm.permute(0, 2, 1, 3).reshape(p * g, p * g)
        diag = full.diagonal()
        eps = RIDGE * float(diag[diag > 0].mean()) if bool((diag > 0).any()) else 1.0
        chol = torch.linalg.cholesky(full + eps * torch.eye(p * g, dtype=full.dtype, device=full.device))
        return torch.cholesky_solve((rhs + eps * old).reshape(-1, 1), chol).reshape(p, g)

    def _solve_one(self, prob: Problem, codes: Tensor, scales: Tensor, m: int, fixed: Tensor, old: Tensor) -> Tensor:
        """Exact least squares for codebook m alone (block-diagonal across its K codewords)."""
        kk, g = 2**self.codebook_bits, self.group_size
        omega = scales.double()[prob.row].pow(2)
        target = prob.wg64 / scales.double()[prob.row][:, None] - fixed
        dev = target.device
        rhs = torch.zeros(kk, g, dtype=torch.float64, device=dev)
        if prob.a is None:
            diag = torch.bincount(codes[:, m], weights=omega, minlength=kk)
            rhs.index_add_(0, codes[:, m], omega[:, None] * target)
            eps = RIDGE * float(diag[diag > 0].mean()) if bool((diag > 0).any()) else 1.0
            return (rhs + eps * old) / (diag + eps)[:, None]
        gm = torch.zeros(kk, g, g, dtype=torch.float64, device=dev)
        for sl in prob.chunks():
            wa = omega[sl, None, None] * prob.a[prob.a_id[sl]]
            gm.index_add_(0, codes[sl, m], wa)
            rhs.index_add_(0, codes[sl, m], torch.einsum("nij,nj->ni", wa, target[sl]))
        diag = gm.diagonal(dim1=1, dim2=2)
        eps = RIDGE * float(diag[diag > 0].mean()) if bool((diag > 0).any()) else 1.0
        sys = gm + eps * torch.eye(g, dtype=gm.dtype, device=dev)
        return torch.linalg.solve(sys, (rhs + eps * old)[..., None])[..., 0]

    def _lstsq(self, prob: Problem, codebooks: Tensor, codes: Tensor, scales: Tensor) -> Tensor:
        mm, kk, g = codebooks.shape
        cb = codebooks.double()
        size = mm * kk * (1 if prob.a is None else g)
        if mm == 1 or size > DENSE_LIMIT:
            for _ in range(1 if mm == 1 else SWEEPS):
                for m in range(mm):
                    others = [i for i in range(mm) if i != m]
                    fixed = sum(cb[i][codes[:, i]] for i in others) if others else torch.zeros_like(prob.wg64)
                    cb[m] = self._solve_one(prob, codes, scales, m, fixed, cb[m])
            return cb.float()
        gm, rhs = self._normal(prob, codes, scales)
        return self._solve(gm, rhs, cb.reshape(mm * kk, g)).reshape(mm, kk, g).float()

    def _rescale(self, prob: Problem, codebooks: Tensor, codes: Tensor, scales: Tensor) -> Tensor:
        """Per-row least-squares scale given ĉ, rounded to fp16 (old scale where undefined)."""
        c = prob.approx(codebooks, codes)
        ac = (
            c
            if prob.a is None
            else torch.cat([torch.einsum("nij,nj->ni", prob.a[prob.a_id[sl]], c[sl]) for sl in prob.chunks()])
        )
        num = torch.zeros(prob.n_rows, dtype=torch.float64, device=c.device).index_add_(
            0, prob.row, (ac * prob.wg64).sum(1)
        )
        den = torch.zeros(prob.n_rows, dtype=torch.float64, device=c.device).index_add_(0, prob.row, (ac * c).sum(1))
        new = (num / den.clamp_min(1e-300)).to(torch.float16).float()
        ok = (den > 0) & torch.isfinite(new) & (new != 0)
        return torch.where(ok, new, scales)

    def _adam(
        self, prob: Problem, codebooks: Tensor, codes: Tensor, scales: Tensor, ref: float
    ) -> tuple[Tensor, Tensor]:
        cb = codebooks.clone().requires_grad_(True)
        s = scales.clone().requires_grad_(True)
        opt = torch.optim.Adam([cb, s], lr=self.adam_lr)
        a = None if prob.a is None else prob.a.float()
        for _ in range(self.adam_steps):
            opt.zero_grad()
            acc = cb[0][codes[:, 0]]
            for m in range(1, cb.shape[0]):
                acc = acc + cb[m][codes[:, m]]
            err = prob.wg - s[prob.row][:, None] * acc
            loss = err.pow(2).sum() if a is None else torch.einsum("ni,nij,nj->", err, a[prob.a_id], err)
            (loss / max(ref, 1e-30)).backward()
            opt.step()
        new_s = s.detach().to(torch.float16).float()
        new_s = torch.where(torch.isfinite(new_s) & (new_s != 0), new_s, scales)
        return self._store(cb.detach()), new_s

    # ---------------------------------------------------------------- protocol

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        if not tensors:
            raise ConfigError("additive: a unit needs at least one tensor")
        mm, bits, g = self.num_codebooks, self.codebook_bits, self.group_size
        kk = 2**bits
        prob, scale_list = self._problem(tensors, ctx)
        scales = torch.cat(scale_list)
        codebooks, codes = self._init(prob, scales, ctx.seed)
        if not bool(torch.isfinite(codebooks).all()):
            raise ConfigError(f"additive: codebooks of {', '.join(tensors)} overflow {self.codebook_dtype}")
        lmat = self._whiten(prob)
        ref = prob.energy if prob.energy > 0 else 1.0
        obj = prob.total(codebooks, codes, scales)
        history, trace = [obj / ref], [obj / ref]
        rounds = 0
        for _ in range(self.max_rounds):
            prev = obj
            codes = self._update_codes(prob, codebooks, codes, scales, lmat)
            obj = prob.total(codebooks, codes, scales)
            trace.append(obj / ref)
            if self.codebook_update == "lstsq":
                steps = [("cb", self._store(self._lstsq(prob, codebooks, codes, scales)), scales)]
            else:
                steps = [("both", *self._adam(prob, codebooks, codes, scales, ref))]
            for kind, cb_new, s_new in steps:
                val = prob.total(cb_new, codes, s_new) if bool(torch.isfinite(cb_new).all()) else float("inf")
                if val <= obj:
                    codebooks, scales, obj = cb_new, s_new, val
                trace.append(obj / ref)
                if kind == "cb":
                    s_new = self._rescale(prob, codebooks, codes, scales)
                    val = prob.total(codebooks, codes, s_new)
                    if val <= obj:
                        scales, obj = s_new, val
                    trace.append(obj / ref)
            rounds += 1
            history.append(obj / ref)
            if prev <= 0 or prev - obj < self.tol * prev:
                break

        cpu_cb = codebooks.cpu().to(CODEBOOK_DTYPES[self.codebook_dtype])
        cb32 = cpu_cb.float()
        codes, scales = codes.cpu(), scales.cpu()
        streams = {"codebooks": Stream(to_numpy(cpu_cb), "codebook")}
        specs, recon = [], {}
        start = row0 = 0
        for i, (name, t) in enumerate(tensors.items()):
            r, c = t.shape
            n = r * (c // g)
            tc = codes[start : start + n].reshape(r, c // g, mm)
            ts = scales[row0 : row0 + r].to(torch.float16)
            start, row0 = start + n, row0 + r
            streams[f"{i}.codes"] = Stream(tc.numpy().astype(symbol_dtype(kk)), "codes", kk)
            streams[f"{i}.scales"] = Stream(to_numpy(ts), "scales")
            recon[name] = reconstruct(cb32, tc, ts.float()).to(t.dtype)
            specs.append(TensorSpec.of(name, t))
        meta = {
            "num_codebooks": mm,
            "codebook_bits": bits,
            "group_size": g,
            "codebook_dtype": self.codebook_dtype,
            "objective": self.objective,
            "rounds": rounds,
            "history": history,
            "trace": trace,
        }
        shapes = [(int(t.shape[0]), int(t.shape[1])) for t in tensors.values()]
        nominal = aqlm_bits(shapes, mm, bits, g, 8 * cpu_cb.element_size())
        return Encoded(self.name, specs, streams, meta, recon, float(nominal))

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        meta = enc.meta
        mm, kk, g = int(meta["num_codebooks"]), 2 ** int(meta["codebook_bits"]), int(meta["group_size"])
        cb = from_numpy(enc.streams["codebooks"].data, CODEBOOK_DTYPES[meta["codebook_dtype"]]).float()
        cb = cb.reshape(mm, kk, g)
        out = {}
        for i, spec in enumerate(enc.tensors):
            r, c = spec.shape
            codes = torch.from_numpy(np.ascontiguousarray(enc.streams[f"{i}.codes"].data).astype(np.int64))
            scales = from_numpy(enc.streams[f"{i}.scales"].data, torch.float16).float()
            w = reconstruct(cb, codes.reshape(r, c // g, mm), scales)
            out[spec.name] = w.to(torch_dtype(spec.dtype))
        return out

    def config(self) -> dict[str, Any]:
        return dict(vars(self))

    def trainable(self, enc: Encoded, device: str | torch.device) -> Trainable:
        """The M codebooks and the row scales over the frozen codes."""
        meta = enc.meta
        mm, g = int(meta["num_codebooks"]), int(meta["group_size"])
        codes = [
            torch.from_numpy(enc.streams[f"{i}.codes"].data.astype(np.int64)).reshape(s.shape[0], -1, mm).to(device)
            for i, s in enumerate(enc.tensors)
        ]
        dtypes = {"codebooks": CODEBOOK_DTYPES[meta["codebook_dtype"]]}
        dtypes.update((f"{i}.scales", torch.float16) for i in range(len(enc.tensors)))

        def rebuild(v: dict[str, Tensor]) -> dict[str, Tensor]:
            cb = v["codebooks"].reshape(mm, -1, g)
            return {s.name: reconstruct(cb, codes[i], v[f"{i}.scales"]) for i, s in enumerate(enc.tensors)}

        return Trainable(dtypes, rebuild)
