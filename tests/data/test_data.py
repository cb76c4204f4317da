"""Shards, corpus split, tokenizer and the byte counts behind bits-per-byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bytegolf.data import bundle as data
from bytegolf.data import corpus, shards, tokenizer
from bytegolf.errors import DataError


def test_shard_roundtrip_and_header(tmp_path: Path) -> None:
    toks = np.random.default_rng(0).integers(0, 65536, 10_001).astype(np.uint16)
    p = tmp_path / "a.bin"
    shards.write_shard(p, toks)
    header = np.fromfile(p, dtype="<i4", count=256)
    assert header[:3].tolist() == [20240520, 1, 10_001]
    assert p.stat().st_size == 1024 + 2 * 10_001
    np.testing.assert_array_equal(shards.read_shard(p), toks)


def test_shard_rejects_bad_files(tmp_path: Path) -> None:
    p = tmp_path / "a.bin"
    shards.write_shard(p, np.arange(10, dtype=np.uint16))
    raw = p.read_bytes()
    (tmp_path / "short.bin").write_bytes(raw[:-2])
    with pytest.raises(DataError, match="promises 10 tokens"):
        shards.read_shard(tmp_path / "short.bin")
    (tmp_path / "magic.bin").write_bytes(b"\0" * 4 + raw[4:])
    with pytest.raises(DataError, match="not a Parameter Golf shard"):
        shards.read_shard(tmp_path / "magic.bin")
    with pytest.raises(DataError, match="uint16"):
        shards.write_shard(tmp_path / "big.bin", np.array([70_000]))


def test_split_is_deterministic_and_disjoint() -> None:
    docs = [corpus.Document(f"f{i}.py", "x = 1\n") for i in range(200)]
    tr, va = corpus.split(docs, 0.1)
    tr2, va2 = corpus.split(list(reversed(docs)), 0.1)
    assert [d.key for d in va] == [d.key for d in va2] and [d.key for d in tr] == [d.key for d in tr2]
    assert not {d.key for d in tr} & {d.key for d in va}
    assert 5 <= len(va) <= 40


def test_tokenizer_is_lossless_and_byte_counts_are_exact(tiny_bundle: Path, tiny_texts: list[str]) -> None:
    sp = tokenizer.load_tokenizer(tiny_bundle / "tokenizer.model")
    tables = tokenizer.byte_tables(sp)
    assert not tables.drop_space_after_boundary  # no dummy prefix: a leading space is a real byte
    text = tiny_texts[0]
    assert sp.decode(sp.encode(text)) == text
    # whitespace runs (indentation) are pieces, so '▁' stands inside pieces too
    assert any(tokenizer.SPACE * 4 in sp.id_to_piece(i) for i in range(sp.vocab_size()))
    toks = shards.read_shard(tiny_bundle / "val_000000.bin").astype(np.int64)
    counted = tables.count(toks[:-1], toks[1:]).sum() + tables.count(toks[:1], toks[:1]).sum()
    assert counted == len(text.encode("utf-8"))


def test_caseops_markers_count_no_bytes(tmp_path: Path, tiny_texts: list[str]) -> None:
    import io

    import sentencepiece as spm

    marker = "\ue001"  # CaseOps' "capitalize the next word": the record's byte sidecar counts it as 0 bytes
    texts = [t.replace("def ", f"{marker}def ") for t in tiny_texts]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=out, vocab_size=600, model_type="bpe", byte_fallback=True,
        user_defined_symbols=[marker, f"{marker}def"], bos_id=1, eos_id=2, unk_id=3, pad_id=0, minloglevel=2,
        add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_proto=out.getvalue())
    tables = tokenizer.byte_tables(sp)
    assert tables.base_bytes[sp.piece_to_id(marker)] == 0 and tables.base_bytes[sp.piece_to_id(f"{marker}def")] == 3
    text = texts[0]
    ids = np.array([1, *sp.encode(text)])
    counted = tables.count(ids[:-1], ids[1:]).sum()
    assert sp.decode(ids[1:].tolist()) == text and text.count(marker) > 0  # lossless, as bytegolf's tokenizer
    assert counted == len(text.replace(marker, "").encode("utf-8"))  # every byte but the markers


def test_windows_are_fixed_and_non_overlapping() -> None:
    w = data.windows(np.arange(100, dtype=np.uint16), seq_len=10, count=3)
    assert w.shape == (3, 11)
    assert w[1, 0] == 10 and w[0, -1] == 10  # the target of one window starts the next
    with pytest.raises(DataError, match="too few"):
        data.windows(np.arange(5, dtype=np.uint16), seq_len=10)
