"""Span finding: where each message landed in the rendered text, and which characters to train.

Method (no knowledge of template families needed):
1. Render the conversation as is: the text the model sees (`text`).
2. Render it again with every message field (content, reasoning, tool-call names) wrapped in a pair of
   unique private-use sentinel characters, placed inside the field's leading/trailing whitespace so a
   template that trims still sees them. Removing the sentinels must give `text` back exactly; then the
   sentinel positions are the fields' character ranges in `text`. For a template proven to pass field
   text through untouched (passthrough.py), the marked rendering with its sentinels removed *is* `text`,
   and step 1 is skipped wherever every sentinel pair is there once, in order, around its own field.
3. A message whose sentinels did not survive intact (a template that splits or tests content, e.g.
   Qwen3 cutting `<think>` out of it) is located by difference instead: render once more with only that
   message changed; the part of `text` that differs is the message.
4. A trained assistant turn starts right after its header (the template's generation prompt, found by
   probing the template once: probe.py) and ends with the end-of-turn token that closes it (also probed), so
   tool calls and `<think>` blocks the template adds in between are trained, and the header is not.
   `{% generation %}` blocks, where a template has them, say the same thing directly and win.
Everything found here is re-checked token by token in masking.verify before a document is written.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import re
from typing import Sequence

from .config import SpecialText, TrainOn
from .passthrough import PRIVATE_PLANES
from .records import Conversation, Message, MessageSpan, Range, Rendered, TemplateFacts
from .rejects import Reason, RecordError
from .special_text import literal_ranges, reject_special_text
from .template import ChatTemplate, RenderedText, TemplateRenderError
from .train_flags import is_empty_turn, resolve_train_flags

SENTINEL_BASE = 0xF0000
MAX_FIELDS = (0xFFFFD - SENTINEL_BASE) // 2
_SENTINEL_SPLIT = re.compile("([\U000F0000-\U000FFFFD])")
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON may escape one alone (`"\\ud800"`): not valid Unicode

# -- template inputs ---------------------------------------------------------------------------


class _Wrapper:
    """Assigns each message field a sentinel pair and remembers which message owns it."""

    def __init__(self):
        self.owner: list[int] = []
        self.kind: list[str] = []
        self.core: list[str] = []  # each field's text between its sentinels
        self.unmarked: set[int] = set()  # messages with a field past the sentinel supply: located by difference

    def __call__(self, text: str, message_index: int, kind: str = "content") -> str:
        if not text:
            return text
        if len(self.owner) >= MAX_FIELDS:
            self.unmarked.add(message_index)
            return text
        k = len(self.owner)
        self.owner.append(message_index)
        self.kind.append(kind)
        opening, closing = chr(SENTINEL_BASE + 2 * k), chr(SENTINEL_BASE + 2 * k + 1)
        if not (text[0].isspace() or text[-1].isspace()):  # most fields: no whitespace to keep outside
            self.core.append(text)
            return opening + text + closing
        core = text.strip()
        self.core.append(core)
        lead = text[: len(text) - len(text.lstrip())] if core else text
        trail = text[len(text.rstrip()) :] if core else ""
        return f"{lead}{opening}{core}{closing}{trail}"


def _plain(text: str, _index: int, _kind: str = "content") -> str:
    return text


def _mark_arguments(arguments, mark, i: int):
    """Tool-call arguments with every string value marked (keys stay as they are)."""
    if isinstance(arguments, str):
        return mark(arguments, i, "tool_call")
    if isinstance(arguments, dict):
        return {k: _mark_arguments(v, mark, i) for k, v in arguments.items()}
    if isinstance(arguments, list):
        return [_mark_arguments(v, mark, i) for v in arguments]
    return arguments


REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")  # the names chat templates read reasoning under


def template_messages(messages: Sequence[Message], wrap=_plain, only: int | None = None,
                      developer: str = "developer") -> list[dict]:
    """Messages as a transformers user's apply_chat_template gives them to a template: roles as given (a
    `developer` message as `developer`, the role a template that does not name it gets), `content: null`
    as null, tool-call arguments as given, reasoning under every name templates read it by. `wrap` marks
    fields (of message `only`, if given)."""
    out = []
    for i, m in enumerate(messages):
        mark = wrap if only is None or only == i else _plain
        d: dict = {"role": developer if m.role == "developer" else m.role, "content": mark(m.content, i)}
        if m.reasoning is not None:
            reasoning = mark(m.reasoning, i, "reasoning")  # one sentinel pair: a template reads one name
            d.update(dict.fromkeys(REASONING_KEYS, reasoning))
        if m.tool_calls:
            d["tool_calls"] = [
                {"type": "function", "function": {"name": mark(c.name, i, "tool_call"),
                                                  "arguments": _mark_arguments(c.arguments, mark, i)},
                 **({"id": c.id} if c.id else {})}
                for c in m.tool_calls
            ]
        if m.name is not None:
            d["name"] = m.name
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def template_role(template: ChatTemplate) -> str:
    """The role a `developer` message has for this template."""
    return "developer" if template.knows_developer else "system"


# -- locating messages -----------------------------------------------------------------------------


def _in_order_cuts(marked: str, fields: int) -> list[int] | None:
    """Where each sentinel is, if every field's pair is there, one field after another (the common case,
    found with one scan for each sentinel in turn)."""
    cuts, at = [], 0
    for sentinel in _in_order(fields):
        at = marked.find(sentinel, at)
        if at < 0:
            return None
        cuts.append(at)
    return cuts


def _without(marked: str, cuts: list[int]) -> str:
    return "".join([marked[a + 1 : b] for a, b in zip([-1, *cuts], [*cuts, len(marked)])])


def _regions_at(cuts: list[int], owner: list[int], n_messages: int) -> list[list[Range]]:
    regions: list[list[Range]] = [[] for _ in range(n_messages)]
    for field, message in enumerate(owner):
        regions[message].append((cuts[2 * field] - 2 * field, cuts[2 * field + 1] - 2 * field - 1))
    return regions


def _read_once(marked: RenderedText, wrap: _Wrapper, n_messages: int
               ) -> tuple[str | None, tuple[list[list[Range]], set[int]] | None, tuple[int, ...]]:
    """The rendering as is, each message's ranges in it and where the template's message loop iterations
    start in it (RenderedText.loop), from the marked rendering alone, for a template that passes text
    through (passthrough.py): (None, None, ()) unless every field's sentinels are there in order around
    its own text (a template that passes text through trims at most the whitespace outside them), and
    the text left has no sentinel-range characters (of its own, or of a field rendered twice). So no
    field held a loop mark either: the template's rendering took it out, and the field's text differs."""
    if wrap.unmarked:  # fields past the sentinels' supply: their text could hold a pair that is not theirs
        return None, None, ()
    text = marked.text
    cuts = _in_order_cuts(text, len(wrap.owner))
    if cuts is None or not all(b - a - 1 == len(core) and text.startswith(core, a + 1)
                               for a, b, core in zip(cuts[::2], cuts[1::2], wrap.core)):
        return None, None, ()
    plain = _without(text, cuts)
    if not plain.isascii() and PRIVATE_PLANES.search(plain):
        return None, None, ()
    loop = tuple(at if at is None else at - bisect.bisect_left(cuts, at) for at in marked.loop)  # less the sentinels before
    return plain, (_regions_at(cuts, wrap.owner, n_messages), set(range(len(wrap.owner)))), loop


def _private_outside_fields(conv: Conversation) -> bool:
    """Whether a text the template may render besides the message fields (names, tool ids, tools) holds
    sentinel-range characters: they could stand in for the sentinels of a field it leaves out."""
    extra = [s for m in conv.messages for s in (m.name, m.tool_call_id) if s]
    if conv.tools:
        extra.append(json.dumps(conv.tools, ensure_ascii=False))
    return any(not s.isascii() and PRIVATE_PLANES.search(s) for s in extra)


def _sentinel_regions(text: str, marked: str, owner: list[int], n_messages: int
                      ) -> tuple[list[list[Range] | None], set[int]] | None:
    """Each message's ranges in `text` (None where its sentinels did not survive intact) and the fields
    found at all; None unless removing the sentinels from `marked` gives `text` back exactly."""
    cuts = _in_order_cuts(marked, len(owner))
    # every field rendered once, in order, and nothing else between them (a sentinel rendered twice would
    # be left in the text)
    if cuts is not None and _without(marked, cuts) == text:
        return _regions_at(cuts, owner, n_messages), set(range(len(owner)))
    regions: list[list[Range] | None] = [[] for _ in range(n_messages)]
    parts = _SENTINEL_SPLIT.split(marked)  # text, sentinel, text, sentinel, ..., text
    if "".join(parts[::2]) != text:
        return None
    open_at: dict[int, int] = {}
    broken: set[int] = set()
    found: set[int] = set()
    copies: set[int] = set()  # fields rendered whole once already: a later whole copy is not the message's
    for pos, sentinel in zip(itertools.accumulate(map(len, parts[0:-1:2])), parts[1::2]):
        field, closing = divmod(ord(sentinel) - SENTINEL_BASE, 2)
        if field >= len(owner):
            return None
        found.add(field)
        if not closing:
            if field in open_at:
                broken.add(owner[field])
            open_at[field] = pos
        elif field in open_at:
            start = open_at.pop(field)
            if field not in copies:  # e.g. a called tool's name repeated in its result's header (harmony)
                regions[owner[field]].append((start, pos))
                copies.add(field)
        else:
            broken.add(owner[field])
    broken.update(owner[f] for f in open_at)
    for i in broken:
        regions[i] = None
    return regions, found


@functools.lru_cache(maxsize=64)
def _in_order(fields: int) -> str:
    """The sentinels of `fields` fields, each opened and closed, one field after another."""
    return "".join(map(chr, range(SENTINEL_BASE, SENTINEL_BASE + 2 * fields)))


def common_prefix(a: str, b: str) -> int:
    """The length of the longest text both `a` and `b` start with."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search with C-speed slice comparisons
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _difference_region(text: str, changed: str) -> list[Range]:
    if changed == text:
        return []
    prefix = common_prefix(text, changed)
    limit = min(len(text), len(changed)) - prefix
    suffix = common_prefix(text[::-1], changed[::-1])
    suffix = min(suffix, limit)
    return [(prefix, len(text) - suffix)]


