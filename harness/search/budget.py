"""Equal-bytes search: move a format's rate knob until the artifact is as large as the budget allows.

Each format names its rate knob (`Format.rate_knob`, per instance). The search treats the counted
bytes (final bytes, plus the decoder's code bytes when `budget.count_code`) as a monotone function
of the knob, in whichever direction the measurements show. A knob that declares its cheap end
(`Knob.cheap`) is probed there first: a budget that end is over does not fit, after that one probe.
It brackets the budget by stepping
geometrically from the format's default, then narrows the bracket by the secant rule on
(knob, log bytes) — log-knob for knobs with a log scale, since H(q) ≈ b − log2 k + const —
safeguarded by bisection. Integer knobs (bits, codebook size, number of codebooks) move over the
integers and stop when no integer is left inside the bracket. Every probe is encode + write only
(bytegolf.search.prober), cached by knob value; nothing is evaluated during the search.

A landing is the probe with the most counted bytes ≤ budget. Its status:
  ok            within `tol` of the budget (counted ≥ (1 − tol)·budget)
  short         fits, but the probes ran out or the integer knob has no value in between
  at_limit      the knob cannot reach the budget: the format cannot use this much budget. Bytes past
                a knob's sweet spot need not buy quality (a clip below ~4σ cuts into the weights), so
                where the probes carry an output error the landing is the fitting probe with the least
                (ties: the most bytes), else the one with the most bytes
  does_not_fit  even the smallest setting is over the budget (reported, never raised)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bytegolf.errors import ConfigError

log = logging.getLogger("bytegolf")


@dataclass(frozen=True)
class Knob:
    """A rate knob's search range: [lo, hi], log or linear steps, integer or continuous; cheap ("lo" or
    "hi", None: unknown) names the end toward which the bytes fall monotonically, so that end is the
    knob's smallest setting and one probe there tells whether a budget can be reached at all."""

    name: str
    lo: float
    hi: float
    log: bool = True
    integer: bool = False
    cheap: str | None = None

    @property
    def cheapest(self) -> float | None:
        """The value with the fewest bytes (None where the knob does not say which end that is)."""
        return {"lo": self.lo, "hi": self.hi}.get(self.cheap) if self.cheap else None

    def snap(self, x: float) -> float:
        """x clamped to the range, rounded to an integer or to 5 significant digits."""
        x = min(max(x, self.lo), self.hi)
        return float(round(x)) if self.integer else float(f"{x:.5g}")

    def t(self, x: float) -> float:
        """Search coordinate."""
        return math.log(x) if self.log else x

    def x(self, t: float) -> float:
        return math.exp(t) if self.log else t

    def value(self, x: float) -> int | float:
        """The value as the format takes it."""
        return round(x) if self.integer else float(x)


# Ranges for the knobs the built-in formats declare; an unknown knob gets one from its default.
KNOBS: dict[str, Knob] = {
    # SDClip clips each row at clip_k·std: below ~3σ it cuts into the bulk of the weights, so bytes
    # still rise while quality collapses (int6 at k=1.6: rel MSE 0.14); the search stops at 3.
    # Each declares its cheap end: a wider clip, a larger ECVQ rate weight, fewer bits, centroids,
    # codebooks, outliers or rank all store fewer bytes.
    "clip_k": Knob("clip_k", 3.0, 256.0, cheap="hi"),
    "lam": Knob("lam", 1e-4, 100.0, cheap="hi"),
    "bits": Knob("bits", 2, 8, log=False, integer=True, cheap="lo"),
    "codebook_size": Knob("codebook_size", 2, 65536, integer=True, cheap="lo"),
    # additive: a real number, ⌊x⌋ AQLM codebooks plus a partial one on a share x − ⌊x⌋ of the rows,
    # so bytes move continuously (one whole codebook is ≈2.35 MB on the 17M-parameter model)
    "num_codebooks": Knob("num_codebooks", 1, 16, log=False, cheap="lo"),
    "fraction": Knob("fraction", 1e-4, 0.5, cheap="lo"),
    "rank": Knob("rank", 1, 512, integer=True, cheap="lo"),
}


