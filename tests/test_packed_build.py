"""Packed builds: every document inside a packed row is byte-identical to the unpacked build's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sftdata.builder import build
from sftdata.config import BuildConfig, ConfigError, Overlong
from sftdata.shards import iter_rows, open_build, read_rejects

from .conftest import FIXTURES, SHARED, fixture_tokenizer, requires_shared, shared_tokenizer

DATA = FIXTURES / "data"
FIXTURE_INPUTS = [DATA / "messages.jsonl", DATA / "sharegpt.json", DATA / "alpaca.json", DATA / "traps.jsonl",
                  DATA / "prompt_completion.jsonl", DATA / "malformed.jsonl"]


def documents(out) -> dict:
    """source_id -> list of (ids, mask) of its documents, read from any build (packed or not)."""
    return table_documents(open_build(out)[1])


def table_documents(tables) -> dict:
    """source_id -> list of (ids, mask) of its documents in these shard tables."""
    docs: dict = {}
    for table in tables:
        for row in iter_rows(table):
            assert int(np.sum(row.seq_lens)) == len(row.input_ids)
            start = 0
            for length, source in zip(row.seq_lens, row.source_ids):
                docs.setdefault(int(source), []).append((row.input_ids[start:start + length].tolist(),
                                                         row.loss_mask[start:start + length].tolist()))
                start += int(length)
    return docs


def assert_packed_equals_unpacked(tmp_path, tokenizer, inputs, max_length, chat_template=None):
    config = dict(tokenizer=tokenizer, chat_template=chat_template, max_length=max_length, workers=1)
    plain = build(inputs, tmp_path / "plain", BuildConfig(**config))
    packed = build(inputs, tmp_path / "packed", BuildConfig(**config, pack=True, seed=3))
    def in_any_order(docs):  # packing places a record's documents (pieces, turns in context) anywhere
        return {source: sorted(pieces) for source, pieces in docs.items()}

    assert in_any_order(documents(tmp_path / "packed")) == in_any_order(documents(tmp_path / "plain"))
    assert packed.counts.documents == plain.counts.documents
    assert read_rejects(tmp_path / "packed") == read_rejects(tmp_path / "plain")
    _, tables = open_build(tmp_path / "packed")
    rows = [r for t in tables for r in iter_rows(t)]
    assert all(len(r.input_ids) <= max_length for r in rows)
    assert all(r.loss_mask[np.cumsum(np.r_[0, r.seq_lens[:-1]])].sum() == 0 for r in rows), \
        "a document's first token is a target inside a packed row"
    p = packed.packing
    assert p.rows == len(rows) == packed.counts.rows
    assert p.tokens == plain.counts.tokens
    assert p.rows >= p.lower_bound_rows
    return packed


@pytest.mark.parametrize("tokenizer", ["llama3-bpe", "chatml-bpe", "llama2-spm", "mistral-spm", "gemma-spm"])
def test_fixture_tokenizers_packed_equals_unpacked(tmp_path, tokenizer):
    assert_packed_equals_unpacked(tmp_path, fixture_tokenizer(tokenizer), FIXTURE_INPUTS, 512)


@requires_shared
@pytest.mark.parametrize("tokenizer, template", [("llama2", FIXTURES / "templates" / "llama2.jinja"),
                                                 ("llama3_1", None), ("qwen3", None)])
def test_shared_tokenizers_packed_equals_unpacked(tmp_path, tokenizer, template):
    inputs = [SHARED / "datasets" / "dummy_conversation.json", SHARED / "datasets" / "glaive_toolcall_en_demo.json",
              SHARED / "datasets" / "identity.json"]
    packed = assert_packed_equals_unpacked(tmp_path, shared_tokenizer(tokenizer), inputs, 2048,
                                           str(template) if template else None)
    assert packed.packing.lower_bound_rows / packed.packing.rows >= 0.995


def test_pack_needs_a_length():
    with pytest.raises(ConfigError, match="pack needs max_length"):
        BuildConfig(tokenizer=fixture_tokenizer("llama3-bpe"), pack=True, max_length=None)


def test_split_turns_keeps_every_trained_turn_in_pieces(tmp_path):
    messages = []
    for k in range(8):
        messages += [{"role": "user", "content": f"question {k} " + "word " * 15},
                     {"role": "assistant", "content": f"answer {k} " + "reply " * 15}]
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"messages": messages}) + "\n")
    tok = fixture_tokenizer("llama3-bpe")
    whole = build([src], tmp_path / "whole", BuildConfig(tokenizer=tok, max_length=None))
    limit = whole.counts.tokens // 3
    split = build([src], tmp_path / "split", BuildConfig(tokenizer=tok, max_length=limit,
                                                         overlong=Overlong.SPLIT_TURNS))
    packed = build([src], tmp_path / "packed", BuildConfig(tokenizer=tok, max_length=limit,
                                                           overlong=Overlong.SPLIT_TURNS, pack=True))
    (full,) = documents(tmp_path / "whole")[0]
    pieces = documents(tmp_path / "split")[0]  # unpacked: in order
    assert split.counts.records_written == 1 and split.counts.documents == len(pieces) >= 3
    assert split.counts.split_pieces == len(pieces) - 1
    assert all(len(ids) <= limit for ids, _ in pieces)
    # the pieces are the whole document cut at turn boundaries: nothing lost, nothing trained differently
    assert sum((ids for ids, _ in pieces), []) == full[0]
    assert sum((mask for _, mask in pieces), []) == full[1]
    assert all(mask[0] == 0 for _, mask in pieces)
    assert sorted(documents(tmp_path / "packed")[0]) == sorted(pieces)
    assert packed.counts.documents == split.counts.documents
