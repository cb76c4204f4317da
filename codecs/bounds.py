"""Order-0 entropy bounds: what a per-symbol coder with a perfect static model would need.

Symbol streams: n·H₀/8 bytes, H₀ the empirical entropy of the symbols (side information, such
as a stored histogram, excluded). Other streams (floats): the order-0 entropy of their bytes as
stored, and per byte plane (each byte position of the items with its own histogram), which is
never larger and is what a byte-shuffle followed by an order-0 coder can approach.
"""

from __future__ import annotations

import numpy as np


def entropy_bits(symbols: np.ndarray, alphabet: int | None = None) -> float:
    """Order-0 empirical entropy of a symbol array, in bits per symbol."""
    if symbols.size == 0:
        return 0.0
    counts = np.bincount(symbols.reshape(-1).astype(np.int64), minlength=alphabet or 0)
    p = counts[counts > 0] / symbols.size
    return float(-(p * np.log2(p)).sum())


def entropy_bound_bytes(symbols: np.ndarray, alphabet: int | None = None) -> float:
    """n·H₀/8: the order-0 bound on the bytes any per-symbol coder needs (side information excluded)."""
    return symbols.size * entropy_bits(symbols, alphabet) / 8


def byte_entropy_bound(raw: bytes) -> float:
    """Order-0 bound of a byte string taken as bytes (used for float streams)."""
    return entropy_bound_bytes(np.frombuffer(raw, dtype=np.uint8), 256)


def plane_entropy_bound(raw: bytes, itemsize: int) -> float:
    """Sum of the order-0 bounds of the byte planes of items of `itemsize` bytes (≤ byte_entropy_bound)."""
    if itemsize <= 1:
        return byte_entropy_bound(raw)
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(-1, itemsize)
    return sum(entropy_bound_bytes(planes[:, p], 256) for p in range(itemsize))


def stream_bound(data: np.ndarray, alphabet: int | None) -> dict[str, float]:
    """{"bound", "plane_bound"} in bytes for one stream: symbol bound, or byte / byte-plane bounds.

    Non-symbol data is taken little-endian, as the layout stores it.
    """
    if alphabet is not None:
        b = entropy_bound_bytes(data, alphabet)
        return {"bound": b, "plane_bound": b}
    le = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
    return {"bound": byte_entropy_bound(le), "plane_bound": plane_entropy_bound(le, data.dtype.itemsize)}
