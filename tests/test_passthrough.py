"""Rendering once: which templates provably pass message text through, and that one rendering then gives
exactly what two give."""

import json
import re
from dataclasses import replace

import pytest

from sftdata import spans
from sftdata.config import BuildConfig, TrainOn
from sftdata.probe import probe_template
from sftdata.records import Conversation, Message, RawRecord
from sftdata.rejects import RecordError
from sftdata.sources import read_inputs
from sftdata.template import ChatTemplate, RenderedText
from sftdata.worker import Worker

from .conftest import FIXTURES, SHARED, fixture_tokenizer, requires_shared

# contents that tell a template passing text through from one that looks at it
CONTENTS = ["Hello", "  padded \n", "   ", "", "<think>x</think>answer", "None", "a\nb", "system"]
CONVERSATIONS = [
    [Message("system", system), Message("user", user), Message("assistant", reply)]
    for system in ("", "   ", "Be brief.") for user in CONTENTS for reply in CONTENTS[::-1][:4]
] + [[Message("user", u), Message("assistant", a)] for u in CONTENTS for a in CONTENTS] + [
    [Message("user", "q"), Message("assistant", "ok", reasoning=r)] for r in ("", " ", "because")]

LOOP = "{% for m in messages %}{{ '<' + m.role + '>' }}BODY{% endfor %}"

PASSING = {
    "trimmed and concatenated": LOOP.replace("BODY", "{{ m.content | trim + '|' }}"),
    "its truth, as given": LOOP.replace("BODY", "{% if m.content %}{{ m.content }}{% else %}(empty){% endif %}"),
    "a default by `or`": LOOP.replace("BODY", "{{ (m.content or 'EMPTY') | trim }}"),
    "type tests": LOOP.replace("BODY", "{% if m.content is string and m.content is not none %}{{ m.content }}{% endif %}"),
    "strip()": LOOP.replace("BODY", "{{ m.content.strip() }}"),
    "get()": LOOP.replace("BODY", "{{ m.get('content') }}{{ m.get('name', '') }}"),
    "a system prompt by index": "{{ messages[0].content if messages[0].role == 'system' else '' }}"
                                "{% for m in messages[1:] %}{{ m['content'] }}{% endfor %}",
    "a namespace of clean values": "{% set ns = namespace(found=false) %}{% for m in messages %}"
                                   "{% if m.role == 'system' %}{% set ns.found = true %}{% endif %}{% endfor %}"
                                   "{% if ns.found %}S{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}",
    "a macro given clean arguments": "{% macro head(role) %}<{{ role }}>{% endmacro %}"
                                     + LOOP.replace("BODY", "{{ head(m.role) }}{{ m.content }}"),
    "a block assigned": LOOP.replace("BODY", "{% set said %}[{{ m.content }}]{% endset %}{{ said }}"),
}

