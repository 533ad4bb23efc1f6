"""Rendering conversations with the model's own Jinja chat template.

The environment mirrors how transformers renders chat templates (sandboxed, trim_blocks/lstrip_blocks,
`tojson` without ASCII escaping, `raise_exception`, `strftime_now`), with two differences that a build
needs: `strftime_now` returns a fixed date so the same inputs give the same shards, and
`{% generation %}` blocks are reported as character ranges of the rendered text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .passthrough import PRIVATE_PLANES, refusal

# Supplementary private-use plane 16 marks {% generation %} blocks during rendering; plane 15 is for
# the per-message sentinels of span finding (spans.py). Neither occurs in real text in practice, and a
# text that has them is detected and handled by the slower method.
GENERATION_OPEN = "\U00100000"
GENERATION_CLOSE = "\U00100001"
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TemplateRenderError(Exception):
    """The chat template raised (or failed) on one conversation."""


class _GenerationBlocks(Extension):
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_mark", []), [], [], body).set_lineno(lineno)

    def _mark(self, caller):
        return GENERATION_OPEN + caller() + GENERATION_CLOSE


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox transformers renders with, remembering its verdicts: whether an attribute is safe
    depends only on the object's type and the attribute's name, and templates ask for the same few
    (`loop.index0`, `message.content`) thousands of times."""

    def __init__(self, **options):
        super().__init__(**options)
        self._verdicts: dict[tuple[type, str], bool] = {}

    def is_safe_attribute(self, obj, attr: str, value) -> bool:
        key = (type(obj), attr)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = super().is_safe_attribute(obj, attr, value)
        return verdict


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@dataclass(slots=True)
class RenderedText:
    text: str
    generation: tuple[tuple[int, int], ...]  # {% generation %} blocks as [start, end) of `text`


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str], date: str = "2024-07-26"):
        env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlocks, loopcontrols])
        env.filters["tojson"] = _tojson
        fixed_now = datetime.fromisoformat(date)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = fixed_now.strftime
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as err:
            raise TemplateRenderError(f"the chat template does not compile: {err} (line {err.lineno})") from err
        self.source = source
        self.syntax = env.parse(source)
        self.special_tokens = dict(special_tokens)
        # a template naming the `developer` role gets it as given; others get such a message as `system`
        self.knows_developer = "developer" in source
        self.has_generation_blocks = bool(_GENERATION_TAG.search(source))
        # None when the template provably copies message text into its output untouched: span finding
        # then renders each conversation once instead of twice (passthrough.py); otherwise, why not
        if self.has_generation_blocks:
            self.passthrough_refusal = "it has generation blocks"
        elif PRIVATE_PLANES.search("".join(self.special_tokens.values())):
            # such a character could stand in for the sentinels of a field the template leaves out (the
            # template's own text is checked in `refusal`)
            self.passthrough_refusal = "its special tokens hold characters of the sentinels' private-use planes"
        else:
            self.passthrough_refusal = refusal(self.syntax)
        # what every render sees besides its messages; Template.render would merge it from a ChainMap of
        # globals on each call, a third of the time of rendering a short conversation
        self.base_context = {**self._template.globals, **self.special_tokens}

    def render(self, messages: list[dict], tools: Any = None, add_generation_prompt: bool = False,
               mode: dict | None = None) -> RenderedText:
        """`mode`: template variables a caller of apply_chat_template may pass (`enable_thinking=False`)."""
        variables = {**self.base_context, **(mode or {}), "messages": messages, "tools": tools,
                     "add_generation_prompt": add_generation_prompt}
        try:
            # Template.render, without its copy of the globals (they are in `variables` already) and
            # without the set of their names a context takes for `{% import %}`, which chat templates lack
            template = self._template
            context = template.environment.context_class(template.environment, variables, template.name,
                                                         template.blocks)
            marked = "".join(template.root_render_func(context))
        except jinja2.TemplateError as err:
            raise TemplateRenderError(str(err) or type(err).__name__) from err
        except Exception as err:  # a template can fail like any program: a bad key, a type error
            raise TemplateRenderError(f"{type(err).__name__}: {err}") from err
        if not self.has_generation_blocks:
            return RenderedText(marked, ())
        return RenderedText(*strip_generation_markers(marked))


def strip_generation_markers(marked: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    parts, blocks, pos, out_len, start = [], [], 0, 0, None
    for match in re.finditer(f"[{GENERATION_OPEN}{GENERATION_CLOSE}]", marked):
        chunk = marked[pos : match.start()]
        parts.append(chunk)
        out_len += len(chunk)
        if match.group() == GENERATION_OPEN:
            start = out_len
        elif start is not None:
            blocks.append((start, out_len))
            start = None
        pos = match.end()
    parts.append(marked[pos:])
    return "".join(parts), tuple(blocks)