def _perturbed(text: str, _index: int, _kind: str = "content") -> str:
    # a private-use character the field does not hold, so that it differs from whatever character of the
    # field a template puts first or last, and the difference covers the whole field
    return next(chr(c) for c in range(SENTINEL_BASE, SENTINEL_BASE + len(text) + 1) if chr(c) not in text) if text else text


def _locate_by_difference(conv: Conversation, template: ChatTemplate, text: str, i: int) -> list[Range]:
    changed = template.render(template_messages(conv.messages, _perturbed, only=i, developer=template_role(template)),
                              conv.tools).text
    return _difference_region(text, changed)


# -- targets ------------------------------------------------------------------------------------------


def _neighbours(ranges: list[tuple[int, int, int]], i: int, start: int, end: int, text_len: int) -> tuple[int, int]:
    """The end of the nearest other message before message i (which spans [start, end)), and the start of
    the nearest one after; `ranges` holds every message's (a, b, owner)."""
    lo, hi = 0, text_len
    for a, b, owner in ranges:
        if owner != i:
            if b <= start:
                lo = max(lo, b)
            elif a >= end:
                hi = min(hi, a)
    return lo, hi


def _turn(text: str, message: Message, start: int, end: int, lo: int, hi: int, facts: TemplateFacts,
          generation: tuple[Range, ...]) -> tuple[Range, Range | None, Range | None]:
    """(turn, header, end-of-turn) of a message whose text spans [start, end): the header and generation
    blocks are an assistant's."""
    assistant = message.role == "assistant"
    block = next(((a, b) for a, b in generation if a <= start < b or (lo <= a and b <= hi and a < end)),
                 None) if assistant and generation else None
    header = None
    content = message.content or ""
    if block is not None:
        t_start, t_end = block
    else:
        h = text.rfind(facts.header, lo, start) if facts.header and assistant else -1
        if h >= 0:
            header = (h, h + len(facts.header))
            t_start = header[1]
        elif content[:1].isspace():  # the template kept the content's leading whitespace: it is the turn's
            lead = len(content) - len(content.lstrip())
            t_start = start - lead if text[start - lead : start] == content[:lead] else start
        else:
            t_start = start
        t_end = end
        if content[-1:].isspace():
            trail = content[len(content.rstrip()) :]
            if text.startswith(trail, t_end) and t_end + len(trail) <= hi:
                t_end += len(trail)
    eot = None
    if facts.end_of_turn:
        k = text.find(facts.end_of_turn, end, hi)
        if k >= 0:
            eot = (k, k + len(facts.end_of_turn))
            t_end = max(t_end, eot[1])
    return (t_start, t_end), header, eot


