"""Message text that spells a special token (a user typing `<|im_end|>`): found per field, so the reject
names where it is."""

from __future__ import annotations

import json
import re
from typing import Iterator, Sequence

from .records import Message
from .rejects import Reason, RecordError


def _fields(m: Message) -> Iterator[tuple[str, str]]:
    yield "content", m.content or ""
    yield "reasoning", m.reasoning or ""
    for call in m.tool_calls:
        arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments,
                                                                                     ensure_ascii=False)
        yield "tool call", call.name + " " + arguments


def reject_special_text(messages: Sequence[Message], pattern: re.Pattern) -> None:
    for i, m in enumerate(messages):
        if not (m.reasoning or m.tool_calls or pattern.search(m.content or "")):
            continue  # the common case, without going through every field
        for field, value in _fields(m):
            found = pattern.search(value)
            if found:
                raise RecordError(
                    Reason.SPECIAL_TOKEN_IN_CONTENT,
                    f"message {i} ({m.role}) {field} contains the special token text {found.group()!r}; "
                    "it would become a control token (use --special-text literal or allow)",
                )
