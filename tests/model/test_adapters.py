"""Model adapters through the real CLI: a Parameter-Golf-record-style module (weight banks, recurrence),
any state dict without a model (model=weights), and the declared reshapes of non-matrix tensors."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from bytegolf.artifact import file as artifact
from bytegolf.errors import ConfigError
from bytegolf.fingerprint import files_fingerprint
from bytegolf.measure import metrics
from bytegolf.model import checkpoint
from bytegolf.model.adapters import get_adapter, linear_grams
from bytegolf.quantize import encoder
from bytegolf.quantize.plan import PlanConfig, make_plan
from bytegolf.run import store
from tests.integration.test_run import TINY_ARGS, bytegolf

FIXTURE = Path(__file__).parents[1] / "fixtures" / "pg_record_model.py"
sys.path.insert(0, str(FIXTURE.parent))
import pg_record_model  # noqa: E402

BANKS = ("qkv_bank", "out_bank", "fc_bank", "proj_bank")


@pytest.fixture(scope="module")
def record_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("record") / "record.pt"
    torch.save(pg_record_model.RecordGPT().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def module_run(tiny_bundle: Path, record_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("module_run")
    args = [f"bundle={tiny_bundle}", *TINY_ARGS, "model=module", f"model.file={FIXTURE}", "model.build=build"]
    with pytest.MonkeyPatch.context() as mp:  # Grams cached before F.linear weights got theirs would lack them
        mp.setenv("BYTEGOLF_CACHE", str(tmp_path_factory.mktemp("cache")))
        proc = bytegolf(
            "run", *args, f"model.checkpoint={record_ckpt}", "format.bits=6", "codec=zstd", f"hydra.run.dir={out}",
            cwd=out,
        )  # fmt: skip
    return out, proc


def test_module_adapter_runs_a_record_style_model(module_run, record_ckpt: Path) -> None:
    out, proc = module_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = store.read_result(out / "result.json")
    state = checkpoint.load_state_dict(record_ckpt)
    assert r["params"] == sum(t.numel() for t in state.values())
    assert set(r["fingerprints"]) == {"checkpoint", "code", "tokenizer", "val", "train"}
    # a random model over 8192 tokens: loss near ln(8192) = 9.01 nats, the same for the int6 copy
    assert 8.5 < r["ref_val_loss"] < 9.6 and abs(r["delta_bpb"]) < 0.1
    assert r["eval_tokens"] == 4 * 64
    fmt = {t["name"]: t["format"] for t in r["tensors"]}
    assert all(fmt[b] == "scalar" for b in BANKS) and fmt["head.bias"] == "passthrough"
    # the nn.Linear head and the tied head (F.linear on tok_emb.weight) have Gram matrices, and so do the slices of
    # the banks used through F.linear: output error measured (a bank's per slice); the einsum bank's is not (no
    # model.einsum here), and the coverage says so. int6 rounding: ~1.4% relative error everywhere
    err = {t["name"]: t["output_error"] for t in r["tensors"]}
    assert 0.01 < err["head.weight"] < 0.02 and 0.01 < err["tok_emb.weight"] < 0.02
    assert all(0.01 < err[b] < 0.02 for b in ("out_bank", "fc_bank", "proj_bank")) and math.isnan(err["qkv_bank"])
    covered = 2 * 8192 * 32 + 2048 + 2 * 6144  # tok_emb.weight and head.weight, the banks but qkv_bank
    assert r["output_error_covers"] == {
        "tensors": 5,
        "params": covered,
        "of_params": covered + 6144,
        "missing": ["qkv_bank"],
    }
    measured = [t for t in r["tensors"] if t["output_error_params"]]  # the summary: params-weighted over them
    assert r["output_error"] == pytest.approx(sum(t["params"] * t["output_error"] for t in measured) / covered)
    assert "(98.9% of quantized weights)" in proc.stdout  # 538,624 of 544,768
    decoded, units = artifact.read(out / artifact.ARTIFACT_NAME)
    for name, t in state.items():
        assert decoded[name].shape == t.shape, name
    reshaped = {k: v for u in units for k, v in u.meta.get("reshape", {}).items()}
    assert reshaped == {b: list(state[b].shape) for b in BANKS}  # recorded in the manifest
    bank = next(u for u in units if u.tensors[0].name == "qkv_bank")
    assert bank.tensors[0].shape == (2 * 96, 32)  # encoded as the folded matrix
    assert torch.equal(decoded["head.bias"], state["head.bias"].half().float())  # fp16 passthrough, 8192 > 1024


def test_module_gptq_on_split_banks(tiny_bundle: Path, record_ckpt: Path, tmp_path: Path):
    """GPTQ on every bank slice: F.linear banks get Grams, the einsum bank because model.einsum declares it."""
    proc = bytegolf(
        "run",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        "model=module",
        f"model.file={FIXTURE}",
        "model.build=build",
        f"model.checkpoint={record_ckpt}",
        "model.einsum=[qkv_bank]",
        "plan.reshape=split",
        "format.gptq=true",
        "format.bits=6",
        "codec=zstd",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    assert abs(r["delta_bpb"]) < 0.1 and r["format_params"]["gptq"] is True
    decoded, units = artifact.read(tmp_path / artifact.ARTIFACT_NAME)
    state = checkpoint.load_state_dict(record_ckpt)
    split = {k: v for u in units for k, v in u.meta.get("split", {}).items()}
    assert split == {b: list(state[b].shape) for b in BANKS}
    for b in BANKS:
        assert decoded[b].shape == state[b].shape and 0 < metrics.rel_mse(state[b], decoded[b]) < 0.05
    # every bank slice has its Gram (qkv_bank's declared): the output error covers every quantized weight
    err = {t["name"]: t["output_error"] for t in r["tensors"]}
    assert all(0 < err[b] < 0.02 for b in BANKS), err
    cov = r["output_error_covers"]
    assert cov["missing"] == [] and cov["params"] == cov["of_params"] == 2 * 8192 * 32 + 3 * 6144 + 2048
    assert "% of quantized weights" not in proc.stdout


def test_module_adapter_errors_are_one_line(tmp_path: Path, record_ckpt: Path) -> None:
    base = {"name": "module", "checkpoint": str(record_ckpt), "logits": "forward", "nll": None}
    with pytest.raises(ConfigError, match="no such file"):
        get_adapter({**base, "file": str(tmp_path / "nope.py"), "build": "build"})
    with pytest.raises(ConfigError, match="no such function"):
        get_adapter({**base, "file": str(FIXTURE), "build": "nope"})
    ad = get_adapter({**base, "file": str(FIXTURE), "build": "not_a_module"})
    with pytest.raises(ConfigError, match=r"returned int, not a torch\.nn\.Module"):
        ad.build(checkpoint.load_state_dict(record_ckpt))
    ad = get_adapter({**base, "file": str(FIXTURE), "build": "build", "logits": "nope"})
    with pytest.raises(ConfigError, match="has no such method"):
        ad.build(checkpoint.load_state_dict(record_ckpt))


def test_nll_method_and_logits_agree(record_ckpt: Path) -> None:
    state = checkpoint.load_state_dict(record_ckpt)
    cfg = {"name": "module", "checkpoint": str(record_ckpt), "file": str(FIXTURE), "build": "build"}
    by_logits = get_adapter({**cfg, "logits": "forward", "nll": None}).build(state)
    by_nll = get_adapter({**cfg, "logits": None, "nll": "token_nll"}).build(state)
    ids = torch.randint(0, 8192, (2, 9))
    with torch.no_grad():
        a, b = by_logits.token_nll(ids[:, :-1], ids[:, 1:]), by_nll.token_nll(ids[:, :-1], ids[:, 1:])
    assert a.shape == (2, 8) and torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ConfigError, match="KL divergence needs logits"):
        by_nll.logits(ids)


def test_linear_grams_are_the_input_gram_matrices() -> None:
    torch.manual_seed(0)

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.a = nn.Linear(4, 3, bias=False)

        def forward(self, ids):
            return self.a(self.emb(ids))

    m = Two()
    windows = torch.randint(0, 10, (3, 6)).numpy()
    grams, rows = linear_grams(m, windows, batch_size=2, progress=False)
    x = m.emb(torch.from_numpy(windows[:, :-1])).reshape(-1, 4).detach()
    assert rows == 15 and set(grams) == {"a.weight"}
    assert torch.allclose(grams["a.weight"], x.T @ x, atol=1e-5)


# ------------------------------------------------------------------ Grams of weights used through F.linear / einsum


def _record_inputs(m: pg_record_model.RecordGPT, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """X^T X of every bank slice's input, computed by hand: the fixture's forward written out."""
    import torch.nn.functional as F

    sums: dict[str, torch.Tensor] = {}

    def add(name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        sums[name] = sums.get(name, 0) + x.T @ x

    rms = pg_record_model._rms
    x = m.tok_emb(ids)
    b, t, d = x.shape
    for _ in range(pg_record_model.REPEATS):
        for i in range(m.layers):
            add(f"qkv_bank[{i}]", rms(x))
            qkv = rms(x) @ m.qkv_bank[i].T
            q, k, v = (z.reshape(b, t, 4, d // 4).transpose(1, 2) for z in qkv.split(d, dim=-1))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
            add(f"out_bank[{i}]", y)
            x = x + m.attn_scales[i] * (y @ m.out_bank[i].T)
            add(f"fc_bank[{i}]", rms(x))
            h = torch.relu(rms(x) @ m.fc_bank[i].T).square()
            add(f"proj_bank[{i}]", h)
            x = x + h @ m.proj_bank[i].T
    add("tok_emb.weight", rms(x))
    return sums


def test_record_model_grams_cover_bank_slices() -> None:
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = pg_record_model.RecordGPT()
    windows = torch.randint(0, 8192, (2, 9)).numpy()
    linear, einsum = F.linear, torch.einsum
    plain, rows = linear_grams(m, windows, batch_size=2, progress=False)
    grams, _ = linear_grams(m, windows, batch_size=2, progress=False, einsum=["qkv_*"])
    assert F.linear is linear and torch.einsum is einsum and rows == 16  # restored
    slices = {f"{b}[{i}]" for b in BANKS for i in range(2)}
    assert set(grams) == slices | set(BANKS) | {"tok_emb.weight", "head.weight"}
    assert set(plain) == set(grams) - {"qkv_bank", "qkv_bank[0]", "qkv_bank[1]"}  # einsum only where declared
    with torch.no_grad():
        by_hand = _record_inputs(m, torch.from_numpy(windows[:, :-1]))
    for name, g in by_hand.items():
        d = 96 if name.startswith("proj") else 32
        assert grams[name].shape == (d, d) and torch.allclose(grams[name], g, rtol=1e-4, atol=1e-4), name
    for b in BANKS:  # fold: the folded (2·out, in) matrix's Hessian is the sum over its slices
        total = grams[f"{b}[0]"] + grams[f"{b}[1]"]  # fp32 sums in another order: tolerance at its scale
        assert torch.allclose(grams[b], total, rtol=1e-5, atol=1e-6 * float(total.abs().max()))
    # the nn.Linear head and the tied head (F.linear on tok_emb.weight) see the same input, each counted once
    assert torch.allclose(grams["head.weight"], grams["tok_emb.weight"]) and torch.allclose(
        grams["head.weight"], by_hand["tok_emb.weight"], rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ConfigError, match=r"model\.einsum: 'nope' matches no weight parameter"):
        linear_grams(m, windows, progress=False, einsum=["nope"])


def test_grams_restore_functions_on_error_and_reject_non_linear_einsum() -> None:
    import torch.nn.functional as F

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, ids):
            return torch.einsum("btd,de->bte", self.emb(ids), self.w)  # W stored (in, out): not x·Wᵀ

    linear, einsum = F.linear, torch.einsum
    windows = torch.randint(0, 10, (2, 5)).numpy()
    with pytest.raises(ConfigError, match=r"model.einsum: w is used in torch.einsum\('btd,de->bte'\) other than"):
        linear_grams(Odd(), windows, progress=False, einsum=["w"])
    assert F.linear is linear and torch.einsum is einsum
    assert linear_grams(Odd(), windows, progress=False)[0] == {}  # undeclared: no Gram, no error


def test_split_gptq_uses_the_per_slice_hessians() -> None:
    from bytegolf.formats import EncodeContext

    torch.manual_seed(0)
    m = pg_record_model.RecordGPT()
    state = {b: getattr(m, b).detach().clone() for b in BANKS}
    grams, rows = linear_grams(m, torch.randint(0, 8192, (4, 33)).numpy(), progress=False, einsum=["qkv_bank"])
    ctx = EncodeContext(hessians=grams, hessian_counts=dict.fromkeys(grams, rows))
    recon = {}
    for key, mode, gptq in [("rtn", "split", False), ("split", "split", True), ("fold", "fold", True)]:
        cfg = PlanConfig(passthrough_max_numel=1024, reshape=mode)
        plan = make_plan(state, cfg, "scalar", {"bits": 3, "gptq": gptq})
        units = encoder.encode_state(state, plan, ctx, progress=False)
        recon[key] = {k: v for u in units for k, v in (u.recon or {}).items()}
    for b in BANKS:
        for i in range(2):
            w, g = state[b][i], grams[f"{b}[{i}]"]
            err = {k: metrics.output_error(w, r[b][i], g) for k, r in recon.items()}
            # GPTQ on the slice's own Hessian beats rounding, and the bank-wide (summed) Hessian of fold
            assert err["split"] < 0.9 * err["rtn"] and err["split"] < err["fold"], (b, i, err)
    del ctx.hessians["qkv_bank[1]"]
    plan = make_plan(state, PlanConfig(passthrough_max_numel=1024, reshape="split"), "scalar", {"gptq": True})
    units = encoder.encode_state(state, plan, ctx, progress=False)  # that slice is rounded to nearest, with a warning
    assert units and all(u.recon for u in units)


# ------------------------------------------------------------------ model=weights: no model, no bpb


def _non_lm_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    conv = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
    state = {f"conv.{k}": v for k, v in conv.state_dict().items()}
    state |= {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    state["encoder.pos"] = torch.randn(3000) * 0.1  # a 1-D tensor far above the passthrough size
    return state


@pytest.fixture(scope="module")
def weights_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "net.safetensors"
    checkpoint.save_state_dict(_non_lm_state(), path)
    return path


def test_weights_run_measures_no_bpb(weights_ckpt: Path, tmp_path: Path) -> None:
    proc = bytegolf(
        "run",
        "model=weights",
        f"model.checkpoint={weights_ckpt}",
        *TINY_ARGS,
        "format.bits=8",
        "codec=zstd",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bpb not measured" in proc.stdout
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["bpb"] is None and r["bpb_measured"] is False and r["val_loss"] is None
    assert 0 < r["rel_mse"] < 0.01 and r["output_error"] is None  # no calibration without a model
    state = checkpoint.load_state_dict(weights_ckpt)
    decoded, units = artifact.read(tmp_path / artifact.ARTIFACT_NAME)
    assert {k: tuple(v.shape) for k, v in decoded.items()} == {k: tuple(v.shape) for k, v in state.items()}
    conv = state["conv.0.weight"]  # (16, 8, 3, 3): folded into (384, 3)
    unit = next(u for u in units if u.tensors[0].name == "conv.0.weight")
    assert unit.format == "scalar" and unit.meta["reshape"] == {"conv.0.weight": [16, 8, 3, 3]}
    rel = float((decoded["conv.0.weight"] - conv).square().sum() / conv.square().sum())
    assert 0 < rel < 0.01
    assert torch.equal(decoded["encoder.pos"], state["encoder.pos"].half().float())


def test_weights_gptq_falls_back_to_rounding_and_says_so(weights_ckpt: Path, tmp_path: Path) -> None:
    proc = bytegolf(
        "run", "model=weights", f"model.checkpoint={weights_ckpt}", *TINY_ARGS, "format.gptq=true",
        f"hydra.run.dir={tmp_path}", cwd=tmp_path,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "gptq=true needs a calibration Hessian" in out and "round-to-nearest" in out


@pytest.mark.slow
def test_weights_compare_and_report_rank_by_weight_error(weights_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    budget = 40_000
    proc = bytegolf(
        "compare",
        "model=weights",
        f"model.checkpoint={weights_ckpt}",
        *TINY_ARGS,
        "compare.front_points=0",
        "compare.seeds=1",
        "compare.formats=[scalar,clustered]",
        "compare.references=[]",
        "compare.calibrate.clustered.steps=0",
        "compare.embedding=null",
        f"compare.budgets=[{budget}]",
        "codec=zstd",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(bpb not measured)" in proc.stdout and "winner:" in proc.stdout
    rows = [store.read_result(p) for p in out.glob("points/*/*/result.json")]
    assert len(rows) == 2 and all(r["bpb"] is None and r["counted_bytes"] <= budget for r in rows)
    from bytegolf.study.ranking import ranking

    ranked = ranking(rows, budget, 100, 0.95)
    errs = [e["row"]["rel_mse"] for e in ranked]
    assert len(ranked) == 2 and errs == sorted(errs)
    rep = bytegolf("report", str(out), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "bpb was not measured" in (out / "report" / "report.md").read_text()


# ------------------------------------------------------------------ plan: vectors and reshapes


def test_plan_vectors_and_reshape_settings() -> None:
    state = {"v": torch.randn(5000), "bank": torch.randn(3, 40, 30), "m": torch.randn(60, 50)}
    plan = {a.name: a.format for a in make_plan(state, PlanConfig(passthrough_max_numel=100), "scalar", {})}
    assert plan == {"v": "passthrough", "bank": "scalar", "m": "scalar"}
    plan = make_plan(state, PlanConfig(passthrough_max_numel=100, vectors="format"), "scalar", {})
    assert plan[0].format == "scalar"
    with pytest.raises(ConfigError, match=r"plan\.vectors"):
        make_plan(state, PlanConfig(vectors="nope"), "scalar", {})
    with pytest.raises(ConfigError, match=r"plan\.reshape"):
        make_plan(state, PlanConfig(reshape="nope"), "scalar", {})


def test_reshaped_tensors_round_trip_through_the_artifact(tmp_path: Path) -> None:
    from bytegolf.artifact.layout import LayoutConfig
    from bytegolf.formats import EncodeContext

    torch.manual_seed(0)
    state = {"bank": torch.randn(3, 40, 30), "conv": torch.randn(8, 4, 3, 3), "v": torch.randn(5000)}
    plan = make_plan(state, PlanConfig(passthrough_max_numel=100), "scalar", {"bits": 8})
    units = encoder.encode_state(state, plan, EncodeContext(), progress=False)
    assert [u.tensors[0].shape for u in units] == [(120, 30), (96, 3), (5000,)]
    assert [u.format for u in units] == ["scalar", "scalar", "passthrough"] and "reshape" not in units[2].meta
    path = tmp_path / "m.bgz"
    artifact.write(path, units, "zstd", {}, LayoutConfig())
    decoded, _ = artifact.read(path)
    artifact.verify_bit_exact(decoded, units)
    for name, t in state.items():
        assert decoded[name].shape == t.shape
        assert float((decoded[name] - t).square().mean() / t.square().mean()) < 1e-3


@pytest.mark.slow
def test_module_compare_ranks_two_formats_by_kld(tiny_bundle: Path, record_ckpt: Path, tmp_path: Path) -> None:
    params = sum(t.numel() for t in torch.load(record_ckpt, weights_only=True).values())
    budget = int(params * 0.6)  # about 4.8 bits per weight with everything else
    out = tmp_path / "cmp"
    proc = bytegolf(
        "compare", f"bundle={tiny_bundle}", *TINY_ARGS, "model=module", f"model.file={FIXTURE}", "model.build=build",
        f"model.checkpoint={record_ckpt}", "compare.formats=[scalar,clustered]", "compare.references=[]",
        "compare.embedding=null", "compare.calibrate.clustered.steps=0", "compare.front_points=0", "compare.seeds=1",
        "compare.rank_by=kld", "eval.kld=true", f"compare.budgets=[{budget}]", "compare.samples=200", "codec=zstd",
        f"hydra.run.dir={out}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [store.read_result(p) for p in out.glob("points/*/*/result.json")]
    ranked = sorted((r for r in rows if r.get("budget_bytes") == budget), key=lambda r: r["kld"]["mean"])
    assert sorted(r["format"] for r in ranked) == ["clustered", "scalar"]
    assert all(r["counted_bytes"] <= budget and r["kld"]["mean"] > 0 for r in ranked)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("| scalar |", "| clustered |"))]
    assert lines[0].split("|")[1].strip() == ranked[0]["format"]  # the order is by KLD
    assert "| KLD |" in proc.stdout
    assert f"winner by KLD: {ranked[0]['format']}" in proc.stdout


def test_rank_by_kld_needs_kld_measured(tmp_path: Path) -> None:
    proc = bytegolf("compare", "compare.rank_by=kld", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2 and "compare.rank_by=kld needs eval.kld=true" in proc.stdout + proc.stderr


def test_files_fingerprint_covers_the_paths_and_bytes_in_any_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("X = 1\n")
    b.write_text("Y = 2\n")
    fp = files_fingerprint([a, b])
    assert files_fingerprint([b, a, a]) == fp  # order and repeats do not matter
    assert files_fingerprint([a]) != fp  # every file counts
    b.write_text("Y = 3\n")
    assert files_fingerprint([a, b]) != fp  # its bytes
    b.rename(tmp_path / "c.py")
    assert files_fingerprint([a, tmp_path / "c.py"]) not in (fp, files_fingerprint([a, b]))  # and its path
    assert files_fingerprint([a, tmp_path / "gone.py"]) != files_fingerprint([a])  # a missing file counts by path


USER_MODEL = """import torch
from torch import nn

