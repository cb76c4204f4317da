"""llama.cpp's k-quant mixes as GGUF files: the gguf_* presets' plan rules give each tensor llama-quantize's type,
a `gguf: true` run writes model.gguf that gguf-py reads back as the decoded model bit for bit and counts its size,
a damaged GGUF file is an ArtifactError, and compare ranks a GGUF preset and its +fair row at their own sizes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bytegolf.artifact import file as artifact
from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.model import checkpoint
from bytegolf.model.gpt import GPT, ModelConfig
from bytegolf.quantize.plan import PlanConfig, Rule, format_defaults, make_plan, merge_settings
from tests.integration.test_run import bytegolf

gguf_file = pytest.importorskip("bytegolf.run.gguf_file")
pytest.importorskip("gguf")

REPO = Path(__file__).resolve().parents[2]
PRESETS = REPO / "experiments" / "experiment"
BASE = {"gguf_q4_k_m": "Q4_K", "gguf_q3_k_m": "Q3_K", "gguf_q2_k": "Q2_K"}
# the built-in GPT's matrices under llama.cpp's names
ROLES = {"attn.c_q": "attn_q", "attn.c_k": "attn_k", "attn.c_v": "attn_v", "attn.proj": "attn_output"}
ROLES |= {"mlp.fc": "ffn_up", "mlp.proj": "ffn_down"}
# rows of 256 (the K types' super-block) and the default model's head ratio (n_head / n_head_kv = 2)
WIDE = ModelConfig(vocab_size=512, num_layers=2, model_dim=256, num_heads=8, num_kv_heads=4)
SMALL_RUN = ["eval.windows=4", "eval.seq_len=64", "calib.windows=0", "threads=1", "plan.passthrough_max_numel=4096"]


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits(i_layer, n_layers), C integer division (no negative case arises for i >= n/8)."""
    return i < n // 8 or i >= 7 * n // 8 or (i >= n // 8 and (i - n // 8) % 3 == 2)


def llama_type(preset: str, name: str, n_layers: int, n_gqa: int) -> str:
    """The type llama-quantize (llama_tensor_get_type, no imatrix, non-Falcon, dense) gives a tensor of the
    built-in GPT, written from its rules: the tied embedding is the output tensor (Q6_K), then attn_v,
    ffn_down and attn_output by preset."""
    if name == "tok_emb.weight":
        return "Q6_K"
    m = re.fullmatch(r"blocks\.(\d+)\.(\w+\.\w+)\.weight", name)
    assert m, name
    i, role = int(m.group(1)), ROLES[m.group(2)]
    if preset == "gguf_q2_k":
        if role == "attn_v":
            return "Q4_K" if n_gqa >= 4 else "Q3_K"
        if role in ("ffn_down", "attn_output"):
            return "Q3_K"
    if preset == "gguf_q3_k_m":
        if role == "attn_v":
            return "Q5_K" if i < 2 else "Q4_K"
        if role == "ffn_down":
            return "Q5_K" if i < n_layers // 16 else "Q4_K"
        if role == "attn_output":
            return "Q4_K"
    if preset == "gguf_q4_k_m" and role in ("attn_v", "ffn_down") and more_bits(i, n_layers):
        return "Q6_K"
    return BASE[preset]


def preset_plan(preset: str, state: dict[str, torch.Tensor]) -> list:
    node = OmegaConf.load(PRESETS / f"{preset}.yaml")
    assert node.gguf is True and {"override /format": "kquant"} in OmegaConf.to_container(node.defaults)
    params = merge_settings(format_defaults("kquant"), OmegaConf.to_container(node.format))
    rules = [Rule(**r) for r in OmegaConf.to_container(node.plan.rules)]
    return make_plan(state, PlanConfig(rules=rules), "kquant", params)


def test_use_more_bits_layers_of_the_default_model() -> None:
    assert [i for i in range(9) if more_bits(i, 9)] == [0, 3, 6, 7, 8]
    assert [i for i in range(32) if more_bits(i, 32)][:6] == [0, 1, 2, 3, 6, 9]  # a 7B's, for comparison


