"""bytegolf.model.record_stubs: a record-style train_gpt.py (tests/fixtures/record_stub_model.py: FA3 and
Triton imports, a module-level torch.compile, weight banks, looped layers behind `looping_active`) imports and
evaluates on the CPU through the stand-ins, and runs under `bytegolf run model=module`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bytegolf.model import record_stubs
from bytegolf.run import store
from tests.integration.test_run import TINY_ARGS, bytegolf

FIXTURE = Path(__file__).parents[1] / "fixtures" / "record_stub_model.py"
STUBBED = ("flash_attn_interface", "triton", "triton.language", "triton.tools", "triton.tools.tensor_descriptor")


@pytest.fixture(scope="module")
def record():
    """The fixture imported through the stand-ins; sys.modules and torch.compile as before afterwards."""
    real_compile = torch.compile
    mod = record_stubs.import_record(FIXTURE)
    assert torch.compile is real_compile  # the identity only while the record imported
    yield mod
    record_stubs.uninstall()
    sys.modules.pop(FIXTURE.stem, None)


def _random_model(record) -> nn.Module:
    torch.manual_seed(0)
    return record.GPT(record.Hyperparameters()).eval()


@pytest.mark.skipif(
    all(importlib.util.find_spec(m) is not None for m in ("flash_attn_interface", "triton")),
    reason="FlashAttention 3 and Triton are installed here",
)
def test_the_fixture_does_not_import_without_the_stubs() -> None:
    code = f"import sys; sys.path.insert(0, {str(FIXTURE.parent)!r}); import record_stub_model"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ModuleNotFoundError: No module named 'flash_attn_interface'" in proc.stderr or (
        "ModuleNotFoundError: No module named 'triton'" in proc.stderr
    )


def test_the_record_imports_with_stand_ins_and_no_compile(record) -> None:
    assert all(getattr(sys.modules[n], record_stubs.STUB_MARK, False) for n in STUBBED if n in sys.modules)
    assert record.flash_attn_3_func is record_stubs.flash_attn_func
    # the module-level @torch.compile left the function as written (no dynamo wrapper)
    assert record.newton_schulz.__code__.co_name == "newton_schulz"
    assert not hasattr(record.newton_schulz, "_torchdynamo_orig_callable")
    assert record_stubs.install() == []  # idempotent


@pytest.mark.parametrize(("heads", "kv_heads", "dtype"), [(4, 4, torch.float32), (8, 2, torch.float32)])
def test_flash_attn_stand_in_is_causal_sdpa(heads: int, kv_heads: int, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    b, t, d = 2, 17, 16
    q = torch.randn(b, t, heads, d, dtype=dtype)
    k, v = (torch.randn(b, t, kv_heads, d, dtype=dtype) for _ in range(2))
    y = record_stubs.flash_attn_func(q, k, v, causal=True)
    assert y.shape == (b, t, heads, d) and y.dtype == dtype
    g = heads // kv_heads  # query head h reads kv head h // g
    kk, vv = (z.transpose(1, 2).repeat_interleave(g, dim=1) for z in (k, v))
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, is_causal=True).transpose(1, 2)
    torch.testing.assert_close(y, ref)
    scaled = record_stubs.flash_attn_func(q, k, v, softmax_scale=0.1, causal=True)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, is_causal=True, scale=0.1).transpose(1, 2)
    torch.testing.assert_close(scaled, ref)
    # packed documents attend within themselves: the same as each document on its own
    cu = torch.tensor([0, 5, 5, 17], dtype=torch.int32)
    packed = record_stubs.flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, 12, 12, causal=True)
    for s, e in ((0, 5), (5, 17)):
        alone = record_stubs.flash_attn_func(q[:1, s:e], k[:1, s:e], v[:1, s:e], causal=True)[0]
        torch.testing.assert_close(packed[s:e], alone)
    with pytest.raises(NotImplementedError, match="softcap"):
        record_stubs.flash_attn_func(q, k, v, causal=True, softcap=30.0)


def test_forgetting_the_looping_switch_gives_another_model(record) -> None:
    model = _random_model(record)
    ids = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        off = model.forward_logits(ids)
        assert not record_stubs.looping_enabled(model)
        assert record_stubs.enable_looping(model) == 1
        assert model.looping_active is True and record_stubs.looping_enabled(model)
        on = model.forward_logits(ids)
    assert on.shape == off.shape == (2, 24, 512)
    assert (on - off).abs().max() > 1e-3  # the looped layers run again: different logits
    with pytest.raises(ValueError, match="no recurrence switch"):
        record_stubs.enable_looping(nn.Linear(2, 2))


def test_training_paths_name_the_stand_in(record) -> None:
    model = _random_model(record).train()  # the fused MLP's Triton kernel
    with pytest.raises(RuntimeError, match="stand-in"):
        model.forward_logits(torch.zeros(1, 8, dtype=torch.long))


GLUE = """
from bytegolf.model import record_stubs

rec = record_stubs.import_record({fixture!r})


class Record(rec.GPT):
    def forward(self, ids):
        return self.forward_logits(ids)


def build(state_dict):
    model = Record(rec.Hyperparameters()).eval()
    model.load_state_dict(state_dict)
    record_stubs.enable_looping(model)
    return model
"""


def test_bytegolf_run_evaluates_the_record_through_the_stubs(
    record, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    glue = tmp_path / "glue.py"
    glue.write_text(textwrap.dedent(GLUE.format(fixture=str(FIXTURE))))
    ckpt = tmp_path / "record.pt"
    torch.save(_random_model(record).state_dict(), ckpt)
    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setenv("BYTEGOLF_CACHE", str(tmp_path / "cache"))
    proc = bytegolf(
        "run", f"bundle={tiny_bundle}", *TINY_ARGS, "model=module", f"model.file={glue}", "model.build=build",
        f"model.checkpoint={ckpt}", "format.bits=6", "codec=zstd", f"hydra.run.dir={out}", cwd=out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = store.read_result(out / "result.json")
    assert r["eval_tokens"] == 4 * 64 and abs(r["delta_bpb"]) < 0.1
    # every bank slice and the tied head are used through F.linear: all quantized weights have Gram matrices
    assert r["output_error_covers"]["missing"] == []
    assert "code" in r["fingerprints"]
