"""A template that provably appends its generation prompt (turns.appended_prompts) gets each turn's
prompts without a render per mode: they equal what rendering with the prompt gives."""

import json

import pytest

from sftdata.config import BuildConfig, InputFormat
from sftdata.probe import probe_template
from sftdata.records import RawRecord
from sftdata.rejects import RecordError
from sftdata.spans import template_messages
from sftdata.template import ChatTemplate, TemplateRenderError
from sftdata.turns import appended_prompts
from sftdata.worker import Worker

from .conftest import FIXTURES, TEMPLATES, fixture_tokenizer

TRAPS = [json.loads(line) for line in (FIXTURES / "data" / "traps.jsonl").read_text().splitlines()]
THINKING = ((), (("enable_thinking", False),))
LOOP = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"


def _modes(facts) -> tuple:
    return tuple(tuple(sorted(mode.items())) for mode in facts.modes)


@pytest.mark.parametrize("tokenizer, template", [("chatml-bpe", None), ("llama3-bpe", None),
                                                 ("llama3-bpe", "llama3_1_tools.jinja"),
                                                 ("chatml-bpe", "deepseek_tools.jinja")])
def test_appended_prompts_equal_rendering_with_the_prompt(tokenizer, template):
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer(tokenizer),
                                chat_template=str(TEMPLATES / template) if template else None))
    appended = appended_prompts(worker.template, _modes(worker.facts))
    assert appended is not None, "these templates end with a constant generation prompt"
    checked = 0
    for k, record in enumerate(TRAPS):
        try:
            conv = worker.conversation(RawRecord(k, 0, InputFormat.MESSAGES, record))
        except RecordError:
            continue  # not a conversation: tested elsewhere
        messages = template_messages(conv.messages)
        for i in range(len(messages) + 1):
            try:
                bare = worker.template.render(messages[:i], conv.tools).text
            except TemplateRenderError:
                continue  # a conversation the template raises on (a tool result first): nothing to compare
            for mode, prompt in zip(worker.facts.modes, appended):
                assert worker.template.render(messages[:i], conv.tools, add_generation_prompt=True,
                                              mode=mode).text == bare + prompt
                checked += 1
    assert checked > 50


def test_thinking_modes_are_read_from_the_block():
    template = ChatTemplate(LOOP + "{% if add_generation_prompt %}A{% if enable_thinking is defined and "
                            "enable_thinking is false %}B{% endif %}{% endif %}", {})
    assert appended_prompts(template, THINKING) == ("A", "AB")


@pytest.mark.parametrize("source", [
    LOOP + "{% if add_generation_prompt %}{{ messages[-1].role }}{% endif %}",  # the prompt depends on messages
    "{% if add_generation_prompt %}A{% endif %}" + LOOP,  # not the last statement
    LOOP + "{% if add_generation_prompt %}A{% else %}B{% endif %}",  # writes something without the prompt too
    "{% for m in messages %}{{ m.content }}{% if enable_thinking is false %}x{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}A{% endif %}",  # a mode changes the conversation's rendering
    "{% set p = add_generation_prompt %}" + LOOP + "{% if add_generation_prompt %}A{% endif %}",
    LOOP + "{% if add_generation_prompt %}{% set x = 1 %}A{% endif %}",
])
def test_a_template_not_proven_to_append_a_constant_prompt_is_rendered_per_mode(source):
    assert appended_prompts(ChatTemplate(source, {}), THINKING) is None


def test_the_probed_modes_of_a_thinking_template_are_covered():
    worker = Worker(BuildConfig(tokenizer=fixture_tokenizer("chatml-bpe")))
    facts = probe_template(worker.template, worker.tokenizer.special_pattern)
    assert len(facts.modes) == 2, "the fixture ChatML tokenizer carries Qwen3's template"
    assert appended_prompts(worker.template, _modes(facts))[1].endswith("</think>\n\n")