# each changes the text once sentinels are in: the single rendering would be wrong
REFUSED = {
    "the truth of trimmed text": LOOP.replace("BODY", "{% set c = m.content | trim %}{% if c %}[{{ c }}]{% endif %}"),
    "a string method": LOOP.replace("BODY", "{% if m.content.startswith('<think>') %}T{% endif %}{{ m.content }}"),
    "a comparison": LOOP.replace("BODY", "{% if m.content == 'Hello' %}H{% endif %}"),
    "a length": LOOP.replace("BODY", "{{ m.content | length }}"),
    "an index": LOOP.replace("BODY", "{{ m.content[0] }}"),
    "a message as a whole": LOOP.replace("BODY", "{{ m }}"),
    "a namespace compared": "{% set ns = namespace(last='') %}{% for m in messages %}{% set ns.last = m.content %}"
                            "{% endfor %}{% if ns.last == 'Hello' %}H{% endif %}",
    "a namespace passed on": "{% set ns = namespace(c='') %}{% for m in messages %}{% set ns.c = m.content %}"
                             "{% endfor %}{% set alias = ns %}{{ alias.c | length }}",
    "items()": LOOP.replace("BODY", "{% for k, v in m.items() %}{{ v | length }}{% endfor %}"),
    "get() measured": LOOP.replace("BODY", "{{ m.get('content') | length }}"),
    "a macro given a field": "{% macro size(x) %}{{ x | length }}{% endmacro %}" + LOOP.replace("BODY", "{{ size(m.content) }}"),
    "the loop's neighbour": LOOP.replace("BODY", "{% if loop.previtem %}{{ loop.previtem.content | length }}{% endif %}"),
    "the loop passed on": LOOP.replace("BODY", "{% set l = loop %}{% if l.previtem %}{{ l.previtem.content | length }}"
                                               "{% endif %}"),
    # found by review: each was accepted once
    "trimmed text built from a field": LOOP.replace("BODY", "{{ ('[' ~ m.content) | trim }}]"),
    "strip() of text built from fields": LOOP.replace("BODY", "{{ (m.content ~ (m.reasoning_content or '')).strip() }}|"),
    "a field trimmed, then the text around it": LOOP.replace("BODY", "{{ ('x ' ~ m.content | trim) | trim }}|"),
    "a dict method by subscript": LOOP.replace("BODY", "{{ m.content }}{{ m['get']('content') | length }}"),
    "items() by subscript": LOOP.replace("BODY", "{{ m.content }}{% for k, v in m['items']() %}{{ v | length }}{% endfor %}"),
    "a macro passed on": "{% macro f(i) %}{{ messages[i].content | trim }}{% endmacro %}{% set g = f %}"
                         + LOOP.replace("BODY", "{% if g(loop.index0) %}[{{ m.content }}]{% endif %}"),
    "a macro as a default": "{% macro f(i) %}{{ messages[i].content | trim }}{% endmacro %}"
                            "{% macro h(i, g=f) %}{% if g(i) %}!{% endif %}{% endmacro %}"
                            + LOOP.replace("BODY", "{{ h(loop.index0) }}{{ m.content }}"),
    "a namespace aliased before it holds text": "{% set a = namespace(x='') %}{% set b = a %}"
                                                + LOOP.replace("BODY", "{% set b.x = m.content | trim %}"
                                                               "{% if a.x %}[{{ m.content }}]{% endif %}"),
    "a namespace's name reused for a message": "{% set ns = namespace(x='') %}{% set ns.x = messages[0].content %}"
                                               "{% for ns in messages %}{{ ns.content }}{{ ns.content | length }}{% endfor %}",
    "loop assigned": "{% set loop = messages[-1] %}{{ messages[0].content }}{{ loop.content | length }}",
    "a slice bound": LOOP.replace("BODY", "{{ m.content }}{{ 'XXXXXXXXXX'[:m.content | length] }}"),
    "a test's unpacked arguments": LOOP.replace("BODY", "{{ m.content }}{% if 2 is lt(*[m.content | length]) %}!{% endif %}"),
    "trim's unpacked arguments": LOOP.replace("BODY", "{{ m.content | trim(*['H']) }}|"),
    "autoescape decided by a field": LOOP.replace("BODY", "{{ m.content }}{% autoescape m.content | length > 2 %}"
                                                          "{{ m.role ~ '<' }}{% endautoescape %}"),
    "the truth of an assigned block": LOOP.replace("BODY", "{% set said %}{{ m.content | trim }}{% endset %}"
                                                           "{% if said %}[{{ said }}]{% endif %}"),
}


def _renderings(source: str, messages: list[Message]) -> tuple[str, str]:
    """The rendering as is, and the marked rendering with every sentinel taken out."""
    template = ChatTemplate(source, {})
    plain = template.render(spans.template_messages(messages)).text
    marked = template.render(spans.template_messages(messages, spans._Wrapper())).text
    return plain, re.sub("[\U000F0000-\U000FFFFD]", "", marked)


@pytest.mark.parametrize("name", PASSING)
def test_a_template_that_passes_text_through_renders_the_same_with_its_sentinels_removed(name):
    assert ChatTemplate(PASSING[name], {}).passthrough_refusal is None
    for messages in CONVERSATIONS:
        plain, unmarked = _renderings(PASSING[name], messages)
        assert unmarked == plain, messages


@pytest.mark.parametrize("name", REFUSED)
def test_a_template_that_looks_at_text_is_refused_and_would_have_rendered_wrong(name):
    assert ChatTemplate(REFUSED[name], {}).passthrough_refusal
    # the refusal is needed: with sentinels, some conversation renders to a different text
    assert any(plain != unmarked for plain, unmarked in (_renderings(REFUSED[name], m) for m in CONVERSATIONS))