SCALE = 2.0


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.one_hot(ids, 4).float()) * SCALE
"""

USER_GLUE = """import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # for the import inside build
from fp_train_gpt import Tiny


def build(state_dict):
    import fp_extras  # imported by the build only

    model = Tiny()
    model.load_state_dict(state_dict)
    return model
"""


@pytest.fixture
def user_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A glue file importing a user model module of its folder (and one more inside build), and a file nobody
    imports; the modules it adds to sys.modules (and its sys.path entry) are gone after the test."""
    (tmp_path / "fp_train_gpt.py").write_text(USER_MODEL)
    (tmp_path / "fp_extras.py").write_text("ACT = 'relu'\n")
    (tmp_path / "glue.py").write_text(USER_GLUE)
    (tmp_path / "unrelated.py").write_text("Z = 0\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _forget_user_modules(project: Path) -> None:
    """What a fresh process is: none of the project's modules imported."""
    for name, mod in list(sys.modules.items()):
        if str(getattr(mod, "__file__", None) or "").startswith(str(project)):
            del sys.modules[name]


def test_module_code_fingerprint_covers_every_imported_user_module(user_project: Path) -> None:
    cfg = {"name": "module", "checkpoint": "unused.pt", "file": str(user_project / "glue.py"), "build": "build"}
    ad = get_adapter(cfg)
    files = ad.code_files()
    assert {user_project / "glue.py", user_project / "fp_train_gpt.py"} <= set(files)
    assert user_project / "fp_extras.py" not in files
    bytegolf_dir = Path(get_adapter.__code__.co_filename).parents[1]
    installed = (Path(torch.__file__).parents[1], Path(json.__file__).parent, bytegolf_dir)
    assert not any(f.is_relative_to(d) for f in files for d in installed)  # not torch, the stdlib, nor bytegolf
    before_build = ad.fingerprints()["code"]
    ad.build({f"proj.{k}": v for k, v in nn.Linear(4, 8).state_dict().items()})
    assert user_project / "fp_extras.py" in ad.code_files()  # taken after the build: its imports count
    fp = ad.fingerprints()["code"]
    assert fp != before_build

    (user_project / "unrelated.py").write_text("Z = 1\n")  # a file nobody imported: the same key
    assert ad.fingerprints()["code"] == fp
    (user_project / "fp_train_gpt.py").write_text(USER_MODEL.replace("SCALE = 2.0", "SCALE = 3.0"))
    assert ad.fingerprints()["code"] == fp  # this process still runs the code it imported: still its key

    _forget_user_modules(user_project)  # a fresh process imports the edited module: another key
    edited = get_adapter(cfg)
    assert edited.fingerprints()["code"] != fp
    _forget_user_modules(user_project)
    (user_project / "fp_train_gpt.py").write_text(USER_MODEL)  # the original code again: the original key
    again = get_adapter(cfg)
    again.build({f"proj.{k}": v for k, v in nn.Linear(4, 8).state_dict().items()})
    assert again.fingerprints()["code"] == fp


def test_editing_an_imported_module_misses_the_cached_reference_and_grams(
    tiny_bundle: Path, record_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug: with only the glue file in the key, a rerun after editing the model module the glue imports
    reused the old model's reference evaluation and Gram matrices, and delta_bpb compared two models."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "train_gpt.py").write_text(FIXTURE.read_text())
    (project / "glue.py").write_text(
        "from train_gpt import RecordGPT\n\n\ndef build(state_dict):\n"
        "    model = RecordGPT()\n    model.load_state_dict(state_dict)\n    return model\n"
    )
    cache = tmp_path / "cache"
    monkeypatch.setenv("BYTEGOLF_CACHE", str(cache))

    def run(name: str) -> dict:
        out = tmp_path / name
        out.mkdir()
        proc = bytegolf(
            "run", f"bundle={tiny_bundle}", *TINY_ARGS, "model=module", f"model.file={project / 'glue.py'}",
            "model.build=build", f"model.checkpoint={record_ckpt}", "format.bits=6", "codec=zstd",
            f"hydra.run.dir={out}", cwd=out,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return store.read_result(out / "result.json")

    def cached() -> tuple[int, int]:
        return len(list((cache / "ref").glob("*"))), len(list((cache / "calib").glob("*")))

    first = run("first")
    assert cached() == (1, 1)
    src = (project / "train_gpt.py").read_text()
    assert src.count("range(REPEATS)") == 1
    (project / "train_gpt.py").write_text(src.replace("range(REPEATS)", "range(REPEATS - 1)"))  # one line edited
    second = run("second")
    assert cached() == (2, 2)  # a new reference evaluation and new Grams, none reused
    assert second["fingerprints"]["code"] != first["fingerprints"]["code"]
    assert second["ref_val_loss"] != first["ref_val_loss"]  # the reference is the edited model's
    assert abs(second["delta_bpb"]) < 0.1


def test_pg_top_exports_a_record_style_model_with_lqer_on_bank_slices(
    tiny_bundle: Path, record_ckpt: Path, tmp_path: Path
) -> None:
    proc = bytegolf(
        "run", "experiment=pg_top", f"bundle={tiny_bundle}", *TINY_ARGS, "model=module", f"model.file={FIXTURE}",
        "model.build=build", f"model.checkpoint={record_ckpt}", "model.einsum=[qkv_bank]", "plan.reshape=split",
        "plan.lowrank.top_k=4", "plan.lowrank.group_size=32", "extra_codecs=[]", f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    slices = [n for n in r["lowrank_tensors"] if "[" in n]
    assert slices and all(n.split("[")[0] in BANKS for n in slices)  # the record's corrections: bank slices
    assert r["bytes_by_role"]["lowrank"]["bytes"] > 0
    decoded, _ = artifact.read(tmp_path / artifact.ARTIFACT_NAME)
    state = checkpoint.load_state_dict(record_ckpt)
    assert all(0 < metrics.rel_mse(state[b], decoded[b]) < 0.05 for b in BANKS)
