"""Shared fixtures: a tiny bundle (tokenizer, shards, checkpoint) made from real stdlib sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bytegolf.data import corpus, shards, tokenizer
from bytegolf.model import checkpoint
from bytegolf.model.gpt import GPT, ModelConfig

TINY = ModelConfig(vocab_size=512, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2)


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one thread is faster and immune to a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    _, files = corpus.stdlib_files()
    picked = [
        p for p in files if p.name in ("textwrap.py", "bisect.py", "heapq.py", "keyword.py", "fnmatch.py", "shlex.py")
    ]
    return [p.read_text(encoding="utf-8") for p in picked]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_texts: list[str]) -> Path:
    """A bundle directory in the layout `bytegolf run bundle=DIR` expects, with a random tiny model."""
    d = tmp_path_factory.mktemp("bundle")
    tokenizer.train_tokenizer(tiny_texts[1:], d / "tokenizer.model", vocab_size=TINY.vocab_size)
    sp = tokenizer.load_tokenizer(d / "tokenizer.model")
    shards.write_shard(d / "train_000000.bin", tokenizer.encode_documents(sp, tiny_texts[1:]))
    shards.write_shard(d / "val_000000.bin", tokenizer.encode_documents(sp, tiny_texts[:1]))
    torch.manual_seed(0)
    model = GPT(TINY)
    with torch.no_grad():  # give the zero-initialised projections some weight
        for name, p in model.named_parameters():
            if p.ndim == 2 and "tok_emb" not in name:
                p.normal_(0, 0.05)
    checkpoint.save_state_dict(model.state_dict(), d / "model.safetensors")
    return d


def roundtrip(fmt, tensors: dict[str, torch.Tensor], ctx=None):
    """Encode and decode; decoded tensors must equal the encoder's reconstruction bit for bit."""
    from bytegolf.formats.base import EncodeContext

    enc = fmt.encode(tensors, ctx or EncodeContext())
    out = fmt.decode(enc)
    for name, w in tensors.items():
        assert out[name].dtype == w.dtype and out[name].shape == w.shape
        assert torch.equal(out[name], enc.recon[name])
    for s in enc.streams.values():
        if s.alphabet is not None:
            assert s.data.min() >= 0 and s.data.max() < s.alphabet
    json.dumps(enc.meta)  # meta must be JSON-able for the container
    return enc, out