@pytest.mark.parametrize("preset", sorted(BASE))
def test_preset_rules_give_llama_cpp_types_on_the_default_model(preset: str) -> None:
    """The default model's shapes and names (9 layers, 8 heads over 4 KV heads), on the meta device."""
    with torch.device("meta"):
        state = GPT(ModelConfig()).state_dict()
    plan = preset_plan(preset, state)
    got = {a.name: a.params["type"] for a in plan if a.format == "kquant"}
    assert set(got) == {n for n, t in state.items() if t.ndim == 2 and t.numel() > 65_536}
    assert got == {n: llama_type(preset, n, 9, 2) for n in got}
    small = [a for a in plan if a.format != "kquant"]
    assert small and all(a.format == "passthrough" and a.params["dtype"] in ("fp16", "fp32") for a in small)
    if preset == "gguf_q4_k_m":  # named, to read without the rule function
        assert got["blocks.3.attn.c_v.weight"] == got["blocks.8.mlp.proj.weight"] == "Q6_K"
        assert got["blocks.1.attn.c_v.weight"] == got["blocks.4.mlp.proj.weight"] == "Q4_K"


@pytest.fixture(scope="module")
def wide_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_bundle's tokenizer and shards with a model whose rows are multiples of 256."""
    d = tmp_path_factory.mktemp("wide")
    for f in tiny_bundle.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, d / f.name)
    torch.manual_seed(1)
    model = GPT(WIDE)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "tok_emb" not in name:
                p.normal_(0, 0.05)
    checkpoint.save_state_dict(model.state_dict(), d / "model.safetensors")
    return d


@pytest.fixture(scope="module")
def own_cache(tmp_path_factory: pytest.TempPathFactory):
    """A cache of this module's own (artifact reuse entries of other sessions' runs cannot leak in)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BYTEGOLF_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def gguf_run(
    wide_bundle: Path, own_cache: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gguf_run")
    args = ["run", "experiment=gguf_q4_k_m", f"bundle={wide_bundle}", *SMALL_RUN, f"hydra.run.dir={out}"]
    return out, bytegolf(*args, cwd=out)


def test_a_gguf_run_counts_its_gguf_file_which_gguf_py_reads_as_the_decoded_model(gguf_run) -> None:
    out, proc = gguf_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "result.json").read_text())
    path = out / "model.gguf"
    assert r["gguf"] is True and r["final_bytes"] == r["gguf_bytes"] == path.stat().st_size
    assert r["container_bytes"] == (out / artifact.ARTIFACT_NAME).stat().st_size
    assert r["bits_per_weight"] == pytest.approx(r["gguf_bytes"] * 8 / r["params"])
    assert f"kquant+gguf: {r['final_bytes']:,} B (model.gguf, the counted file; container kquant+raw" in proc.stdout
    assert "tied embedding" not in proc.stdout + proc.stderr  # Q6_K is llama.cpp's rule, not a trap to warn of
    decoded, _ = artifact.read(out / artifact.ARTIFACT_NAME)
    back = gguf_file.read_gguf(path)
    assert set(back) == set(decoded)
    for name, want in decoded.items():
        got = torch.from_numpy(back[name]).to(want.dtype)
        assert torch.equal(got.view(torch.uint8), want.reshape(got.shape).view(torch.uint8)), name
    gguf = pytest.importorskip("gguf")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["tok_emb.weight"] == "Q6_K" and types["blocks.0.attn.c_v.weight"] == "Q6_K"  # use_more_bits(0, 2)
    assert types["blocks.1.attn.c_q.weight"] == "Q4_K" and types["blocks.0.attn_scale"] == "F32"
    assert types["blocks.0.attn.q_gain"] in ("F16", "F32")


def test_a_run_reusing_the_artifact_writes_the_same_gguf_file(gguf_run, wide_bundle: Path, tmp_path: Path) -> None:
    """The identical encoding's artifact is copied, and the GGUF file is made again from its decoded units."""
    out, proc = gguf_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = tmp_path / "again"
    args = ["run", "experiment=gguf_q4_k_m", f"bundle={wide_bundle}", *SMALL_RUN, f"hydra.run.dir={again}"]
    proc2 = bytegolf(*args, cwd=tmp_path)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    r = json.loads((again / "result.json").read_text())
    assert r["artifact_reused_from"] and r["gguf_bytes"] == json.loads((out / "result.json").read_text())["gguf_bytes"]
    assert (again / "model.gguf").read_bytes() == (out / "model.gguf").read_bytes()