def render_conversation(
    conv: Conversation,
    template: ChatTemplate,
    facts: TemplateFacts,
    train_on: TrainOn,
    train_eot: bool = True,
    special_text: SpecialText = SpecialText.REJECT,
    special_pattern: re.Pattern | None = None,
    plain: RenderedText | None = None,
) -> Rendered:
    """`plain`: the template's rendering of `conv` as is, where the caller made it already (per-turn context
    renders each turn's conversation to place the turn): only the marked rendering is made then."""
    messages = conv.messages
    flags = resolve_train_flags(messages, train_on)
    if special_pattern is not None and special_text is SpecialText.REJECT:
        reject_special_text(conv, special_pattern)
    n = len(messages)
    wrap = _Wrapper()
    developer = template_role(template)
    text, marked, sentinels, generation, loop = None, None, None, (), ()
    try:
        if plain is None and template.passthrough_refusal is None and not _private_outside_fields(conv):
            once = template.render(template_messages(messages, wrap, developer=developer), conv.tools,
                                   loop_marks=True)
            text, sentinels, loop = _read_once(once, wrap, n)
            marked = once.text  # a loop mark a field held is gone from it: _sentinel_regions sees that
        if text is None:  # the plain rendering first: an error it raises names no sentinels
            rendered = plain or template.render(template_messages(messages, developer=developer), conv.tools)
            text, generation = rendered.text, rendered.generation
            if marked is None:
                marked = template.render(template_messages(messages, wrap, developer=developer), conv.tools).text
    except TemplateRenderError as err:
        raise RecordError(Reason.TEMPLATE_ERROR, str(err)) from None

    ascii_text = text.isascii()  # O(1)
    if not ascii_text and (surrogate := _SURROGATE.search(text)):
        raise RecordError(Reason.MALFORMED, f"the rendered text holds a lone UTF-16 surrogate "
                          f"(U+{ord(surrogate.group()):04X} at character {surrogate.start()}): not valid "
                          "Unicode, and no tokenizer encodes it")
    if sentinels is None:
        # a rendering holding sentinel-range characters of its own cannot be read by sentinels
        clean = ascii_text or not PRIVATE_PLANES.search(text)
        sentinels = _sentinel_regions(text, marked, wrap.owner, n) if clean else None
    regions, found = sentinels or ([None] * n, set())
    for i in wrap.unmarked:
        regions[i] = None
    unrendered = tuple(sorted({(wrap.owner[k], wrap.kind[k]) for k in range(len(wrap.owner)) if k not in found})
                       ) if sentinels else ()
    method = "generation" if generation else "sentinel"
    lost = []  # located by difference and not there at all: none of the message's fields is rendered
    try:
        for i in range(n):
            if regions[i] is None:
                regions[i] = _locate_by_difference(conv, template, text, i)
                method = "difference"
                if not regions[i] and not is_empty_turn(messages[i]):
                    lost.append((i, "message"))
    except TemplateRenderError as err:
        raise RecordError(Reason.TEMPLATE_ERROR, str(err)) from None
    unrendered = tuple(sorted({*unrendered, *lost}))

    spans = []
    ranges = [(a, b, i) for i, data in enumerate(regions) for a, b in data]
    for i, (m, train, data) in enumerate(zip(messages, flags, regions)):
        data = sorted(data)
        if train and m.role == "assistant" and is_empty_turn(m):
            train = False  # nothing to learn but "stop at once"; counted as an untrained turn
        if not data:
            spans.append(MessageSpan(m.role, False, ()))
            continue
        start, end = data[0][0], max(b for _, b in data)
        lo, hi = _neighbours(ranges, i, start, end, len(text))
        turn, header, eot = _turn(text, m, start, end, lo, hi, facts, generation)
        if not train or train_on is TrainOn.ALL:  # under --train-on all the mask starts from every token
            spans.append(MessageSpan(m.role, train, tuple(data), turn))
            continue
        target = (turn[0], eot[0] if eot and not train_eot else turn[1])
        spans.append(MessageSpan(m.role, True, tuple(data), turn, target, header, eot))

    literal = ()
    if special_pattern is not None and special_text is SpecialText.LITERAL:
        literal = literal_ranges(conv, text, special_pattern,
                                 lambda c: template.render(template_messages(c.messages), c.tools).text)
    return Rendered(conv.source_id, text, tuple(spans), method, literal, train_on is TrainOn.ALL, unrendered,
                    loop=loop)


