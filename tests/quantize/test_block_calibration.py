"""Block calibration (ClusComp): codes frozen, streams keep dtype and shape, decode == recon, block MSE falls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.data import bundle as data
from bytegolf.data import shards
from bytegolf.errors import ConfigError
from bytegolf.formats import EncodeContext, Encoded, get_format
from bytegolf.formats.arrays import from_numpy
from bytegolf.model import checkpoint
from bytegolf.model.gpt import GPT
from bytegolf.quantize import encoder
from bytegolf.quantize.block_calibration import FinetuneConfig, TrainableUnit, finetune, model_loss
from bytegolf.quantize.plan import PlanConfig, Rule, make_plan

SEQ, WINDOWS, TRAIN_STEPS = 32, 8, 300
CLUSTERED = {"codebook_size": 16, "dim": 4}
ADDITIVE = {"num_codebooks": 1, "codebook_bits": 4, "group_size": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tiny_bundle):
    """A briefly trained tiny model (the random one's logits are flat: its loss cannot move) and windows."""
    tokens = shards.read_shards([tiny_bundle / "train_000000.bin"])
    model = checkpoint.build_model(checkpoint.load_state_dict(tiny_bundle / "model.safetensors"))
    train = torch.from_numpy(data.windows(tokens[SEQ * WINDOWS :], SEQ))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(TRAIN_STEPS):
        b = train[torch.randint(0, len(train), (16,), generator=gen)]
        opt.zero_grad()
        model(b[:, :-1], b[:, 1:]).backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, model.requires_grad_(False), data.windows(tokens, SEQ, WINDOWS)


def encode(state, fmt: str, params: dict, rules: list[Rule] | None = None) -> list[Encoded]:
    rules = rules if rules is not None else [Rule("blocks.*.weight")]
    plan = make_plan(state, PlanConfig(rules=rules), fmt, params)
    return encoder.encode_state(state, plan, EncodeContext(), progress=False)


def quantized(state, units: list[Encoded]) -> GPT:
    sd = dict(state)
    for u in units:
        sd.update(u.recon)
    return checkpoint.build_model(sd)


def block_inputs(model: GPT, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, x0) each block receives in model.hidden (captured by hooks, so GPT's own U-Net code)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [b.register_forward_pre_hook(lambda _m, args: seen.append(args)) for b in model.blocks]
    try:
        with torch.no_grad():
            model.hidden(ids)
    finally:
        for h in hooks:
            h.remove()
    return seen


def block_mse(fp: GPT, q: GPT, i: int, x: torch.Tensor, x0: torch.Tensor) -> float:
    with torch.no_grad():
        return float((q.blocks[i](x, x0) - fp.blocks[i](x, x0)).double().pow(2).mean())


def streams_equal(a: Encoded, b: Encoded) -> bool:
    return a.streams.keys() == b.streams.keys() and all(
        a.streams[k].data.dtype == b.streams[k].data.dtype and np.array_equal(a.streams[k].data, b.streams[k].data)
        for k in a.streams
    )


def test_steps_zero_returns_units_unchanged(setup):
    state, model, win = setup
    units = encode(state, "clustered", CLUSTERED)
    out, report = finetune(units, model, win, FinetuneConfig(steps=0), progress=False)
    assert report == {"steps": 0}
    assert len(out) == len(units)
    for a, b in zip(units, out, strict=True):
        assert a is b and streams_equal(a, b)


CASES = [
    ("clustered", CLUSTERED, "codebook"),
    ("clustered", {**CLUSTERED, "normalize": True}, "codebook"),
    ("clustered", {**CLUSTERED, "codebook_dtype": "bf16"}, "codebook"),
    ("additive", ADDITIVE, "codebooks"),
]


@pytest.mark.parametrize(("fmt", "params", "book"), CASES, ids=["clustered", "normalized", "bf16", "additive"])
def test_finetune_lowers_block_mse_and_stays_exact(setup, tmp_path, fmt, params, book):
    state, model, win = setup
    units = encode(state, fmt, params)
    out, report = finetune(units, model, win, FinetuneConfig(steps=40, batch_size=4), progress=False)
    assert len(out) == len(units)
    trained = 0
    for old, new in zip(units, out, strict=True):
        if old.format != fmt:
            assert new is old  # tok_emb, control tensors: passthrough, untouched
            continue
        trained += 1
        assert new is not old and new.tensors == old.tensors and new.meta == old.meta
        assert new.nominal_bits == old.nominal_bits
        for k, s in old.streams.items():
            ns = new.streams[k]
            assert ns.data.dtype == s.data.dtype and ns.data.shape == s.data.shape
            assert ns.role == s.role and ns.alphabet == s.alphabet
            if s.role == "codes":
                assert np.array_equal(ns.data, s.data)
        assert not np.array_equal(new.streams[book].data, old.streams[book].data)  # it did train
        if params.get("normalize"):
            assert not np.array_equal(new.streams["0.scales"].data, old.streams["0.scales"].data)
        dec = get_format(new.format, **new.meta["params"]).decode(new)
        for spec in new.tensors:
            assert dec[spec.name].dtype == new.recon[spec.name].dtype
            assert torch.equal(dec[spec.name], new.recon[spec.name])
    assert trained == 12  # 6 matrices x 2 blocks
    # the artifact round trip the runner does: written, read back, bit-exact
    path = tmp_path / "model.bgz"
    artifact.write(path, out, "raw", {}, layout.LayoutConfig())
    decoded, _ = artifact.read(path)
    artifact.verify_bit_exact(decoded, out)

    # block output MSE on the calibration windows, measured here through GPT.hidden's own code:
    # each block's inputs are the calibrated quantized model's, as in finetune
    ids, tgt = torch.from_numpy(win[:, :-1]), torch.from_numpy(win[:, 1:])
    q_old, q_new = quantized(state, units), quantized(state, out)
    inputs = block_inputs(q_new, ids)
    assert len(inputs) == 2 and len(report["blocks"]) == 2
    for i, (x, x0) in enumerate(inputs):
        before, after = block_mse(model, q_old, i, x, x0), block_mse(model, q_new, i, x, x0)
        row = report["blocks"][i]
        assert row["kept"] and row["units"] == 6
        assert after < 0.95 * before, (i, before, after)
        assert row["mse_after"] == pytest.approx(after, rel=1e-4)
        assert row["mse_before"] == pytest.approx(before, rel=1e-4)
    assert report["loss_after"] == pytest.approx(model_loss(q_new, ids, tgt, 4), rel=1e-6)
    assert report["loss_before"] == pytest.approx(model_loss(q_old, ids, tgt, 4), rel=1e-6)
    assert report["loss_after"] < report["loss_before"]


def test_scalar_trains_scales_only_when_asked(setup):
    state, model, win = setup
    units = encode(state, "scalar", {"bits": 3})
    out, report = finetune(units, model, win, FinetuneConfig(steps=20, train_scales=False), progress=False)
    assert all(a is b for a, b in zip(units, out, strict=True))  # scales are all scalar has
    assert all("mse_after" not in r for r in report["blocks"])
    out, report = finetune(units, model, win, FinetuneConfig(steps=20), progress=False)
    changed = [(a, b) for a, b in zip(units, out, strict=True) if a is not b]
    assert len(changed) == 12
    for a, b in changed:
        assert np.array_equal(a.streams["codes"].data, b.streams["codes"].data)
        assert not np.array_equal(a.streams["scales"].data, b.streams["scales"].data)
        assert torch.equal(
            get_format("scalar", **b.meta["params"]).decode(b)[b.tensors[0].name], b.recon[b.tensors[0].name]
        )
    assert all(r["mse_after"] < r["mse_before"] for r in report["blocks"])


def test_units_without_hook_or_shared_pass_through(setup):
    """Passthrough blocks, and a codebook shared by both blocks (scope family), are left as they are."""
    state, model, win = setup
    rules = [Rule("blocks.0.*.weight", "passthrough", {"dtype": "fp16"}), Rule("blocks.1.attn.*.weight")]
    units = encode(state, "clustered", CLUSTERED, rules)
    out, report = finetune(units, model, win, FinetuneConfig(steps=20), progress=False)
    by_name = {s.name: (a, b) for a, b in zip(units, out, strict=True) for s in a.tensors}
    for name, (a, b) in by_name.items():
        if name.startswith("blocks.1.attn.") and name.endswith(".weight"):
            assert b is not a and np.array_equal(a.streams["0.codes"].data, b.streams["0.codes"].data)
        else:
            assert b is a and streams_equal(a, b), name
    assert report["blocks"][0] == {"block": 0}  # nothing trainable in block 0
    assert report["blocks"][1]["units"] == 4  # c_q, c_k, c_v, proj of block 1

    shared = encode(state, "clustered", {**CLUSTERED, "scope": "family"})
    out, report = finetune(shared, model, win, FinetuneConfig(steps=20), progress=False)
    assert all(a is b for a, b in zip(shared, out, strict=True))
    assert len(report["skipped"]) == 6 and all(s["why"] == "shared across blocks" for s in report["skipped"])


def test_commit_keeps_old_values_where_not_finite(setup):
    """A parameter driven to inf (overflowing fp16) is written back as its old value, not as inf."""
    state, _, _ = setup
    (unit,) = [u for u in encode(state, "clustered", CLUSTERED) if u.format == "clustered"][:1]
    fmt = get_format("clustered", **unit.meta["params"])
    tu = TrainableUnit(fmt, unit, fmt.trainable(unit, "cpu"), torch.device("cpu"), True)
    with torch.no_grad():
        tu.params["codebook"][0, 0] = 1e6  # beyond fp16
        tu.params["codebook"][1, 0] = 0.5
    new = tu.commit()
    old_cb = from_numpy(unit.streams["codebook"].data, torch.float16)
    new_cb = from_numpy(new.streams["codebook"].data, torch.float16)
    assert new_cb[0, 0] == old_cb[0, 0] and new_cb[1, 0] == 0.5
    assert torch.isfinite(new_cb).all()


@pytest.mark.parametrize("bad", [{"steps": -1}, {"lr": 0.0}, {"batch_size": 0}, {"weight_decay": -0.1}])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        FinetuneConfig(**bad)
