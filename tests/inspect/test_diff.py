"""`sftdata diff` on builds that differ in known ways: --train-on assistant vs last, sftdata's masks vs the
response-template comparator (ChatML, and a SentencePiece tokenizer where the template is never found),
and token ids that differ (a system prompt added)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftdata.cli import main
from sftdata.comparators import response_template_mask
from sftdata.config import Masker, TrainOn
from sftdata.inspect.alignment import align, classify, compare_documents, runs
from sftdata.inspect.build_data import BuildData
from sftdata.inspect.diff import diff_builds, near

from ..conftest import fixture_tokenizer
from .builders import CHATML, CHATS, MULTI_TURN, RESPONSE_TEMPLATE, make_build, plain_template, write_chats


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    spm = {"tokenizer": fixture_tokenizer("llama2-spm"), "chat_template": plain_template(root)}
    return {
        "assistant": make_build(root, "assistant"),
        "last": make_build(root, "last", train_on=TrainOn.LAST),
        "comparator": make_build(root, "comparator", masker=Masker.RESPONSE_TEMPLATE,
                                 response_template=RESPONSE_TEMPLATE),
        "system": make_build(root, "system", system_prompt="Be brief."),
        "spm": make_build(root, "spm", **spm),
        "spm_comparator": make_build(root, "spm_comparator", masker=Masker.RESPONSE_TEMPLATE,
                                     response_template="### Assistant:", **spm),
        "reversed": make_build(root, "reversed", inputs=[write_chats(root / "reversed_in", CHATS[::-1])]),
    }


def _diff(builds, a, b):
    return diff_builds(BuildData(builds[a]), BuildData(builds[b]))


def _differing_positions(d, doc):
    return np.flatnonzero(d.a.mask(doc.a) != d.b.mask(doc.b))


def test_train_on_last_drops_every_earlier_turn(builds):
    d = _diff(builds, "assistant", "last")
    assert (d.compared, d.identical, d.mask_differ, d.ids_differ) == (5, 3, 2, 0)
    assert not d.only_a and not d.only_b and d.rejected_both == 2
    assert sorted(doc.source_id for doc in d.docs) == sorted(MULTI_TURN)
    assert [doc.changed for doc in d.docs] == sorted((doc.changed for doc in d.docs), reverse=True)
    lost = 0
    for doc in d.docs:
        turns = runs(d.a.mask(doc.a))
        assert len(turns) == MULTI_TURN[doc.source_id]
        earlier = np.concatenate([np.arange(s, e) for s, e in turns[:-1]])
        assert _differing_positions(d, doc).tolist() == earlier.tolist()
        assert doc.status == "mask" and doc.gained == 0 and doc.lost == len(earlier)
        assert doc.tags == (f"B trains only the last of A's {len(turns)} trained turns",)
        lost += len(earlier)
    assert d.lost == lost and d.gained == 0
    assert ("train on", "assistant", "last") in d.settings


def test_comparator_trains_every_prompt_after_the_first_reply_header(builds):
    from transformers import AutoTokenizer

    d = _diff(builds, "assistant", "comparator")
    assert d.b.is_comparator and d.names == ("A", "B (comparator)")
    assert (d.compared, d.mask_differ, d.ids_differ, d.lost) == (5, 5, 0, 0)
    template = np.array(AutoTokenizer.from_pretrained(CHATML).backend_tokenizer.encode(
        RESPONSE_TEMPLATE, add_special_tokens=False).ids)
    gained = 0
    for doc in d.docs:
        ids, ours = d.a.ids(doc.a), d.a.mask(doc.a)
        classic = response_template_mask(ids, template)
        first_trained = int(np.flatnonzero(ours)[0])
        expected = np.flatnonzero((classic == 1) & (ours == 0))
        assert _differing_positions(d, doc).tolist() == expected.tolist()
        assert expected.min() > first_trained  # nothing before the first reply differs
        gained += len(expected)
        assert "B trains the tokens after the last reply" in doc.tags
        assert ("B trains the prompt turns between replies" in doc.tags) == (doc.source_id in MULTI_TURN)
    assert d.gained == gained
    # the record sftdata rejects (an empty reply) is a document only in the comparator
    (only,) = d.only_b
    assert only["source_id"] == 5 and only["other"].startswith("rejected: no_trainable_tokens")


def test_sentencepiece_comparator_never_finds_the_template(builds):
    d = _diff(builds, "spm", "spm_comparator")
    assert d.mask_differ == d.compared == 5 and d.gained == 0
    assert d.lost == int(d.a.docs.trained.sum()) and int(d.b.docs.trained.sum()) == 0
    assert all(doc.tags == ("B trains nothing",) for doc in d.docs)


def test_added_system_prompt_differs_in_ids_only_by_inserted_tokens(builds):
    d = _diff(builds, "assistant", "system")
    assert (d.compared, d.ids_differ, d.mask_differ, d.gained, d.lost) == (5, 5, 0, 0, 0)
    for doc in d.docs:
        al = align(d.a.ids(doc.a), d.b.ids(doc.b))
        assert (al.ib >= 0).all(), "no token of A is missing from B"
        inserted = al.ib[al.ia < 0]
        assert doc.changed == len(inserted) == doc.tokens_b - doc.tokens_a
        assert not d.b.mask(doc.b)[inserted].any()
        assert doc.tags[0] == (f"token ids differ ({doc.tokens_a} vs {doc.tokens_b} tokens; "
                               f"0 only in A, {len(inserted)} only in B)")


def test_identical_builds_and_exit_status(builds, capsys):
    assert main(["diff", str(builds["assistant"]), str(builds["assistant"]), "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"documents compared\s+5\b", out) and re.search(r"identical\s+5\b", out)
    assert "most changed" not in out and "only in A (" not in out and "different inputs" not in out
    assert main(["diff", str(builds["assistant"]), str(builds["last"]), "--color", "never", "--limit", "1"]) == 1
    out = capsys.readouterr().out
    assert "[-" in out and "-]" in out and "B trains only the last" in out
    assert main(["diff", str(builds["assistant"]), str(builds["comparator"]), "--color", "never", "--tokens"]) == 1
    out = capsys.readouterr().out
    assert "COMPARATOR" in out and "◀ differs" in out and "only in B (comparator)" in out
    assert main(["diff", str(builds["assistant"]), str(builds["system"]), "--color", "never"]) == 1
    assert "not in the other build" in capsys.readouterr().out


def test_builds_of_different_inputs_are_compared_with_a_warning(builds, capsys, tmp_path):
    assert main(["diff", str(builds["assistant"]), str(builds["reversed"]), "--color", "never",
                 "--html", str(tmp_path / "d.html")]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: A and B were built from different inputs" in out
    assert "unrelated records" in (tmp_path / "d.html").read_text(encoding="utf-8")


def test_classify_names_the_classic_failures():
    reply = np.array([0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0])
    assert classify(reply, reply) == []
    assert classify(reply, np.zeros_like(reply)) == ["B trains nothing"]
    assert classify(reply, np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0])) == [
        "B trains only the first of A's 2 trained turns"]
    header = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0])
    assert classify(reply, header) == ["B trains the header before a reply"]
    after = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    assert classify(reply, after) == ["B trains the prompt turns between replies",
                                      "B trains the tokens after the last reply"]
    no_eot = np.array([0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0])
    assert classify(reply, no_eot) == ["B leaves the end-of-turn token untrained"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=40), st.lists(st.integers(0, 5), max_size=40))
def test_alignment_covers_both_sides_in_order_and_pairs_equal_ids(a, b):
    ids_a, ids_b = np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)
    al = align(ids_a, ids_b)
    assert al.ia[al.ia >= 0].tolist() == list(range(len(a)))
    assert al.ib[al.ib >= 0].tolist() == list(range(len(b)))
    both = (al.ia >= 0) & (al.ib >= 0)
    assert np.array_equal(ids_a[al.ia[both]], ids_b[al.ib[both]])
    assert not ((al.ia < 0) & (al.ib < 0)).any()
    mask_a, mask_b = (ids_a % 2).astype(np.uint8), (ids_b > 2).astype(np.uint8)
    _, facts = compare_documents(ids_a, mask_a, ids_b, mask_b)
    assert facts["trained_b"] - facts["trained_a"] == facts["gained"] - facts["lost"]
    assert (facts["status"] == "identical") == (a == b and np.array_equal(mask_a, mask_b))


def test_near_keeps_context_around_differences():
    flags = np.zeros(20, dtype=bool)
    flags[[5, 15]] = True
    assert np.flatnonzero(near(flags, 2)).tolist() == [3, 4, 5, 6, 7, 13, 14, 15, 16, 17]
    assert not near(np.zeros(4, dtype=bool), 3).any()


def test_user_text_that_looks_like_markup_is_printed_as_is(tmp_path, capsys):
    # a response template such as Llama-2's "[/INST]" once made the settings table raise a markup error
    # (exit 1, which diff documents as "the builds differ")
    root = tmp_path / "[brackets]"
    a = make_build(root, "a")
    b = make_build(root, "b", masker="response-template", response_template="[/INST] [bold]x")
    assert main(["diff", str(a), str(b), "--color", "always"]) == 1
    out = capsys.readouterr().out
    assert "[/INST] [bold]x" in out and "[brackets]" in out
