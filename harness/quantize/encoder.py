"""The encoder: a state dict and its plan become encoded units (in parallel worker processes if asked)."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

import torch
from torch import Tensor
from tqdm import tqdm

from bytegolf.artifact import reshape
from bytegolf.artifact.layout import family_key
from bytegolf.errors import BytegolfError, ConfigError, DataError
from bytegolf.formats import EncodeContext, Encoded, Format, get_format
from bytegolf.model.grams import block_index
from bytegolf.quantize.lqer import LowRankPlan, apply_lowrank
from bytegolf.quantize.plan import Assignment


def group_units(plan: list[Assignment]) -> list[list[Assignment]]:
    """Tensors encoded together: alone, or by family / globally when the format's `scope` param says so."""
    groups: dict[str, list[Assignment]] = {}
    for a in plan:
        scope = a.params.get("scope", "tensor")
        if scope not in ("tensor", "family", "global"):
            raise ConfigError(f"{a.name}: scope must be tensor, family or global, got {scope!r}")
        params = json.dumps(a.params, sort_keys=True, default=str)
        key = (
            a.name if scope == "tensor" else f"{a.format}|{params}|" + (family_key(a.name) if scope == "family" else "")
        )
        groups.setdefault(key, []).append(a)
    return list(groups.values())


def check_finite(tensors: dict[str, Tensor]) -> None:
    """DataError naming every float tensor that holds NaN or Inf (bytegolf stores finite weights only)."""
    bad = []
    for name, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                nan = int(torch.isnan(t).sum())
                bad.append(f"{name} ({nan} NaN, {int((~finite).sum()) - nan} Inf of {t.numel()} values)")
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"non-finite weights in tensor {', '.join(bad[:5])}{more}; fix or drop them in the checkpoint")


def encode_state(
    state: dict[str, Tensor],
    plan: list[Assignment],
    ctx: EncodeContext,
    progress: bool = True,
    lowrank: LowRankPlan | None = None,
    jobs: int = 1,
) -> list[Encoded]:
    """Encode the state dict unit by unit (a unit is one tensor or a family sharing structure),
    then add the plan's low-rank corrections. NaN or Inf in any planned tensor fails first, naming it.

    jobs > 1: the units are encoded by that many worker processes, each with torch threads = this
    process's // jobs; the units, and so the artifact, are the same as with jobs=1 (each unit's encode
    depends on its own tensors, Grams and ctx.seed only), given the same torch threads per encode."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"encode_jobs must be an integer >= 1, got {jobs!r}")
    check_finite({a.name: state[a.name] for a in plan if a.name in state})
    cache: dict[str, Format] = {}
    groups = group_units(plan)
    formats = []
    for group in groups:
        a = group[0]
        key = a.format + json.dumps(a.params, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = get_format(a.format, **a.params)
        formats.append(cache[key])
    if jobs > 1 and len(groups) > 1:
        units = _encode_parallel(groups, formats, state, ctx, min(jobs, len(groups)), progress)
    else:
        bar = tqdm(groups, desc="encode", unit="unit", disable=not progress, leave=False)
        units = [_encode_group(fmt, group, state, ctx) for fmt, group in zip(formats, bar, strict=True)]
    if lowrank is not None and lowrank.active:
        units, _ = apply_lowrank(state, units, lowrank, ctx)
    return units


def _encode_group(fmt: Format, group: list[Assignment], state: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
    """One unit's encoding (its format settings recorded in meta), errors of the format as ConfigError."""
    a = group[0]
    try:
        tensors, shapes = reshape.fold({g.name: state[g.name] for g in group}, a.format, a.reshape)
        enc = reshape.encode(fmt, tensors, shapes, ctx)
    except BytegolfError:
        raise
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"{a.format} could not encode {', '.join(g.name for g in group)}: {exc}") from None
    enc.meta = {**enc.meta, "params": fmt.config()}
    return reshape.record(enc, shapes)


