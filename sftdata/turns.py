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

import functools
import re
from dataclasses import dataclass, replace
from typing import Any

from jinja2 import nodes

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


def place_turn(facts: TemplateFacts, i: int, empty_reasoning: EmptyReasoning, special_pattern: re.Pattern | None,
               last: str, fitting: list[int]) -> Placed:
    """Turn `i` as the model generates it: `last` is the template's rendering of the conversation through
    it, `fitting` the lengths of the prompts it starts with (the template's renderings of the
    conversation before it with each mode's generation prompt)."""
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


def prompts_of(template: ChatTemplate, facts: TemplateFacts, messages: list[dict], tools, i: int) -> set[str]:
    """The template's rendering of the conversation before message `i` with each mode's generation prompt."""
    try:
        return {template.render(messages[:i], tools, add_generation_prompt=True, mode=mode).text
                for mode in facts.modes}
    except TemplateRenderError as err:
        raise _render_error(i, err) from None


@functools.cache
def appended_prompts(template: ChatTemplate, modes: tuple[tuple[tuple[str, Any], ...], ...]) -> tuple[str, ...] | None:
    """Each mode's generation prompt, where the template provably appends it, the same for every
    conversation, to its rendering without one; None otherwise.

    Proof from the syntax tree: the template's last statement is `{% if add_generation_prompt %}` and
    holds only constant output, in `if`s that test only the modes' variables; nothing else names
    `add_generation_prompt` or a mode's variable (Qwen3's and Llama 3's templates). The rest of the
    rendering then cannot tell the modes or the generation prompt apart, and the block writes one
    constant text per mode: read here from a one-message conversation. A template that names neither
    (Llama 2's: its prompt ends with the user's turn) appends nothing in every mode."""
    names = {name for mode in modes for name, _ in mode}
    guarded = names | {"add_generation_prompt"}
    if not any(n.name in guarded for n in template.syntax.find_all(nodes.Name)):
        return ("",) * len(modes)
    body = template.syntax.body
    block = body[-1] if body else None
    if not (isinstance(block, nodes.If) and isinstance(block.test, nodes.Name)
            and block.test.name == "add_generation_prompt" and not block.elif_ and not block.else_):
        return None
    if any(n.name in guarded for statement in body[:-1] for n in statement.find_all(nodes.Name)):
        return None
    if not all(_constant_per_mode(statement, names) for statement in block.body):
        return None
    user = [{"role": "user", "content": "Hi"}]
    try:
        bare = template.render(user).text
        prompted = [template.render(user, add_generation_prompt=True, mode=dict(mode)).text for mode in modes]
    except TemplateRenderError:
        return None
    if not all(p.startswith(bare) for p in prompted):
        return None
    return tuple(p[len(bare):] for p in prompted)


_MODE_TEST_NODES = (nodes.Name, nodes.Const, nodes.Test, nodes.And, nodes.Or, nodes.Not, nodes.Compare,
                    nodes.Operand)


def _constant_per_mode(statement: nodes.Node, names: set[str]) -> bool:
    """Constant output, or an `if` on the modes' variables (and constants) holding only such statements."""
    if isinstance(statement, nodes.Output):
        return all(isinstance(n, (nodes.TemplateData, nodes.Const)) for n in statement.nodes)
    if isinstance(statement, nodes.If):
        tests = [statement.test, *(branch.test for branch in statement.elif_)]
        bodies = [statement.body, *(branch.body for branch in statement.elif_), statement.else_]
        return (all(_mode_test(test, names) for test in tests)
                and all(_constant_per_mode(s, names) for body in bodies for s in body))
    return False


def _mode_test(test: nodes.Node, names: set[str]) -> bool:
    return all(isinstance(n, _MODE_TEST_NODES) and (not isinstance(n, nodes.Name) or n.name in names)
               for n in [test, *test.find_all(nodes.Node)])


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


