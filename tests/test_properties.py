"""Property-based: random conversations (every Unicode plane, the span finder's private-use planes among
them, odd whitespace, empty and missing fields, tool calls with random arguments, reasoning, content
parts, special-token text) never make a build raise, every record is written or rejected, and every
written document passes the independent contract check of tests/contract.py (ids equal the template's
own tokenization through transformers; no untrained message's text in a trained run; every trained
assistant message's text inside one)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftdata.builder import build
from sftdata.config import BuildConfig, InputFormat, TrainOn
from sftdata.formats import to_conversation
from sftdata.inspect.verify import verify_build
from sftdata.records import RawRecord
from sftdata.rejects import Reason
from sftdata.worker import Worker

from .contract import check_contract, check_generation_contract, reference_tokens
from .test_contract import QWEN_GENERATED, expected_flags
from .conftest import TEMPLATES, fixture_tokenizer

FAMILIES = {  # name: (tokenizer, template file or None, control tokens a trained turn may hold)
    "llama3-bpe": (fixture_tokenizer("llama3-bpe"), None, frozenset()),
    "chatml-bpe-qwen3": (fixture_tokenizer("chatml-bpe"), None, QWEN_GENERATED),
    "llama2-spm": (fixture_tokenizer("llama2-spm"), str(TEMPLATES / "llama2.jinja"), frozenset()),
    "mistral-spm": (fixture_tokenizer("mistral-spm"), None, frozenset({"[TOOL_CALLS]"})),
}
MODES = {"chatml-bpe-qwen3": ({}, {"enable_thinking": False})}  # generation prompts a family's template has
SPECIAL_TEXT = ["<|im_end|>", "<|im_start|>", "<think>", "</tool_call>", "<|eot_id|>", "<|begin_of_text|>",
                "</s>", "<s>", "[INST]", "[/INST]", "[TOOL_CALLS]"]
ODD = ["\n", "\r\n", "\t", " ", "  ", "\u00a0", "\u0085", "\u2028", "\u3000", "\ufeff", "\u200b",
       "\U000F0000", "\U000F0001", "\U000FFFFD", "\U00100000", "\U0010FFFD", "\ue000", "\U0001F642", "\u0301"]

# any code point but lone surrogates (no JSON record can hold one), weighted towards the odd ones
characters = st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from([c for c in ODD if len(c) == 1]),
                       st.characters(min_codepoint=0xF0000, max_codepoint=0x10FFFD, blacklist_categories=("Cs",)))
texts = st.one_of(st.text(characters, max_size=24), st.sampled_from(ODD + SPECIAL_TEXT + [""]),
                  st.builds(lambda a, s, b: a + s + b, st.text(characters, max_size=6), st.sampled_from(SPECIAL_TEXT),
                            st.text(characters, max_size=6)))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), texts),
                           lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
                           max_leaves=6)


@st.composite
def contents(draw):
    """A message's content: a string, text parts, or missing."""
    kind = draw(st.sampled_from(["text", "text", "parts", "missing", "none"]))
    if kind == "text":
        return {"content": draw(texts)}
    if kind == "parts":
        return {"content": draw(st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=3))}
    return {} if kind == "missing" else {"content": None}


@st.composite
def assistant_turns(draw, tools: bool) -> list[dict]:
    message = {"role": "assistant", **draw(contents())}
    if draw(st.booleans()):
        message["reasoning_content"] = draw(texts)
    if tools and draw(st.booleans()):
        name = draw(st.one_of(st.sampled_from(["get_weather", "search"]), texts))
        message["tool_calls"] = [{"type": "function", "function": {"name": name or "f",
                                                                   "arguments": draw(st.dictionaries(texts, json_values,
                                                                                                     max_size=3))}}]
        return [message, {"role": "tool", **draw(contents())}, {"role": "assistant", **draw(contents())}]
    return [message]