def _own_storage(t: Tensor) -> Tensor:
    """t, or a copy when it is a view into a larger storage (pickle would send all of that storage)."""
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def _unit_task(
    fmt: Format, group: list[Assignment], state: dict[str, Tensor], ctx: EncodeContext
) -> tuple[Format, list[Assignment], dict[str, Tensor], EncodeContext]:
    """What a worker needs to encode one unit: its tensors and their Grams (slices' "name[i]" ones too)."""
    names = [a.name for a in group]

    def own(key: str) -> bool:
        return any(key == n or key.startswith(n + "[") for n in names)

    tensors = {n: _own_storage(state[n]) for n in names if n in state}
    hessians = {k: _own_storage(v) for k, v in ctx.hessians.items() if own(k)}
    counts = {k: v for k, v in ctx.hessian_counts.items() if own(k)}
    return fmt, group, tensors, replace(ctx, hessians=hessians, hessian_counts=counts)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _worker_encode(task: bytes) -> bytes:
    """A pickled _unit_task in, the pickled Encoded out (plain pickle: no shared-memory tensor handles)."""
    return pickle.dumps(_encode_group(*pickle.loads(task)), protocol=pickle.HIGHEST_PROTOCOL)


def _encode_parallel(
    groups: list[list[Assignment]],
    formats: list[Format],
    state: dict[str, Tensor],
    ctx: EncodeContext,
    jobs: int,
    progress: bool,
) -> list[Encoded]:
    """encode_state's units from `jobs` spawned worker processes, largest units first, in plan order."""
    threads = max(1, torch.get_num_threads() // jobs)
    size = [sum(state[a.name].numel() for a in g if a.name in state) for g in groups]
    order = sorted(range(len(groups)), key=lambda i: -size[i])
    units: list[Encoded | None] = [None] * len(groups)
    pool = ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
    )
    try:
        futures = {}
        for i in order:
            task = pickle.dumps(_unit_task(formats[i], groups[i], state, ctx), protocol=pickle.HIGHEST_PROTOCOL)
            futures[pool.submit(_worker_encode, task)] = i
        done = as_completed(futures)
        for fut in tqdm(done, total=len(futures), desc="encode", unit="unit", disable=not progress, leave=False):
            units[futures[fut]] = pickle.loads(fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return units  # type: ignore[return-value]


def encode_sequential(
    state: dict[str, Tensor],
    plan: list[Assignment],
    ctx: EncodeContext,
    grams_of: Callable[[dict[str, Tensor]], tuple[dict[str, Tensor], int]],
    lowrank: LowRankPlan | None = None,
) -> list[Encoded]:
    """Encode block by block in depth order: block i's Hessians are grams_of(the state with blocks < i
    replaced by their reconstructions). ctx holds the unquantized model's Grams (used for block 0).
    Units spanning several blocks (family or global scope) and tensors outside the blocks go last.
    The units come back in encoder.group_units order, as encoder.encode_state returns them."""
    groups = group_units(plan)
    last = max((i for g in groups for a in g if (i := block_index(a.name)) is not None), default=-1) + 1

    def stage(group: list[Assignment]) -> int:
        idx = {block_index(a.name) for a in group}
        return idx.pop() if len(idx) == 1 and None not in idx else last  # type: ignore[return-value]

    by_name: dict[str, Encoded] = {}
    current = dict(state)
    for n, s in enumerate(sorted({stage(g) for g in groups})):
        if n > 0:
            grams, rows = grams_of(current)
            ctx = replace(ctx, hessians=grams, hessian_counts=dict.fromkeys(grams, rows))
        todo = [a for g in groups if stage(g) == s for a in g]
        for unit in encode_state(state, todo, ctx, progress=False):
            by_name[unit.tensors[0].name] = unit
            current.update(unit.recon or {})
    units = [by_name[g[0].name] for g in groups]
    if lowrank is not None and lowrank.active:
        units, _ = apply_lowrank(state, units, lowrank, ctx)
    return units
