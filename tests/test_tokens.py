"""Which tokens cover a character range: the encoding's own lookups agree with explicit offsets."""

import json
import random

import pytest

from sftdata.config import BuildConfig, InputFormat
from sftdata.pipeline import Worker
from sftdata.sources import RawRecord
from sftdata.tokens import _literal, tokenize

from .conftest import FIXTURES, fixture_tokenizer

TRAPS = [json.loads(line) for line in (FIXTURES / "data" / "traps.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("tokenizer", ["llama3-bpe", "chatml-bpe", "llama2-spm", "gemma-spm"])
def test_encoded_lookups_match_offsets_and_piecewise_encoding_matches_whole(tokenizer):
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer(tokenizer)))
    rng = random.Random(0)
    for record in TRAPS:
        try:
            rendered = worker.render(RawRecord(0, 0, InputFormat.MESSAGES, record))
        except Exception:
            continue  # a template that refuses this shape (tested elsewhere)
        (encoded,) = tokenize([rendered], worker.tokenizer)
        explicit = _literal(rendered.text, (), worker.tokenizer)
        assert encoded.ids.tolist() == explicit.ids.tolist()
        n = len(rendered.text)
        for _ in range(60):
            a = rng.randrange(n)
            b = rng.randrange(a + 1, n + 1)
            assert encoded.span((a, b)) == explicit.span((a, b)), (record.get("id"), a, b)
            assert encoded.inside((a, b)) == explicit.inside((a, b)), (record.get("id"), a, b)
