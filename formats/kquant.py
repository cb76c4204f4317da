"""llama.cpp block quantization (GGUF types Q8_0, Q4_0, Q5_0, Q2_K … Q6_K) as a format.

Each tensor's rows (its last dimension) are cut into blocks of 32 weights (Q8_0, Q4_0, Q5_0) or
256-weight super-blocks (K types), quantized by llama.cpp's reference, non-imatrix algorithms
(`quantize_row_*_ref` in ggml-quants.c: make_qx_quants, make_q3_quants and make_qkx2_quants with
their scale searches), vectorized over blocks. Arithmetic is float32 in llama.cpp's operation order
(sums accumulated element by element, its `nearest_int` bit trick, fp16 by round-to-nearest-even),
so the block bytes are those a plain (no FMA contraction, no -ffast-math) C build writes; Q8_0, Q4_0
and Q5_0 equal gguf-py's `gguf.quants.quantize` byte for byte.

The one stream `blocks` holds the raw GGUF block bytes of the tensor (uint8, rows × row bytes, role
codes, alphabet 256), a payload a GGUF file holds verbatim (harness/run/gguf_file.py writes one).
With fields=true the block fields go to separate streams instead (fp16 super-scales `d` / `dmin`,
packed sub-block `scales`, quant bits `qs`, `qh`, `ql`, `hmask`) and are interleaved back on decode.
Decoding (numpy, float32) follows gguf-py's `dequantize` operation for operation, bit for bit.
Bits per weight: Q2_K 2.625, Q3_K 3.4375, Q4_0 4.5, Q4_K 4.5, Q5_0 5.5, Q5_K 5.5, Q6_K 6.5625, Q8_0 8.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats.arrays import single_tensor, torch_dtype
from bytegolf.formats.base import EncodeContext, Encoded, Format, Stream, TensorSpec

F32, F16, U8 = np.float32, np.float16, np.uint8
QK_K = 256
GROUP_MAX_EPS = F32(1e-15)

# type -> (weights per block, bytes per block, fields in block order as (name, bytes)); fp16 fields are d and dmin
LAYOUTS: dict[str, tuple[int, int, tuple[tuple[str, int], ...]]] = {
    "Q2_K": (QK_K, 84, (("scales", 16), ("qs", 64), ("d", 2), ("dmin", 2))),
    "Q3_K": (QK_K, 110, (("hmask", 32), ("qs", 64), ("scales", 12), ("d", 2))),
    "Q4_0": (32, 18, (("d", 2), ("qs", 16))),
    "Q4_K": (QK_K, 144, (("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128))),
    "Q5_0": (32, 22, (("d", 2), ("qh", 4), ("qs", 16))),
    "Q5_K": (QK_K, 176, (("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128))),
    "Q6_K": (QK_K, 210, (("ql", 128), ("qh", 64), ("scales", 16), ("d", 2))),
    "Q8_0": (32, 34, (("d", 2), ("qs", 32))),
}
TYPES = tuple(sorted(LAYOUTS, key=lambda t: LAYOUTS[t][1] / LAYOUTS[t][0]))  # by bits per weight
FIELD_ROLES = {"d": "scales", "dmin": "zeros", "scales": "scales"}  # the rest (quant bits): codes


def bits_per_weight(qtype: str) -> float:
    """Nominal bits per weight of a type (block bytes · 8 / block weights)."""
    block, size, _ = LAYOUTS[qtype]
    return size * 8 / block


# ---------------------------------------------------------------- float32 helpers in llama.cpp's arithmetic


def nearest_int(v: np.ndarray) -> np.ndarray:
    """llama.cpp's nearest_int: round half to even through the float32 sum v + 1.5·2^23, read as int bits."""
    bits = (np.asarray(v, F32) + F32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def seq_sum(a: np.ndarray) -> np.ndarray:
    """Float32 sum over the last axis accumulated in index order, as a C loop does (numpy sums pairwise)."""
    acc = a[..., 0].copy()
    for k in range(1, a.shape[-1]):
        acc += a[..., k]
    return acc


def first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the signed value of largest magnitude (the first of ties) and that magnitude."""
    ax = np.abs(x)
    i = ax.argmax(-1)[:, None]
    return np.take_along_axis(x, i, -1)[:, 0], np.take_along_axis(ax, i, -1)[:, 0]


def fp16(v: np.ndarray) -> np.ndarray:
    """float32 -> fp16 (round to nearest even, as GGML_FP32_TO_FP16)."""
    return np.asarray(v, F32).astype(F16)


def pack_bits(parts: np.ndarray, width: int) -> np.ndarray:
    """OR of parts[..., k, :] << width·k over axis -2, as uint8."""
    out = np.zeros(parts.shape[:-2] + parts.shape[-1:], np.int64)
    for k in range(parts.shape[-2]):
        out |= parts[..., k, :].astype(np.int64) << (width * k)
    return (out & 0xFF).astype(U8)


def as_bytes(*fields: np.ndarray) -> np.ndarray:
    """Block fields (each (blocks, ...)) concatenated into (blocks, bytes) uint8."""
    n = fields[0].shape[0]
    return np.concatenate([np.ascontiguousarray(f).view(U8).reshape(n, -1) for f in fields], axis=1)


# ---------------------------------------------------------------- llama.cpp's scale searches, over rows


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(rmse_type=1, no weights) per row of x: codes 0..2·nmax-1 and the scale.

    Weights x²; the least-squares scale of round(-nmax/max·x) and of the 18 grids -(nmax ± 0.1·k)/max."""
    mx, amax = first_absmax(x)
    w = x * x

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lv = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = lv.astype(F32)
        return lv, seq_sum(w * x * lf), seq_sum(w * lf * lf)

    lv, sumlx, suml2 = fit(F32(-nmax) / mx)
    codes = lv + nmax
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0)).astype(F32)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        lv, sumlx, suml2 = fit(-(F32(nmax) + F32(0.1) * F32(step)) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        codes = np.where(better[:, None], lv + nmax, codes)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    zero = amax < GROUP_MAX_EPS
    return np.where(zero[:, None], 0, codes), np.where(zero, F32(0), scale)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants(do_rmse=true) per row: round(-nmax/max·x), then up to 5 passes moving single codes
    while that raises the x²-weighted fit (sumlx²/suml2); codes 0..2·nmax-1 and the scale sumlx/suml2."""
    mx, amax = first_absmax(x)
    lv = np.clip(nearest_int((F32(-nmax) / mx)[:, None] * x), -nmax, nmax - 1)
    lf = lv.astype(F32)
    w = x * x
    sumlx, suml2 = seq_sum(w * x * lf), seq_sum(w * lf * lf)
    for _ in range(5):  # a pass that changes nothing leaves the state as it was, so passes past it are no-ops
        for i in range(x.shape[1]):
            wi, xi, li = w[:, i], x[:, i], lf[:, i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            new = np.clip(nearest_int(xi * sl2 / slx), -nmax, nmax - 1)
            nf = new.astype(F32)
            slx_n, sl2_n = slx + wi * xi * nf, sl2 + wi * nf * nf
            take = (slx > 0) & (new != lv[:, i]) & (sl2_n > 0) & (slx_n * slx_n * suml2 > sumlx * sumlx * sl2_n)
            lv[:, i] = np.where(take, new, lv[:, i])
            lf[:, i] = lv[:, i]
            sumlx, suml2 = np.where(take, slx_n, sumlx), np.where(take, sl2_n, suml2)
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0)).astype(F32)
    zero = amax < GROUP_MAX_EPS
    return np.where(zero[:, None], 0, lv + nmax), np.where(zero, F32(0), scale)


def make_qkx2_quants(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants per row: codes 0..nmax, scale and min (x ≈ scale·L - min) minimizing Σ w·|err|^p
    (p = 1 with use_mad, else 2) over the grids (nmax + rmin + rdelta·k)/(max - min), k = 0..nstep,
    each refit by weighted least squares (min clamped to <= 0); later grids use the best min so far."""
    mn0 = np.minimum(x.min(1), F32(0))
    mx = x.max(1)
    flat = mx == mn0
    sum_w, sum_x = seq_sum(w), seq_sum(w * x)

    def err(scale: np.ndarray, mn: np.ndarray, lf: np.ndarray) -> np.ndarray:
        d = scale[:, None] * lf + mn[:, None] - x
        return seq_sum(w * (np.abs(d) if use_mad else d * d))

    def grid(iscale: np.ndarray, mn: np.ndarray) -> np.ndarray:
        return np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)

    mn = mn0
    iscale = F32(nmax) / (mx - mn)
    scale = (F32(1) / iscale).astype(F32)
    codes = grid(iscale, mn)
    best = err(scale, mn, codes.astype(F32))
    for step in range(nstep + 1 if nstep >= 1 else 0):
        lv = grid((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - mn), mn)
        lf = lv.astype(F32)
        sum_l, sum_l2, sum_xl = seq_sum(w * lf), seq_sum(w * lf * lf), seq_sum(w * lf * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        pos = this_min > 0
        this_min = np.where(pos, F32(0), this_min)
        this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
        cur = err(this_scale, this_min, lf)
        better = (det > 0) & (cur < best)
        codes = np.where(better[:, None], lv, codes)
        best = np.where(better, cur, best)
        scale, mn = np.where(better, this_scale, scale), np.where(better, this_min, mn)
    codes = np.where(flat[:, None], 0, codes)
    return codes, np.where(flat, F32(0), scale), np.where(flat, -mn0, -mn)


# ---------------------------------------------------------------- quantizers: blocks (n, block) f32 -> (n, bytes)


def _q8_0(x: np.ndarray) -> np.ndarray:
    d = np.abs(x).max(1) / F32(127)
    inv = np.where(d == 0, F32(0), F32(1) / np.where(d == 0, F32(1), d)).astype(F32)
    v = x * inv[:, None]
    a = np.abs(v)
    fl = np.floor(a)
    q = np.sign(v) * (fl + (a - fl >= F32(0.5)))  # C roundf: half away from zero
    return as_bytes(fp16(d), q.astype(np.int8))


def _legacy(x: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 / Q5_0: d = max/-(levels/2), max the value of largest magnitude; codes min(levels-1, ⌊x/d+levels/2+½⌋)."""
    mx, _ = first_absmax(x)
    d = mx / F32(-(levels // 2))
    inv = np.where(d == 0, F32(0), F32(1) / np.where(d == 0, F32(1), d)).astype(F32)
    q = np.trunc(x * inv[:, None] + F32(levels // 2 + 0.5)).astype(np.int64)
    return d, np.clip(q, 0, levels - 1)


def _q4_0(x: np.ndarray) -> np.ndarray:
    d, q = _legacy(x, 16)
    return as_bytes(fp16(d), pack_bits(q.reshape(-1, 2, 16), 4))


def _q5_0(x: np.ndarray) -> np.ndarray:
    d, q = _legacy(x, 32)
    qh = (q >> 4).astype(np.uint32) << np.arange(32, dtype=np.uint32)
    qh = np.bitwise_or.reduce(qh, axis=1).astype("<u4")
    return as_bytes(fp16(d), qh, pack_bits((q & 15).reshape(-1, 2, 16), 4))


def _requant(x: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int, codes: np.ndarray) -> np.ndarray:
    """Codes from the stored sub-block scales: clamp(nearest_int((x + dm)/d)) - lo, or the old codes where d = 0."""
    with np.errstate(all="ignore"):
        v = x if dm is None else x + dm[..., None]
        q = np.clip(nearest_int(v / d[..., None]), lo, hi) - lo
    return np.where((d != 0)[..., None], q, codes)


def _k_scale_bytes(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Q4_K / Q5_K: 8 six-bit scales and 8 six-bit mins packed into 12 bytes."""
    lo = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    mid = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    hi = (ls[:, 4:] & 15) | ((lm[:, 4:] & 15) << 4)
    return np.concatenate([lo, mid, hi], axis=1).astype(U8)


def _qk_asym(x: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple[np.ndarray, ...]:
    """Q4_K / Q5_K body: codes (n, 256), d, dmin (fp16) and the 12 scale bytes."""
    n = x.shape[0]
    xs = x.reshape(n * 8, 32)
    av = np.sqrt(seq_sum(xs * xs) / F32(32))
    codes, scales, mins = make_qkx2_quants(xs, av[:, None] + np.abs(xs), nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale = np.maximum(scales.max(1), F32(0))
    max_min = np.maximum(mins.max(1), F32(0))
    inv_s = np.where(max_scale > 0, F32(63) / np.where(max_scale > 0, max_scale, F32(1)), F32(0)).astype(F32)
    inv_m = np.where(max_min > 0, F32(63) / np.where(max_min > 0, max_min, F32(1)), F32(0)).astype(F32)
    ls = np.minimum(63, nearest_int(inv_s[:, None] * scales) & 0xFF)  # C: uint8_t then MIN(63, ·)
    lm = np.minimum(63, nearest_int(inv_m[:, None] * mins) & 0xFF)
    d, dmin = fp16(max_scale / F32(63)), fp16(max_min / F32(63))
    dj = d.astype(F32)[:, None] * ls.astype(F32)
    dmj = dmin.astype(F32)[:, None] * lm.astype(F32)
    codes = _requant(x.reshape(n, 8, 32), dj, dmj, 0, nmax, codes.reshape(n, 8, 32))
    return codes.reshape(n, 4, 2, 32), d, dmin, _k_scale_bytes(ls, lm)


def _q4_k(x: np.ndarray) -> np.ndarray:
    codes, d, dmin, sc = _qk_asym(x, 15, -1.0, 20)
    return as_bytes(d, dmin, sc, pack_bits(codes, 4).reshape(-1, 128))


def _q5_k(x: np.ndarray) -> np.ndarray:
    codes, d, dmin, sc = _qk_asym(x, 31, -0.5, 15)
    n = x.shape[0]
    qh = pack_bits((codes >> 4).reshape(n, 8, 32), 1)
    return as_bytes(d, dmin, sc, qh, pack_bits(codes & 15, 4).reshape(n, 128))


def _q6_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    codes, scales = make_qx_quants(x.reshape(n * 16, 16), 32)
    scales = scales.reshape(n, 16)
    max_scale, max_abs = first_absmax(scales)
    zero = max_abs < GROUP_MAX_EPS
    iscale = F32(-128) / np.where(zero, F32(1), max_scale)
    d = fp16(F32(1) / iscale)
    sc = np.minimum(127, nearest_int(iscale[:, None] * scales))
    sc = ((sc + 128) & 0xFF) - 128  # int8_t
    dj = d.astype(F32)[:, None] * sc.astype(F32)
    codes = _requant(x.reshape(n, 16, 16), dj, None, -32, 31, codes.reshape(n, 16, 16)).reshape(n, 2, 4, 32)
    ql = pack_bits((codes & 15).reshape(n, 2, 2, 2, 32).transpose(0, 1, 3, 2, 4), 4).reshape(n, 128)
    qh = pack_bits(codes >> 4, 2).reshape(n, 64)
    out = as_bytes(ql, qh, sc.astype(np.int8), d)
    out[zero] = 0
    return out


def _q3_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    codes, scales = make_q3_quants(x.reshape(n * 16, 16), 4)
    scales = scales.reshape(n, 16)
    max_scale, _ = first_absmax(scales)
    nz = max_scale != 0
    iscale = F32(-32) / np.where(nz, max_scale, F32(1))
    ls = ((nearest_int(iscale[:, None] * scales) + 128) & 0xFF) - 128  # int8_t
    ls = np.where(nz[:, None], np.clip(ls, -32, 31) + 32, 0)
    low = (ls[:, :8] & 15) | ((ls[:, 8:] & 15) << 4)
    high = pack_bits((ls >> 4).reshape(n, 4, 4), 2)
    d = np.where(nz, fp16(F32(1) / iscale), F16(0))
    dj = d.astype(F32)[:, None] * (ls - 32).astype(F32)
    codes = _requant(x.reshape(n, 16, 16), dj, None, -4, 3, codes.reshape(n, 16, 16)).reshape(n, 8, 32)
    hmask = pack_bits((codes > 3).astype(np.int64), 1)
    qs = pack_bits((codes & 3).reshape(n, 2, 4, 32), 2).reshape(n, 64)
    return as_bytes(hmask, qs, low.astype(U8), high, d)


def _q2_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    xs = x.reshape(n * 16, 16)
    codes, scales, mins = make_qkx2_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(n, 16), mins.reshape(n, 16)
    max_scale = np.maximum(scales.max(1), F32(0))
    max_min = np.maximum(mins.max(1), F32(0))
    hs, hm = max_scale > 0, max_min > 0
    ls = np.where(hs[:, None], nearest_int((F32(15) / np.where(hs, max_scale, F32(1)))[:, None] * scales), 0)
    lm = np.where(hm[:, None], nearest_int((F32(15) / np.where(hm, max_min, F32(1)))[:, None] * mins), 0)
    sc = (ls & 0xFF) | ((lm << 4) & 0xFF)
    d = np.where(hs, fp16(max_scale / F32(15)), F16(0))
    dmin = np.where(hm, fp16(max_min / F32(15)), F16(0))
    dj = d.astype(F32)[:, None] * (sc & 15).astype(F32)
    dmj = dmin.astype(F32)[:, None] * (sc >> 4).astype(F32)
    codes = _requant(x.reshape(n, 16, 16), dj, dmj, 0, 3, codes.reshape(n, 16, 16)).reshape(n, 2, 4, 32)
    return as_bytes(sc.astype(U8), pack_bits(codes, 2).reshape(n, 64), d, dmin)


QUANTIZERS = {
    "Q8_0": _q8_0,
    "Q4_0": _q4_0,
    "Q5_0": _q5_0,
    "Q6_K": _q6_k,
    "Q5_K": _q5_k,
    "Q4_K": _q4_k,
    "Q3_K": _q3_k,
    "Q2_K": _q2_k,
}


# ---------------------------------------------------------------- dequantizers: (n, bytes) -> (n, block) f32


def _fields(b: np.ndarray, qtype: str) -> dict[str, np.ndarray]:
    """Block bytes split into named fields (d / dmin as float32, the rest uint8)."""
    out, at = {}, 0
    for name, size in LAYOUTS[qtype][2]:
        f = b[:, at : at + size]
        out[name] = np.ascontiguousarray(f).view(F16).astype(F32) if name in ("d", "dmin") else f
        at += size
    return out


def unpack(b: np.ndarray, width: int, parts: int) -> np.ndarray:
    """(n, m) bytes -> (n, parts, m): the width-bit fields at shifts 0, width, 2·width, …"""
    shifts = (np.arange(parts, dtype=U8) * width)[None, :, None]
    return (b[:, None, :] >> shifts) & U8((1 << width) - 1)


def _k_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K 12 scale bytes -> (n, 8) scales and mins as float32."""
    a, m, lo = s[:, :4], s[:, 4:8], s[:, 8:]
    sc = np.concatenate([a & 63, (lo & 15) | ((a >> 6) << 4)], axis=1)
    mn = np.concatenate([m & 63, (lo >> 4) | ((m >> 6) << 4)], axis=1)
    return sc.astype(F32), mn.astype(F32)


def dequantize_blocks(b: np.ndarray, qtype: str) -> np.ndarray:
    """Blocks of one type, (n, bytes) uint8 -> (n, block) float32 (gguf-py's arithmetic, in its order)."""
    f, n = _fields(b, qtype), b.shape[0]
    d = f["d"][:, :1]
    if qtype == "Q8_0":
        return f["qs"].view(np.int8).astype(F32) * d
    if qtype == "Q4_0":
        return d * (unpack(f["qs"], 4, 2).reshape(n, 32).astype(np.int8) - 8).astype(F32)
    if qtype == "Q5_0":
        qh = (f["qh"].copy().view("<u4") >> np.arange(32, dtype=np.uint32)) & 1
        q = unpack(f["qs"], 4, 2).reshape(n, 32) | (qh.astype(U8) << 4)
        return d * (q.astype(np.int8) - 16).astype(F32)
    if qtype in ("Q4_K", "Q5_K"):
        sc, mn = _k_scales_mins(f["scales"])
        q = unpack(f["qs"].reshape(n * 4, 32), 4, 2).reshape(n, 8, 32)
        if qtype == "Q5_K":
            q = q | (unpack(f["qh"], 1, 8) << 4)
        return ((d * sc)[..., None] * q.astype(F32) - (f["dmin"][:, :1] * mn)[..., None]).reshape(n, QK_K)
    if qtype == "Q6_K":
        ql = unpack(f["ql"].reshape(n * 2, 64), 4, 2).reshape(n, 2, 4, 32)  # quarter 2·shift + byte half
        qh = unpack(f["qh"].reshape(n * 2, 32), 2, 4).reshape(n, 2, 4, 32)
        q = (ql | (qh << 4)).reshape(n, 16, 16).astype(np.int8) - 32
        return ((d * f["scales"].view(np.int8).astype(F32))[..., None] * q.astype(F32)).reshape(n, QK_K)
    if qtype == "Q3_K":
        s = f["scales"]
        low = np.concatenate([s[:, :8] & 15, s[:, :8] >> 4], axis=1)
        high = unpack(s[:, 8:], 2, 4).reshape(n, 16)
        sc = ((low | (high << 4)).astype(np.int8) - 32).astype(F32)
        ql = unpack(f["qs"].reshape(n * 2, 32), 2, 4).reshape(n, 16, 16)
        hm = unpack(f["hmask"], 1, 8).reshape(n, 16, 16)
        q = (ql.astype(np.int8) - ((hm ^ 1) << 2).astype(np.int8)).astype(F32)
        return ((d * sc)[..., None] * q).reshape(n, QK_K)
    if qtype == "Q2_K":
        sc = f["scales"]
        dl = (d * (sc & 15).astype(F32))[..., None]
        ml = (f["dmin"][:, :1] * (sc >> 4).astype(F32))[..., None]
        q = unpack(f["qs"].reshape(n * 2, 32), 2, 4).reshape(n, 16, 16).astype(F32)
        return (dl * q - ml).reshape(n, QK_K)
    raise ArtifactError(f"kquant: unknown type {qtype!r}")


def check_type(qtype: Any) -> str:
    """qtype if it names a supported type, else ConfigError listing them."""
    if qtype not in LAYOUTS:
        raise ConfigError(f"kquant: type must be one of {', '.join(TYPES)}, got {qtype!r}")
    return qtype


def quantize(w: np.ndarray, qtype: str, name: str = "tensor") -> np.ndarray:
    """GGUF block bytes of w (..., n), quantized along its last axis: uint8 (..., n / block · bytes per block)."""
    block, size, _ = LAYOUTS[check_type(qtype)]
    row = w.shape[-1] if w.ndim else 0
    if w.ndim == 0 or row == 0 or row % block:
        raise ConfigError(
            f"kquant: tensor {name} has rows of length {row}, not a positive multiple of the {qtype} block of {block}"
        )
    x = np.ascontiguousarray(w, dtype=F32).reshape(-1, block)
    with np.errstate(all="ignore"):
        out = QUANTIZERS[qtype](x)
    return out.reshape(*w.shape[:-1], row // block * size)


def dequantize(data: np.ndarray, qtype: str) -> np.ndarray:
    """float32 weights (..., n) of GGUF block bytes (..., row bytes) of one type."""
    block, size, _ = LAYOUTS[check_type(qtype)]
    data = np.ascontiguousarray(data, dtype=U8)
    if data.ndim == 0 or data.shape[-1] % size:
        raise ArtifactError(f"kquant: {qtype} rows of {data.shape[-1:]} bytes are not whole {size}-byte blocks")
    with np.errstate(all="ignore"):
        out = dequantize_blocks(data.reshape(-1, size), qtype)
    return out.reshape(*data.shape[:-1], data.shape[-1] // size * block)


class KQuant(Format):
    """llama.cpp's GGUF block types (reference quantizers), stored as their raw block bytes."""

    name = "kquant"
    rate_knob = None  # `type` is categorical; the budget search moves only numeric knobs

    def __init__(self, type: str = "Q8_0", fields: bool = False) -> None:
        """type: Q2_K, Q3_K, Q4_0, Q4_K, Q5_0, Q5_K, Q6_K or Q8_0 (default Q8_0: its 32-weight blocks fit more row
        lengths than the K types' 256; experiments/format/kquant.yaml picks Q4_K); fields: a stream per block field."""
        self.type = check_type(type)
        if not isinstance(fields, bool):
            raise ConfigError(f"kquant: fields must be true or false, got {fields!r}")
        self.fields = fields

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        name, t = single_tensor(self.name, tensors)
        if not t.is_floating_point():
            raise ConfigError(f"kquant: tensor {name} has non-float dtype {t.dtype}")
        w = t.detach().cpu().float()
        if not bool(torch.isfinite(w).all()):
            raise ConfigError(f"kquant: tensor {name} holds NaN or inf")
        blocks = quantize(w.numpy(), self.type, name)
        blocks = blocks.reshape(-1, blocks.shape[-1])  # rows × row bytes
        meta = {"type": self.type, "shape": list(t.shape), "fields": self.fields}
        streams = self._streams(blocks)
        recon = torch.from_numpy(dequantize(blocks, self.type).reshape(t.shape)).to(t.dtype)
        return Encoded(self.name, [TensorSpec.of(name, t)], streams, meta, {name: recon}, float(blocks.size * 8))

    def _streams(self, blocks: np.ndarray) -> dict[str, Stream]:
        """The block bytes as one stream, or (fields) one stream per block field."""
        if not self.fields:
            return {"blocks": Stream(blocks, "codes", 256)}
        _, size, fields = LAYOUTS[self.type]
        b, at, out = blocks.reshape(-1, size), 0, {}
        for field, width in fields:
            part = np.ascontiguousarray(b[:, at : at + width])
            if field in ("d", "dmin"):
                out[field] = Stream(part.view(F16).reshape(-1), FIELD_ROLES[field])
            else:
                out[field] = Stream(part, FIELD_ROLES.get(field, "codes"), 256)
            at += width
        return out

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        (spec,) = enc.tensors
        meta = enc.meta
        qtype = meta.get("type")
        if qtype not in LAYOUTS:
            raise ArtifactError(f"kquant: meta type {qtype!r} is not one of {', '.join(TYPES)}")
        if list(meta.get("shape", [])) != list(spec.shape):
            raise ArtifactError(f"kquant: meta shape {meta.get('shape')!r} differs from tensor shape {spec.shape}")
        block, size, fields = LAYOUTS[qtype]
        if not spec.shape or spec.shape[-1] % block:
            raise ArtifactError(f"kquant: {spec.name} of shape {spec.shape} has rows not a multiple of {block}")
        n = int(np.prod(spec.shape)) // block
        if meta.get("fields"):
            parts = []
            for field, width in fields:
                a = np.ascontiguousarray(enc.streams[field].data)
                if a.size * a.itemsize != n * width:
                    raise ArtifactError(f"kquant: stream {field} holds {a.nbytes} bytes, expected {n * width}")
                parts.append(a.view(U8).reshape(n, width))
            data = np.concatenate(parts, axis=1)
        else:
            data = np.ascontiguousarray(enc.streams["blocks"].data, dtype=U8)
            if data.size != n * size:
                raise ArtifactError(f"kquant: {data.size} block bytes, expected {n * size} for {spec.name}")
        out = dequantize(data.reshape(n, size), qtype).reshape(spec.shape)
        return {spec.name: torch.from_numpy(out).to(torch_dtype(spec.dtype))}