@st.composite
def records(draw, tools: bool) -> dict:
    messages = [{"role": "system", **draw(contents())}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", **draw(contents())})
        messages += draw(assistant_turns(tools))
    return {"messages": messages}


_WORKERS: dict = {}


def _worker(family: str) -> Worker:
    if family not in _WORKERS:
        tokenizer, template, _ = FAMILIES[family]
        _WORKERS[family] = Worker(BuildConfig(tokenizer=tokenizer, chat_template=template, max_length=None,
                                              template_date="2024-07-26"))
    return _WORKERS[family]


def _renders_content(path: str, worker: Worker, conversation, i: int) -> bool:
    """Whether the template renders message i's content at all (Mistral's drops an assistant's content
    beside its tool calls), asked of transformers with the content replaced by a marker."""
    probe = "sftdata-probe-7d3e"
    messages = list(conversation.messages)
    messages[i] = replace(messages[i], content=probe)
    return probe in reference_tokens(path, worker.tokenizer.chat_template, replace(conversation, messages=tuple(messages)))[0]


def _check(family: str, batch: list[dict]) -> None:
    worker = _worker(family)
    result = worker.process([RawRecord(i, 0, InputFormat.MESSAGES, r) for i, r in enumerate(batch)])
    documents_of: dict[int, list] = {}
    for doc in result.documents:
        documents_of.setdefault(doc.source_id, []).append(doc)
    assert sorted([*documents_of, *(r.source_id for r in result.rejects)]) == list(range(len(batch)))
    assert all(isinstance(r.reason, Reason) and r.detail for r in result.rejects)
    path, _, allowed = FAMILIES[family]
    whole = []  # records written as one document of the whole rendering, as transformers renders them
    for source_id, documents in documents_of.items():
        conversation = to_conversation(batch[source_id], source_id, InputFormat.MESSAGES)
        null = any(m.content is None for m in conversation.messages)  # transformers renders null as ""
        if len(documents) == 1 and not null:
            whole.append(documents[0])
            continue
        # turns trained in their own context (issue 14), or null content: issue 14's judge, each document
        # one rendering of a prefix (plain Jinja where transformers would change null content)
        check_generation_contract(path, worker.tokenizer.chat_template, conversation, documents,
                                  expected_flags(conversation, TrainOn.ASSISTANT), set(worker.tokenizer.special_texts),
                                  MODES.get(family, ({},)), raw=null)
    for doc in whole:
        conversation = to_conversation(batch[doc.source_id], doc.source_id, InputFormat.MESSAGES)
        # content a template does not render is not in the tokens: blanked, the check passes it by
        rendered = [not (m.content or "").strip() or _renders_content(path, worker, conversation, i)
                    for i, m in enumerate(conversation.messages)]
        conversation = replace(conversation, messages=tuple(m if r else replace(m, content="")
                                                            for m, r in zip(conversation.messages, rendered)))
        trained = [m.role == "assistant" and bool((m.content or "").strip()) for m in conversation.messages]
        check_contract(path, worker.tokenizer.chat_template, conversation, doc, trained, worker.facts.end_of_turn,
                       set(worker.tokenizer.special_texts), allowed)


PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                              HealthCheck.data_too_large])


@pytest.mark.parametrize("family", FAMILIES)
def test_private_use_text_at_a_fields_edge_is_located(family):
    # found by the property below: the difference method's stand-in was the field's own first character
    _check(family, [{"messages": [{"role": "user", "content": "\U000F0000"}, {"role": "assistant", "content": "0"},
                                  {"role": "user", "content": "q"},
                                  {"role": "assistant", "content": "\n\U000F0000 tail"}]}])


@pytest.mark.parametrize("family", FAMILIES)
def test_random_conversations_are_written_exactly_or_rejected(family):
    tools = family in ("chatml-bpe-qwen3", "mistral-spm")

    @PROPERTY
    @given(st.lists(records(tools), min_size=1, max_size=4))
    def run(batch):
        _check(family, batch)

    run()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.one_of(records(True), st.dictionaries(texts, json_values, max_size=2)), min_size=1,
                      max_size=6))
def test_a_build_of_random_records_never_raises_and_verifies(tmp_path_factory, batch):
    import json

    root = tmp_path_factory.mktemp("prop")
    path = Path(root / "in.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in batch), encoding="utf-8")
    m = build([path], root / "out", BuildConfig(tokenizer=FAMILIES["chatml-bpe-qwen3"][0], workers=1))
    assert m.counts.records == len(batch) == m.counts.records_written + m.counts.rejected
    assert verify_build(root / "out") == []
