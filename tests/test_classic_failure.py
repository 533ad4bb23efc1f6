"""The failure that started the project, reproduced: with a SentencePiece tokenizer `### Assistant:`
tokenizes differently alone and in context, so searching its ids finds nothing and the example is
silently untrained (or, on a later match, trains the wrong part). sftdata's masks stay exact."""

from __future__ import annotations

import numpy as np
import pytest

from sftdata.comparators import find_subsequence, response_template_mask
from sftdata.config import BuildConfig, InputFormat
from sftdata.records import RawRecord
from sftdata.worker import Worker

from .conftest import requires_shared, shared_tokenizer
from .contract import hf_tokenizer, reference_tokens, trained_runs

PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'user' %}### Human: {{ m.content }}\n\n"
    "{% elif m.role == 'assistant' %}### Assistant: {{ m.content }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}### Assistant:{% endif %}"
)

RECORD = {"messages": [
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi, how can I help you?"},
    {"role": "user", "content": "Tell me a joke."},
    {"role": "assistant", "content": "Why did the chicken cross the road?"},
]}


@pytest.fixture(params=["mistral-common-v1", pytest.param("shared-llama2", marks=requires_shared)])
def tokenizer_dir(request, mistral_dir):
    return mistral_dir["v1"] if request.param == "mistral-common-v1" else shared_tokenizer("llama2")


def test_response_template_search_misses_in_context(tokenizer_dir, tmp_path):
    tok = hf_tokenizer(tokenizer_dir)
    alone = np.array(tok.encode("### Assistant:", add_special_tokens=False))
    in_context = tok.encode("### Human: Hello\n\n### Assistant: Hi", add_special_tokens=False)
    assert find_subsequence(np.array(in_context), alone) == -1, "the tokenizer is not context-sensitive"

    template_file = tmp_path / "plain.jinja"
    template_file.write_text(PLAIN_TEMPLATE)
    worker = Worker(BuildConfig(tokenizer=tokenizer_dir, chat_template=str(template_file)))
    doc = worker.process([RawRecord(0, 0, InputFormat.MESSAGES, RECORD)]).documents[0]

    classic = response_template_mask(doc.input_ids, alone)
    assert classic.sum() == 0, "the classic search silently trains nothing on this example"

    from sftdata.formats import to_conversation
    text, ids, offsets = reference_tokens(tokenizer_dir, PLAIN_TEMPLATE, to_conversation(RECORD, 0, InputFormat.MESSAGES))
    assert doc.input_ids.tolist() == ids
    runs = [r.strip() for r in trained_runs(text, doc.loss_mask, offsets)]
    assert runs == ["Hi, how can I help you?</s>", "Why did the chicken cross the road?</s>"]