def _template_of(tokenizer: str) -> str:
    return json.loads((FIXTURES / "tokenizers" / tokenizer / "tokenizer_config.json").read_text())["chat_template"]


@pytest.mark.parametrize("tokenizer, passes", [
    ("llama3-bpe", True), ("gemma-spm", True), ("llama2-spm", True),
    ("chatml-bpe", False),  # looks for <think> in replies
    ("mistral-spm", False),  # renders tool calls
])
def test_fixture_templates(tokenizer, passes):
    assert (ChatTemplate(_template_of(tokenizer), {}).passthrough_refusal is None) == passes


def test_generation_blocks_keep_two_renderings():
    source = (FIXTURES / "templates" / "chatml_generation.jinja").read_text()
    assert ChatTemplate(source, {}).passthrough_refusal == "it has generation blocks"


def _outcomes(worker: Worker, records: list[RawRecord]) -> list:
    """Each record's spans, or why it was rejected. Where each message's loop iteration starts is left out:
    only one rendering says (tests/test_prefixes.py checks it)."""
    out = []
    for record in records:
        try:
            out.append(replace(worker.render(record), loop=()))
        except RecordError as err:
            out.append((err.reason, err.detail))
    return out


def _spans_both_ways(worker: Worker, records: list[RawRecord], monkeypatch) -> tuple[list, list, int]:
    """The records' spans with one rendering and with two; and how many renderings one took."""
    renders = 0
    render = worker.template.render

    def counted(*args, **kwargs):
        nonlocal renders
        renders += 1
        return render(*args, **kwargs)

    monkeypatch.setattr(worker.template, "render", counted)
    once = _outcomes(worker, records)
    rendered_once = renders
    monkeypatch.setattr(worker.template, "passthrough_refusal", "forced")
    return once, _outcomes(worker, records), rendered_once


@pytest.mark.parametrize("tokenizer", ["llama3-bpe", "gemma-spm", "llama2-spm"])
def test_one_rendering_finds_what_two_find_on_every_fixture_record(tokenizer, monkeypatch):
    # span finding's renders only: placing turns in their context renders prefixes besides (turns.py)
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer(tokenizer), turn_context="whole"))
    once, twice, renders = _spans_both_ways(worker, list(read_inputs(sorted((FIXTURES / "data").glob("*.json*")))),
                                            monkeypatch)
    assert once == twice
    assert renders < 1.2 * len(once)  # once each, but for the few read by difference


@requires_shared
def test_shared_llama_3_1_passes_text_through_and_reads_every_shared_conversation_alike(monkeypatch):
    worker = Worker(BuildConfig(tokenizer=str(SHARED / "tokenizers" / "llama3_1")))
    assert worker.template.passthrough_refusal is None
    paths = sorted(p for p in (SHARED / "datasets").iterdir() if p.suffix in (".json", ".jsonl"))
    once, twice, _ = _spans_both_ways(worker, list(read_inputs(paths))[::7], monkeypatch)
    assert once == twice


def test_private_use_characters_outside_the_fields_keep_two_renderings():
    # found by review: a pair of them could stand in for the sentinels of a field the template leaves out
    source = "{% for m in messages %}{% if m.role == 'assistant' %}{{ m.name }}{{ m.content }}{% endif %}{% endfor %}"
    template = ChatTemplate(source, {})
    assert template.passthrough_refusal is None
    conv = Conversation(0, (Message("user", "A"), Message("assistant", "B", name="\U000F0000\U000F0001")))
    rendered = spans.render_conversation(conv, template, probe_template(template, None), TrainOn.ASSISTANT)
    assert rendered.text == "\U000F0000\U000F0001B"
    for literal in ("{{ '\U000F0000' }}", "{% if false %}\U000F0001{% endif %}"):
        assert "private-use" in ChatTemplate(source + literal, {}).passthrough_refusal
    assert "private-use" in ChatTemplate(source, {"bos_token": "\U000F0000"}).passthrough_refusal


