"""Mask verification: each clause of the masking contract rejects a mask that breaks it.

The build's own masks pass (the contract tests show it); here a correct mask of a real rendering is
broken one way at a time, as a span-finding bug would break it, and `verify` must name the fault.
"""

import pytest

from sftdata import encoding
from sftdata.config import BuildConfig, InputFormat
from sftdata.encoding import tokenize
from sftdata.masking import compute_mask, make_document, verify
from sftdata.records import RawRecord
from sftdata.rejects import Reason, RecordError
from sftdata.template import ChatTemplate
from sftdata.worker import Worker

from .conftest import fixture_tokenizer

CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6, of course."},
]}


def _case(tokenizer: str):
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer(tokenizer)))
    rendered = worker.render(RawRecord(0, 0, InputFormat.MESSAGES, CHAT))
    (tokens,) = tokenize([rendered], worker.tokenizer)
    mask, _, _ = compute_mask(rendered, tokens)
    verify(rendered, tokens, mask, worker.tokenizer, True)  # the real mask passes
    return worker.tokenizer, rendered, tokens, mask


@pytest.fixture(params=["llama3-bpe", "llama2-spm"])  # offsets spelled from bytes, and asked of the encoding
def case(request):
    return _case(request.param)


def _fails(case, mask, match):
    tok, rendered, tokens, _ = case
    with pytest.raises(RecordError, match=match) as err:
        verify(rendered, tokens, mask, tok, True)
    assert err.value.reason is Reason.MASK_VERIFICATION_FAILED


def _tokens_of(case, message: int):
    _, rendered, tokens, _ = case
    return tokens.span(rendered.spans[message].data[0])


def test_a_reply_token_left_out_is_caught(case):
    mask = bytearray(case[3])
    i, j = _tokens_of(case, 4)
    mask[j - 1] = 0
    _fails(case, mask, rf"message 4 \(assistant\) is trained but token {j - 1} inside it is not a target")


def test_a_prompt_token_trained_is_caught(case):
    mask = bytearray(case[3])
    i, _ = _tokens_of(case, 3)
    mask[i] = 1
    _fails(case, mask, rf"message 3 \(user\) is not trained but token {i} inside it is a target")


@pytest.mark.parametrize("tokenizer", ["llama3-bpe", "chatml-bpe"])  # templates with a reply header
def test_a_trained_header_token_is_caught(tokenizer):
    case = _case(tokenizer)
    _, rendered, tokens, real = case
    header = rendered.spans[4].header
    mask = bytearray(real)
    mask[tokens.inside(header)[0]] = 1
    _fails(case, mask, "message 4: a header token before the turn is a target")


def test_an_untrained_end_of_turn_token_is_caught(case):
    _, rendered, tokens, real = case
    mask = bytearray(real)
    mask[tokens.span(rendered.spans[2].eot)[0]] = 0
    _fails(case, mask, "message 2: the end-of-turn token is not a target")


def test_a_target_first_token_is_caught(case):
    mask = bytearray(case[3])
    mask[0] = 1
    _fails(case, mask, "the first token is a target")


def test_a_document_with_nothing_to_train_is_rejected_with_its_reason():
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer("llama3-bpe")))
    empty = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}
    rendered = worker.render(RawRecord(0, 0, InputFormat.MESSAGES, empty))
    (tokens,) = tokenize([rendered], worker.tokenizer)
    with pytest.raises(RecordError, match="no token is a target") as err:
        make_document(rendered, tokens, worker.tokenizer, True)
    assert err.value.reason is Reason.NO_TRAINABLE_TOKENS


def test_a_trained_token_after_the_end_of_turn_token_is_caught(case):
    _, rendered, tokens, real = case
    mask = bytearray(real)
    after = tokens.span(rendered.spans[2].eot)[1]  # the token right after the first reply's end-of-turn
    assert not mask[after]
    mask[after] = 1
    _fails(case, mask, f"message 2: token {after} after the end-of-turn token is a target")


def test_a_bos_added_before_the_templates_own_is_caught(monkeypatch):
    # Llama-2's tokenizer prepends <s>, and this template writes {{ bos_token }} itself: encoding.py must
    # not add a second one. Were it to (the regression this check guards), verify rejects the document.
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer("llama2-spm")))
    assert worker.tokenizer.prefix_ids == (1,), "this tokenizer prepends its BOS"
    worker.template = ChatTemplate(template, worker.tokenizer.special_tokens_map)
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rendered = worker.render(RawRecord(0, 0, InputFormat.MESSAGES, chat))
    (tokens,) = tokenize([rendered], worker.tokenizer)
    assert tokens.ids[:2].tolist() == [1, 715]  # one BOS: the template's
    verify(rendered, tokens, compute_mask(rendered, tokens)[0], worker.tokenizer, True)

    monkeypatch.setattr(encoding, "_prefix_to_add", lambda ids, prefix: prefix)
    (doubled,) = tokenize([rendered], worker.tokenizer)
    assert doubled.ids[:2].tolist() == [1, 1]
    with pytest.raises(RecordError, match="starts with the BOS token twice") as err:
        verify(rendered, doubled, compute_mask(rendered, doubled)[0], worker.tokenizer, True)
    assert err.value.reason is Reason.MASK_VERIFICATION_FAILED
