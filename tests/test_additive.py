"""Additive (AQLM) format: exact roundtrips, beam search, monotone rounds, shared codebooks, bit formulas."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from formats.additive import Additive, aqlm_bits, beam_search, dedupe_dead
from formats.base import EncodeContext, get_format
from formats.clustered import Clustered
from harness.errors import ConfigError
from harness.metrics import rel_mse
from tests.conftest import roundtrip

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def output_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    d = w.float() - w_hat.float()
    return float(torch.trace(d @ h @ d.T) / torch.trace(w.float() @ h @ w.float().T))


def correlated(out: int = 64, inp: int = 256, n: int = 2048, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and H = XᵀX for mixed inputs with a few loud channels."""
    g = gen(seed)
    x = torch.randn(n, inp, generator=g) @ (torch.randn(inp, inp, generator=g) / math.sqrt(inp))
    x[:, :8] *= 10
    return torch.randn(out, inp, generator=g) * 0.05, x.T @ x


SCHEMES = [(1, 8, 8), (2, 8, 8), (1, 16, 8), (2, 4, 4), (3, 4, 8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: f"{s[0]}x{s[1]}g{s[2]}")
def test_roundtrip_exact_schemes(scheme, dtype):
    m, b, g = scheme
    w = (torch.randn(64, 256, generator=gen(1)) * 0.05).to(dtype)
    enc, out = roundtrip(Additive(num_codebooks=m, codebook_bits=b, group_size=g, max_rounds=3), {"w": w})
    assert enc.streams["codebooks"].data.shape == (m, 2**b, g) and enc.streams["codebooks"].role == "codebook"
    assert enc.streams["0.codes"].data.shape == (64, 256 // g, m)
    assert enc.streams["0.codes"].data.dtype == (np.uint8 if b <= 8 else np.uint16)
    assert enc.streams["0.codes"].alphabet == 2**b
    assert enc.streams["0.scales"].data.dtype == np.float16 and enc.streams["0.scales"].data.shape == (64,)
    assert enc.nominal_bits == aqlm_bits([(64, 256)], m, b, g)
    assert rel_mse(w, out["w"]) < 0.3


@pytest.mark.parametrize(
    "kw",
    [
        {"objective": "output", "num_codebooks": 2, "codebook_bits": 6},
        {"codebook_update": "adam", "adam_steps": 20, "num_codebooks": 2, "codebook_bits": 6},
        {"codebook_dtype": "bf16", "num_codebooks": 2, "codebook_bits": 6},
        {"codebook_dtype": "fp32", "objective": "output", "codebook_bits": 16},
    ],
    ids=lambda kw: "-".join(f"{v}" for v in kw.values()),
)
def test_roundtrip_exact_options(kw):
    w, h = correlated()
    enc, _ = roundtrip(Additive(max_rounds=2, **kw), {"w": w.to(torch.bfloat16)}, EncodeContext(hessians={"w": h}))
    cb_dtype = kw.get("codebook_dtype", "fp16")
    assert enc.streams["codebooks"].data.dtype == {"fp16": np.float16, "bf16": np.uint16, "fp32": np.float32}[cb_dtype]


def test_k_beyond_the_number_of_groups_is_exact():
    """1×16 g8 on 64×256: 65536 codewords for 2048 groups; the codebook holds every group."""
    w = torch.randn(64, 256, generator=gen(2)) * 0.05
    _, out = roundtrip(Additive(num_codebooks=1, codebook_bits=16, group_size=8), {"w": w})
    assert rel_mse(w, out["w"]) < 1e-6  # fp16 rounding of codewords and scales only


def test_m1_matches_clustered():
    """M = 1 is plain vector k-means, like `clustered`. Clustered groups run down columns (d output channels
    of one input), additive groups along rows (g inputs of one output), so additive gets Wᵀ: its groups
    Wᵀ[c, r:r+8] are exactly clustered's sub-vectors W[r:r+8, c]. Additive also normalises rows and refits
    scales, so the two agree within a few percent rather than exactly."""
    w = torch.randn(64, 256, generator=gen(0))
    clus = Clustered(codebook_size=256, dim=8).encode({"w": w}, EncodeContext())
    add = Additive(num_codebooks=1, codebook_bits=8, group_size=8).encode({"w": w.T.contiguous()}, EncodeContext())
    e_c, e_a = rel_mse(w, clus.recon["w"]), rel_mse(w.T, add.recon["w"])
    assert abs(e_a / e_c - 1) < 0.05, (e_a, e_c)


@pytest.mark.parametrize(
    "kw",
    [
        {"objective": "mse"},
        {"objective": "output"},
        {"objective": "output", "codebook_update": "adam", "adam_steps": 20},
    ],
    ids=["mse", "output", "output-adam"],
)
def test_rounds_never_raise_the_objective(kw):
    w, h = correlated()
    fmt = Additive(num_codebooks=2, codebook_bits=6, group_size=8, beam_width=4, max_rounds=4, tol=0.0, **kw)
    enc = fmt.encode({"w": w}, EncodeContext(hessians={"w": h}))
    trace, history = enc.meta["trace"], enc.meta["history"]
    assert all(b <= a for a, b in pairwise(trace)), trace
    assert all(b <= a for a, b in pairwise(history)), history
    assert history[-1] < 0.97 * history[0]  # the rounds did something
    assert enc.meta["rounds"] == 4 and len(history) == 5
    d = w - enc.recon["w"]
    ref = output_error(w, enc.recon["w"], h) if kw["objective"] == "output" else rel_mse(w, enc.recon["w"])
    assert ref == pytest.approx(history[-1], rel=0.02)  # diag-block objective ≈ the real one here
    assert torch.isfinite(d).all()


def test_rounds_keep_old_codes_and_codebooks_when_an_update_is_worse(monkeypatch):
    """A beam that proposes random codes and a solver that returns noise must leave the objective as it was."""
    import formats.additive as additive

    w = torch.randn(64, 256, generator=gen(9)) * 0.05
    noise = gen(10)
    monkeypatch.setattr(
        additive, "beam_search", lambda t, cb, codes, beam: torch.randint(0, cb.shape[1], codes.shape, generator=noise)
    )
    monkeypatch.setattr(
        Additive, "_lstsq", lambda self, prob, cb, codes, s: cb + torch.randn(cb.shape, generator=noise)
    )
    monkeypatch.setattr(Additive, "_rescale", lambda self, prob, cb, codes, s: s * 3)
    enc = Additive(num_codebooks=2, codebook_bits=6, max_rounds=3, tol=0.0).encode({"w": w}, EncodeContext())
    trace = enc.meta["trace"]
    assert len(trace) == 1 + 3 * 3 and all(b <= a for a, b in pairwise(trace)), trace
    assert trace[-1] > 0.999 * trace[0]  # random proposals rarely help a group; noise never helps


@pytest.mark.parametrize("objective", ["mse", "output"])
def test_codebook_sweeps_agree_with_the_dense_solve(objective, monkeypatch):
    """Beyond DENSE_LIMIT the joint least squares becomes block-coordinate sweeps; both reach ~ the same f."""
    import formats.additive as additive

    w, h = correlated()
    fmt = Additive(num_codebooks=2, codebook_bits=6, max_rounds=3, tol=0.0, objective=objective)
    ctx = EncodeContext(hessians={"w": h})
    dense = fmt.encode({"w": w}, ctx).meta
    monkeypatch.setattr(additive, "DENSE_LIMIT", 0)
    sweeps = fmt.encode({"w": w}, ctx).meta
    assert all(b <= a for a, b in pairwise(sweeps["trace"]))
    assert sweeps["history"][-1] == pytest.approx(dense["history"][-1], rel=0.02)
    assert sweeps["trace"] != dense["trace"]  # the other path did run


@pytest.mark.parametrize("objective", ["mse", "output"])
def test_torch_search_path_agrees_with_faiss(objective, monkeypatch):
    """Without faiss (as on CUDA) the torch nearest-neighbour search gives the same encoding up to ties."""
    from formats import kmeans

    w, h = correlated()
    fmt = Additive(num_codebooks=2, codebook_bits=6, max_rounds=2, objective=objective)
    ctx = EncodeContext(hessians={"w": h})
    with_faiss = fmt.encode({"w": w}, ctx)
    monkeypatch.setattr(kmeans, "faiss", None)
    torch_only, _ = roundtrip(fmt, {"w": w}, ctx)
    assert torch_only.meta["history"][-1] == pytest.approx(with_faiss.meta["history"][-1], rel=0.01)


def test_beam_search_exact_with_full_beam_and_better_with_wider():
    g = gen(0)
    cb = torch.randn(2, 16, 4, generator=g)
    t = torch.randn(500, 4, generator=g)
    start = torch.randint(0, 16, (500, 2), generator=g)

    def cost(c: torch.Tensor) -> torch.Tensor:
        return ((t - cb[0][c[:, 0]] - cb[1][c[:, 1]]) ** 2).sum(1)

    pairs = (cb[0][:, None, :] + cb[1][None, :, :]).reshape(256, 4)
    optimum = torch.cdist(t, pairs).pow(2).min(1).values
    assert torch.allclose(cost(beam_search(t, cb, start, 16)), optimum, atol=1e-5)  # beam = K: exhaustive
    means = [float(cost(beam_search(t, cb, start, b)).mean()) for b in (1, 2, 4, 8)]
    assert all(b < a for a, b in pairwise(means)), means
    assert means[0] < 0.2 * float(cost(start).mean())


def test_dedupe_marks_hypotheses_equal_but_for_the_swapped_codebook():
    hyp = torch.tensor([[[1, 2, 3], [5, 2, 3], [1, 2, 4], [1, 2, 3]]])
    assert dedupe_dead(hyp, 0).tolist() == [[False, True, False, True]]
    assert dedupe_dead(hyp, 2).tolist() == [[False, False, True, True]]


def test_error_falls_as_codebooks_are_added():
    w = torch.randn(64, 256, generator=gen(3))
    errs = [rel_mse(w, roundtrip(Additive(num_codebooks=m, max_rounds=3), {"w": w})[1]["w"]) for m in (1, 2, 3)]
    assert all(b < 0.8 * a for a, b in pairwise(errs)), errs


def test_output_objective_lowers_output_error():
    w, h = correlated()
    ctx = EncodeContext(hessians={"w": h}, hessian_counts={"w": 2048})
    kw = {"num_codebooks": 1, "codebook_bits": 8, "max_rounds": 4}
    mse = Additive(objective="mse", **kw).encode({"w": w}, ctx).recon["w"]
    out = Additive(objective="output", **kw).encode({"w": w}, ctx).recon["w"]
    assert output_error(w, out, h) < 0.9 * output_error(w, mse, h)


@pytest.mark.parametrize("scope", ["family", "global"])
def test_shared_scope_stores_codebooks_once(scope):
    g = gen(4)
    ts = {f"blocks.{i}.mlp.proj.weight": torch.randn(64, 256, generator=g) * 0.05 for i in range(3)}
    fmt = get_format("additive", num_codebooks=2, codebook_bits=6, max_rounds=2, scope=scope)
    assert fmt.config()["scope"] == scope
    shared, _ = roundtrip(fmt, ts)
    assert [n for n, s in shared.streams.items() if s.role == "codebook"] == ["codebooks"]
    assert sorted(shared.streams) == sorted(["codebooks"] + [f"{i}.{r}" for i in range(3) for r in ("codes", "scales")])
    single = [
        Additive(num_codebooks=2, codebook_bits=6, max_rounds=2).encode({n: t}, EncodeContext()) for n, t in ts.items()
    ]
    nbytes = sum(s.data.nbytes for s in shared.streams.values())
    separate = sum(s.data.nbytes for e in single for s in e.streams.values())
    assert separate - nbytes == 2 * shared.streams["codebooks"].data.nbytes
    assert single[0].nominal_bits * 3 - shared.nominal_bits == 2 * 2 * 64 * 8 * 16


def test_shared_codebooks_across_shapes():
    g = gen(5)
    ts = {"a": torch.randn(64, 256, generator=g), "b": torch.randn(32, 64, generator=g)}
    enc, _ = roundtrip(Additive(num_codebooks=1, codebook_bits=6, scope="global", max_rounds=1), ts)
    assert enc.streams["1.codes"].data.shape == (32, 8, 1) and enc.streams["1.scales"].data.shape == (32,)


def test_aqlm_bits_formula():
    """AQLM: M·B/g + M·2^B·g·16/(d_out·d_in) + 16/d_in bits per weight."""
    side = 4096
    one16 = aqlm_bits([(side, side)], 1, 16, 8) / side**2
    assert one16 == 16 / 8 + 65536 * 8 * 16 / side**2 + 16 / side == 2.50390625
    two8 = aqlm_bits([(side, side)], 2, 8, 8) / side**2
    assert two8 == pytest.approx(2 * 8 / 8 + 2 * 256 * 8 * 16 / side**2 + 16 / side, rel=1e-15)
    assert aqlm_bits([(side, side)], 1, 8, 8) / side**2 == pytest.approx(
        1 + 256 * 8 * 16 / side**2 + 16 / side, rel=1e-15
    )
    enc, _ = roundtrip(
        Additive(num_codebooks=2, codebook_bits=4, group_size=4, max_rounds=1), {"w": torch.randn(16, 64)}
    )
    assert enc.nominal_bits == 16 * 64 * 2 * 4 / 4 + 2 * 16 * 4 * 16 + 16 * 16


def test_bad_input_raises_config_error():
    w = torch.randn(64, 256, generator=gen(0))
    with pytest.raises(ConfigError, match=r"tensor w has rows of length 250, not divisible by group_size 8"):
        Additive().encode({"w": torch.randn(64, 250)}, EncodeContext())
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ConfigError, match=r"tensor w holds NaN"):
        Additive().encode({"w": bad}, EncodeContext())
    with pytest.raises(ConfigError, match=r"objective 'output' needs a Hessian for tensor w"):
        Additive(objective="output").encode({"w": w}, EncodeContext())
    with pytest.raises(ConfigError, match=r"Hessian of tensor w has shape \(64, 64\)"):
        Additive(objective="output").encode({"w": w}, EncodeContext(hessians={"w": torch.eye(64)}))
    for kw in (
        {"num_codebooks": 0},
        {"codebook_bits": 17},
        {"group_size": 0},
        {"objective": "kl"},
        {"codebook_update": "sgd"},
        {"tol": -1},
        {"codebook_dtype": "int8"},
        {"scope": "layer"},
    ):
        with pytest.raises(ConfigError):
            get_format("additive", **kw)
