"""prefixes.py: which templates render a conversation's prefixes as prefixes of its whole rendering, and
the renderings of prefixes read from one rendering (where each message's loop iteration starts)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sftdata.config import BuildConfig, InputFormat, TrainOn
from sftdata.formats import to_conversation
from sftdata.prefixes import END_MARK, LOOP_MARK, message_loop
from sftdata.probe import probe_template
from sftdata.records import Conversation, Message, ToolCall
from sftdata.rejects import Reason, RecordError
from sftdata.sources import read_inputs
from sftdata.spans import render_conversation, template_messages
from sftdata.template import ChatTemplate
from sftdata.turns import render_documents

from .conftest import FIXTURES, SHARED, requires_shared

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


NAMESPACE = ("{% set ns = namespace(tool=false) %}{% for m in messages %}{% if ns.tool and m.role != 'tool' %}"
             "</tools>{% endif %}{% set ns.tool = m.role == 'tool' %}{{ m.content }}{% endfor %}"
             "{% if add_generation_prompt %}<gen>{% endif %}")


def _fixture(name: str) -> str:
    return (FIXTURES / "templates" / f"{name}.jinja").read_text()


def _loop(source: str) -> tuple[int | None, str | None]:
    found = message_loop(ChatTemplate(source, {}).syntax)
    return found.at, found.refusal


@pytest.mark.parametrize("name", ["deepseek_tools", "llama3_always_header", "llama2", "gemma"])
def test_fixture_templates_that_render_prefixes_as_prefixes(name):
    at, why = _loop(_fixture(name))
    assert at is not None and why is None


@pytest.mark.parametrize("source", [
    CHATML,
    # a namespace the loop writes and reads again, earlier iterations only: still causal
    NAMESPACE,
    # the other name for the messages, and loop counters of the past
    ("{% set loop_messages = messages %}{% for m in loop_messages %}{% if loop.first %}<s>{% endif %}"
    "{{ loop.index0 }}{{ m.content }}{% if loop.previtem %}|{% endif %}{% endfor %}"),
    # `loop.last` of a nested loop is that loop's
    ("{% for m in messages %}{{ m.content }}{% for c in m.tool_calls or [] %}{{ c.function.name }}"
    "{% if not loop.last %},{% endif %}{% endfor %}{% endfor %}"),
    # what every prefix holds alike: the first message, and that there is one
    "{{ messages[0].content }}{% for m in messages %}{{ m.content }}{% endfor %}",
    "{% if not messages %}empty{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}",
    # a system message taken out of the loop (Llama 2, Gemma)
    ("{% if messages and messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
    "{% set ms = messages[1:] %}{% else %}{% set sys = none %}{% set ms = messages %}{% endif %}"
    "{% for m in ms %}{% if loop.first and sys %}{{ sys }}{% endif %}{{ m.content }}{% endfor %}"),
    # the loop's methods, called
    ("{% for m in messages %}{{ loop.cycle('a', 'b') }}{% if loop.changed(m.role) %}{{ m.role }}{% endif %}"
    "{{ m.content }}{% endfor %}"),
])
def test_templates_whose_iterations_read_only_the_past_are_accepted(source):
    assert _loop(source)[1] is None


@pytest.mark.parametrize("source, why", [
    ("{% for m in messages %}{{ m.content }}{% if not loop.last %}\n{% endif %}{% endfor %}", "loop.last"),
    ("{% for m in messages %}{{ m.content }}{{ loop.revindex }}{% endfor %}", "loop.revindex"),
    ("{% for m in messages %}{{ m.content }}{% if loop.nextitem %}+{% endif %}{% endfor %}", "loop.nextitem"),
    ("{% for m in messages %}{{ loop['last'] }}{{ m.content }}{% endfor %}", "passes `loop` on"),
    ("{% macro last(l) %}{{ l.last }}{% endmacro %}{% for m in messages %}{{ last(loop) }}{% endfor %}",
     "passes `loop` on"),
    (("{% for m in messages %}{{ m.content }}{% for c in m.tool_calls %}{% else %}{{ loop.length }}{% endfor %}"
     "{% endfor %}"), "loop.length"),
    ("{% for m in messages %}{{ m.content }}{{ messages | length }}{% endfor %}", "reads or sets `messages`"),
    ("{% for m in messages %}{{ messages[loop.index0 + 1].role }}{% endfor %}", "reads or sets `messages`"),
    ("{{ messages[1].content }}{% for m in messages %}{{ m.content }}{% endfor %}", "reads or sets `messages`"),
    ("{{ messages[-1].content }}{% for m in messages %}{{ m.content }}{% endfor %}", "reads or sets `messages`"),
    ("{% if messages | length > 1 %}!{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}",
     "reads or sets `messages`"),
    ("{{ messages }}{% for m in messages %}{{ m.content }}{% endfor %}", "reads or sets `messages`"),
    ("{{ 'x' if messages else 'y' }}{% for m in messages %}{{ m.content }}{% endfor %}", "reads or sets `messages`"),
    # only the first message may be left out of the loop, and only whole
    ("{% set ms = messages[2:] %}{% for m in ms %}{{ m.content }}{% endfor %}", "no loop over the messages"),
    ("{% set ms = messages[1:-1] %}{% for m in ms %}{{ m.content }}{% endfor %}", "no loop over the messages"),
    ("{% set ms = messages[1:] %}{% if ms %}!{% endif %}{% for m in ms %}{{ m.content }}{% endfor %}", "`ms`"),
    (("{% if messages[0].role == 'system' %}{% set ms = messages[1:] %}{% else %}{% set ms = [] %}{% endif %}"
     "{% for m in ms %}{{ m.content }}{% endfor %}"), "`ms`"),
    ("{% set ms = messages[1:] %}{% for m in ms %}{{ m.content }}{% endfor %}{% set ms = messages %}", "`ms`"),
    # a name set in some branches only: in the others it is what the caller passed under it
    (("{% if messages[0].role == 'system' %}{% set bos_token = messages %}{% endif %}{% for m in bos_token %}"
     "{{ m.content }}{% endfor %}"), "without having set it"),
    (("{% if messages[0].role == 'system' %}{% set tools = messages[1:] %}{% elif messages %}{% set tools = messages %}"
     "{% endif %}{% for m in tools %}{{ m.content }}{% endfor %}"), "without having set it"),
    # another name for another name: the first may not be set when the second is
    ("{% set ms = messages %}{% set ns = ms %}{% for m in ns %}{{ m.content }}{% endfor %}", "no loop over"),
    ("{% macro messages() %}{% endmacro %}{% for m in messages %}{{ m.content }}{% endfor %}", "a macro"),
    ("{% set ms = messages[1:] %}{% macro ms() %}{% endmacro %}{% for m in ms %}{{ m.content }}{% endfor %}",
     "a macro"),
    # one iteration fewer than messages: the first left out, or the loop ended before the last?
    (("{% if messages[0].role == 'system' %}{% set ms = messages[1:] %}{% else %}{% set ms = messages %}{% endif %}"
     "{% for m in ms %}{{ m.content }}{% if m.content == 'stop' %}{% break %}{% endif %}{% endfor %}"), "end early"),
    ("{% set messages = messages[1:] %}{% for m in messages %}{{ m.content }}{% endfor %}",
     "reads or sets `messages`"),
    ("{% set ms = messages %}{% set ms = [] %}{% for m in ms %}{{ m.content }}{% endfor %}", "`ms`"),
    ("{% macro all() %}{{ messages | length }}{% endmacro %}{% for m in messages %}{{ all() }}{% endfor %}",
     "reads or sets `messages`"),
    ("{% for m in messages %}{{ m.content }}{% endfor %}{% for m in messages %}{{ m.role }}{% endfor %}",
     "reads or sets `messages`"),
    ("{% for m in messages if m.role != 'system' %}{{ m.content }}{% endfor %}", "filtered"),
    ("{% for m in messages %}{{ m.content }}{% else %}empty{% endfor %}", "else"),
    (("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.content }}{% endfor %}"
     "{{ ns.n }}"), "after the loop depends on `ns`"),
    ("{% for m in messages %}{{ m.content }}{% endfor %}{% set tail = 'x' %}{{ tail }}", "after the loop"),
    ("{% if true %}{% for m in messages %}{{ m.content }}{% endfor %}{% endif %}", "no loop over the messages"),
    # a loop method not called prints the loop, and with it its length: `<LoopContext 1/4>`
    ("{% for m in messages %}{{ m.content }}{{ loop.cycle }}{% endfor %}", "passes `loop.cycle` on"),
    ("{% macro show(f) %}{{ f }}{% endmacro %}{% for m in messages %}{{ show(loop.changed) }}{% endfor %}",
     "passes `loop.changed` on"),
    ("{% for m in messages %}{% set ns = namespace(f=loop.cycle) %}{{ ns.f('a', 'b') }}{% endfor %}",
     "passes `loop.cycle` on"),
    ("{% for m in messages %}{{ m.content }}{{ loop.unknown }}{% endfor %}", "loop.unknown"),
])
def test_templates_that_may_read_what_follows_are_refused(source, why):
    at, refusal = _loop(source)
    assert at is None and why in refusal


def _conversations(template: ChatTemplate) -> list[Conversation]:
    """The fixture records (every format) the template renders."""
    records = list(read_inputs(sorted((FIXTURES / "data").glob("*.json*"))))
    out = []
    for record in records:
        try:
            conv = to_conversation(record.data, record.source_id, record.format or InputFormat.MESSAGES)
            template.render(template_messages(conv.messages), conv.tools)
        except Exception:  # noqa: BLE001 - records this template cannot render say nothing here
            continue
        out.append(conv)
    return out


def _assert_prefixes_read_from_marks(template: ChatTemplate, conversations: list[Conversation]) -> int:
    """Every prefix's rendering equals the one read from the whole rendering's loop marks; returns how many
    prefixes were compared."""
    compared = 0
    for conv in conversations:
        messages = template_messages(conv.messages)
        whole = template.render(messages, conv.tools, loop_marks=True)
        assert whole.text == template.render(messages, conv.tools).text
        assert len(whole.loop) == len(messages) + 1
        for k in range(len(messages)):
            read = whole.text[: whole.loop[k + 1]] + whole.text[whole.loop[-1] :]
            assert read == template.render(messages[: k + 1], conv.tools).text
            compared += 1
    return compared


@pytest.mark.parametrize("source", [_fixture("llama3_always_header"), CHATML, NAMESPACE, _fixture("llama2"),
                                    _fixture("gemma")])
def test_prefix_renderings_read_from_marks_equal_rendering_them(source):
    template = ChatTemplate(source, {"bos_token": "<s>", "eos_token": "</s>"})
    assert template.prefix_refusal is None
    assert _assert_prefixes_read_from_marks(template, _conversations(template)) > 50


@requires_shared
def test_prefix_renderings_of_the_shared_llama3_template_and_data():
    config = json.loads((SHARED / "tokenizers" / "llama3_1" / "tokenizer_config.json").read_text())
    template = ChatTemplate(config["chat_template"], {"bos_token": config["bos_token"]})
    assert template.prefix_refusal is None
    records = list(read_inputs([SHARED / "datasets" / "dummy_conversation.json"]))
    conversations = [to_conversation(r.data, r.source_id, r.format) for r in records]
    assert _assert_prefixes_read_from_marks(template, conversations) > 1000


def test_a_template_printing_its_loop_has_no_loop_marks():
    # `loop.cycle` as a value prints as `<bound method LoopContext.cycle of <LoopContext 1/2>>`: the first
    # message's iteration writes `!` only where the conversation has two messages, so the rendering of the
    # first message alone is not the whole rendering cut where the second message's iteration starts
    template = ChatTemplate("{% for m in messages %}{{ m.content }}{% if (loop.cycle | string).endswith('/2>>') %}"
                            "!{% endif %}{% endfor %}", {})
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert (template.render(messages).text, template.render(messages[:1]).text) == ("a!b!", "a")
    assert template.prefix_refusal is not None
    assert template.render(messages, loop_marks=True).loop == ()


def test_a_loop_ended_early_says_nothing():
    template = ChatTemplate("{% for m in messages %}{{ m.content }}{% if m.role == 'user' %}{% break %}{% endif %}"
                            "{% endfor %}", {})
    assert template.prefix_refusal is None
    rendered = template.render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                               loop_marks=True)
    assert (rendered.text, rendered.loop) == ("a", ())


def test_a_message_holding_the_marks_is_rendered_as_it_is_and_its_loop_left_unknown():
    template = ChatTemplate(CHATML, {})
    facts = probe_template(template, None)
    conv = Conversation(0, (Message("user", f"a{LOOP_MARK}b{END_MARK}"), Message("assistant", "c")))
    rendered = render_conversation(conv, template, facts, TrainOn.ASSISTANT)
    assert rendered.text == template.render(template_messages(conv.messages)).text
    assert LOOP_MARK in rendered.text and END_MARK in rendered.text and rendered.loop == ()


def test_a_plain_conversation_has_its_loop_read_from_the_one_rendering():
    template = ChatTemplate(CHATML, {})
    facts = probe_template(template, None)
    conv = Conversation(0, (Message("user", "hi"), Message("assistant", "yo"), Message("user", "x")))
    rendered = render_conversation(conv, template, facts, TrainOn.ASSISTANT)
    starts = [rendered.text.find("<|im_start|>" + m.role + "\n" + m.content) for m in conv.messages]
    assert rendered.loop == (*starts, len(rendered.text))


def test_a_template_read_by_two_renderings_has_no_loop_marks():
    # a template that compares message text is rendered twice per conversation (passthrough.py): the
    # sentinels cannot then prove that no mark came from a message
    template = ChatTemplate("{% for m in messages %}{% if m.content == 'x' %}!{% endif %}{{ m.content }}"
                            "{% endfor %}", {})
    assert template.passthrough_refusal is not None and template.prefix_refusal == template.passthrough_refusal
    assert template.render([{"role": "user", "content": "x"}], loop_marks=True).loop == ()


def _rejected_and_renders(template: ChatTemplate, conv: Conversation) -> tuple[RecordError, list[int]]:
    """How render_documents rejects `conv`, and the length of every conversation it rendered for that."""
    facts, renders, render = probe_template(template, None), [], template.render

    def counted(messages, *args, **kwargs):
        renders.append(len(messages))
        return render(messages, *args, **kwargs)

    template.render = counted
    with pytest.raises(RecordError) as rejected:
        render_documents(conv, template, facts, BuildConfig(tokenizer="unused"), None)
    return rejected.value, renders


def test_a_field_the_whole_rendering_leaves_out_is_left_out_of_every_prefix_without_rendering_them():
    """What a template rendering prefixes as prefixes leaves out of the whole conversation, it leaves out
    of the conversation up to that message too: the record is rejected from the one rendering."""
    call = ToolCall("lookup", {"q": "x"})
    conv = Conversation(0, (Message("user", "hi"), Message("assistant", "", tool_calls=(call,)),
                            Message("tool", "42"), Message("assistant", "done")))
    proven, renders = _rejected_and_renders(ChatTemplate(CHATML, {}), conv)
    assert proven.reason is Reason.UNRENDERED_FIELD and "does not render message 1 tool_call" in proven.detail
    assert renders == [4, 4]  # the whole conversation, with sentinels and as is: no prefix of it
    # the same template, reading the messages after its loop (where it writes nothing): not proven
    unproven = ChatTemplate(CHATML + "{% if false %}{{ messages | length }}{% endif %}", {})
    assert unproven.prefix_refusal is not None
    again, renders = _rejected_and_renders(unproven, conv)
    assert again.detail == proven.detail and renders == [4, 4, 2, 2]  # and the conversation up to message 1


def _documents_or_reject(conv: Conversation, template: ChatTemplate, facts, config: BuildConfig):
    try:
        return [replace(d, loop=()) for d in render_documents(conv, template, facts, config, None)]
    except RecordError as err:
        return err.reason, err.detail


@requires_shared
@pytest.mark.parametrize("unrendered", ["reject", "drop"])
def test_what_the_proof_reads_from_one_rendering_equals_what_rendering_the_prefixes_gives(unrendered):
    """Every record's documents, or its reject, with the prefix proof and without it (the same template,
    reading the messages where it writes nothing), on the shared chats and tool calls with Llama 3."""
    config_json = json.loads((SHARED / "tokenizers" / "llama3_1" / "tokenizer_config.json").read_text())
    tokens = {"bos_token": config_json["bos_token"]}
    proven = ChatTemplate(config_json["chat_template"], tokens)
    unproven = ChatTemplate("{% if false %}{{ messages | length }}{% endif %}" + config_json["chat_template"], tokens)
    assert proven.prefix_refusal is None and unproven.prefix_refusal is not None
    config = BuildConfig(tokenizer="unused", unrendered=unrendered)
    facts = probe_template(proven, None)
    records = read_inputs([SHARED / "datasets" / name for name in ("dummy_conversation.json",
                                                                    "glaive_toolcall_en_demo.json")])
    compared = 0
    for record in records:
        conv = to_conversation(record.data, record.source_id, record.format)
        assert _documents_or_reject(conv, proven, facts, config) == _documents_or_reject(conv, unproven, facts, config)
        compared += 1
    assert compared == 800


LLAMA2_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


def test_a_system_message_taken_out_of_the_loop_has_no_iteration():
    template = ChatTemplate(_fixture("llama2"), LLAMA2_TOKENS)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"}]
    whole = template.render(messages, loop_marks=True)
    assert whole.loop == (None, 0, whole.text.index(" yo"), len(whole.text))
    # the rendering through the system message is what the template writes before its loop: nothing here
    assert template.render(messages[:1]).text == whole.text[: whole.loop[1]] == ""
    # the template reads the first message: its rendering of no message is not read from the marks
    no_system = template.render(messages[1:], loop_marks=True)
    assert no_system.loop == (None, no_system.text.index(" yo"), len(no_system.text))


def _conversations_with_system_messages(template: ChatTemplate) -> list[Conversation]:
    """The fixture records the template renders, each also with a system message first where it has none,
    and one whose first message is a trained assistant turn."""
    out = []
    for conv in _conversations(template):
        out.append(conv)
        if conv.messages[0].role != "system":
            out.append(replace(conv, messages=(Message("system", "Answer in English."), *conv.messages)))
    out.append(Conversation(0, (Message("assistant", "Hello."), Message("user", "hi"), Message("assistant", "yo"))))
    return out


@pytest.mark.parametrize("source", [
    _fixture("llama2"),
    _fixture("gemma"),
    # the first message always left out of the loop, whatever its role (a trained assistant turn too)
    ("{{ messages[0]['content'] }}|{% set ms = messages[1:] %}{% for m in ms %}[{{ m.role }}] {{ m.content }}"
    "{% if m.role == 'assistant' %}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"),
])
def test_a_loop_leaving_out_the_first_message_gives_the_documents_rendering_each_prefix_gives(source):
    """Every record's documents, or its reject, with the prefix proof and without it (the same template,
    reading the messages where it writes nothing), and the proof renders each conversation once."""
    proven = ChatTemplate(source, LLAMA2_TOKENS)
    unproven = ChatTemplate("{% if false %}{{ messages | length }}{% endif %}" + source, LLAMA2_TOKENS)
    assert proven.prefix_refusal is None and unproven.prefix_refusal is not None
    facts = probe_template(proven, None)
    config = BuildConfig(tokenizer="unused")
    conversations = _conversations_with_system_messages(proven)
    renders, render = [], proven.render
    proven.render = lambda messages, *args, **kwargs: renders.append(len(messages)) or render(messages, *args, **kwargs)
    with_system = 0
    for conv in conversations:
        assert _documents_or_reject(conv, proven, facts, config) == _documents_or_reject(conv, unproven, facts, config)
        with_system += conv.messages[0].role == "system"
    assert with_system > 20
    # per conversation: the marked rendering, and only where a record's first message is a trained turn
    # (no rendering of no message is read from the marks) or the marks did not fit, more
    assert len(renders) < 1.2 * len(conversations)


@pytest.mark.parametrize("preamble", ["{% if messages %}<s>{% endif %}",
                                      "{% if messages[0].role == 'assistant' %}<s>{% endif %}",
                                      "[{{ messages[0].role }}]"])
def test_a_template_reading_the_first_message_has_its_rendering_of_no_message_rendered(preamble):
    """A record whose first message is a trained turn is prompted by the rendering of no message, which
    such a preamble writes otherwise (or fails on): it is rendered, never read from the marks."""
    source = preamble + CHATML
    proven = ChatTemplate(source, {})
    unproven = ChatTemplate("{% if false %}{{ messages | length }}{% endif %}" + source, {})
    assert proven.prefix_refusal is None and unproven.prefix_refusal is not None
    facts = probe_template(proven, None)
    conv = Conversation(0, (Message("assistant", "Hello."), Message("user", "hi"), Message("assistant", "yo")))
    assert proven.render(template_messages(conv.messages), loop_marks=True).loop[0] is None
    for context in ("own", "whole"):
        config = BuildConfig(tokenizer="unused", turn_context=context)
        assert _documents_or_reject(conv, proven, facts, config) == _documents_or_reject(conv, unproven, facts, config)
