"""The allocation problem on numbers alone: one option per unit, least total error within a byte budget.

Each unit (a tensor, or a family of tensors encoded together) has a table of options, each a
(bytes, error) pair; an allocation picks one option per unit with Σ bytes ≤ budget and Σ error as
small as possible (the multiple-choice knapsack problem). Nothing here knows about tensors, formats
or codecs: `bytegolf.search.allocate` measures the tables and writes the artifacts.

Two solvers, and `allocate` that runs both:

  allocate_greedy  on each unit's lower convex hull of (bytes, error): from the cheapest points (or
                   a given start, moved down while over the budget), take the upgrade with the most
                   error saved per byte that still fits, until none fits. Options above a hull are
                   never chosen. The result is optimal for the bytes it uses whenever no upgrade was
                   skipped for not fitting (it then minimises Σ error + λ·Σ bytes for the last slope λ
                   taken, the Lagrangian argument); otherwise it can be worse than the optimum by at
                   most the error that the first upgrade it could not take would have saved (its gap
                   to the linear relaxation), e.g. when that large step would have fitted in place of
                   the small steps taken before it.
  allocate_exact   branch and bound over Pareto frontiers, exact for any real bytes (no bucketing).
                   Units are added one at a time; a partial allocation (its Σ bytes, Σ error so far)
                   is kept only when (1) the remaining units' cheapest options still fit, (2) no other
                   partial allocation has at most its bytes and at most its error, and (3) its error
                   plus a lower bound for the remaining units at the remaining bytes does not exceed
                   the incumbent's error (the greedy answer). The bound is the linear relaxation of
                   the remaining units: their hull segments taken in order of slope with a fractional
                   last one, which no integer choice can beat. Only partial allocations within the
                   greedy's gap to that bound survive, so the frontiers stay small in practice; when one
                   grows beyond `max_states` the search gives up (returns None) rather than run long.
  allocate         greedy, then exact; keeps the greedy choice unless the exact search finds strictly
                   less error, and says whether the answer is proven optimal.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from bytegolf.errors import ConfigError

Table = Sequence[tuple[float, float]]  # (bytes, error) per option of one unit

MAX_STATES = 200_000  # partial allocations the exact search may hold after adding one unit


def lower_hull(points: Table) -> list[int]:
    """Indices of the (bytes, error) points on their lower convex hull, cheapest first, error strictly falling."""
    hull: list[int] = []
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i)):
        x, y = points[i]
        if hull and y >= points[hull[-1]][1]:
            continue  # costs as much or more and is no better
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = points[hull[-2]], points[hull[-1]]
            if (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) > 0:
                break
            hull.pop()  # on or above the chord from its left neighbour to the new point
        hull.append(i)
    return hull


def slope(points: Table, a: int, b: int) -> float:
    """Error saved per byte going from point a to the richer point b."""
    return (points[a][1] - points[b][1]) / (points[b][0] - points[a][0])


def totals(tables: Sequence[Table], choice: Sequence[int]) -> tuple[float, float]:
    """(Σ bytes, Σ error) of an allocation."""
    return (
        sum(t[c][0] for t, c in zip(tables, choice, strict=True)),
        sum(t[c][1] for t, c in zip(tables, choice, strict=True)),
    )


def _hull_pos(table: Table, hull: list[int], option: int) -> int:
    """Position on the hull of an option: its own, or that of the richest hull point costing no more."""
    if option in hull:
        return hull.index(option)
    below = [p for p, h in enumerate(hull) if table[h][0] <= table[option][0]]
    return below[-1] if below else 0


def allocate_greedy(tables: Sequence[Table], budget: float, start: Sequence[int] | None = None) -> list[int]:
    """One option per unit (its index in the unit's table of (bytes, error)) with Σ bytes ≤ budget.

    From `start` (option indices; an option off its hull starts at the richest hull point that costs
    no more; default: each unit's cheapest), downgrades the step with the least error per byte saved
    while over the budget, then takes the upgrade with the most error per byte that fits until none
    does. Raises ConfigError when even the cheapest choice is over."""
    hulls = [lower_hull(t) for t in tables]
    if start is None:
        pos = [0] * len(tables)
    else:
        pos = [_hull_pos(t, h, s) for t, h, s in zip(tables, hulls, start, strict=True)]
    total = sum(t[h[p]][0] for t, h, p in zip(tables, hulls, pos, strict=True))
    while total > budget:
        down = [
            (slope(t, h[p - 1], h[p]), i) for i, (t, h, p) in enumerate(zip(tables, hulls, pos, strict=True)) if p > 0
        ]
        if not down:
            raise ConfigError(f"does not fit: cheapest allocation is {total:,.0f} bytes (budget {budget:,.0f})")
        _, i = min(down)
        total -= tables[i][hulls[i][pos[i]]][0] - tables[i][hulls[i][pos[i] - 1]][0]
        pos[i] -= 1
    while True:
        up = []
        for i, (t, h, p) in enumerate(zip(tables, hulls, pos, strict=True)):
            if p + 1 < len(h) and total + t[h[p + 1]][0] - t[h[p]][0] <= budget:
                up.append((-slope(t, h[p], h[p + 1]), t[h[p + 1]][0] - t[h[p]][0], i))
        if not up:
            break
        _, step, i = min(up)
        total += step
        pos[i] += 1
    return [h[p] for h, p in zip(hulls, pos, strict=True)]


class _Relaxation:
    """Lower bounds on the error of units k.. within r bytes: the linear relaxation over their hulls."""

    def __init__(self, tables: Sequence[Table]) -> None:
        n = len(tables)
        hulls = [lower_hull(t) for t in tables]
        self.base_bytes = [0.0] * (n + 1)
        self.base_error = [0.0] * (n + 1)
        self.steps: list[list[float]] = [[] for _ in range(n + 1)]  # cumulative bytes of the sorted segments
        self.saved: list[list[float]] = [[] for _ in range(n + 1)]  # cumulative error saved
        self.slopes: list[list[float]] = [[] for _ in range(n + 1)]
        segments: list[tuple[float, float, float]] = []  # (slope, Δbytes, Δerror)
        for k in range(n - 1, -1, -1):
            t, h = tables[k], hulls[k]
            self.base_bytes[k] = self.base_bytes[k + 1] + t[h[0]][0]
            self.base_error[k] = self.base_error[k + 1] + t[h[0]][1]
            segments += [(slope(t, a, b), t[b][0] - t[a][0], t[a][1] - t[b][1]) for a, b in itertools.pairwise(h)]
            segments.sort(key=lambda s: -s[0])  # each hull's slopes fall, so its segments stay in order
            cb = ce = 0.0
            for s, db, de in segments:
                cb, ce = cb + db, ce + de
                self.steps[k].append(cb)
                self.saved[k].append(ce)
                self.slopes[k].append(s)

    def bound(self, k: int, r: float) -> float:
        """No allocation of units k.. within r bytes has less error than this (inf: none fits)."""
        extra = r - self.base_bytes[k]
        if extra < 0:
            return float("inf")
        steps = self.steps[k]
        j = bisect.bisect_right(steps, extra)  # segments 0..j-1 fit whole
        saved = self.saved[k][j - 1] if j else 0.0
        if j < len(steps):
            saved += (extra - (steps[j - 1] if j else 0.0)) * self.slopes[k][j]
        return self.base_error[k] - saved


def allocate_exact(
    tables: Sequence[Table], budget: float, incumbent: float = float("inf"), max_states: int = MAX_STATES
) -> list[int] | None:
    """An allocation with the least Σ error among those with Σ bytes ≤ budget and Σ error ≤ incumbent
    (ties: the fewest bytes), by branch and bound over Pareto frontiers (see the module docstring).

    Returns None when no allocation has error ≤ incumbent or a frontier exceeds max_states; raises
    ConfigError when even the cheapest choice is over the budget."""
    n = len(tables)
    if any(not t for t in tables):
        raise ConfigError("allocation: a unit has no option")
    relax = _Relaxation(tables)
    if relax.base_bytes[0] > budget:
        raise ConfigError(
            f"does not fit: cheapest allocation is {relax.base_bytes[0]:,.0f} bytes (budget {budget:,.0f})"
        )
    slack = 1e-9 * sum(max(abs(e) for _, e in t) for t in tables)  # sums in another order round differently
    states: list[tuple[float, float]] = [(0.0, 0.0)]
    back: list[list[tuple[int, int]]] = []  # per unit, per state: (previous state, option)
    for k, table in enumerate(tables):
        grown = []
        for si, (b, e) in enumerate(states):
            for j, (bj, ej) in enumerate(table):
                nb, ne = b + bj, e + ej
                if nb + relax.base_bytes[k + 1] > budget:
                    continue
                if ne + relax.bound(k + 1, budget - nb) > incumbent + slack:
                    continue
                grown.append((nb, ne, si, j))
        grown.sort(key=lambda s: (s[0], s[1]))
        kept: list[tuple[float, float, int, int]] = []
        for s in grown:  # Pareto frontier: every kept state has less error than all cheaper ones
            if not kept or s[1] < kept[-1][1]:
                kept.append(s)
        if not kept or len(kept) > max_states:
            return None
        states = [(b, e) for b, e, _, _ in kept]
        back.append([(si, j) for _, _, si, j in kept])
    best = min(range(len(states)), key=lambda i: (states[i][1], states[i][0]))
    choice = [0] * n
    for k in range(n - 1, -1, -1):
        best, choice[k] = back[k][best]
    return choice


@dataclass(frozen=True)
class Allocation:
    """The answer of `allocate`: option per unit, its totals, and whether it is proven optimal."""

    choice: list[int]
    bytes: float
    error: float
    exact: bool  # the exact search finished: no allocation within the budget has less error


def allocate(
    tables: Sequence[Table], budget: float, start: Sequence[int] | None = None, max_states: int = MAX_STATES
) -> Allocation:
    """The least-error allocation within the budget: the greedy's (from `start`) unless the exact
    search finds strictly less error; exact False when the search gave up (max_states) and the
    greedy answer stands unproven. Raises ConfigError when even the cheapest choice is over."""
    greedy = allocate_greedy(tables, budget, start)
    g_bytes, g_error = totals(tables, greedy)
    exact = allocate_exact(tables, budget, incumbent=g_error, max_states=max_states)
    if exact is None:
        # the greedy's own allocation is never pruned, so None means a frontier grew beyond max_states
        return Allocation(greedy, g_bytes, g_error, False)
    e_bytes, e_error = totals(tables, exact)
    if e_error < g_error - 1e-12 * abs(g_error):
        return Allocation(exact, e_bytes, e_error, True)
    return Allocation(greedy, g_bytes, g_error, True)
