"""k-means and entropy-constrained VQ over the rows of X (n, d), in torch on any device.

Init is k-means++ (D² sampling, seeded), run on a uniform subsample of at most 64 points per
centre (as faiss subsamples its training set). Up to 256 centres it is exact k-means++;
beyond that it draws ceil(K/256) centres per D² round (a batched k-means++: 256 sequential
rounds whose total distance work equals one Lloyd iteration), which keeps K = 65536 feasible.
Lloyd iterations alternate assignment and (importance-weighted) centroid update, stop early
when no code changes, and re-seed empty clusters with the points farthest from their centroid.

ECVQ (Chou, Lookabaugh & Gray 1989): with lam > 0 a point goes to
argmin_k w_i·‖x_i − c_k‖² + lam·(−log2 p_k), p_k the share of points in cluster k, updated
every iteration (p starts uniform, so the first assignment is plain k-means). With lam = 0
the same code path runs without the rate term, so it gives exactly plain k-means. Under
lam > 0 clusters that empty stay dead (that is how ECVQ lowers the rate): they keep their
centroid, get probability 0.5/n (rate log2(2n) bits), and are not re-seeded.

Nearest-neighbour search (the assignment step, and the beam search of `additive`) is exact
either way: faiss' flat L2 index on CPU, chunked torch matmul + topk elsewhere (CUDA), with
no chunk × K distance matrix above CHUNK_ELEMS floats. faiss is optional (imported when
present). Both backends score by ‖q‖² + ‖c‖² − 2q·c in fp32, each with its own rounding, so on
their own they can split near-ties differently, and one flipped code changes the next centroid
update and everything after it (measured: 0.6% of the codes and the codebook of a normalized
1024×512, K = 256, d = 4 unit differed with faiss 1.15.1 versus without). The single-neighbour
search (k = 1: every k-means assignment, the k-means++ distances) is therefore made independent
of the backend: a query whose runner-up lies within TIE_TOL·(‖q‖² + ‖c_best‖²) of its best
(far above either backend's rounding) is re-decided by distances computed coordinate by
coordinate in float64 against every centroid, ties to the lowest index, and the distance
returned is ‖q − c‖² of the chosen centroid computed directly. With that, codes, codebooks and
so the bytes are identical with and without faiss (and, measured, on 1 or 2 threads).
With many centres (K > NBR_FROM and at least NBR_POINTS points per centre) the
full top-2 scan is replaced by a top-1 hint (faiss' top-1 is ≈17× cheaper than its top-2), refined
over the hint's NBR_LIST nearest centres: every centre within ‖q − c_hint‖ of q lies within
2‖q − c_hint‖ of c_hint, so where the list reaches that far (a fp32-safe bound) its argmin, near-ties
decided in float64, is the exact one; the other points (≈4% on d = 4 weight sub-vectors) take the scan.
The k > 1 search (the beams of `additive`) keeps the backend's order among near-ties. On CUDA
the centroid sums (index_add_) use atomics, so repeated runs there can differ in the last bits
unless torch.use_deterministic_algorithms(True) is set; on CPU every run is the same.

Measured on 262144×4, K = 256, 20 Lloyd iterations, one thread on a busy 2-core machine, before
the exact re-decision: this module with faiss search 0.68 s, the same with the torch search
4.7 s, faiss.Kmeans itself 0.39 s (random init, no weights, no ECVQ); one assignment search is
8× (131072×4 against 256) to 32× (65536×8 against 65536) faster in faiss than in torch on CPU.
The re-decision needs the runner-up: on 131072 points, 5 iterations, it added ≈10% (K = 256,
d = 4) to ≈30% (K = 2048, d = 8) to the torch path, and 2-3× to the faiss path (faiss' top-2
search is ≈10× its top-1), which stays ≈2-3× faster than torch; 0.5-3% of the points were
re-decided. The neighbour-list refinement, on a 1024×512 MLP matrix at d = 4, K = 4213: 0.47 s per
assignment against 0.96 s for the top-2 scan (faiss), 2.5 s on the torch path; k-means (20 iterations)
of that matrix 13.8 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

try:  # exact flat search on CPU; torch elsewhere
    import faiss
except ImportError:  # pragma: no cover
    faiss = None

CHUNK_ELEMS = 1 << 24  # 64 MiB of fp32 distances per chunk
TIE_TOL = 2.0**-12  # relative gap below which the backend's fp32 choice is re-decided exactly
TOPK2_FROM = 128  # centres from which the runner-up comes from one top-2 rather than a second min
PP_ROUNDS = 256  # k-means++ D² rounds at most; more centres are drawn per round beyond this
PP_SAMPLE = 64  # k-means++ runs on at most this many points per centre
PP_DIRECT = 32  # new centres per k-means++ round up to which distances are computed directly
NBR_FROM = 256  # centres from which the k = 1 search refines a fast top-1 over each centre's neighbour list
NBR_POINTS = 8  # ... when there are at least this many points per centre (the lists cost a K × K search)
NBR_LIST = 32  # neighbours per centre: on d = 4 weight sub-vectors ≈4% of the points fall back to a scan
NBR_ERR = 1e-5  # relative fp32 error allowed for in the neighbour lists' distance bound


@dataclass
class KMeansResult:
    centroids: Tensor  # (K, d) fp32
    codes: Tensor  # (n,) int64: assignment under `centroids` (and `rate_bits` when lam > 0)
    rate_bits: Tensor | None  # (K,) −log2 p_k used by the last assignment, None for plain k-means
    iters: int  # Lloyd updates run
    history: list[float]  # objective (weighted SSE + lam·bits) after each assignment


def chunk_rows(k: int, elems: int = CHUNK_ELEMS) -> int:
    """Rows per chunk so that a rows × k matrix holds at most `elems` entries."""
    return max(1, elems // max(1, k))


def sq_dist(x: Tensor, c: Tensor) -> Tensor:
    """Exact ‖x_i − c_i‖² row by row (x, c: (n, d))."""
    return ((x - c) ** 2).sum(1)


def use_faiss(x: Tensor) -> bool:
    return faiss is not None and x.device.type == "cpu"


def exact_nearest(q: Tensor, c: Tensor) -> Tensor:
    """Indices (n,) of the nearest rows of c: float64 distances summed coordinate by coordinate, ties to the lowest.

    Every operation is elementwise and in a fixed order, so the answer is the same on any backend or device.
    """
    qd, cd = q.double(), c.double()
    out = torch.empty(q.shape[0], dtype=torch.int64, device=q.device)
    step = chunk_rows(c.shape[0] * 2)
    for s in range(0, q.shape[0], step):
        qs = qd[s : s + step]
        out[s : s + step] = exact_dist(qs, cd[None].expand(qs.shape[0], -1, -1)).argmin(1)  # the first minimum
    return out


def scan1(q: Tensor, c: Tensor) -> Tensor:
    """Indices (n,) of the nearest rows of c by a full scan, near-ties re-decided exactly (see the module docstring)."""
    n, kk = q.shape[0], c.shape[0]
    cn = (c * c).sum(1)
    qn = (q * q).sum(1)
    if use_faiss(q):
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(c.numpy())
        dist, found = index.search(q.numpy(), 2)
        dist, found = torch.from_numpy(dist), torch.from_numpy(found)
        idx = found[:, 0]
        ambiguous = dist[:, 1] - dist[:, 0] <= TIE_TOL * (qn + cn[idx])
    else:
        ct = c.t().contiguous()
        idx = torch.empty(n, dtype=torch.int64, device=q.device)
        ambiguous = torch.empty(n, dtype=torch.bool, device=q.device)
        step = chunk_rows(kk)
        for s in range(0, n, step):
            d = torch.addmm(cn[None, :], q[s : s + step], ct, alpha=-2.0)  # ‖c‖² − 2q·c: ‖q‖² adds nothing
            if kk >= TOPK2_FROM:  # best and runner-up: a top-2 is the cheaper on wide rows, min twice on narrow
                v, i = torch.topk(d, 2, dim=1, largest=False)
                v1, v2, i = v[:, 0], v[:, 1], i[:, 0]
            else:
                v1, i = d.min(1)
                v2 = d.scatter_(1, i[:, None], float("inf")).min(1).values
            ambiguous[s : s + step] = v2 - v1 <= TIE_TOL * (qn[s : s + step] + cn[i])
            idx[s : s + step] = i
    rows = ambiguous.nonzero().flatten()
    if rows.numel():
        idx[rows] = exact_nearest(q[rows], c)
    return idx


def top1(q: Tensor, c: Tensor) -> Tensor:
    """Indices (n,) of a nearest row of c in fp32 (a hint: near-ties may go either way)."""
    if use_faiss(q):
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(c.numpy())
        return torch.from_numpy(index.search(q.numpy(), 1)[1][:, 0])
    cn, ct = (c * c).sum(1), c.t().contiguous()
    idx = torch.empty(q.shape[0], dtype=torch.int64, device=q.device)
    step = chunk_rows(c.shape[0])
    for s in range(0, q.shape[0], step):
        idx[s : s + step] = torch.addmm(cn[None, :], q[s : s + step], ct, alpha=-2.0).argmin(1)
    return idx


def neighbours(c: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Each centre's m + 1 nearest centres (itself included, sorted by index) and a float64 lower bound on
    the squared distance from it to every centre outside that list."""
    kk = c.shape[0]
    cn = (c * c).sum(1)
    ct = c.t().contiguous()
    lists = torch.empty(kk, m + 1, dtype=torch.int64, device=c.device)
    bound = torch.empty(kk, dtype=torch.float64, device=c.device)
    step = chunk_rows(kk)
    for s in range(0, kk, step):
        d = torch.addmm(cn[s : s + step, None] + cn[None, :], c[s : s + step], ct, alpha=-2.0)
        v, i = torch.topk(d, m + 1, dim=1, largest=False)
        lists[s : s + step] = i.sort(1).values
        err = NBR_ERR * (cn[s : s + step] + cn.max())  # fp32 error of ‖a‖² + ‖b‖² − 2a·b, generously
        bound[s : s + step] = (v[:, -1] - err).clamp_min(0.0).double()
    return lists, bound


