"""Rendering conversations with the model's own Jinja chat template.

The environment mirrors how transformers renders chat templates (sandboxed, trim_blocks/lstrip_blocks,
`tojson` without ASCII escaping, `raise_exception`, `strftime_now`), with two differences that a build
needs: `strftime_now` returns a fixed date so the same inputs give the same shards, and
`{% generation %}` blocks are reported as character ranges of the rendered text.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .passthrough import PRIVATE_PLANES, refusal
from .prefixes import END_MARK, LOOP_MARK, MessageLoop, message_loop, with_loop_marks

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
    # where each message's iteration of the template's message loop starts in `text` (None where the
    # rendering through the messages before it is not read from the marks: _loop_positions), then where
    # the loop ends: asked for with `loop_marks` (prefixes.py); () when not known
    loop: tuple[int | None, ...] = ()


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
        # the template writing where each message's iteration starts, where prefixes.py proves a prefix of
        # a conversation renders as a prefix of the whole, and span finding proves (by the sentinels around
        # every field) that no mark in the rendering came from the messages
        self._marked, self._prefix_refusal, self._loop = None, self.passthrough_refusal, None
        if self._prefix_refusal is None:
            self._loop = message_loop(self.syntax)
            self._prefix_refusal = self._loop.refusal
            if self._loop.at is not None:
                self._marked = env.from_string(with_loop_marks(env.parse(source), self._loop.at))

    @property
    def prefix_refusal(self) -> str | None:
        """None where the template is proven to render a conversation's prefixes as prefixes of its
        rendering of the whole (and renderings can say where each message's iteration starts); else why not."""
        return self._prefix_refusal

    def render(self, messages: list[dict], tools: Any = None, add_generation_prompt: bool = False,
               mode: dict | None = None, loop_marks: bool = False) -> RenderedText:
        """`mode`: template variables a caller of apply_chat_template may pass (`enable_thinking=False`).
        `loop_marks`: also say where each message's loop iteration starts, where the template is proven to
        render prefixes as prefixes (`prefix_refusal` is None). The marks are taken out of the text: the
        caller must check that no message held their characters (the sentinels of span finding do), where
        a count that does not fit does not already say so."""
        variables = {**self.base_context, **(mode or {}), "messages": messages, "tools": tools,
                     "add_generation_prompt": add_generation_prompt}
        try:
            # Template.render, without its copy of the globals (they are in `variables` already) and
            # without the set of their names a context takes for `{% import %}`, which chat templates lack
            template = self._marked if loop_marks and self._marked is not None else self._template
            context = template.environment.context_class(template.environment, variables, template.name,
                                                         template.blocks)
            marked = "".join(template.root_render_func(context))
        except jinja2.TemplateError as err:
            raise TemplateRenderError(str(err) or type(err).__name__) from err
        except Exception as err:  # a template can fail like any program: a bad key, a type error
            raise TemplateRenderError(f"{type(err).__name__}: {err}") from err
        if template is self._marked:
            # marks that do not fit (a loop ended early, or a mark's character in what the messages hold):
            # the rendering as is, rather than one with characters taken out of it
            return (_loop_positions(marked, len(messages), self._loop)
                    or self.render(messages, tools, add_generation_prompt, mode))
        if not self.has_generation_blocks:
            return RenderedText(marked, ())
        return RenderedText(*strip_generation_markers(marked))


def _loop_positions(marked: str, messages: int, loop: MessageLoop) -> RenderedText | None:
    """The rendering without its loop marks, and where they were: where the rendering through each
    message before it ends, then where the loop ends. None for the first messages the loop left out,
    and for the rendering through no message where the template reads the first (prefixes.py): those
    are not read from the marks. None unless the marks are one per message the loop may have iterated
    over (all, or all but as many first ones as `loop.skips` allows), then one at the end."""
    body, _, after = marked.rpartition(END_MARK)
    parts = body.split(LOOP_MARK)
    skipped = messages + 1 - len(parts)
    if skipped not in loop.skips or END_MARK in body or END_MARK not in marked or LOOP_MARK in after:
        return None
    starts = (None,) * skipped + tuple(itertools.accumulate(map(len, parts)))
    if loop.reads_first:
        starts = (None, *starts[1:])
    return RenderedText("".join(parts) + after, (), starts)


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
