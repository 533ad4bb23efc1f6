"""Conversations built to break masking: each test is a bug a review found, kept fixed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sftdata.builder import build
from sftdata.config import BuildConfig, InputFormat, Overlong, SpecialText, TrainOn
from sftdata.records import RawRecord
from sftdata.rejects import Reason
from sftdata.shards import iter_rows, open_build, read_rejects
from sftdata.worker import Worker

from .conftest import fixture_tokenizer

CHATML = fixture_tokenizer("chatml-bpe")  # with the real Qwen3 template
LLAMA3 = fixture_tokenizer("llama3-bpe")
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def process(record: dict, **config):
    worker = Worker(BuildConfig(tokenizer=config.pop("tokenizer", CHATML), max_length=None, **config))
    return worker, worker.process([RawRecord(0, 0, InputFormat.MESSAGES, record)])


def trained_texts(worker: Worker, doc) -> list[str]:
    """The decoded text of each run of trained tokens."""
    runs, start = [], None
    for t, m in enumerate(list(doc.loss_mask) + [0]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            runs.append(worker.tokenizer.backend.decode(doc.input_ids[start:t].tolist(), skip_special_tokens=False))
            start = None
    return runs


@pytest.mark.parametrize("record", [
    # private-use text sends the whole conversation to the difference method, tool calls included
    {"messages": [{"role": "user", "content": "icon \U000F0001"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
                  {"role": "tool", "content": "21C"}, {"role": "assistant", "content": "done"}]},
    # Qwen3 cuts <think> out of the content of a message that also calls a tool
    {"messages": [{"role": "user", "content": "weather?"},
                  {"role": "assistant", "content": "<think>\nneed tool\n</think>\n\n", "tool_calls": [CALL]},
                  {"role": "tool", "content": "21C"}, {"role": "assistant", "content": "It is 21C."}]},
])
def test_difference_method_handles_tool_calls_and_reasoning(record):
    # reasoning written into the content as <think> (Qwen's added tokens) is control text: allowed knowingly
    worker, result = process(record, special_text=SpecialText.ALLOW)
    assert not result.rejects, result.rejects
    # the call is a non-thinking reply: the whole rendering holds it without the empty think block its
    # prompt ends with, so it is trained in a document of its own (contract of issue 14)
    runs = [r for doc in result.documents for r in trained_texts(worker, doc)]
    assert any("get_weather" in r and r.endswith("<|im_end|>") for r in runs)
    assert any(r.endswith("done<|im_end|>") or r.endswith("It is 21C.<|im_end|>") for r in runs)
    assert not any("21C<|im_end|>" in r and "tool_response" in r for r in runs)


def test_end_of_turn_text_in_tool_arguments():
    record = {"messages": [
        {"role": "user", "content": "print the marker"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "python", "arguments": {"code": "print('<|im_end|>')"}}}]},
        {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "done"}]}
    _, rejected = process(record)
    assert [r.reason for r in rejected.rejects] == [Reason.SPECIAL_TOKEN_IN_CONTENT]
    assert "tool call" in rejected.rejects[0].detail
    worker, allowed = process(record, special_text=SpecialText.ALLOW)
    # the call is a non-thinking reply, trained in a document of its own (the whole rendering lacks the
    # empty think block its prompt ends with)
    call = next(r for d in allowed.documents for r in trained_texts(worker, d) if "python" in r)
    assert call.endswith("</tool_call><|im_end|>"), "the turn must end at its own end-of-turn token"
    worker, literal = process(record, special_text=SpecialText.LITERAL)
    im_end = worker.tokenizer.token_id("<|im_end|>")
    assert (literal.documents[0].input_ids == im_end).sum() == 4  # 4 turns close; the argument stays text


def test_trained_user_after_an_empty_reply_trains_no_header():
    record = {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": ""},
                           {"role": "user", "content": "q2", "train": True}, {"role": "assistant", "content": "a"}]}
    worker, result = process(record)
    # the empty think block before a reply without reasoning is the non-thinking prompt: untrained (issue 14)
    assert trained_texts(worker, result.documents[0]) == ["q2<|im_end|>", "a<|im_end|>"]


def _long(turns: int) -> dict:
    messages = [{"role": "system", "content": "S " * 5}]
    for k in range(turns):
        messages += [{"role": "user", "content": f"U{k} " * 10}, {"role": "assistant", "content": f"A{k} " * 10}]
    return {"messages": messages}


def test_train_on_all_cuts_after_an_end_of_turn_and_untrains_a_whole_turn():
    worker, full = process(_long(2), tokenizer=LLAMA3, train_on=TrainOn.ALL)
    eot = worker.tokenizer.token_id("<|eot_id|>")
    (doc,) = full.documents
    ends = [i + 1 for i in np.flatnonzero(doc.input_ids == eot)]
    assert list(doc.turn_ends) == ends
    record = _long(2)
    record["messages"][2]["train"] = False
    worker, partly = process(record, tokenizer=LLAMA3, train_on=TrainOn.ALL)
    (doc,) = partly.documents
    closing = ends[2] - 1  # the end-of-turn of the untrained reply
    assert doc.loss_mask[closing] == 0 and doc.loss_mask[closing + 1] == 1


def test_split_turns_pieces_start_at_a_turn(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(_long(3)) + "\n")
    build([src], tmp_path / "o", BuildConfig(tokenizer=LLAMA3, max_length=60, overlong=Overlong.SPLIT_TURNS))
    _, tables = open_build(tmp_path / "o")
    pieces = [row.input_ids for t in tables for row in iter_rows(t)]
    worker = Worker(BuildConfig(tokenizer=LLAMA3))
    starts = {worker.tokenizer.token_id("<|begin_of_text|>"), worker.tokenizer.token_id("<|start_header_id|>")}
    assert len(pieces) >= 2 and all(int(p[0]) in starts for p in pieces), "a piece starts mid-turn"


def test_per_input_counts_with_an_empty_input_and_any_worker_count(tmp_path):
    a, empty, b = tmp_path / "a.jsonl", tmp_path / "empty.jsonl", tmp_path / "b.jsonl"
    line = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    a.write_text((line + "\n") * 30)
    empty.write_text("")
    b.write_text((line + "\n") * 3)
    for workers in (1, 2):
        manifest = build([a, empty, b], tmp_path / f"o{workers}", BuildConfig(tokenizer=CHATML, workers=workers,
                                                                              batch_size=1))
        assert [(i.records, i.documents) for i in manifest.inputs] == [(30, 30), (0, 0), (3, 3)]


def test_bad_utf8_line_and_byte_order_mark(tmp_path):
    line = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + line.encode() + b"\n" + b'{"messages": "\xff"}\n' + line.encode() + b"\n")
    manifest = build([src], tmp_path / "o", BuildConfig(tokenizer=CHATML))
    assert manifest.counts.documents == 2
    assert [r["reason"] for r in read_rejects(tmp_path / "o")] == ["malformed_record"]
    as_json = tmp_path / "in.json"
    as_json.write_bytes(b"\xef\xbb\xbf[" + line.encode() + b"]")
    assert build([as_json], tmp_path / "o2", BuildConfig(tokenizer=CHATML)).counts.documents == 1
