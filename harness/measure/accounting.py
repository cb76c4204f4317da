"""Accounting: an artifact's stored bytes split by stream role, against order-0 entropy bounds.

From the manifest entries (bytegolf.artifact.layout) and the sizes the codecs stored: the bytes a stream
occupies in its blob after packing (`stream_nbytes`), each role's stored bytes, bound and share of
the file (`role_report`), and whole-artifact totals (`storage_summary`).
"""

from __future__ import annotations

import math
from typing import Any

from bytegolf.artifact.packing import storage_itemsize
from bytegolf.formats.base import Encoded


def stream_nbytes(st: dict[str, Any]) -> int:
    """Bytes a stream occupies in its (decompressed) blob, from its manifest entry."""
    n = math.prod(st["shape"])
    if st.get("pack") == "bits":
        return (n * st["width"] + 7) // 8
    return n * storage_itemsize(st["dtype"])


def role_report(
    units: list[Encoded], entries: list[dict[str, Any]], blob_stored: list[int], final_bytes: int
) -> dict[str, dict[str, Any]]:
    """Per stream role: stored bytes, raw bytes, order-0 bounds, bytes/bound and share of the file.

    A blob's stored bytes are split among its streams in proportion to the bytes they occupy in
    the blob (after packing). "bound": n·H₀/8 of the symbols for symbol streams, the order-0 byte
    entropy of the stored bytes for the others; "plane_bound": the same per byte plane (≤ bound);
    "packed": bytes in the blob before the codec. The "header" role is the container header plus
    the manifest (final_bytes − Σ blob_stored).
    """
    from bytegolf.codecs import bounds

    roles: dict[str, dict[str, Any]] = {}
    blob_roles: dict[int, dict[str, int]] = {}
    for unit, entry in zip(units, entries, strict=True):
        for st in entry["streams"]:
            s = unit.streams.get(st["name"])
            n = math.prod(st["shape"])
            raw = n * storage_itemsize(st["dtype"])
            packed = stream_nbytes(st)
            blob_roles.setdefault(st["blob"], {}).setdefault(st["role"], 0)
            blob_roles[st["blob"]][st["role"]] += packed
            r = roles.setdefault(st["role"], {"bytes": 0.0, "raw": 0, "packed": 0, "bound": 0.0, "plane_bound": 0.0})
            r["raw"] += raw
            r["packed"] += packed
            if s is None:  # a layout permutation: log2(n!) bits
                perm_bits = math.lgamma(n + 1) / math.log(2)
                b = {"bound": perm_bits / 8, "plane_bound": perm_bits / 8}
            else:
                b = bounds.stream_bound(s.data, s.alphabet)
            r["bound"] += b["bound"]
            r["plane_bound"] += b["plane_bound"]
    for bi, by_role in blob_roles.items():
        total = sum(by_role.values())
        for role, packed in by_role.items():
            roles[role]["bytes"] += blob_stored[bi] * packed / total if total else 0.0
    header = final_bytes - sum(blob_stored)
    roles["header"] = {"bytes": float(header), "raw": header, "packed": header, "bound": 0.0, "plane_bound": 0.0}
    for r in roles.values():
        r["bytes"] = round(r["bytes"], 1)
        r["bound"] = round(r["bound"], 1)
        r["plane_bound"] = round(r["plane_bound"], 1)
        r["ratio"] = r["bytes"] / r["bound"] if r["bound"] > 0 else None
        r["share"] = r["bytes"] / final_bytes if final_bytes else 0.0
    return roles


def storage_summary(
    units: list[Encoded], entries: list[dict[str, Any]], blob_stored: list[int], final_bytes: int
) -> dict[str, Any]:
    """role_report plus whole-artifact totals: bound, final bytes / bound, payload bytes / bound."""
    roles = role_report(units, entries, blob_stored, final_bytes)
    bound = sum(r["bound"] for r in roles.values())
    payload = sum(blob_stored)
    return {
        "bytes_by_role": roles,
        "entropy_bound_bytes": bound,
        "bytes_over_bound": final_bytes / bound if bound > 0 else None,
        "payload_over_bound": payload / bound if bound > 0 else None,
        "header_bytes": final_bytes - payload,
    }