def exact_dist(q: Tensor, c: Tensor) -> Tensor:
    """Squared distances in float64 summed coordinate by coordinate (q: (n, d), c: (n, m, d)), as exact_nearest."""
    dist = (q[:, None, 0] - c[:, :, 0]).square_()
    for j in range(1, q.shape[1]):
        dist.add_((q[:, None, j] - c[:, :, j]).square_())
    return dist


def nearest1(q: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The k = 1 search of `nearest`, independent of the backend (see the module docstring)."""
    n, kk = q.shape[0], c.shape[0]
    if kk == 1:
        idx = torch.zeros(n, dtype=torch.int64, device=q.device)
        return sq_dist(q, c[idx])[:, None], idx[:, None]
    if kk <= NBR_FROM or kk * NBR_POINTS > n:
        idx = scan1(q, c)
        return sq_dist(q, c[idx])[:, None], idx[:, None]
    hint = top1(q, c)
    lists, bound = neighbours(c, NBR_LIST)
    cn = (c * c).sum(1)
    qn = (q * q).sum(1)
    idx = torch.empty(n, dtype=torch.int64, device=q.device)
    certain = torch.empty(n, dtype=torch.bool, device=q.device)
    step = chunk_rows((NBR_LIST + 1) * q.shape[1])
    for s in range(0, n, step):
        h, qs = hint[s : s + step], q[s : s + step]
        cand = lists[h]  # (m, M + 1), ascending index: argmin's first minimum is the lowest index
        dist = (qs[:, None, 0] - c[:, 0][cand]).square_()
        for j in range(1, q.shape[1]):
            dist.add_((qs[:, None, j] - c[:, j][cand]).square_())
        own = sq_dist(qs, c[h]).double()
        v, i = torch.topk(dist, 2, dim=1, largest=False)
        best = cand.gather(1, i[:, :1])[:, 0]
        tie = v[:, 1] - v[:, 0] <= TIE_TOL * (qn[s : s + step] + cn[best])
        if bool(tie.any()):  # near-ties among the listed centres: decided in float64 as exact_nearest does
            t = tie.nonzero().flatten()
            best[t] = cand[t].gather(1, exact_dist(qs[t].double(), c[cand[t]].double()).argmin(1, keepdim=True))[:, 0]
        idx[s : s + step] = best
        # every centre within ‖q − c_h‖ of q lies within 2‖q − c_h‖ of c_h, so in the list (with fp32 slack)
        certain[s : s + step] = 4.0 * own * (1.0 + 1e-5) < bound[h]
    rows = (~certain).nonzero().flatten()
    if rows.numel():
        idx[rows] = scan1(q[rows], c)
    return sq_dist(q, c[idx])[:, None], idx[:, None]


def nearest(q: Tensor, c: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
    """Squared distances (n, k) fp32 and indices (n, k) int64 of the k nearest rows of c (K, d), nearest first.

    faiss (exact flat L2 search) on CPU, chunked torch matmul + topk elsewhere. k <= K. With k = 1
    the answer does not depend on the backend (near-ties re-decided exactly, lowest index first).
    """
    q, c = q.float().contiguous(), c.float().contiguous()
    n, kk = q.shape[0], c.shape[0]
    if not 1 <= k <= kk:
        raise ValueError(f"nearest: {k} neighbours among {kk} rows")
    if k == 1:
        return nearest1(q, c)
    if use_faiss(q):
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(c.numpy())
        dist, idx = index.search(q.numpy(), k)
        return torch.from_numpy(dist), torch.from_numpy(idx)
    cn = (c * c).sum(1)
    qn = (q * q).sum(1)
    ct = c.t().contiguous()
    dist = torch.empty(n, k, device=q.device)
    idx = torch.empty(n, k, dtype=torch.int64, device=q.device)
    step = chunk_rows(kk)
    for s in range(0, n, step):
        d = torch.addmm(cn[None, :], q[s : s + step], ct, alpha=-2.0)
        v, i = torch.topk(d, k, dim=1, largest=False)
        dist[s : s + step] = (v + qn[s : s + step, None]).clamp_min_(0.0)
        idx[s : s + step] = i
    return dist, idx


def assign(
    x: Tensor,
    c: Tensor,
    lam: float = 0.0,
    rate_bits: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """Codes (n,) int64: argmin_k w_i‖x_i − c_k‖² + lam·rate_bits_k (plain nearest centroid when lam = 0).

    With lam > 0 and no weights the rate term is folded into one extra coordinate
    (‖[x, 0] − [c_k, √(lam·bits_k)]‖²) so the same nearest-neighbour search serves.
    """
    if lam <= 0 or rate_bits is None:
        return nearest(x, c, 1)[1][:, 0]
    if weights is None:
        zero = torch.zeros(x.shape[0], 1, device=x.device)
        extra = torch.sqrt(lam * rate_bits.clamp_min(0.0))[:, None]
        return nearest(torch.cat([x, zero], 1), torch.cat([c, extra], 1), 1)[1][:, 0]
    n, k = x.shape[0], c.shape[0]
    cn = (c * c).sum(1)
    ct = c.t().contiguous()
    out = torch.empty(n, dtype=torch.int64, device=x.device)
    step = chunk_rows(k)
    for s in range(0, n, step):
        d = torch.addmm(cn[None, :], x[s : s + step], ct, alpha=-2.0)
        d.addcmul_((lam / weights[s : s + step])[:, None], rate_bits[None, :])
        out[s : s + step] = d.argmin(1)
    return out


def min_sq_dist(x: Tensor, c: Tensor) -> Tensor:
    """min_k ‖x_i − c_k‖² (n,) from direct differences (c: a few rows): elementwise, so the same on any backend."""
    out = torch.empty(x.shape[0], device=x.device)
    step = chunk_rows(c.shape[0] * c.shape[1])
    for s in range(0, x.shape[0], step):
        xs = x[s : s + step]
        dist = (xs[:, None, 0] - c[None, :, 0]).square_()
        for j in range(1, x.shape[1]):
            dist.add_((xs[:, None, j] - c[None, :, j]).square_())
        out[s : s + step] = dist.amin(1)
    return out


def sample(p: Tensor, b: int, gen: torch.Generator) -> Tensor:
    """Up to b distinct indices drawn with probability ∝ p (p >= 0, some p > 0): inverse-CDF draws, repeats dropped."""
    cum = torch.cumsum(p.double(), 0)
    u = torch.rand(b, generator=gen, device=p.device, dtype=torch.float64) * cum[-1]
    idx = torch.searchsorted(cum, u, right=True).clamp_max_(p.shape[0] - 1)
    idx = torch.unique(idx)
    return idx[p[idx] > 0]


def kmeans_pp(x: Tensor, k: int, weights: Tensor | None, gen: torch.Generator) -> Tensor:
    """Indices (k,) of the initial centres by (batched) k-means++ D² sampling."""
    n = x.shape[0]
    w = torch.ones(n, device=x.device) if weights is None else weights
    chosen = torch.zeros(n, dtype=torch.bool, device=x.device)
    picked = [sample(w, 1, gen)]
    chosen[picked[0]] = True
    d2 = sq_dist(x, x[picked[0]].expand_as(x))
    per_round = math.ceil((k - 1) / PP_ROUNDS) if k > 1 else 1
    have = 1
    while have < k:
        b = min(per_round, k - have)
        p = (w * d2).masked_fill_(chosen, 0.0)
        idx = sample(p, b, gen) if bool((p > 0).any()) else p.new_zeros(0, dtype=torch.int64)
        if idx.numel() == 0:  # every unchosen point sits on a centre: take the rest uniformly
            free = (~chosen).nonzero().flatten()
            idx = free[torch.randperm(free.numel(), generator=gen, device=x.device)[:b]]
        picked.append(idx)
        chosen[idx] = True
        have += idx.numel()
        if have < k:
            new = x[idx]  # a few new centres: their distances directly (a search costs far more)
            d2 = torch.minimum(d2, min_sq_dist(x, new) if idx.numel() <= PP_DIRECT else nearest(x, new, 1)[0][:, 0])
    return torch.cat(picked)


def kmeans(
    x: Tensor,
    k: int,
    *,
    weights: Tensor | None = None,
    iters: int = 20,
    seed: int = 0,
    lam: float = 0.0,
) -> KMeansResult:
    """Cluster the rows of x (n, d) into k centroids on x's device; see the module docstring."""
    if x.ndim != 2:
        raise ValueError(f"kmeans needs a 2-D (n, d) array, got shape {tuple(x.shape)}")
    x = x.float()
    n, dim = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: {k} clusters for {n} points")
    if weights is not None:
        weights = weights.to(x.device, torch.float32).flatten()
        if weights.shape[0] != n or not bool(torch.isfinite(weights).all()) or not bool((weights > 0).all()):
            raise ValueError("kmeans: weights must be one positive finite value per point")
    if lam < 0:
        raise ValueError(f"kmeans: lam must be >= 0, got {lam}")
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    if n > PP_SAMPLE * k:  # k-means++ on a uniform subsample (like faiss' training subsample)
        sub = torch.randperm(n, generator=gen, device=x.device)[: PP_SAMPLE * k]
        init = sub[kmeans_pp(x[sub], k, None if weights is None else weights[sub], gen)]
    else:
        init = kmeans_pp(x, k, weights, gen)
    c = x[init].clone()
    w = weights if weights is not None else torch.ones(n, device=x.device)
    ecvq = lam > 0
    rate = torch.full((k,), math.log2(k), device=x.device) if ecvq else None

    def objective(codes: Tensor) -> float:
        val = (w * sq_dist(x, c[codes])).sum()
        if ecvq:
            val = val + lam * rate[codes].sum()
        return float(val)

    codes = assign(x, c, lam, rate, weights)
    history = [objective(codes)]
    done = 0
    for _ in range(iters):
        counts = torch.bincount(codes, minlength=k)
        wsum = torch.zeros(k, device=x.device).index_add_(0, codes, w)
        sums = torch.zeros(k, dim, device=x.device).index_add_(0, codes, x * w[:, None])
        live = wsum > 0
        c = torch.where(live[:, None], sums / wsum.clamp_min(1e-30)[:, None], c)
        empty = counts == 0
        if ecvq:
            rate = -torch.log2(torch.where(empty, torch.full_like(wsum, 0.5), counts.float()) / n)
        elif bool(empty.any()):
            far = w * sq_dist(x, c[codes])
            idx = torch.topk(far, int(empty.sum())).indices
            c[empty.nonzero().flatten()] = x[idx]
        new = assign(x, c, lam, rate, weights)
        done += 1
        changed = bool((new != codes).any())
        codes = new
        history.append(objective(codes))
        if not changed:
            break
    return KMeansResult(c, codes, rate, done, history)
