"""The eval split: whole records, chosen from source id and seed alone, beside the train split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sftdata.builder import build
from sftdata.config import BuildConfig, ConfigError, Overlong
from sftdata.manifest import EVAL_DIR, Manifest
from sftdata.shards import open_shard
from sftdata.split import eval_score, held_out

from .conftest import fixture_tokenizer
from .test_packed_build import FIXTURE_INPUTS, documents, table_documents


def _eval_documents(out) -> dict:
    """source_id -> its documents, read from the eval split's shards."""
    return table_documents(open_shard(out / EVAL_DIR / shard.name) for shard in Manifest.read(out).eval.shards)


def test_scores_are_reproducible_and_spread_evenly():
    scores = [eval_score(i, 7) for i in range(20000)]
    assert scores == [eval_score(i, 7) for i in range(20000)]
    assert scores != [eval_score(i, 8) for i in range(20000)]
    assert all(0 <= s < 1 for s in scores)
    assert abs(np.mean(np.array(scores) < 0.1) - 0.1) < 0.01


def test_a_count_holds_out_the_records_scoring_lowest_with_all_their_documents():
    source_ids = np.asarray([i for i in range(300) for _ in range(1 + i % 3)])  # one to three documents a record
    held = held_out(source_ids, 0.0, 25, seed=3)
    lowest = sorted(range(300), key=lambda i: eval_score(i, 3))[:25]
    assert sorted(set(source_ids[held].tolist())) == sorted(lowest)
    assert held.sum() == sum(1 + i % 3 for i in lowest)  # every document of a held record, none of the others
    reversed_ids = source_ids[::-1]  # positions do not matter, only source ids
    assert np.array_equal(held_out(reversed_ids, 0.0, 25, seed=3), held[::-1])


def test_a_fraction_holds_out_the_records_scoring_below_it():
    source_ids = np.arange(2000)
    held = held_out(source_ids, 0.2, 0, seed=9)
    assert held.tolist() == [eval_score(i, 9) < 0.2 for i in range(2000)]


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
