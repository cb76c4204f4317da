"""The equal-bytes search: synthetic rate curves (exact answers) and the scalar clip_k knob on a tiny model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bytegolf.search import budget as search
from bytegolf.search.budget import KNOBS, Knob, Probe
from bytegolf.search.prober import Encoder, Workspace
from tests.integration.test_run import TINY_ARGS

CLIP = Knob("clip_k", 1.0, 64.0)  # a continuous log knob over the range these curves are drawn on

CONFIG_DIR = Path(__file__).resolve().parents[2] / "experiments"


class Curve:
    """A cached measure over a bytes(knob) function, counting real evaluations."""

    def __init__(self, fn, invalid_above: float = math.inf) -> None:
        self.fn, self.invalid_above, self.calls = fn, invalid_above, []

    def __call__(self, x: float) -> Probe:
        self.calls.append(x)
        if x > self.invalid_above:
            return Probe(x, None, 0, 0.0, "too large")
        return Probe(x, int(self.fn(x)), 1000, 0.0)


def clip_like(k: float) -> float:
    return 1e6 * (8 - math.log2(k)) / 8  # entropy falls by one bit per doubling of the clip


@pytest.mark.parametrize("budget", [900_000, 600_000, 300_000])
def test_continuous_knob_lands_within_tolerance_under_budget(budget: int) -> None:
    m = Curve(clip_like)
    land = search.search(m, CLIP, 12.85, budget, tol=0.005)
    assert land.status == "ok"
    assert (1 - 0.005) * budget <= land.counted_bytes <= budget
    assert land.counted_bytes == int(clip_like(land.value))
    assert land.probes <= 8 and len(m.calls) == land.probes


def test_count_code_adds_the_code_bytes() -> None:
    land = search.search(Curve(clip_like), CLIP, 12.85, 600_000, count_code=True, tol=0.005)
    assert land.counted_bytes == land.final_bytes + 1000 <= 600_000
    assert land.counted_bytes >= 0.995 * 600_000


def test_out_of_reach_budgets_are_statuses_not_errors() -> None:
    low = search.search(Curve(clip_like), CLIP, 12.85, 100_000)
    assert low.status == "does_not_fit" and low.value == 64.0 and low.counted_bytes == 250_000
    assert low.ratio == pytest.approx(2.5)
    high = search.search(Curve(clip_like), CLIP, 12.85, 2_000_000)
    assert high.status == "at_limit" and high.value == 1.0 and high.ratio == pytest.approx(0.5)


def test_out_of_reach_budget_lands_on_the_least_output_error() -> None:
    """When the knob cannot reach the budget, bytes past the sweet spot need not buy quality: a probe
    with an output error lands on the least one among those that fit, not on the most bytes."""

    def err(k: float) -> float:  # rounding error falls with the clip, clipping error rises below k = 5
        return (k / 5) ** 2 + (5 / k) ** 4

    def measure(x: float) -> Probe:
        return Probe(x, int(clip_like(x)), 0, 0.0, output_error=err(x))

    land = search.search(measure, CLIP, 12.85, 2_000_000)
    fitting = [x for x, b in land.trace if b is not None and b <= 2_000_000]
    assert land.status == "at_limit" and len(fitting) >= 3
    assert land.value == min(fitting, key=err) != max(fitting, key=clip_like)
    assert land.counted_bytes == int(clip_like(land.value))
    # without an output error, the same search lands on the most bytes, as before
    plain = search.search(Curve(clip_like), CLIP, 12.85, 2_000_000)
    assert plain.status == "at_limit" and plain.value == max(fitting, key=clip_like)
    # a budget in reach ignores the error: the most bytes within the tolerance
    assert search.search(measure, CLIP, 12.85, 600_000).status == "ok"


def test_integer_knob_takes_the_largest_setting_that_fits() -> None:
    bits = Curve(lambda b: 10_000 * b)
    land = search.search(bits, KNOBS["bits"], 6, 45_000)
    assert (land.status, land.value, land.counted_bytes) == ("short", 4.0, 40_000)
    assert search.search(bits, KNOBS["bits"], 6, 80_000).status == "ok"
    assert search.search(bits, KNOBS["bits"], 6, 15_000).status == "does_not_fit"


def test_invalid_knob_values_bound_the_range() -> None:
    m = Curve(lambda k: 1000 * math.log2(k) + 5 * k, invalid_above=300)
    land = search.search(m, KNOBS["codebook_size"], 256, 8000)
    assert land.status == "ok" and 0.995 * 8000 <= land.counted_bytes <= 8000
    top = search.search(m, KNOBS["codebook_size"], 256, 100_000)
    assert top.status == "at_limit" and 256 <= top.value <= 300


def test_knob_ranges_and_overrides() -> None:
    assert search.knob_for(None, None) is None
    assert search.knob_for("clip_k", 12.85) == KNOBS["clip_k"] == Knob("clip_k", 3.0, 256.0, cheap="hi")
    assert search.knob_for("clip_k", 12.85, {"lo": 2.0}).lo == 2.0
    assert search.knob_for("depth", 8) == Knob("depth", 1, 512, integer=True)  # unknown knob: from its default
    assert search.knob_for("depth", 8).cheapest is None and KNOBS["bits"].cheapest == 2
    assert search.knob_for("depth", 8, {"cheap": "lo"}).cheapest == 1
    with pytest.raises(Exception, match="unknown keys"):
        search.knob_for("clip_k", 12.85, {"low": 2.0})
    with pytest.raises(Exception, match="cheap must be lo, hi or null"):
        search.knob_for("clip_k", 12.85, {"cheap": "left"})


@pytest.mark.parametrize(
    ("knob", "start", "fn"),
    [(KNOBS["clip_k"], 12.85, lambda k: 1000 + clip_like(k)), (KNOBS["bits"], 6, lambda b: 10_000 * b)],
    ids=["clip_k", "bits"],
)
def test_an_unreachable_budget_is_known_after_one_probe_at_the_cheapest_end(knob, start, fn) -> None:
    """A knob that declares its cheap end is probed there first: a budget over it ends the search at once
    (before: 4 to 5 probes walking out from the default)."""
    m = Curve(fn)
    land = search.search(m, knob, start, 999)
    assert land.status == "does_not_fit" and land.probes == 1 and m.calls == [knob.cheapest]
    assert land.value == knob.cheapest and land.counted_bytes == int(fn(knob.cheapest))
    assert land.describe().startswith(f"does not fit: smallest {int(fn(knob.cheapest)):,} B")


def test_the_cheapest_probe_serves_every_budget_and_costs_reachable_ones_little() -> None:
    """With the encoder's cache shared by the searches, the cheapest end is measured once per compare, and a
    reachable budget lands as before (the end's probe is kept out of the bracket until the expansion gets there)."""
    m = Curve(lambda k: 1000 + clip_like(k))
    cache: dict[float, Probe] = {}

    def cached(x: float) -> Probe:
        if x not in cache:
            cache[x] = m(x)
        return cache[x]

    lands = [search.search(cached, KNOBS["clip_k"], 12.85, b) for b in (300_000, 600_000, 999)]
    assert [x.status for x in lands] == ["ok", "ok", "does_not_fit"]
    assert m.calls.count(256.0) == 1 and m.calls[0] == 256.0
    assert lands[0].probes <= 7 and lands[1].probes <= 8


def test_known_probes_of_other_budgets_leave_a_search_only_what_they_leave_open() -> None:
    """The compare's default budgets, searched in turn on the default model's int6 bytes-vs-clip shape with the
    probes of the earlier searches known (their secant through the budget probed first): each lands as a fresh
    search does, in fewer new probes."""
    budgets = (16_000_000, 4_000_000, 3_000_000, 2_000_000)

    def int6(k: float) -> float:  # about the default model's GPTQ int6 artifact: 6.9 MB at k 12.85, -1 bit/doubling
        return 17e6 / 8 * (8.3 - math.log2(k))

    fresh, shared = Curve(int6), Curve(int6)
    cache: dict[float, Probe] = {}

    def cached(x: float) -> Probe:
        if x not in cache:
            cache[x] = shared(x)
        return cache[x]

    alone = [search.search(fresh, KNOBS["clip_k"], 12.85, b) for b in budgets]
    fresh.calls.clear()
    together = [search.search(cached, KNOBS["clip_k"], 12.85, b, known=cache) for b in budgets]
    assert [x.status for x in together] == [x.status for x in alone] == ["at_limit", "ok", "ok", "ok"]
    for t in together[1:]:
        assert (1 - 0.005) * t.budget <= t.counted_bytes <= t.budget  # as close as a fresh search lands
    new, old = [x.probes for x in together], [x.probes for x in alone]
    # measured: fresh 5, 11, 11, 11; with the earlier budgets' probes known 5, 7, 2, 1
    assert new[1] < old[1] and max(new[2:]) <= 3, (new, old)
    assert sum(new) == len(shared.calls) == len(cache)  # probes counted once, where they were asked for


def additive_like(x: float) -> float:
    """About the default model's additive bytes: 2.86 MB at one codebook, +2.3 MB per codebook, entropy coding
    taking 5% off the codes, with a ripple where the partial codebook's size steps."""
    return 0.95 * (0.55e6 + 2.3e6 * x) + 8e3 * math.sin(9 * x)


def nominal(x: float) -> float:
    return 0.55e6 + 2.3e6 * x  # the formula: codes and codebooks at their nominal width, no ripple


@pytest.mark.parametrize("budget", [16_000_000, 4_000_000, 3_000_000])
def test_an_estimate_aims_the_first_probes_and_a_landing_takes_at_most_three(budget: int) -> None:
    """With the formula's bytes known before encoding, a search probes where the formula, scaled by the nearest
    measurement, meets the budget: it lands as the bracketing search does (within tol, under the budget) in at
    most 3 probes, and probes the cheapest end only where the formula does not put it well under the budget."""
    knob = KNOBS["num_codebooks"]
    alone, aimed = Curve(additive_like), Curve(additive_like)
    plain = search.search(alone, knob, 2.0, budget)
    land = search.search(aimed, knob, 2.0, budget, estimate=nominal)
    assert land.status == plain.status == "ok"
    assert (1 - 0.005) * budget <= land.counted_bytes <= budget
    assert land.probes == len(aimed.calls) <= 3 < plain.probes, (aimed.calls, alone.calls)
    assert (knob.lo in aimed.calls) == (nominal(knob.lo) > 0.8 * budget)  # 2.85 MB: near 3 MB, so probed


def test_an_estimate_that_does_not_move_with_the_knob_is_not_used() -> None:
    """A clip changes entropy, not nominal bits: the search ignores a flat estimate and probes as without one."""
    with_flat, without = Curve(clip_like), Curve(clip_like)
    a = search.search(with_flat, CLIP, 12.85, 600_000, estimate=lambda x: 1e6)
    b = search.search(without, CLIP, 12.85, 600_000)
    assert with_flat.calls == without.calls and a.value == b.value


def test_an_estimate_over_the_budget_at_the_cheapest_end_probes_it_and_stops() -> None:
    m = Curve(additive_like)
    land = search.search(m, KNOBS["num_codebooks"], 2.0, 1_000_000, estimate=nominal)
    assert land.status == "does_not_fit" and m.calls == [1.0]


@pytest.mark.parametrize(
    ("name", "params", "knob", "values"),
    [
        ("additive", {"max_rounds": 0, "kmeans_iters": 3}, "num_codebooks", (1.0, 1.25, 1.5)),
        ("clustered", {"iters": 3}, "codebook_size", (64, 96, 128)),
        ("scalar", {"bits": 6}, "clip_k", (30.0, 45.0, 60.0)),
        ("sparse_outlier", {"base": {"name": "scalar", "bits": 4}}, "base.clip_k", (12.0, 20.0, 30.0)),
        ("basis_delta", {"rank": 8, "residual": {"name": "scalar", "bits": 6}}, "residual.clip_k", (40.0, 60.0, 90.0)),
    ],
)
def test_the_scaled_prediction_is_within_three_percent_on_the_default_models_tensors(
    name: str, params: dict, knob: str, values: tuple, tmp_path: Path
) -> None:
    """The search's prediction (`_scaled`: predict_bits scaled by measured / predicted bytes at the nearest
    probe) on three of the default model's matrices through the probe codec ans: one measurement predicts the
    neighbouring settings' bytes within 3%. Unscaled, the nominal counts (additive, clustered) are 3-21% high
    (entropy coding takes that); the clip knobs' entropy of round-to-nearest codes is what the clip moves."""
    from safetensors.torch import load_file

    from bytegolf.artifact import file as artifact
    from bytegolf.artifact import layout
    from bytegolf.formats import EncodeContext, get_format

    state = load_file(Path(__file__).resolve().parents[2] / "results" / "default" / "model.safetensors")
    names = ("blocks.0.mlp.fc.weight", "blocks.4.attn.c_q.weight", "blocks.8.mlp.proj.weight")
    tensors = {k: state[k] for k in names}
    last = knob.rpartition(".")[2]

    def fmt_at(v: float):
        return get_format(name, **search.with_setting(params, knob, KNOBS[last].value(v)))

    def measured(v: float) -> Probe:
        fmt = fmt_at(v)
        units = [fmt.encode({k: t}, EncodeContext()) for k, t in tensors.items()]
        bytes_ = artifact.write(tmp_path / "p.bgz", units, "ans", {}, layout.LayoutConfig()).final_bytes
        return Probe(v, bytes_)

    def predicted(v: float) -> float:
        return sum(fmt_at(v).predict_bits({k: t}) for k, t in tensors.items()) / 8

    first, *rest = values
    seen = {first: measured(first)}
    for v in rest:
        actual = measured(v).final_bytes
        guess = search._scaled(seen, predicted, v, actual, False)
        assert guess == pytest.approx(actual, rel=0.03), (v, guess, actual)
        if name in ("additive", "clustered"):
            assert predicted(v) > actual
        else:
            assert predicted(v) < predicted(first)  # a wider clip: fewer bits


# ------------------------------------------------------------------ the real encoder on a tiny model


@pytest.fixture(scope="module")
def tiny_cfg(tiny_bundle: Path):
    from hydra import compose, initialize_config_dir

    from bytegolf import settings

    settings.register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("run", overrides=[f"bundle={tiny_bundle}", *TINY_ARGS, "format.bits=4", "codec=zstd"])


def _encoder(cfg, ws, tmp: Path, cache: Path | None = None) -> Encoder:
    fmt = OmegaConf.to_container(cfg.format, resolve=True)
    codec = OmegaConf.to_container(cfg.codec, resolve=True)
    name, codec_name = fmt.pop("name"), codec.pop("name")
    return Encoder(ws, name, fmt, CLIP, codec_name, codec, tmp, cache)


def test_search_lands_within_one_percent_on_a_tiny_model(tiny_cfg, tmp_path: Path) -> None:
    ws = Workspace(tiny_cfg)
    cache = tmp_path / "probes.json"
    enc = _encoder(tiny_cfg, ws, tmp_path, cache)
    big, small = enc(3.0).final_bytes, enc(30.0).final_bytes
    assert big > small > 0  # a larger clip multiple gives fewer bytes
    # each probe carries the encoding's output error as a run would report it (4 bits: clipping at 3σ
    # costs less than rounding with a step of 30σ/7)
    assert 0 < enc(3.0).output_error < enc(30.0).output_error < 1
    budget = int(0.5 * big + 0.5 * small)
    land = search.search(enc, CLIP, 12.85, budget, tol=0.01)
    assert land.status == "ok", land
    assert 0.99 * budget <= land.final_bytes <= budget
    assert land.ratio == pytest.approx(land.final_bytes / budget)
    # the landed setting reproduces its bytes from scratch, and the probe cache survives a restart
    again = _encoder(tiny_cfg, ws, tmp_path)
    assert again(land.value).final_bytes == land.final_bytes
    reloaded = _encoder(tiny_cfg, ws, tmp_path, cache)
    assert set(reloaded.cache) >= {x for x, _ in land.trace} | {3.0, 30.0}
    # an impossible budget is a does-not-fit landing, not an exception
    none = search.search(enc, CLIP, 12.85, 500)
    assert none.status == "does_not_fit" and none.counted_bytes > 500 and none.value == 64.0
    # the shipped clip_k knob knows its cheap end: a fresh encoder encodes once to say so
    fresh = _encoder(tiny_cfg, ws, tmp_path)
    one = search.search(fresh, KNOBS["clip_k"], 12.85, 500)
    assert one.status == "does_not_fit" and one.probes == 1 and list(fresh.cache) == [256.0]
    assert one.counted_bytes == fresh.cache[256.0].final_bytes > 500


def test_out_of_reach_budget_on_a_non_monotone_knob_stops() -> None:
    """The default model's int6 bytes against clip_k (measured): they fall again below k = 1.5, and
    16 MB is out of reach, so the edge k = 1 is probed before the best fit; the search must stop."""
    measured = {12.85: 6_890_804, 25.877: 4_881_617, 6.3811: 8_973_909, 1.5736: 12_050_561, 1.0: 11_583_272}

    def bytes_at(k: float) -> float:
        near = min(measured, key=lambda m: abs(math.log(m / k)))
        return measured[near] if abs(math.log(near / k)) < 0.05 else clip_like(k) * 12 if k > 1.5 else 11_600_000

    land = search.search(Curve(bytes_at), CLIP, 12.85, 16_000_000)
    assert land.status == "at_limit"
    assert land.counted_bytes == max(int(bytes_at(x)) for x, _ in land.trace)
    assert land.probes <= 24


def test_a_flat_stretch_of_a_continuous_knob_ends_the_search() -> None:
    """Bytes constant over stretches of the knob (a partial codebook that rounds to the same size)
    used to keep the narrowing loop asking for a value it had already probed, forever."""
    from bytegolf.search.budget import Knob, Probe, search

    calls = []

    def measure(x: float) -> Probe:
        calls.append(x)
        assert len(calls) < 200, "the search does not end"
        return Probe(x, 1000 * int(x) + 7)

    landing = search(measure, Knob("num_codebooks", 1, 16, log=False), 2.0, 2500, tol=0.0001)
    assert landing.final_bytes == 2007 and landing.status == "short" and len(calls) <= 24


def test_probes_of_processes_that_no_longer_run_are_removed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from bytegolf.search.prober import remove_stale_probes

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f".probe-scalar-{int(dead.stdout)}.bgz"
    live = tmp_path / f".probe-scalar-{os.getpid()}.bgz"
    other = tmp_path / "scalar_abc.json"
    for p in (gone, live, other):
        p.write_bytes(b"x" * 100)
    assert remove_stale_probes(tmp_path) == [gone]
    assert not gone.exists() and live.exists() and other.exists()
    assert remove_stale_probes(tmp_path / "missing") == []
