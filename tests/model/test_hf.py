"""model=hf with data=text: tiny transformers causal LMs (Llama, GPT-2) and a byte-level BPE tokenizer, all
made here and saved with save_pretrained (nothing is downloaded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from bytegolf.artifact import file as artifact
from bytegolf.data.evaldata import hf_document, hf_stream
from bytegolf.errors import ConfigError
from tests.integration.test_run import TINY_ARGS, bytegolf

os.environ["HF_HUB_OFFLINE"] = "1"
VOCAB = 300


def _tokenizer(texts: list[str]) -> transformers.PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 1, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def text_data(tiny_texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("text")
    (d / "val").mkdir()
    (d / "train").mkdir()
    (d / "val" / "a.txt").write_text(tiny_texts[0] + "\n# héllo wörld ✓ 日本語\n", encoding="utf-8")
    for i, t in enumerate(tiny_texts[1:3]):
        (d / "train" / f"{i}.txt").write_text(t, encoding="utf-8")
    return d


def _save(model_cfg, tiny_texts: list[str], d: Path) -> Path:
    import torch

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(model_cfg)
    model.save_pretrained(d)
    _tokenizer(tiny_texts).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def llama_dir(tiny_texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
    )  # fmt: skip
    return _save(cfg, tiny_texts, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gpt2_dir(tiny_texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    return _save(cfg, tiny_texts, tmp_path_factory.mktemp("gpt2"))


def test_token_bytes_sum_to_the_documents_utf8_length(tiny_texts: list[str]) -> None:
    tok = _tokenizer(tiny_texts)
    for text in ("héllo wörld ✓ 日本語 🙂", "  x\n\n\ty", tiny_texts[0][:500]):
        ids, nbytes = hf_document(tok, text)
        assert ids.size > 0 and nbytes.min() >= 0 and int(nbytes.sum()) == len(text.encode("utf-8"))
        assert tok.decode(ids.tolist()) == text  # byte-level BPE is lossless
    ids, nbytes, starts = hf_stream(tok, ["ab", "cé"])
    assert ids[0] == tok.eos_token_id and starts.tolist()[0] == 0 and int(nbytes.sum()) == 2 + 3


def _run(model_dir: Path, text_data: Path, out: Path, *extra: str):
    return bytegolf(
        "run",
        "model=hf",
        f"model.path={model_dir}",
        "data=text",
        f"data.val={text_data}/val/*.txt",
        f"data.train={text_data}/train/*.txt",
        *TINY_ARGS,
        "codec=zstd",
        *extra,
        f"hydra.run.dir={out}",
        cwd=out,
    )


def test_hf_llama_runs_offline_with_gptq_and_kld(llama_dir: Path, text_data: Path, tmp_path: Path) -> None:
    proc = _run(llama_dir, text_data, tmp_path, "format.bits=6", "format.gptq=true", "eval.kld=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    # random init over 300 tokens: loss near ln(300) = 5.70 nats; int6 GPTQ barely moves it
    assert 5.4 < r["ref_val_loss"] < 6.0 and abs(r["delta_bpb"]) < 0.02
    assert r["bpb"] == pytest.approx(r["val_loss"] * r["eval_tokens"] / np.log(2) / r["eval_bytes"])
    assert r["eval_tokens"] == 4 * 64 and 64 < r["eval_bytes"] < 4 * 64 * 8
    assert 0 <= r["kld"]["mean"] < 0.01 and r["kld"]["top1_agreement"] > 0.9
    names = {t["name"]: t for t in r["tensors"]}
    assert "lm_head.weight" not in names  # tied: stored once, as the embedding
    emb = names["model.embed_tokens.weight"]
    assert emb["format"] == "scalar" and 0 < emb["output_error"] < 0.05  # its Gram is the head's input
    assert 0 < names["model.layers.0.mlp.down_proj.weight"]["output_error"] < 0.05
    decoded, _ = artifact.read(tmp_path / artifact.ARTIFACT_NAME)
    assert set(decoded) == set(names)


def test_hf_gpt2_runs(gpt2_dir: Path, text_data: Path, tmp_path: Path) -> None:
    proc = _run(gpt2_dir, text_data, tmp_path, "format.bits=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    assert 5.4 < r["ref_val_loss"] < 6.0 and abs(r["delta_bpb"]) < 0.01
    assert 0 < r["rel_mse"] < 0.01


def test_hf_bad_input_is_one_line(llama_dir: Path, text_data: Path, tmp_path: Path, tiny_texts) -> None:
    from bytegolf.model.adapters import get_adapter

    with pytest.raises(ConfigError, match=r"has no config\.json"):
        get_adapter({"name": "hf", "path": str(tmp_path), "checkpoint": str(tmp_path)})
    proc = _run(llama_dir, text_data, tmp_path, "data=default")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "use data=text" in out and "Traceback" not in out


@pytest.mark.slow
def test_hf_compare_of_two_formats_with_gptq_hessians(llama_dir: Path, text_data: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(llama_dir / "model.safetensors"), "pt") as f:
        params = sum(f.get_tensor(k).numel() for k in f.keys())  # noqa: SIM118
    budget = int(params * 0.7)
    out = tmp_path / "cmp"
    proc = bytegolf(
        "compare", "model=hf", f"model.path={llama_dir}", "data=text", f"data.val={text_data}/val/*.txt",
        f"data.train={text_data}/train/*.txt", *TINY_ARGS, "compare.formats=[scalar_gptq,clustered]",
        "compare.references=[]", "compare.embedding=null", "compare.calibrate.clustered.steps=0",
        "compare.front_points=0", "compare.seeds=1", f"compare.budgets=[{budget}]", "compare.samples=200",
        "codec=zstd", f"hydra.run.dir={out}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {
        r.get("variant") or r["format"]: r
        for r in map(json.loads, map(Path.read_text, out.glob("points/*/*/result.json")))
    }
    assert set(rows) == {"scalar_gptq", "clustered"}
    gptq = rows["scalar_gptq"]
    assert gptq["format_params"]["gptq"] and gptq["calibration_rows"] > 0 and gptq["bpb"] > 0
    assert all(r["counted_bytes"] <= budget for r in rows.values()) and "winner: " in proc.stdout


@pytest.mark.slow
def test_hf_gpt2_compare_of_two_formats(gpt2_dir: Path, text_data: Path, tmp_path: Path) -> None:
    """GPT-2's Conv1D layers are not nn.Linear (no Gram matrix): RTN scalar against clustered."""
    from safetensors import safe_open

    with safe_open(str(gpt2_dir / "model.safetensors"), "pt") as f:
        params = sum(f.get_tensor(k).numel() for k in f.keys())  # noqa: SIM118
    budget = int(params * 0.7)
    out = tmp_path / "cmp2"
    proc = bytegolf(
        "compare", "model=hf", f"model.path={gpt2_dir}", "data=text", f"data.val={text_data}/val/*.txt",
        f"data.train={text_data}/train/*.txt", *TINY_ARGS, "compare.formats=[scalar,clustered]",
        "compare.references=[]", "compare.embedding=null", "compare.calibrate.clustered.steps=0",
        "compare.front_points=0", "compare.seeds=1", f"compare.budgets=[{budget}]", "compare.samples=200",
        "codec=zstd", f"hydra.run.dir={out}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(p.read_text()) for p in out.glob("points/*/*/result.json")]
    assert sorted(r["format"] for r in rows) == ["clustered", "scalar"]
    assert all(r["counted_bytes"] <= budget and r["bpb"] > 0 for r in rows) and "winner: " in proc.stdout