def setting(params: dict[str, Any], name: str) -> Any:
    """A format setting by its dotted name ("base.clip_k": the clip of sparse_outlier's base); None if unset."""
    node: Any = params
    for part in name.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def with_setting(params: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    """params with the setting at a dotted name replaced (nested dicts copied, the input untouched)."""
    head, _, rest = name.partition(".")
    if not rest:
        return {**params, head: value}
    inner = params.get(head)
    if not isinstance(inner, dict):
        raise ConfigError(f"knob {name}: {head} is not a nested setting of this format (it is {inner!r})")
    return {**params, head: with_setting(inner, rest, value)}


def knob_for(name: str | None, default: Any, override: dict[str, Any] | None = None) -> Knob | None:
    """The search range of a knob: from KNOBS (by its last name part: base.clip_k ranges as clip_k),
    else inferred from the default's type (no cheap end: the search measures the direction); override
    (keys lo, hi, log, integer, cheap) wins."""
    if name is None:
        return None
    knob = KNOBS.get(name) or KNOBS.get(name.rsplit(".", 1)[-1])
    knob = replace(knob, name=name) if knob is not None else None
    if knob is None:
        if isinstance(default, bool) or not isinstance(default, (int, float)) or default <= 0:
            raise ConfigError(
                f"rate knob {name!r} (default {default!r}) has no known range; set compare.knobs.<format>.lo/hi"
            )
        if isinstance(default, int):
            knob = Knob(name, 1, max(16, default * 64), integer=True)
        else:
            knob = Knob(name, default / 256, default * 256)
    if override:
        unknown = set(override) - {"lo", "hi", "log", "integer", "cheap"}
        if unknown:
            keys = "name, lo, hi, log, integer, cheap"
            raise ConfigError(f"knob settings for {name}: unknown keys {sorted(unknown)} (use {keys})")
        knob = replace(knob, **{k: v for k, v in override.items()})
    if not knob.lo < knob.hi or (knob.log and knob.lo <= 0):
        raise ConfigError(f"knob {name}: need 0 < lo < hi on a log scale (lo < hi otherwise), got {knob}")
    if knob.cheap not in (None, "lo", "hi"):
        raise ConfigError(
            f"knob {name}: cheap must be lo, hi or null (the end with the fewest bytes), got {knob.cheap!r}"
        )
    return knob


@dataclass
class Probe:
    """One encode + write at a knob value (final_bytes None: the value is invalid for the format)."""

    value: float
    final_bytes: int | None
    code_bytes: int = 0
    seconds: float = 0.0
    error: str = ""
    output_error: float | None = None  # the encoding's aggregate output error, where Gram matrices exist
    rel_mse: float | None = None  # the encoding's parameter-weighted rel MSE

    def counted(self, count_code: bool) -> int | None:
        if self.final_bytes is None:
            return None
        return self.final_bytes + (self.code_bytes if count_code else 0)


@dataclass
class Landing:
    """Where the search for one budget ended."""

    budget: int
    status: str
    knob: str | None
    value: float | None
    final_bytes: int | None
    counted_bytes: int | None
    code_bytes: int
    ratio: float  # counted / budget
    probes: int  # distinct knob values this budget's search asked for (the encoder's cache serves repeats)
    trace: list[tuple[float, int | None]] = field(default_factory=list)  # (value, counted) in probe order

    def describe(self) -> str:
        where = f"{self.knob}={self.value:g}" if self.knob else "fixed settings"
        if self.status == "does_not_fit":
            return f"does not fit: smallest {self.counted_bytes:,} B at {where} ({self.ratio:.4f} × budget)"
        return f"{where}: {self.counted_bytes:,} B = {self.ratio:.4f} × budget [{self.status}, {self.probes} probes]"


Measure = Callable[[float], Probe]
Estimate = Callable[[float], "float | None"]
AIMED = 3  # probes aimed by the estimate before the bracketing search takes over
CLEARLY_UNDER = 0.8  # the cheapest end is not probed where the scaled estimate puts it under this share of the budget


def _moves(estimate: Estimate, knob: Knob) -> bool:
    """Whether the estimate is known at both ends of the knob's range and differs between them."""
    lo, hi = estimate(knob.lo), estimate(knob.hi)
    return lo is not None and hi is not None and lo != hi


def _scaled(seen: dict[float, Probe], estimate: Estimate, x: float, target: float, count_code: bool) -> float | None:
    """The estimate at x times measured / estimated bytes of the known probe nearest the target in log bytes
    (1 without one): what a probe at x would count, as the nearest measurement corrects the formula."""
    ratio = 1.0
    valid = [(v, b) for v, p in seen.items() if (b := p.counted(count_code)) is not None and b > 0]
    if valid:
        v, b = min(valid, key=lambda vb: abs(math.log(vb[1] / target)))
        at = estimate(v)
        if not at:
            return None
        ratio = b / at
    e = estimate(x)
    return None if e is None else ratio * e


def _aim(seen: dict[float, Probe], knob: Knob, estimate: Estimate, target: float, count_code: bool) -> float | None:
    """The knob value with the most scaled estimated bytes (`_scaled`) at or under the target, by bisection
    over the knob's range (the estimate monotone in the knob); None where the estimate is unknown."""
    ta, tb = knob.t(knob.lo), knob.t(knob.hi)
    fa, fb = (_scaled(seen, estimate, knob.x(t), target, count_code) for t in (ta, tb))
    if fa is None or fb is None or fa == fb:
        return None
    if fa > fb:  # bytes fall as the knob grows: bisect with the fitting end first either way
        ta, tb, fa, fb = tb, ta, fb, fa
    if fa > target:
        return knob.snap(knob.x(ta))  # even the cheapest end is predicted over: probe it
    if fb <= target:
        return knob.snap(knob.x(tb))
    for _ in range(40):
        tm = (ta + tb) / 2
        fm = _scaled(seen, estimate, knob.x(tm), target, count_code)
        if fm is None:
            return None
        ta, tb = (tm, tb) if fm <= target else (ta, tm)
    x = knob.x(ta)  # the fitting side; an integer knob rounds toward it
    if knob.integer:
        x = math.floor(x + 1e-9) if tb > ta else math.ceil(x - 1e-9)
    return knob.snap(x)


def _predict(seen: dict[float, Probe], knob: Knob, target: float, count_code: bool) -> float | None:
    """The knob value where the two known probes nearest the target in log bytes say the bytes reach it: the
    secant on (knob.t, log bytes), extrapolated where both lie on one side, within the range; None when they
    do not tell (fewer than two valid probes, or equal bytes)."""
    valid = [(knob.t(x), math.log(max(b, 1))) for x, p in seen.items() if (b := p.counted(count_code)) is not None]
    near = sorted(valid, key=lambda tl: abs(tl[1] - math.log(target)))[:2]
    if len(near) < 2 or near[0][1] == near[1][1] or near[0][0] == near[1][0]:
        return None
    (t0, l0), (t1, l1) = near
    t = t0 + (math.log(target) - l0) * (t1 - t0) / (l1 - l0)
    return knob.snap(knob.x(min(max(t, knob.t(knob.lo)), knob.t(knob.hi))))


def _direction(seen: dict[float, Probe], count_code: bool) -> int:
    """+1 where the known probes' bytes grow with the knob, -1 where they fall, 0 where fewer than two valid
    probes (or equal bytes at both ends of them) leave it open."""
    valid = sorted((x, p.counted(count_code)) for x, p in seen.items() if p.final_bytes is not None)
    if len(valid) < 2 or valid[0][1] == valid[-1][1]:
        return 0
    return 1 if valid[-1][1] > valid[0][1] else -1


def search(
    measure: Measure,
    knob: Knob | None,
    start: float | None,
    budget: int,
    count_code: bool = False,
    tol: float = 0.005,
    max_probes: int = 24,
    known: dict[float, Probe] | None = None,
    estimate: Estimate | None = None,
) -> Landing:
    """Find the knob value whose counted bytes are ≤ budget and as large as possible.

    measure(value) encodes and writes at that value (cached by the caller, so values shared by the
    searches for several budgets are encoded once); knob None: the format has no rate knob and its
    one setting fits or not. max_probes bounds the distinct values this search asks for. known: probes
    measured before (another budget's search of the same system): they give the direction and the bracket
    where they can, so this search asks only for what they leave open. estimate(value): the bytes predicted
    without encoding (the formats' nominal bits): the first probes go where it, scaled by what the probe
    nearest the budget measured against it, meets the budget (`_aim`), up to AIMED of them."""
    seen: dict[float, Probe] = dict(known or {})
    trace: list[tuple[float, int | None]] = []

    def ev(x: float) -> int | None:
        x = knob.snap(x) if knob else x
        if x not in seen:
            seen[x] = measure(x)
            trace.append((x, seen[x].counted(count_code)))
        return seen[x].counted(count_code)

    def landing(status: str | None = None) -> Landing:
        valid = [(x, p) for x, p in seen.items() if p.final_bytes is not None]
        if not valid:
            errs = "; ".join(f"{x:g}: {p.error}" for x, p in seen.items())
            raise ConfigError(f"no {knob.name if knob else 'setting'} value could be encoded ({errs})")
        fits = [(x, p) for x, p in valid if p.counted(count_code) <= budget]
        if fits:
            x, p = max(fits, key=lambda xp: (xp[1].counted(count_code), -xp[0]))
            c = p.counted(count_code)
            st = "ok" if c >= (1 - tol) * budget else (status or "short")
            if st == "at_limit" and all(q.output_error is not None for _, q in fits):
                x, p = min(fits, key=lambda xp: (xp[1].output_error, -xp[1].counted(count_code), xp[0]))
                c = p.counted(count_code)
        else:
            x, p = min(valid, key=lambda xp: xp[1].counted(count_code))
            c, st = p.counted(count_code), "does_not_fit"
        name = knob.name if knob else None
        return Landing(budget, st, name, x, p.final_bytes, c, p.code_bytes, c / budget, len(trace), trace)

    if knob is None or start is None:
        ev(0.0 if start is None else start)
        return landing()

    # The knob's cheapest end first (cached by the caller, so one probe serves every budget): over the
    # budget there, nothing on the knob fits and the search ends after this one probe.
    cheapest, bc = knob.cheapest, None
    if estimate is not None and not _moves(estimate, knob):
        estimate = None  # the estimate does not follow this knob (a clip moves entropy, not nominal bits)
    if cheapest is not None:
        predicted = _scaled(seen, estimate, cheapest, budget, count_code) if estimate else None
        if predicted is None or predicted > CLEARLY_UNDER * budget:  # else predicted well under: no probe
            bc = ev(cheapest)
            if bc is not None and bc > budget:
                return landing()

    def landed() -> bool:
        return any(
            (b := p.counted(count_code)) is not None and (1 - tol) * budget <= b <= budget for p in seen.values()
        )

    target = budget * (1 - tol / 2)
    for _ in range(AIMED if estimate else 0):  # where the scaled estimate says the bytes meet the budget
        guess = None if landed() else _aim(seen, knob, estimate, target, count_code)
        if guess is None or guess in seen or ev(guess) is None:
            break
    if landed():
        return landing()

    x0 = knob.snap(start)
    unit = 0.7 if knob.log else 1.0
    direction = _direction(seen, count_code)  # from the probes known already (other budgets' searches)
    if direction and not landed() and (guess := _predict(seen, knob, target, count_code)) is not None:
        ev(guess)  # the known probes' secant through the budget: the bracket closes around it in a probe or two
    if direction == 0:
        b0 = ev(x0)
        if b0 is None:  # the default itself is invalid here: restart from the middle of the range
            x0 = knob.snap(knob.x((knob.t(knob.lo) + knob.t(knob.hi)) / 2))
            b0 = ev(x0)
            if b0 is None:
                return landing()
        # Direction (+1: bytes grow with the knob): probe out on both sides until the bytes differ.
        for mult in (1, -1, 2, -2, 4, -4, 8, -8):
            x1 = knob.snap(knob.x(knob.t(x0) + mult * unit))
            b1 = ev(x1) if x1 != x0 else None
            if b1 is not None and b1 != b0:
                direction = 1 if (b1 - b0) * (x1 - x0) > 0 else -1
                break
        if direction == 0:
            log.info("%s: the bytes do not change over the probed values; one setting", knob.name)
            return landing("at_limit" if b0 <= budget else None)

    def bracket() -> tuple[tuple[float, int] | None, tuple[float, int] | None]:
        """(fitting probe with most bytes, non-fitting probe with fewest bytes)."""
        valid = [(x, p.counted(count_code)) for x, p in seen.items() if p.final_bytes is not None and x not in aside]
        fit = [xb for xb in valid if xb[1] <= budget]
        over = [xb for xb in valid if xb[1] > budget]
        # ties in bytes (a flat stretch of the knob): the probe nearest the other side, so the bracket shrinks
        return (
            max(fit, key=lambda xb: (xb[1], direction * xb[0])) if fit else None,
            min(over, key=lambda xb: (xb[1], direction * xb[0])) if over else None,
        )

    # Expand geometrically from the best probe so far until the budget is bracketed or the range ends. The
    # cheapest end's probe stays aside until the expansion gets there: a bracket out to the range's end
    # would leave the narrowing many more probes than the expansion's doubling steps take.
    aside = {cheapest} - {x0, None}
    edge_more = knob.hi if direction > 0 else knob.lo  # the end with the most bytes
    edge_less = knob.lo if direction > 0 else knob.hi
    step = unit
    while len(trace) < max_probes:
        fit, over = bracket()
        if (fit and over) or (fit and fit[1] >= (1 - tol) * budget):
            break
        x_from, edge = (fit[0], edge_more) if fit else (over[0], edge_less)
        if x_from == edge:
            return landing("at_limit" if fit else None)  # the knob goes no further
        sign = 1 if edge > x_from else -1
        x_new = knob.snap(knob.x(knob.t(x_from) + sign * step))
        if x_new == x_from and knob.integer:
            x_new = knob.snap(x_from + sign)
        if x_new in aside:  # the expansion reached the cheapest end, probed already
            aside.clear()
            continue
        if x_new in seen and seen[x_new].final_bytes is not None:
            if x_new == edge:  # the range's end is known already (bytes need not be monotone there)
                return landing("at_limit" if fit else None)
            step *= 2  # already known (and on the same side): go further
            continue
        for _ in range(4):  # invalid there (e.g. more centroids than sub-vectors): come back halfway
            if x_new == x_from or ev(x_new) is not None:
                break
            x_new = knob.snap(knob.x((knob.t(x_from) + knob.t(x_new)) / 2))
        if x_new == x_from or x_new not in seen or seen[x_new].final_bytes is None:
            return landing("at_limit" if fit else None)  # x_from is as far as the knob goes
        step *= 2

    aside.clear()
    # Narrow the bracket: secant on (t, log bytes) aimed inside the tolerance, bisection as safeguard.
    last_side = same_side = 0
    while len(trace) < max_probes:
        fit, over = bracket()
        if fit is None or over is None or fit[1] >= (1 - tol) * budget:
            break
        tf, to = knob.t(fit[0]), knob.t(over[0])
        lf, lo_ = math.log(max(fit[1], 1)), math.log(over[1])
        frac = (math.log(target) - lf) / (lo_ - lf) if lo_ > lf else 0.5
        frac = 0.5 if same_side >= 2 else min(max(frac, 0.1), 0.9)
        x_new = knob.snap(knob.x(tf + frac * (to - tf)))
        lo_x, hi_x = sorted((fit[0], over[0]))
        if not lo_x < x_new < hi_x:
            mid = knob.snap(knob.x((tf + to) / 2))
            x_new = mid if lo_x < mid < hi_x else knob.snap(fit[0] + (1 if over[0] > fit[0] else -1))
            if not lo_x < x_new < hi_x:
                break  # nothing representable left between the two
        if x_new in seen:
            break  # already probed: the bracket no longer shrinks
        b = ev(x_new)
        if b is None:
            break
        side = 1 if b <= budget else -1
        same_side = same_side + 1 if side == last_side else 1
        last_side = side
    return landing()
