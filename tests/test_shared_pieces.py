"""A record's documents encode what they share once (encoding.shared_pieces): each document's ids are
still exactly the ids of its whole text."""

import json
import random
from dataclasses import replace

import numpy as np
import pytest

from sftdata.config import BuildConfig, InputFormat
from sftdata.encoding import _overlap_free, encode, piece_cuts
from sftdata.records import RawRecord
from sftdata.rejects import RecordError
from sftdata.worker import Worker

from .conftest import FIXTURES, SHARED, fixture_tokenizer, requires_shared, shared_tokenizer

TRAPS = [json.loads(line) for line in (FIXTURES / "data" / "traps.jsonl").read_text().splitlines()]


def _ids(encoded) -> list[list[int]]:
    return [(e if isinstance(e, np.ndarray) else np.asarray(e.ids)).tolist() for e in encoded]


def _whole_ids(rendered, tok) -> list[list[int]]:
    """Each text encoded alone, without sharing anything."""
    return [_ids(encode([r], tok))[0] for r in rendered if not r.literal]


def _siblings(rendered, rng: random.Random, tails: list[str]):
    """Documents of one record that share a prefix of `rendered`'s text cut anywhere (inside a word, a
    special token, a multi-byte character's neighbourhood), then go on differently."""
    text = rendered.text
    out = [rendered]
    for _ in range(4):
        cut = rng.randrange(len(text) + 1)
        out.append(replace(rendered, text=text[:cut] + rng.choice(tails), extra=True))
    return out


@pytest.mark.parametrize("tokenizer", ["llama3-bpe", "chatml-bpe"])
def test_shared_pieces_give_the_ids_of_each_whole_text(tokenizer):
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer(tokenizer)))
    tok = worker.tokenizer
    cuts = piece_cuts(tok)
    assert cuts is not None, "byte-level tokenizers whose added tokens do not overlap"
    specials = list(tok.special_texts)
    tails = ["", "x", " tail", "é\n", *specials, specials[0] + "assistant\n" + specials[-1] + "ok"]
    rng = random.Random(0)
    rendered = []
    for k, record in enumerate(TRAPS):
        try:
            first = worker.render(RawRecord(k, 0, InputFormat.MESSAGES, record))
        except RecordError:
            continue
        rendered += _siblings(first, rng, tails)
    assert len(rendered) > 40
    shared = _ids(encode(rendered, tok, cuts))
    assert shared == _whole_ids(rendered, tok)


@requires_shared
def test_a_reasoning_records_own_context_documents_encode_as_whole_texts():
    path = SHARED / "datasets" / "reason_tool_use_demo_50.jsonl"
    if not path.exists():
        pytest.skip(f"shared dataset {path.name} not present")
    worker = Worker(BuildConfig(tokenizer=shared_tokenizer("qwen3")))
    records = [RawRecord(k, 0, InputFormat.MESSAGES, json.loads(line)) for k, line in enumerate(path.open())]
    rendered = worker.prepare(records).rendered
    assert sum(r.extra for r in rendered) >= 10, "Qwen3 trains earlier reasoning turns in documents of their own"
    shared = _ids(encode(rendered, worker.tokenizer, worker.piece_cuts))
    assert shared == _whole_ids(rendered, worker.tokenizer)


@pytest.mark.parametrize("texts, free", [
    (["<|im_start|>", "<|im_end|>", "<think>", "</think>"], True),
    (["<a>", "a>b"], False),  # the end of one begins another: "<a>b" holds both
    (["<|x|>", "x"], False),  # one holds another
    (["<s>", "<s>x"], False),  # one begins another
    (["aXa"], False),  # overlaps itself: "aXaXa"
])
def test_cuts_need_added_tokens_that_never_overlap(texts, free):
    assert _overlap_free(texts) is free
