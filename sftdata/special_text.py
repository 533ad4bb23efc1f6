"""Record text that spells a token the tokenizer matches as one unit (a user typing `<|im_end|>`, a tool
description holding `<think>`), in every string a template may render: message content, reasoning,
names, tool-call names and arguments (keys and values), and the record's `tools`.

`--special-text reject` names the first such string and where it is; `literal` finds which matches in a
rendering came from the record (they are encoded as plain text), by rendering once more with each of
them spelled one character differently: the matches whose text changed are the record's.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Callable, Iterator

from .records import Conversation, Message, Range
from .rejects import Reason, RecordError
from .template import TemplateRenderError


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON-like value, keys included (nesting is bounded by formats.MAX_DEPTH)."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k, where)
            yield from _strings(v, where)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v, where)


TEXT_FIELDS = ("content", "reasoning", "name", "tool_call_id")  # a message's own strings


def _message_strings(m: Message) -> Iterator[tuple[str, str]]:
    for field in TEXT_FIELDS:
        yield field, getattr(m, field) or ""  # a null (content stays null: formats.py) holds no text
    for k, call in enumerate(m.tool_calls):
        yield f"tool call {k} name", call.name
        yield from _strings(call.arguments, f"tool call {k} arguments")


def record_strings(conv: Conversation) -> Iterator[tuple[str, str]]:
    """(where, text) for every string of a conversation a template may render."""
    for i, m in enumerate(conv.messages):
        for where, text in _message_strings(m):
            yield f"message {i} ({m.role}) {where}", text
    yield from _strings(conv.tools or (), "tools")


def reject_special_text(conv: Conversation, pattern: re.Pattern) -> None:
    if not (conv.tools or any(m.tool_calls for m in conv.messages)) and "\0" not in pattern.pattern:
        # the common record, all its strings in one search: no token's text holds the NUL joining them.
        # (The pattern is asked by its text: hashing a compiled pattern, as a cache would, hashes its
        # whole compiled code, 9 us a record for Llama 3's 256 special tokens.)
        if pattern.search("\0".join([s for m in conv.messages for f in TEXT_FIELDS if (s := getattr(m, f))])) is None:
            return
    for where, text in record_strings(conv):
        found = pattern.search(text)
        if found:
            raise RecordError(Reason.SPECIAL_TOKEN_IN_CONTENT,
                              f"{where} contains the special token text {found.group()!r}; it would become a "
                              "control token (use --special-text literal or allow)")


def special_text_error(text: str, pattern: re.Pattern | None) -> str | None:
    """Why `text` (a setting, such as --system-prompt) cannot be used under --special-text reject, if so."""
    found = pattern.search(text) if pattern is not None else None
    if found is None:
        return None
    return (f"contains the special token text {found.group()!r}, which would become a control token in every "
            "record; remove it, or pass --special-text literal (plain text) or allow (the control token)")


def _respelled(match: re.Match) -> str:
    """The matched text with its middle character changed: the same length, and (checked by the caller)
    no longer a token's text."""
    text, k = match.group(), len(match.group()) // 2
    return text[:k] + ("x" if text[k] != "x" else "y") + text[k + 1 :]


def _neutral(value: Any, pattern: re.Pattern) -> Any:
    if isinstance(value, str):
        return pattern.sub(_respelled, value)
    if isinstance(value, dict):
        return {_neutral(k, pattern): _neutral(v, pattern) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_neutral(v, pattern) for v in value)
    return value


def _neutral_message(m: Message, pattern: re.Pattern) -> Message:
    calls = tuple(replace(c, name=_neutral(c.name, pattern), arguments=_neutral(c.arguments, pattern))
                  for c in m.tool_calls)
    return replace(m, content=_neutral(m.content, pattern), reasoning=_neutral(m.reasoning, pattern),
                   name=_neutral(m.name, pattern), tool_call_id=_neutral(m.tool_call_id, pattern),
                   tool_calls=calls)


def literal_ranges(conv: Conversation, text: str, pattern: re.Pattern,
                   render: Callable[[Conversation], str]) -> tuple[Range, ...]:
    """The matches of `pattern` in `text` (the rendering of `conv`) that spell the record's own text,
    for --special-text literal. A template that changes length with the record's text, or keeps a
    respelled token a token, cannot be read this way: the record is rejected."""
    if not any(pattern.search(s) for _, s in record_strings(conv)):
        return ()
    neutral = replace(conv, messages=tuple(_neutral_message(m, pattern) for m in conv.messages),
                      tools=_neutral(conv.tools, pattern))
    unreadable = RecordError(Reason.SPECIAL_TOKEN_IN_CONTENT,
                             "the record's special token text cannot be kept literal: the template renders it "
                             "differently when it is respelled (use --special-text reject or allow)")
    if any(pattern.search(s) for _, s in record_strings(neutral)):
        raise unreadable
    try:
        plain = render(neutral)
    except TemplateRenderError as err:
        raise RecordError(Reason.TEMPLATE_ERROR, str(err)) from None
    if len(plain) != len(text):
        raise unreadable
    return tuple((m.start(), m.end()) for m in pattern.finditer(text) if plain[m.start() : m.end()] != m.group())
