"""Span finding: template probing, the sentinel and difference methods, generation blocks."""

import json

import pytest

from sftdata.config import BuildConfig, InputFormat, SpecialText
from sftdata.records import Message, RawRecord
from sftdata.rejects import RecordError
from sftdata.spans import _difference_region, _Wrapper, template_messages
from sftdata.template import TemplateRenderError
from sftdata.worker import Worker

from .conftest import FIXTURES, TEMPLATES, fixture_tokenizer

TRAPS = {json.loads(line)["id"]: json.loads(line) for line in (FIXTURES / "data" / "traps.jsonl").read_text().splitlines()}


@pytest.mark.parametrize("tokenizer, template, header, eot", [
    ("llama3-bpe", None, "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    ("chatml-bpe", None, "<|im_start|>assistant\n", "<|im_end|>"),
    ("llama2-spm", None, "", "</s>"),
    ("mistral-spm", None, "[/INST]", "</s>"),
    ("gemma-spm", None, "<start_of_turn>model\n", "<end_of_turn>"),
])
def test_probe_finds_header_and_end_of_turn(tokenizer, template, header, eot):
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer(tokenizer)))
    assert worker.facts.header == header
    assert worker.facts.end_of_turn == eot


def test_sentinels_sit_inside_whitespace_so_trimming_templates_keep_them():
    wrap = _Wrapper()
    marked = template_messages([Message("user", "  hi \n"), Message("assistant", "   ")], wrap)
    assert marked[0]["content"].strip().startswith("\U000F0000") and marked[0]["content"].startswith("  ")
    assert marked[1]["content"] == "   \U000F0002\U000F0003"
    assert wrap.owner == [0, 1]


def test_difference_region_is_the_changed_part():
    assert _difference_region("<a>hello</a>", "<a>\U000F0000</a>") == [(3, 8)]
    assert _difference_region("same", "same") == []


def test_qwen3_think_in_history_falls_back_to_difference_and_stays_exact():
    # reasoning written into the content as <think> (Qwen's added tokens) is control text: allowed knowingly
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer("chatml-bpe"), special_text=SpecialText.ALLOW))
    documents = worker.documents(RawRecord(0, 0, InputFormat.MESSAGES, TRAPS["think_in_history"]))
    assert documents[0].method == "difference"
    result = worker.process([RawRecord(0, 0, InputFormat.MESSAGES, TRAPS["think_in_history"])])
    assert not result.rejects and len(result.documents) == len(documents) == 2
    trained = [d.text[s.target[0]:s.target[1]] for d in documents for s in d.spans if s.target]
    # the whole rendering drops the history turn's reasoning: that turn is trained in the rendering that
    # ends with it, think block kept, as the model generated it (issue 14)
    assert len(trained) == 2 and all(t.startswith("<think>") and t.endswith("<|im_end|>") for t in trained)


def test_generation_blocks_win_when_the_template_has_them():
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer("chatml-bpe"),
                                chat_template=str(TEMPLATES / "chatml_generation.jinja")))
    rendered = worker.render(RawRecord(0, 0, InputFormat.MESSAGES, TRAPS["twelve_turns"]))
    assert rendered.method == "generation"
    targets = [rendered.text[s.target[0]:s.target[1]] for s in rendered.spans if s.target]
    replies = [m["content"] for m in TRAPS["twelve_turns"]["messages"] if m["role"] == "assistant"]
    assert targets == [r + "<|im_end|>" for r in replies]


def test_the_template_sandbox_still_refuses_what_it_refused_after_allowing_the_same_name():
    from types import SimpleNamespace

    from sftdata.template import ChatTemplate, TemplateRenderError

    template = ChatTemplate("{{ tools.pop }}:{% for m in messages %}{{ m.content.upper() }}"
                            "{% if m.tags %}{{ m.tags.pop() }}{% endif %}{% endfor %}", {})
    # `pop` is a plain attribute of the namespace, and mutates a list: the sandbox's verdict on the one
    # (remembered by type and name) must not let the other through
    tools = SimpleNamespace(pop="ok")
    assert template.render([{"content": "hi", "tags": None}], tools).text == "ok:HI"
    tags = ["b"]
    with pytest.raises(TemplateRenderError, match="pop"):
        template.render([{"content": "hi", "tags": tags}], tools)
    assert tags == ["b"]


def test_dotted_names_on_a_dict_find_its_methods_before_its_keys_and_the_sandbox_still_guards_them():
    from sftdata.template import ChatTemplate, TemplateRenderError

    message = {"content": "x", "keys": "shadowed", "update": "shadowed"}
    reads = ChatTemplate("{% set m = messages[0] %}{{ m.content }}|{{ m.missing is defined }}|"
                         "{{ m.keys() | list | join(',') }}", {})
    assert reads.render([message]).text == "x|False|content,keys,update"
    with pytest.raises(TemplateRenderError, match="update"):
        ChatTemplate("{{ messages[0].update({'content': 'y'}) }}", {}).render([message])
    assert message["content"] == "x"


@pytest.mark.parametrize("tokenizer", ["llama3-bpe", "chatml-bpe", "gemma-spm", "mistral-spm"])
def test_reading_sentinels_in_order_agrees_with_reading_them_one_by_one(tokenizer, monkeypatch):
    """The shortcut for fields rendered once and in order must give what the general reading gives, and
    leave alone what it cannot read (a field rendered twice, out of order, or dropped)."""
    from sftdata import spans

    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer(tokenizer)))
    cases = []
    for trap in TRAPS.values():
        try:
            conv = worker.conversation(RawRecord(0, 0, InputFormat.MESSAGES, trap))
        except RecordError:  # a trap this template's tokenizer rejects (special text): tested elsewhere
            continue
        wrap = _Wrapper()
        try:
            text = worker.template.render(template_messages(conv.messages), conv.tools).text
            marked = worker.template.render(template_messages(conv.messages, wrap), conv.tools).text
        except TemplateRenderError:  # a shape this template refuses (raise_exception)
            continue
        cases.append((text, marked, wrap.owner, len(conv.messages)))
    # a field rendered twice, and two fields swapped
    text, marked, owner, n = cases[0]
    cases.append((text + text, marked + marked, owner, n))
    swapped = marked.replace("\U000F0000", "\0").replace("\U000F0002", "\U000F0000").replace("\0", "\U000F0002")
    cases.append((text, swapped, owner, n))
    shortcut = [spans._sentinel_regions(*case) for case in cases]
    monkeypatch.setattr(spans, "_in_order", lambda fields: "\U0010FFFF")  # never found: the general reading
    assert shortcut == [spans._sentinel_regions(*case) for case in cases]
    assert sum(r is not None and all(v is not None for v in r[0]) for r in shortcut) >= len(cases) - 2