@pytest.mark.parametrize("source, content", [
    (LOOP.replace("BODY", "{{ m.content }}/{{ m.content }}"), "Hello"),  # a field rendered twice
    (PASSING["trimmed and concatenated"], "a \U000F0001 of its own"),  # a sentinel-range character in the text
], ids=["a field rendered twice", "a sentinel-range character"])
def test_what_one_rendering_cannot_read_is_rendered_again(source, content):
    template = ChatTemplate(source, {})
    assert template.passthrough_refusal is None
    conv = Conversation(0, (Message("user", content), Message("assistant", "Hi")))
    facts = probe_template(template, None)
    once = spans.render_conversation(conv, template, facts, TrainOn.ASSISTANT)
    assert once.text == template.render(spans.template_messages(conv.messages)).text
    template.passthrough_refusal = "forced"
    assert once == spans.render_conversation(conv, template, facts, TrainOn.ASSISTANT)


def test_the_manifest_says_how_often_each_conversation_was_rendered(tmp_path):
    from sftdata.builder import build

    data = [FIXTURES / "data" / "messages.jsonl"]
    once = build(data, tmp_path / "once", BuildConfig(tokenizer=fixture_tokenizer("llama3-bpe"))).template
    twice = build(data, tmp_path / "twice", BuildConfig(tokenizer=fixture_tokenizer("chatml-bpe"))).template
    assert once.renders == 1 and once.why_two_renders is None
    assert twice.renders == 2 and "startswith" in twice.why_two_renders


def _once_and_twice(template: ChatTemplate, conv: Conversation):
    facts = probe_template(template, None)
    once = spans.render_conversation(conv, template, facts, TrainOn.ASSISTANT)
    refusal, template.passthrough_refusal = template.passthrough_refusal, "forced"
    twice = spans.render_conversation(conv, template, facts, TrainOn.ASSISTANT)
    template.passthrough_refusal = refusal
    return once, twice


@pytest.mark.parametrize("tail", [
    "{{ '\\U000F0004\\U000F0005' }}",  # escapes, decoded by the parser
    "{{ '%c%c' % (983044, 983045) }}",
    "{{ '%c%c' | format(983044, 983045) }}",
    "{{ '\\\\U000F0004R\\\\U000F0005'.encode('ascii').decode('unicode_escape') }}",
    "{{ 'aRb'.translate({97: 983044, 98: 983045}) }}",
    "{{ lipsum(1) }}", "{{ [1, 2] | random }}",  # differs per call
])
def test_a_template_that_could_forge_sentinels_or_differs_per_call_is_refused(tail):
    # found by review: the template makes the pair of the reasoning it never renders, around its text
    loop = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    assert ChatTemplate(loop, {}).passthrough_refusal is None
    assert ChatTemplate(loop + tail, {}).passthrough_refusal


def test_one_rendering_is_read_only_where_each_pair_encloses_its_own_field():
    messages = [Message("user", "U"), Message("assistant", "A", reasoning="R")]
    wrap = spans._Wrapper()
    spans.template_messages(messages, wrap)
    marks = [chr(spans.SENTINEL_BASE + k) for k in range(6)]
    honest = f"<user>{marks[0]}U{marks[1]}<assistant>{marks[2]}A{marks[3]}{marks[4]}R{marks[5]}"
    assert spans._read_once(RenderedText(honest, ()), wrap, 2)[0] == "<user>U<assistant>AR"
    # the reasoning left out, and a pair made elsewhere standing in for its sentinels
    forged = f"<user>{marks[0]}U{marks[1]}<assistant>{marks[2]}A{marks[3]}[{marks[4]}{marks[5]}]"
    assert spans._read_once(RenderedText(forged, ()), wrap, 2) == (None, None, ())


def test_fields_past_the_sentinel_supply_keep_two_renderings(monkeypatch):
    # found by review: an unmarked field's text holding the pair (and text) of a marked field left out
    monkeypatch.setattr(spans, "MAX_FIELDS", 2)
    template = ChatTemplate("{% for m in messages %}{% if m.role != 'system' %}<{{ m.role }}>{{ m.content }}"
                            "{% endif %}{% endfor %}", {})
    conv = Conversation(0, (Message("user", "x"), Message("system", "S"),
                            Message("user", "\U000F0002S\U000F0003"), Message("assistant", "end")))
    once, twice = _once_and_twice(template, conv)
    assert once == twice and once.text == "<user>x<user>\U000F0002S\U000F0003<assistant>end"