def test_a_damaged_gguf_file_is_an_artifact_error(gguf_run, tmp_path: Path) -> None:
    out, proc = gguf_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    good = (out / "model.gguf").read_bytes()
    decoded, _ = artifact.read(out / artifact.ARTIFACT_NAME)
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUX" + good[4:])  # bad magic
    with pytest.raises(ArtifactError, match="unreadable"):
        gguf_file.read_gguf(path)
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ArtifactError):
        gguf_file.verify_gguf(path, decoded)
    flipped = bytearray(good)
    flipped[-100] ^= 0x40  # a block byte of the last tensor: a valid file that no longer is the decoded model
    path.write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError, match="differs from the decoded model"):
        gguf_file.verify_gguf(path, decoded)
    path.write_bytes(good)
    gguf_file.verify_gguf(path, decoded)  # the file as written passes
    with pytest.raises(ArtifactError, match="tensors missing"):
        gguf_file.verify_gguf(path, {**decoded, "extra.weight": torch.zeros(4)})


def test_gguf_tensors_refuse_a_format_without_a_gguf_type() -> None:
    from bytegolf.formats.base import EncodeContext, get_format

    enc = get_format("scalar", bits=4).encode({"w": torch.randn(8, 256)}, EncodeContext())
    with pytest.raises(ConfigError, match=r"no GGUF type: w \(scalar\)"):
        gguf_file.gguf_tensors([enc])


def test_compare_ranks_a_gguf_preset_and_its_fair_row_at_their_own_sizes(wide_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    proc = bytegolf(
        "compare",
        f"bundle={wide_bundle}",
        *SMALL_RUN,
        "compare.formats=[]",
        "compare.allocated=null",
        "compare.references=[gguf_q2_k,gguf_q2_k+fair]",
        "compare.search_references=true",  # asked, but a GGUF mix has no knob: own size only
        "compare.budgets=[1000000]",
        "compare.samples=200",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gguf_q2_k has no rate knob: ranked at its own size only" in proc.stdout
    (g_dir,) = (out / "points" / "own").glob("gguf_q2_k@own_*")
    (f_dir,) = (out / "points" / "own").glob("gguf_q2_k+fair@own_*")
    g = json.loads((g_dir / "result.json").read_text())
    f = json.loads((f_dir / "result.json").read_text())
    assert g["status"] == f["status"] == "own" and g["reference"] and f["reference"]
    assert g["final_bytes"] == g["counted_bytes"] == (g_dir / "model.gguf").stat().st_size
    assert not (f_dir / "model.gguf").exists() and "gguf_bytes" not in f and f["codec"] == "best"  # codec=fair
    assert f["final_bytes"] == (f_dir / artifact.ARTIFACT_NAME).stat().st_size
    assert f["final_bytes"] != g["final_bytes"] and g["codec"] == "raw"
    assert f["bpb"] == g["bpb"]  # the same blocks: the same decoded model
    assert not list((out / "points").glob("1000000/*"))  # neither searched to the budget
    cfg = OmegaConf.load(g_dir / "config.yaml")
    assert cfg.gguf is True and cfg.plan.rules[0].params.type == "Q6_K"
    assert "gguf" not in OmegaConf.load(f_dir / "config.yaml")


def test_reference_labels_take_a_codec_after_a_plus(wide_bundle: Path) -> None:
    from tests.study.test_compare_allocated import _systems

    refs = "compare.references=[gguf_q4_k_m,gguf_q4_k_m+zstd12,gguf_q4_k_m+fair]"
    by = {s.label: s for s in _systems(wide_bundle, refs)}
    g, z, f = by["gguf_q4_k_m"], by["gguf_q4_k_m+zstd12"], by["gguf_q4_k_m+fair"]
    assert (g.gguf, g.codec, g.knob, g.reference) == (True, "raw", None, True)
    assert (z.gguf, z.codec, z.codec_params["level"]) == (False, "zstd", 12) and z.plan == g.plan
    assert (f.gguf, f.codec, len(f.codec_params["candidates"])) == (False, "best", 4) and f.params == g.params
    with pytest.raises(ConfigError, match="unknown preset 'gguf_q4_k_m\\+'"):
        _systems(wide_bundle, "compare.references=[gguf_q4_k_m+]")
