"""k-means / ECVQ and the clustered (ClusComp) format: planted centroids, exact roundtrips, rate knobs, errors."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from bytegolf.errors import ConfigError
from bytegolf.formats import kmeans as km
from bytegolf.formats.base import EncodeContext, get_format
from bytegolf.formats.clustered import Clustered, cluscomp_bits, subvectors
from bytegolf.formats.scalar import Scalar
from bytegolf.measure.metrics import rel_mse
from bytegolf.quantize import encoder
from tests.conftest import roundtrip as shared_roundtrip

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def entropy(codes: np.ndarray) -> float:
    p = np.bincount(codes.ravel().astype(np.int64)) / codes.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def roundtrip(fmt: Clustered, tensors: dict[str, torch.Tensor], ctx: EncodeContext | None = None):
    enc, out = shared_roundtrip(fmt, tensors, ctx)
    assert list(out) == list(tensors)
    return enc, out


def planted(seed: int = 0, k: int = 8, per: int = 300, noise: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    centres = torch.randn(k, 4, generator=g) * 3
    x = centres.repeat_interleave(per, 0) + noise * torch.randn(k * per, 4, generator=g)
    return x[torch.randperm(k * per, generator=g)], centres


def max_matched_error(found: torch.Tensor, true: torch.Tensor) -> float:
    cost = torch.cdist(true, found).numpy()
    r, c = linear_sum_assignment(cost)
    return float(cost[r, c].max())


# ---------------------------------------------------------------- k-means


@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_recovers_planted_centroids(weighted):
    x, centres = planted()
    w = torch.rand(x.shape[0], generator=gen(5)) + 0.5 if weighted else None
    res = km.kmeans(x, 8, weights=w, iters=20, seed=3)
    assert max_matched_error(res.centroids, centres) < 0.05
    assert torch.bincount(res.codes, minlength=8).min() == 300
    assert all(b <= a + 1e-3 for a, b in pairwise(res.history))  # Lloyd never raises the objective


def test_kmeans_is_seeded_and_reseeds_empty_clusters():
    x, _ = planted(1, k=4, per=50)
    a, b = km.kmeans(x, 6, seed=7), km.kmeans(x, 6, seed=7)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.centroids, b.centroids)
    x = torch.cat([torch.zeros(90, 2), torch.ones(10, 2)])  # 2 distinct points, 3 clusters
    res = km.kmeans(x, 3, iters=5)
    assert torch.bincount(res.codes, minlength=3).gt(0).sum() == 2  # duplicates cannot fill the third
    assert res.history[-1] == 0.0


def test_torch_path_matches_faiss_path(monkeypatch):
    """The torch search (used on CUDA) picks the same neighbours as faiss, with tiny chunks."""
    g = gen(2)
    q, c = torch.randn(3000, 8, generator=g), torch.randn(300, 8, generator=g)
    d_f, i_f = km.nearest(q, c, 5)
    monkeypatch.setattr(km, "faiss", None)
    monkeypatch.setattr(km, "CHUNK_ELEMS", 300 * 7)  # 7 rows per chunk
    d_t, i_t = km.nearest(q, c, 5)
    assert float((i_f == i_t).float().mean()) > 0.999
    assert torch.allclose(d_f, d_t, rtol=1e-4, atol=1e-4)
    x, centres = planted(4)
    res = km.kmeans(x, 8, seed=1)
    assert max_matched_error(res.centroids, centres) < 0.05


def test_kmeans_plus_plus_batched_for_large_k():
    x = torch.randn(6000, 2, generator=gen(3))
    res = km.kmeans(x, 1000, iters=3)  # 1000 > PP_ROUNDS: several centres per D² round
    assert torch.unique(res.centroids, dim=0).shape[0] == 1000
    assert res.history[-1] < 0.01 * float(((x - x.mean(0)) ** 2).sum())


def test_ecvq_lam0_equals_plain_and_entropy_falls():
    w = torch.randn(64, 256, generator=gen(1))
    plain = Clustered(codebook_size=64, dim=2).encode({"w": w}, EncodeContext())
    zero = Clustered(codebook_size=64, dim=2, lam=0.0).encode({"w": w}, EncodeContext())
    assert np.array_equal(plain.streams["0.codes"].data, zero.streams["0.codes"].data)
    x = torch.randn(4000, 2, generator=gen(6))
    assert torch.equal(km.kmeans(x, 32, seed=2).codes, km.kmeans(x, 32, seed=2, lam=0.0).codes)
    ents, errs = [entropy(plain.streams["0.codes"].data)], [rel_mse(w, plain.recon["w"])]
    for lam in (0.03, 0.1, 0.3):
        enc, _ = roundtrip(Clustered(codebook_size=64, dim=2, lam=lam), {"w": w})
        assert enc.meta["lam_eff"] > 0 and Clustered(lam=lam).rate_knob == "lam"
        ents.append(entropy(enc.streams["0.codes"].data))
        errs.append(rel_mse(w, enc.recon["w"]))
    assert all(b < a for a, b in pairwise(ents)), ents
    assert all(b > a for a, b in pairwise(errs)), errs


# ---------------------------------------------------------------- format


SETTINGS = [
    {"codebook_size": 256, "dim": 4},
    {"codebook_size": 16, "dim": 1, "codebook_dtype": "bf16"},
    {"codebook_size": 64, "dim": 2, "normalize": True, "codebook_dtype": "fp32"},
    {"codebook_size": 300, "dim": 8, "normalize": True},  # 300: 9-bit indices in uint16
    {"codebook_size": 32, "dim": 4, "weighted": True, "lam": 0.02},
    {"codebook_size": 32, "dim": 2, "weighted": True, "normalize": True, "iters": 0},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_roundtrip_exact(kw, dtype):
    g = gen(1)
    w = (torch.randn(64, 256, generator=g) * 0.05).to(dtype)
    x = torch.randn(512, 256, generator=g)
    enc, out = roundtrip(Clustered(**kw), {"w": w}, EncodeContext(hessians={"w": x.T @ x}))
    k, d = kw["codebook_size"], kw["dim"]
    assert enc.streams["codebook"].data.shape == (k, d)
    assert enc.streams["0.codes"].data.shape == (64 // d, 256)
    assert enc.streams["0.codes"].data.dtype == (np.uint8 if k <= 256 else np.uint16)
    assert ("0.scales" in enc.streams) == kw.get("normalize", False)
    assert enc.nominal_bits == cluscomp_bits(
        [(64, 256)],
        k,
        d,
        {"fp16": 16, "bf16": 16, "fp32": 32}[kw.get("codebook_dtype", "fp16")],
        kw.get("normalize", False),
    )
    assert rel_mse(w, out["w"]) < 0.5


def test_codes_are_nearest_in_the_stored_codebook():
    w = torch.randn(32, 128, generator=gen(2))
    enc = Clustered(codebook_size=64, dim=4).encode({"w": w}, EncodeContext())
    cb = torch.from_numpy(enc.streams["codebook"].data.astype(np.float32))
    x = subvectors(w, 4)
    best = torch.cdist(x, cb).argmin(1)
    codes = torch.from_numpy(enc.streams["0.codes"].data.astype(np.int64)).reshape(-1)
    gap = ((x - cb[codes]) ** 2).sum(1) - ((x - cb[best]) ** 2).sum(1)
    assert float(gap.max()) <= 1e-5


def test_subvectors_run_down_output_channels():
    w = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)
    sv = subvectors(w, 4)
    assert torch.equal(sv[0], w[0:4, 0]) and torch.equal(sv[1], w[0:4, 1]) and torch.equal(sv[3], w[4:8, 0])


@pytest.mark.parametrize("b", [3, 4])
def test_d1_beats_uniform_scalar(b):
    w = torch.randn(64, 256, generator=gen(1))
    clus, _ = roundtrip(Clustered(codebook_size=2**b, dim=1), {"w": w})
    scal = Scalar(bits=b, clip="max", symmetric=True, group_size=0).encode({"w": w}, EncodeContext())
    assert rel_mse(w, clus.recon["w"]) < 0.8 * rel_mse(w, scal.recon["w"])


def test_error_falls_as_codebook_grows():
    w = torch.randn(64, 256, generator=gen(3))
    errs = [rel_mse(w, roundtrip(Clustered(codebook_size=k, dim=4), {"w": w})[1]["w"]) for k in (4, 16, 64, 256)]
    assert all(b < 0.9 * a for a, b in pairwise(errs)), errs


@pytest.mark.parametrize("scope", ["family", "global"])
def test_shared_scope_stores_one_codebook(scope):
    g = gen(4)
    ts = {f"blocks.{i}.mlp.fc.weight": torch.randn(64, 256, generator=g) for i in range(3)}
    fmt = get_format("clustered", codebook_size=256, dim=4, normalize=True, scope=scope)
    assert fmt.config()["scope"] == scope
    shared, _ = roundtrip(fmt, ts)
    assert [n for n, s in shared.streams.items() if s.role == "codebook"] == ["codebook"]
    assert sorted(shared.streams) == sorted(["codebook"] + [f"{i}.{r}" for i in range(3) for r in ("codes", "scales")])
    single = [
        Clustered(codebook_size=256, dim=4, normalize=True).encode({n: t}, EncodeContext()) for n, t in ts.items()
    ]
    nbytes = sum(s.data.nbytes for s in shared.streams.values())
    separate = sum(s.data.nbytes for e in single for s in e.streams.values())
    cb_bytes = shared.streams["codebook"].data.nbytes
    assert separate - nbytes == 2 * cb_bytes
    assert single[0].nominal_bits * 3 - shared.nominal_bits == 2 * 256 * 4 * 16


def test_cluscomp_bits_formula():
    """ClusComp: ceil(log2 n)/d + 16·n·d/(d_in·d_out) bits per weight; n = 65500, d = 4 on 4096×4096."""
    n, d, side = 65500, 4, 4096
    expected = 16 / 4 + 16 * 65500 * 4 / side**2
    assert cluscomp_bits([(side, side)], n, d) / side**2 == pytest.approx(expected, rel=1e-15)
    assert cluscomp_bits([(side, side)], n, d) == side * side // 4 * 16 + 65500 * 4 * 16
    enc, _ = roundtrip(Clustered(codebook_size=200, dim=4), {"w": torch.randn(64, 256, generator=gen(0))})
    assert enc.nominal_bits == 64 * 256 / 4 * 8 + 200 * 4 * 16  # 200 centroids: 8-bit indices


def test_weighted_follows_the_hessian():
    """With one input channel dominating the Hessian, weighted k-means fits that column better."""
    w = torch.randn(64, 64, generator=gen(8))
    h = torch.eye(64)
    h[:4, :4] *= 1000.0
    ctx = EncodeContext(hessians={"w": h})
    plain = Clustered(codebook_size=16, dim=4).encode({"w": w}, ctx).recon["w"]
    weighted = Clustered(codebook_size=16, dim=4, weighted=True).encode({"w": w}, ctx).recon["w"]
    err = lambda r: float(torch.trace((w - r) @ h @ (w - r).T))  # noqa: E731
    assert err(weighted) < 0.7 * err(plain)


@pytest.mark.parametrize("normalize", [False, True])
def test_hessian_weighting_lowers_weighted_error_on_uneven_columns(normalize):
    """Input features of very uneven importance (lognormal, six outlier features ×300 carrying ≈84% of
    diag H): at the same codebook size the Hessian-weighted k-means gives at least 25% lower
    Σ_j H_jj‖w_j − ŵ_j‖² (measured 0.50 plain, 0.47 normalized; 0.47-0.66 over seeds 0-2)."""
    g = gen(0)
    w = torch.randn(128, 256, generator=g)
    importance = torch.exp(torch.randn(256, generator=g))
    importance[torch.randperm(256, generator=g)[:6]] *= 300.0
    x = torch.randn(2048, 256, generator=g) * importance.sqrt()
    h = x.T @ x
    ctx = EncodeContext(hessians={"w": h})

    def err(r: torch.Tensor) -> float:
        return float(((w - r) ** 2 * h.diagonal()[None, :]).sum())

    plain, _ = roundtrip(Clustered(codebook_size=64, dim=4, normalize=normalize), {"w": w}, ctx)
    weighted, _ = roundtrip(Clustered(codebook_size=64, dim=4, normalize=normalize, weighted=True), {"w": w}, ctx)
    assert weighted.nominal_bits == plain.nominal_bits
    assert err(weighted.recon["w"]) < 0.75 * err(plain.recon["w"]), (err(weighted.recon["w"]), err(plain.recon["w"]))


MIXED = {"blocks.0.attn.c_k.weight": (64, 32), "blocks.3.mlp.fc.weight": (96, 48)}


@pytest.mark.parametrize(
    "kw",
    [{"dim": 4}, {"dim": 8, "normalize": True, "weighted": True}, {"dim": 2, "lam": 0.05, "codebook_dtype": "bf16"}],
    ids=["plain", "normalized-weighted", "ecvq-bf16"],
)
def test_global_scope_mixes_shapes(kw):
    """A unit of a 64×32 and a 96×48 matrix (both dimensions differ) shares one codebook, round-trips bit-exact."""
    g = gen(9)
    ts = {n: torch.randn(*shape, generator=g) * (0.02 if i else 0.05) for i, (n, shape) in enumerate(MIXED.items())}
    hs = {n: (lambda x: x.T @ x)(torch.randn(256, t.shape[1], generator=g)) for n, t in ts.items()}
    fmt = get_format("clustered", codebook_size=64, scope="global", **kw)
    enc, out = roundtrip(fmt, ts, EncodeContext(hessians=hs))
    d = kw["dim"]
    assert [n for n, s in enc.streams.items() if s.role == "codebook"] == ["codebook"]
    assert enc.streams["0.codes"].data.shape == (64 // d, 32) and enc.streams["1.codes"].data.shape == (96 // d, 48)
    cb_bits = 16 if kw.get("codebook_dtype", "fp16") != "fp32" else 32
    assert enc.nominal_bits == cluscomp_bits(list(MIXED.values()), 64, d, cb_bits, kw.get("normalize", False))
    assert all(rel_mse(w, out[n]) < 0.5 for n, w in ts.items())
    # the calibration hook rebuilds the same tensors from the stored streams
    stored = {k: torch.from_numpy(enc.streams[k].data.astype(np.float32)) for k in fmt.trainable(enc, "cpu").dtypes}
    if kw.get("codebook_dtype") == "bf16":
        stored["codebook"] = torch.from_numpy(enc.streams["codebook"].data.astype(np.int32) << 16).view(torch.float32)
    rebuilt = fmt.trainable(enc, "cpu").rebuild(stored)
    assert all(torch.equal(rebuilt[n].to(w.dtype), out[n]) for n, w in ts.items())


def test_global_scope_mixed_shapes_through_the_artifact(tmp_path):
    """The same mixed-shape unit written to an artifact and read back alone, bit for bit."""
    from bytegolf.artifact import file as artifact
    from bytegolf.artifact import layout
    from bytegolf.quantize.plan import Assignment

    g = gen(10)
    state = {n: torch.randn(*shape, generator=g) * 0.03 for n, shape in MIXED.items()}
    params = Clustered(codebook_size=32, dim=4, normalize=True, scope="global").config()
    units = encoder.encode_state(state, [Assignment(n, "clustered", params) for n in state], EncodeContext(), False)
    assert len(units) == 1 and [t.name for t in units[0].tensors] == list(MIXED)
    artifact.write(tmp_path / "m.bgz", units, "zstd", {}, layout.LayoutConfig(grouping="role"))
    decoded, _ = artifact.read(tmp_path / "m.bgz")
    artifact.verify_bit_exact(decoded, units)
    assert all(decoded[n].shape == state[n].shape for n in state)


def test_search_backend_does_not_change_the_encoding(monkeypatch):
    """Single-neighbour search decides near-ties exactly, so a backend with other fp32 rounding gives the same bytes.

    Stands in for faiss (not a dependency): the same argmin computed as ‖q‖² + ‖c‖² − 2q·c in float64.
    """
    calls = []

    class Float64Flat:  # the faiss.IndexFlatL2 surface `nearest` uses
        def __init__(self, dim: int) -> None:
            self.c = None

        def add(self, c: np.ndarray) -> None:
            self.c = torch.from_numpy(c).double()

        def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            calls.append(k)
            qd = torch.from_numpy(q).double()
            d = (qd * qd).sum(1, keepdim=True) + (self.c * self.c).sum(1)[None] - 2 * qd @ self.c.T
            v, i = torch.topk(d, k, dim=1, largest=False)
            return v.float().numpy(), i.numpy()

    class FakeFaiss:
        IndexFlatL2 = Float64Flat

    g = gen(11)
    w = torch.randn(256, 128, generator=g) * 0.02  # before the exact re-decision: 25% of the d=1 codebook differed
    ts = {"w": w.to(torch.bfloat16)}  # bf16: many equal sub-vectors and exact ties
    for kw in ({"codebook_size": 256, "dim": 4, "normalize": True}, {"codebook_size": 32, "dim": 1}):
        monkeypatch.setattr(km, "faiss", None)
        torch_only = Clustered(**kw).encode(ts, EncodeContext())
        monkeypatch.setattr(km, "faiss", FakeFaiss)
        other = Clustered(**kw).encode(ts, EncodeContext())
        for name, s in torch_only.streams.items():
            assert np.array_equal(s.data, other.streams[name].data), (kw, name)
    assert calls and set(calls) == {2}
    # near-ties do occur in such data: rows whose two nearest centres are within the re-decision gap
    x = subvectors(w, 4)
    c = x[torch.randperm(x.shape[0], generator=g)[:256]]
    top = torch.topk(torch.cdist(x, c).pow(2), 2, dim=1, largest=False).values
    assert int(((top[:, 1] - top[:, 0]) <= km.TIE_TOL * (x.pow(2).sum(1) + top[:, 0])).sum()) > 10


@pytest.mark.parametrize("copies", [10, 40])  # 40 and 160 centres: the two-min and the top-2 runner-up
def test_nearest_single_neighbour_ties_go_to_the_lowest_index(copies, monkeypatch):
    c = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, 3.0]] * copies)  # many exact duplicates
    q = torch.tensor([[0.0, 0.1], [2.0, 2.0], [0.5, 0.0], [1.0, 0.0]])  # [0.5, 0]: exactly between 0 and 1
    monkeypatch.setattr(km, "faiss", None)
    monkeypatch.setattr(km, "CHUNK_ELEMS", c.shape[0] * 3)  # several chunks
    dist, idx = km.nearest(q, c, 1)
    assert idx[:, 0].tolist() == [1, 3, 0, 0]
    assert torch.equal(dist[:, 0], ((q - c[idx[:, 0]]) ** 2).sum(1))
    assert torch.equal(km.exact_nearest(q, c), idx[:, 0])


@pytest.mark.parametrize("use_faiss", [True, False])
def test_neighbour_list_search_equals_the_exact_argmin(use_faiss, monkeypatch):
    """Many centres (K = 320 > NBR_FROM): a fast top-1 refined over neighbour lists gives exact_nearest's answer,
    duplicates and bf16 near-ties included, and some points (far from every centre) take the full-scan fallback."""
    g = gen(3)
    x = (torch.randn(8 * 320, 4, generator=g) * 0.02).to(torch.bfloat16).float()  # many equal rows and ties
    x[:16] *= 40.0  # outliers: farther from their centre than the listed neighbours reach
    c = torch.cat([x[torch.randperm(x.shape[0], generator=g)[:300]], x[:20]])  # 20 duplicated centres
    if not use_faiss:
        monkeypatch.setattr(km, "faiss", None)
    fallback = []
    scan1 = km.scan1
    monkeypatch.setattr(km, "scan1", lambda q, cc: fallback.append(q.shape[0]) or scan1(q, cc))
    dist, idx = km.nearest(x, c, 1)
    assert torch.equal(idx[:, 0], km.exact_nearest(x, c))
    assert torch.equal(dist[:, 0], ((x - c[idx[:, 0]]) ** 2).sum(1))
    assert len(fallback) == 1 and 16 <= fallback[0] < x.shape[0] // 2


def test_bad_input_raises_config_error():
    w = torch.randn(64, 256, generator=gen(0))
    with pytest.raises(ConfigError, match=r"codebook_size 8192 is larger than the 4096 sub-vectors of w"):
        Clustered(codebook_size=8192, dim=4).encode({"w": w}, EncodeContext())
    bad = w.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(ConfigError, match=r"tensor w holds NaN"):
        Clustered().encode({"w": bad}, EncodeContext())
    with pytest.raises(ConfigError, match=r"Hessian of tensor w has shape \(64, 64\), expected \(256, 256\)"):
        Clustered(weighted=True).encode({"w": w}, EncodeContext(hessians={"w": torch.eye(64)}))
    with pytest.raises(ConfigError, match=r"2-D"):
        Clustered().encode({"v": torch.randn(64)}, EncodeContext())
    bad_settings = [
        ({"dim": 3}, "dim"),
        ({"dim": True}, "dim"),
        ({"dim": 4.0}, "dim"),
        ({"codebook_size": 1}, "codebook_size"),
        ({"codebook_size": 70000}, "codebook_size"),
        ({"codebook_size": 256.0}, "codebook_size"),
        ({"lam": -1.0}, "lam"),
        ({"lam": float("inf")}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"lam": True}, "lam"),
        ({"iters": -1}, "iters"),
        ({"iters": True}, "iters"),
        ({"normalize": "false"}, "normalize"),
        ({"weighted": 1}, "weighted"),
        ({"scope": "layer"}, "scope"),
    ]
    for kw, key in bad_settings:
        with pytest.raises(ConfigError, match=rf"^clustered: {key} must be") as info:
            Clustered(**kw)
        assert "\n" not in str(info.value), str(info.value)  # one line
    with pytest.raises(ConfigError, match="codebook_dtype"):
        get_format("clustered", codebook_dtype="int8")


def test_real_faiss_and_the_torch_search_give_the_same_bytes(monkeypatch):
    """faiss-cpu is a declared dependency (speed); with or without it the encoding is the same."""
    assert km.faiss is not None, "faiss-cpu is a declared dependency and must import"
    w = torch.randn(512, 256, generator=gen(5)) * 0.02
    for params in ({"codebook_size": 256, "dim": 4}, {"codebook_size": 64, "dim": 1, "normalize": True}):
        with_faiss = Clustered(**params).encode({"w": w}, EncodeContext())
        monkeypatch.setattr(km, "faiss", None)
        without = Clustered(**params).encode({"w": w}, EncodeContext())
        monkeypatch.undo()
        for name, s in with_faiss.streams.items():
            assert s.data.tobytes() == without.streams[name].data.tobytes(), (params, name)


def test_subvectors_pad_a_short_last_block_with_zeros():
    w = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3) + 1
    sv = subvectors(w, 4)
    assert sv.shape == (2 * 3, 4)
    assert torch.equal(sv[3], torch.cat([w[4:7, 0], torch.zeros(1)])) and torch.equal(sv[0], w[0:4, 0])


@pytest.mark.parametrize(
    "kw",
    [{"dim": 4}, {"dim": 4, "normalize": True, "weighted": True}, {"dim": 8, "lam": 0.05}],
    ids=["plain", "normalized-weighted", "ecvq-d8"],
)
def test_rows_not_divisible_by_dim_round_trip_with_their_shape(kw):
    """A (7, 10) matrix at dim 4 (and dim 8: one block of 7 rows + 1 pad): the last block is padded with a
    zero row, decode drops it; encode -> decode is exact, the shape is kept and the padding is in the bits.
    Before, such a tensor was refused (ConfigError: rows not divisible by dim)."""
    g = gen(12)
    w = torch.randn(7, 10, generator=g)
    h = (lambda x: x.T @ x)(torch.randn(64, 10, generator=g))
    fmt = Clustered(codebook_size=8, **kw)
    enc, out = roundtrip(fmt, {"w": w}, EncodeContext(hessians={"w": h}))
    d = kw["dim"]
    assert out["w"].shape == (7, 10) and enc.tensors[0].shape == (7, 10)
    assert enc.streams["0.codes"].data.shape == (-(-7 // d), 10)
    normalize = kw.get("normalize", False)
    blocks = -(-7 // d)  # the padded last block's 10 indices (3 bits each) are counted
    assert enc.nominal_bits == blocks * 10 * 3 + 8 * d * 16 + (16 * 7 if normalize else 0)
    assert enc.nominal_bits == cluscomp_bits([(7, 10)], 8, d, 16, normalize)
    assert rel_mse(w, out["w"]) < 0.5
    # the calibration hook rebuilds the same (unpadded) tensor from the stored streams
    stored = {k: torch.from_numpy(enc.streams[k].data.astype(np.float32)) for k in fmt.trainable(enc, "cpu").dtypes}
    assert torch.equal(fmt.trainable(enc, "cpu").rebuild(stored)["w"], out["w"])


def test_rows_not_divisible_by_dim_through_the_artifact(tmp_path):
    """A global unit of a (7, 10) and a (64, 32) matrix at dim 4, written to an artifact and read back, bit for bit."""
    from bytegolf.artifact import file as artifact
    from bytegolf.artifact import layout
    from bytegolf.quantize.plan import Assignment

    g = gen(13)
    state = {"blocks.0.attn.c_k.weight": torch.randn(7, 10, generator=g), "blocks.0.mlp.fc.weight": torch.randn(64, 32)}
    params = Clustered(codebook_size=16, dim=4, normalize=True, scope="global").config()
    units = encoder.encode_state(state, [Assignment(n, "clustered", params) for n in state], EncodeContext(), False)
    artifact.write(tmp_path / "m.bgz", units, "zstd", {}, layout.LayoutConfig(grouping="role"))
    decoded, _ = artifact.read(tmp_path / "m.bgz")
    artifact.verify_bit_exact(decoded, units)
    assert {n: tuple(t.shape) for n, t in decoded.items()} == {n: tuple(t.shape) for n, t in state.items()}