def _unrendered(conv: Conversation, whole: Rendered, render, prefixes_are_prefixes: bool
                ) -> tuple[dict[int, Rendered], tuple]:
    """The fields the template renders nowhere: not in the whole rendering, and not in the rendering of
    the conversation up to their message either (Qwen3 leaves out earlier reasoning only in a longer
    conversation). Returns those renderings too, for reuse as documents. Where the template renders
    prefixes as prefixes of the whole (prefixes.py), a field the whole leaves out is in no prefix
    either: its own kinds say so, without a rendering ("message", from a reading by difference, does not)."""
    if prefixes_are_prefixes and all(kind != "message" for _, kind in whole.unrendered):
        return {}, whole.unrendered
    renderings, missing = {}, []
    for i in sorted({i for i, _ in whole.unrendered}):
        renderings[i] = render(prefix(conv, i))
        kinds = _left_out_in_both({k for j, k in whole.unrendered if j == i},
                                  {k for j, k in renderings[i].unrendered if j == i})
        missing += [(i, kind) for kind in sorted(kinds)]
    return renderings, tuple(missing)


def _left_out_in_both(here: set[str], there: set[str]) -> set[str]:
    """The kinds of field missing from both renderings. A rendering read by difference (spans.py) can say
    only that a whole message is missing ("message"): every field of it, whatever the other names."""
    if "message" in here:
        return there
    if "message" in there:
        return here
    return here & there


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
    renderings, missing = (_unrendered(conv, whole, render, template.prefix_refusal is None) if whole.unrendered
                           else ({}, ()))
    if missing and config.unrendered is Unrendered.REJECT:
        raise _unrendered_error(conv, missing)
    if whole.unrendered:
        whole = replace(whole, unrendered=missing)
    if (config.turn_context is TurnContext.WHOLE or whole.train_all or whole.method == "generation"
            or config.masker is not Masker.SPANS):
        return [whole]
    flags = resolve_train_flags(conv.messages, config.train_on)
    turns = [i for i, (m, train) in enumerate(zip(conv.messages, flags))
             if train and m.role == "assistant" and not is_empty_turn(m)]
    if not turns:
        return [whole]
    appended = appended_prompts(template, tuple(tuple(sorted(mode.items())) for mode in facts.modes))
    loop = whole.loop or None  # where each message's loop iteration starts, if proven (prefixes.py)
    if (loop is not None and appended is not None and loop[-1] == len(whole.text)
            and all(loop[i] is not None for i in turns)):
        # nothing follows the loop: the rendering through turn i, and the one before it, are the whole
        # rendering up to where iterations i + 1 and i start; every turn is placed in it, its prompts in place
        placed = {i: place_turn(facts, i, config.empty_reasoning, special_pattern, whole.text[: loop[i + 1]],
                                [loop[i] + len(p) for p in appended if whole.text.startswith(p, loop[i], loop[i + 1])])
                  for i in turns}
        return [retarget(whole, placed, turns, config.train_eot, extra=False)]
    as_given: list[dict] = []  # the messages as the template gets them, made when a rendering is needed

    def messages() -> list[dict]:
        as_given[:] = as_given or template_messages(conv.messages, developer=template_role(template))
        return as_given

    # renderings of the conversation through a message: the whole rendering for the last message, one made
    # for unrendered fields, one read from the whole rendering (prefixes.py), or one made here (reused for
    # the turn's own document)
    through: dict[int, RenderedText] = {}

    def text_through(k: int, turn: int) -> str:
        if k == len(conv.messages) - 1:
            return whole.text
        if k in renderings:
            return renderings[k].text
        if k not in through:
            if loop is not None and loop[k + 1] is not None:
                through[k] = RenderedText(whole.text[: loop[k + 1]] + whole.text[loop[-1] :], ())
                return through[k].text
            try:
                through[k] = template.render(messages()[: k + 1], conv.tools)
            except TemplateRenderError as err:
                raise _render_error(turn, err) from None
        return through[k].text

    placed = {}
    for i in turns:
        last = text_through(i, i)
        prompts = (prompts_of(template, facts, messages(), conv.tools, i) if appended is None
                   else {text_through(i - 1, i) + prompt for prompt in appended})
        placed[i] = place_turn(facts, i, config.empty_reasoning, special_pattern, last,
                               [len(p) for p in prompts if last.startswith(p)])
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
