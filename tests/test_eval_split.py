"""The eval split: whole records, chosen from source id and seed alone, beside the train split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sftdata.builder import build
from sftdata.config import BuildConfig, ConfigError, Overlong
from sftdata.manifest import EVAL_DIR, Manifest
from sftdata.shards import Row, open_shard
from sftdata.split import EvalSplit, eval_score

from .conftest import fixture_tokenizer
from .test_packed_build import FIXTURE_INPUTS, documents, table_documents


def _eval_documents(out) -> dict:
    """source_id -> its documents, read from the eval split's shards."""
    return table_documents(open_shard(out / EVAL_DIR / shard.name) for shard in Manifest.read(out).eval.shards)


def _doc(source_id: int, n: int = 3) -> Row:
    return Row(np.arange(n, dtype=np.int32), np.array([0] + [1] * (n - 1), dtype=np.uint8), [n], [source_id])


def test_scores_are_reproducible_and_spread_evenly():
    scores = [eval_score(i, 7) for i in range(20000)]
    assert scores == [eval_score(i, 7) for i in range(20000)]
    assert scores != [eval_score(i, 8) for i in range(20000)]
    assert all(0 <= s < 1 for s in scores)
    assert abs(np.mean(np.array(scores) < 0.1) - 0.1) < 0.01


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_a_count_holds_out_the_lowest_scores_whatever_the_arrival_order(order):
    ids = list(range(300)) if order == "forward" else list(range(299, -1, -1))
    train, held = [], []
    split = EvalSplit(0.0, 25, seed=3, train=train.append, held_out=held.append)
    for i in ids:
        for _ in range(1 + i % 3):  # records of one to three documents (split-turns pieces)
            split.write(_doc(i))
    counts = split.finish()
    lowest = sorted(range(300), key=lambda i: eval_score(i, 3))[:25]
    assert [int(d.source_ids[0]) for d in held] == [i for i in sorted(lowest) for _ in range(1 + i % 3)]
    assert {int(d.source_ids[0]) for d in train}.isdisjoint(lowest)
    assert len(train) + len(held) == sum(1 + i % 3 for i in range(300))
    assert (counts.records, counts.documents) == (25, len(held))
    assert counts.tokens == 3 * len(held) and counts.trained_tokens == 2 * len(held)


def test_settings_are_checked():
    tok = fixture_tokenizer("llama3-bpe")
    with pytest.raises(ConfigError, match=r"eval_fraction must be within \[0, 1\)"):
        BuildConfig(tokenizer=tok, eval_fraction=1.0)
    with pytest.raises(ConfigError, match="not both"):
        BuildConfig(tokenizer=tok, eval_fraction=0.1, eval_records=3)
    with pytest.raises(ConfigError, match="eval_records must not be negative"):
        BuildConfig(tokenizer=tok, eval_records=-1)


@pytest.mark.parametrize("pack", [False, True], ids=["unpacked", "packed"])
def test_build_holds_out_whole_records_and_loses_none(tmp_path, pack):
    tok = fixture_tokenizer("llama3-bpe")
    plain = build(FIXTURE_INPUTS, tmp_path / "plain", BuildConfig(tokenizer=tok, max_length=512, workers=1))
    config = BuildConfig(tokenizer=tok, max_length=512, workers=1, pack=pack, eval_fraction=0.3, seed=4)
    held = build(FIXTURE_INPUTS, tmp_path / "held", config)
    train, evaluation, everything = documents(tmp_path / "held"), _eval_documents(tmp_path / "held"), \
        documents(tmp_path / "plain")
    assert set(evaluation) == {i for i in everything if eval_score(i, 4) < 0.3} and evaluation
    assert {**train, **evaluation} == everything and not set(train) & set(evaluation)
    info = held.eval
    assert (info.records, info.documents) == (len(evaluation), sum(len(d) for d in evaluation.values()))
    assert info.tokens == sum(len(ids) for docs in evaluation.values() for ids, _ in docs)
    assert info.trained_tokens == sum(sum(mask) for docs in evaluation.values() for _, mask in docs)
    assert held.counts.documents == plain.counts.documents and held.counts.tokens == plain.counts.tokens
    assert (info.packing is not None) == pack and sum(s.rows for s in held.shards) + info.rows == held.counts.rows
    assert Manifest.read(tmp_path / "held") == held
    assert plain.eval is None and not (tmp_path / "plain" / EVAL_DIR).exists()


def test_the_split_does_not_depend_on_workers_or_batches(tmp_path):
    tok = fixture_tokenizer("chatml-bpe")
    # without malformed.jsonl: at --max-length 512 in worker processes one of its records raises a RecordError,
    # which does not unpickle (its __init__ takes two arguments) and breaks the pool, with or without a split
    inputs = FIXTURE_INPUTS[:-1]
    one = build(inputs, tmp_path / "one", BuildConfig(tokenizer=tok, workers=1, eval_records=5, pack=True,
                                                             max_length=512))
    two = build(inputs, tmp_path / "two", BuildConfig(tokenizer=tok, workers=2, batch_size=3,
                                                             eval_records=5, pack=True, max_length=512))
    assert one.eval.records == 5
    assert [s.sha256 for s in one.eval.shards] == [s.sha256 for s in two.eval.shards]
    assert [s.sha256 for s in one.shards] == [s.sha256 for s in two.shards]


def test_split_turns_pieces_stay_on_one_side(tmp_path):
    src = tmp_path / "in.jsonl"
    with open(src, "w") as f:
        for r in range(12):
            messages = []
            for k in range(6):
                messages += [{"role": "user", "content": f"question {r} {k} " + "word " * 12},
                             {"role": "assistant", "content": f"answer {k} " + "reply " * 12}]
            f.write(json.dumps({"messages": messages}) + "\n")
    out = tmp_path / "out"
    manifest = build([src], out, BuildConfig(tokenizer=fixture_tokenizer("llama3-bpe"), max_length=120,
                                             overlong=Overlong.SPLIT_TURNS, eval_fraction=0.4, seed=1, workers=1))
    train, evaluation = documents(out), _eval_documents(out)
    assert evaluation and train and not set(train) & set(evaluation)
    assert all(len(pieces) >= 2 for pieces in evaluation.values())
    assert manifest.eval.documents == sum(len(p) for p in evaluation.values()) > manifest.eval.records


def test_rebuilding_over_a_held_out_build_removes_the_old_split(tmp_path):
    tok = fixture_tokenizer("llama3-bpe")
    build(FIXTURE_INPUTS, tmp_path / "out", BuildConfig(tokenizer=tok, eval_records=3, workers=1))
    manifest = build(FIXTURE_INPUTS, tmp_path / "out", BuildConfig(tokenizer=tok, workers=1), overwrite=True)
    assert manifest.eval is None and not (tmp_path / "out" / EVAL_DIR).exists()
