"""Each assistant turn trained where it is generated: after exactly the prompt the model is given for it.

The prompt of turn i is the template's rendering of the conversation before it with the generation prompt
of the mode the turn is in; what the model generates is the rest of the rendering of the conversation
through turn i (turn i last), up to what the template writes after every last turn (`trailer`). Both
are read from renderings of the conversation's prefixes, so nothing about a template family is assumed:

- mode: every mode of the template's generation prompt (probe.py: `enable_thinking=False` gives Qwen3's
  `<think>\\n\\n</think>\\n\\n`) whose prompt the turn's rendering continues is a candidate; the longest is
  the prompt (a reply without reasoning is a non-thinking reply, its empty think block is prompt), or
  with --empty-reasoning train the shortest;
- start: the prompt may end with whatever precedes the reply there (`[TOOL_CALLS]` follows a tool result
  in Mistral's templates, and is generated: it is after the prompt, so it is trained);
- end: the turn ends with the control tokens closing it as the last turn (`<|im_end|>`, `<|call|>`,
  `<|return|>`, `<｜tool▁calls▁end｜><｜end▁of▁sentence｜>`).

A turn whose text through its end the whole conversation's rendering starts with is trained there. Any
other is trained in the rendering of the conversation up to and including it (Qwen3 drops the reasoning
of earlier turns; harmony rewrites an earlier `<|return|>` as `<|end|>`), which also trains every earlier
turn whose text it starts with. Taking the latest turn not yet placed each time gives the fewest
documents: a rendering that holds turn k through its end holds an earlier turn exactly when the
rendering up to turn k does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .config import BuildConfig, EmptyReasoning, Masker, TurnContext, Unrendered
from .records import Conversation, MessageSpan, Rendered, TemplateFacts
from .rejects import Reason, RecordError
from .spans import render_conversation, template_messages, template_role
from .template import ChatTemplate, RenderedText, TemplateRenderError
from .train_flags import is_empty_turn, resolve_train_flags


@dataclass(slots=True)
class Placed:
    """Turn i as generated: `text` is the prompt then the turn, through the control tokens closing it."""

    text: str
    start: int  # where the generated part begins (the prompt's length)
    eot: int  # where the closing control tokens begin (== len(text) where there are none)


def place_turn(template: ChatTemplate, facts: TemplateFacts, messages: list[dict], tools, i: int,
               empty_reasoning: EmptyReasoning, special_pattern: re.Pattern | None, last: str) -> Placed:
    """Turn `i` (an assistant message of `messages`, the template's inputs) as the model generates it;
    `last` is the template's rendering of `messages[: i + 1]` (render_through)."""
    try:
        prompts = {template.render(messages[:i], tools, add_generation_prompt=True, mode=mode).text
                   for mode in facts.modes}
    except TemplateRenderError as err:
        raise _render_error(i, err) from None
    fitting = [len(p) for p in prompts if last.startswith(p)]
    if not fitting:
        raise RecordError(Reason.PROMPT_MISMATCH, f"message {i} (assistant): the template's rendering of the "
                          "conversation through it does not start with its rendering of the conversation "
                          "before it and the generation prompt: no prompt to train the turn after")
    start = min(fitting) if empty_reasoning is EmptyReasoning.TRAIN else max(fitting)
    end = len(last)
    if facts.trailer and last.endswith(facts.trailer) and end - len(facts.trailer) > start:
        end -= len(facts.trailer)
    eot = end
    if special_pattern is not None:
        for found in reversed(list(special_pattern.finditer(last, start, end))):
            if found.end() != eot:
                break
            eot = found.start()
    return Placed(last[:end], start, eot)


def render_through(template: ChatTemplate, messages: list[dict], tools, i: int) -> RenderedText:
    """The template's rendering of the conversation up to and including message `i`."""
    try:
        return template.render(messages[: i + 1], tools)
    except TemplateRenderError as err:
        raise _render_error(i, err) from None


def _render_error(i: int, err: TemplateRenderError) -> RecordError:
    return RecordError(Reason.TEMPLATE_ERROR, f"rendering the conversation up to message {i}: {err}")


def plan_documents(whole: str, placed: dict[int, Placed]) -> list[tuple[int | None, list[int]]]:
    """The fewest documents training every placed turn: (None for the whole rendering, or the turn whose
    rendering the document is; the turns it trains), latest first."""
    in_whole = {i for i, p in placed.items() if whole.startswith(p.text)}
    remaining = sorted(placed, reverse=True)
    documents = []
    while remaining:
        latest = remaining[0]
        if latest in in_whole:
            host, covered = None, [i for i in remaining if i in in_whole]
        else:
            text = placed[latest].text
            host, covered = latest, [i for i in remaining if text.startswith(placed[i].text)]
        documents.append((host, covered))
        remaining = [i for i in remaining if i not in covered]
    return documents


def retarget(rendered: Rendered, placed: dict[int, Placed], trained: list[int], train_eot: bool,
             extra: bool) -> Rendered:
    """`rendered` training the turns `trained`, each where `placed` says; the other placed turns are
    context here, and so is every other message of an extra document (each trained once per record). A
    turn with no text of its own in the rendering (every field of it left out) is not trained."""
    spans = list(rendered.spans)
    before = 0  # where the text of the messages before this one (and the turns trained there) ends
    for i, span in enumerate(spans):
        if i in trained and span.data:
            p = placed[i]
            eot = (p.eot, len(p.text)) if p.eot < len(p.text) else None
            target = (p.start, len(p.text) if train_eot else p.eot)
            span = spans[i] = MessageSpan(span.role, True, span.data, (p.start, len(p.text)), target,
                                          (min(before, p.start), p.start), eot)
        elif span.train and (i in placed or extra):
            span = spans[i] = MessageSpan(span.role, False, span.data, span.turn)
        before = max([before, *(b for _, b in span.data), *(span.turn[1:] if span.train and span.turn else ())])
    # the fields a record leaves out are counted once, on its whole rendering (render_documents)
    return replace(rendered, spans=tuple(spans), extra=extra, unrendered=() if extra else rendered.unrendered)


def _unrendered(conv: Conversation, whole: Rendered, render) -> tuple[dict[int, Rendered], tuple]:
    """The fields the template renders nowhere: not in the whole rendering, and not in the rendering of
    the conversation up to their message either (Qwen3 leaves out earlier reasoning only in a longer
    conversation). Returns those renderings too, for reuse as documents."""
    renderings, missing = {}, []
    for i in sorted({i for i, _ in whole.unrendered}):
        renderings[i] = render(prefix(conv, i))
        missing += [f for f in whole.unrendered if f[0] == i and f in renderings[i].unrendered]
    return renderings, tuple(missing)


def _unrendered_error(conv: Conversation, missing: tuple) -> RecordError:
    i, kind = missing[0]
    listed = ", ".join(f"message {j} {k}" for j, k in missing)
    return RecordError(Reason.UNRENDERED_FIELD, f"the chat template does not render {listed} (message {i} is "
                       f"{conv.messages[i].role}); --unrendered drop keeps the record without the field")


def render_documents(conv: Conversation, template: ChatTemplate, facts: TemplateFacts, config: BuildConfig,
                     special_pattern: re.Pattern | None) -> list[Rendered]:
    """The record's documents: the whole rendering, then (--turn-context own) the rendering up to each turn
    trained in a document of its own, in conversation order."""

    def render(c: Conversation, plain: RenderedText | None = None) -> Rendered:
        return render_conversation(c, template, facts, config.train_on, config.train_eot, config.special_text,
                                   special_pattern, plain)

    whole = render(conv)
    renderings, missing = _unrendered(conv, whole, render) if whole.unrendered else ({}, ())
    if missing and config.unrendered is Unrendered.REJECT:
        raise _unrendered_error(conv, missing)
    whole = replace(whole, unrendered=missing)
    if (config.turn_context is TurnContext.WHOLE or whole.train_all or whole.method == "generation"
            or config.masker is not Masker.SPANS):
        return [whole]
    flags = resolve_train_flags(conv.messages, config.train_on)
    turns = [i for i, (m, train) in enumerate(zip(conv.messages, flags))
             if train and m.role == "assistant" and not is_empty_turn(m)]
    if not turns:
        return [whole]
    messages = template_messages(conv.messages, developer=template_role(template))
    # each turn is placed in the rendering of the conversation through it: the whole rendering for the last
    # message, a rendering made for its unrendered fields, or one made here, then reused for its document
    through: dict[int, RenderedText] = {}
    placed = {}
    for i in turns:
        if i == len(conv.messages) - 1:
            last = whole.text
        elif i in renderings:
            last = renderings[i].text
        else:
            through[i] = render_through(template, messages, conv.tools, i)
            last = through[i].text
        placed[i] = place_turn(template, facts, messages, conv.tools, i, config.empty_reasoning, special_pattern,
                               last)
    plan = plan_documents(whole.text, placed)
    in_whole = next((covered for host, covered in plan if host is None), [])
    documents = [retarget(whole, placed, in_whole, config.train_eot, extra=False)]
    if config.turn_context is TurnContext.OWN:
        for host, covered in sorted((d for d in plan if d[0] is not None), key=lambda d: d[0]):
            rendering = renderings.get(host) or render(prefix(conv, host), through.get(host))
            documents.append(retarget(rendering, placed, covered, config.train_eot, extra=True))
    return documents


def prefix(conv: Conversation, last: int) -> Conversation:
    """The conversation up to and including message `last`."""
    return replace(conv, messages=conv.messages[: last + 1])
