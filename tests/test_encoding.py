"""Which tokens cover a character range: the encoding's own lookups agree with explicit offsets."""

import json
import random

import numpy as np
import pytest

from sftdata.config import BuildConfig, InputFormat
from sftdata.encoding import EncodedTokens, OffsetTokens, _literal, spelled_offsets, tokenize
from sftdata.records import RawRecord
from sftdata.rejects import RecordError
from sftdata.worker import Worker

from .conftest import FIXTURES, fixture_tokenizer
from .traps import SPELLING_TEXTS

TRAPS = [json.loads(line) for line in (FIXTURES / "data" / "traps.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("tokenizer", ["llama3-bpe", "chatml-bpe", "llama2-spm", "gemma-spm"])
def test_encoded_lookups_match_offsets_and_piecewise_encoding_matches_whole(tokenizer):
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer(tokenizer)))
    rng = random.Random(0)
    checked = 0
    for record in TRAPS:
        try:
            rendered = worker.render(RawRecord(0, 0, InputFormat.MESSAGES, record))
        except RecordError:
            continue  # a record this template rejects (special text, a shape it raises on): tested elsewhere
        checked += 1
        (encoded,) = tokenize([rendered], worker.tokenizer)
        explicit = _literal(rendered.text, (), worker.tokenizer)
        assert encoded.ids.tolist() == explicit.ids.tolist()
        n = len(rendered.text)
        for _ in range(60):
            a = rng.randrange(n)
            b = rng.randrange(a + 1, n + 1)
            assert encoded.span((a, b)) == explicit.span((a, b)), (record.get("id"), a, b)
            assert encoded.inside((a, b)) == explicit.inside((a, b)), (record.get("id"), a, b)
    assert checked >= len(TRAPS) // 2, f"only {checked} of {len(TRAPS)} records rendered: the check saw little"


@pytest.mark.parametrize("tokenizer", ["llama3-bpe", "chatml-bpe", "gemma-spm"])
def test_offsets_from_spelled_bytes_equal_the_tokenizers_own(tokenizer):
    tok = Worker(BuildConfig(tokenizer=fixture_tokenizer(tokenizer))).tokenizer
    assert tok.token_bytes is not None, "these tokenizers' tokens spell their text byte for byte"
    encodings = tok.backend.encode_batch(SPELLING_TEXTS, add_special_tokens=False)
    ids = [np.array(e.ids, dtype=np.int32) for e in encodings]
    for text, encoding, offsets in zip(SPELLING_TEXTS, encodings, spelled_offsets(SPELLING_TEXTS, ids, tok.token_bytes)):
        assert offsets is not None, text
        assert list(zip(*offsets)) == encoding.offsets, text


@pytest.mark.parametrize("tokenizer", ["llama2-spm", "mistral-spm"])
def test_a_tokenizer_that_adds_a_space_is_asked_for_offsets(tokenizer):
    tok = Worker(BuildConfig(tokenizer=fixture_tokenizer(tokenizer))).tokenizer
    assert tok.token_bytes is None  # SentencePiece puts "▁" before the text: token bytes are not the text's


def test_a_document_its_tokens_do_not_spell_is_encoded_again_with_offsets():
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer("chatml-bpe")))  # NFC normalizer
    tok = worker.tokenizer
    composed = {"messages": [{"role": "user", "content": "caf\u00e9?"}, {"role": "assistant", "content": "s\u00ed"}]}
    decomposed = {"messages": [{"role": "user", "content": "cafe\u0301?"}, {"role": "assistant", "content": "si\u0301"}]}
    rendered = [worker.render(RawRecord(i, i, InputFormat.MESSAGES, r)) for i, r in enumerate([composed, decomposed])]
    texts = [r.text for r in rendered]
    ids = [np.array(e.ids, dtype=np.int32) for e in tok.backend.encode_batch(texts, add_special_tokens=False)]
    spelled = spelled_offsets(texts, ids, tok.token_bytes)
    assert spelled[0] is not None and spelled[1] is None  # NFC rewrote e + U+0301 into one character
    fast, again = tokenize(rendered, tok)
    assert isinstance(fast, OffsetTokens) and isinstance(again, EncodedTokens)
    assert again.ids.tolist() == tok.backend.encode(texts[1], add_special_tokens=False).ids
    answer_at = texts[1].index("si\u0301")
    assert again.span((answer_at, answer_at + 3)) == _literal(texts[1], (), tok).span((answer_at, answer_at + 3))


def test_a_document_spelling_more_bytes_than_its_text_is_dropped_not_misread():
    from sftdata.token_bytes import TokenBytes

    table = TokenBytes.of([b"\xc3\xa9", b"abcd", b"a", b"\xe6\x97\xa5"])  # "é", "abcd", "a", "日"
    texts = ["é日", "a", "é"]
    ids = [np.array([0, 3], dtype=np.int32), np.array([1], dtype=np.int32), np.array([0], dtype=np.int32)]
    def as_lists(found):
        return [None if f is None else tuple(map(list, f)) for f in found]

    assert as_lists(spelled_offsets(texts, ids, table)) == [([0, 1], [1, 2]), None, ([0], [1])]
    # the last document too (its tokens point past the batch's bytes)
    assert as_lists(spelled_offsets(texts[:2], ids[:2], table)) == [([0, 1], [1, 2]), None]
