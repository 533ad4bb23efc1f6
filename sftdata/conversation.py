"""The record types that flow through a build, as plain dataclasses.

They, and the other types made once or more per record (raw records, spans, renderings, rows), are
values: made, read, replaced, never changed in place. They are not declared frozen because a frozen
dataclass sets each field through `object.__setattr__`, 2 µs per instance against 0.4, and a build
makes about ten of them per record: 7 % of its instructions (callgrind).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: Any  # a dict for structured calls, a string when the source held raw JSON text
    id: str | None = None


@dataclass(slots=True)
class Message:
    role: str
    content: str
    train: bool | None = None  # None: the build's --train-on policy decides
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None  # rendered as `reasoning_content` for templates that know it
    name: str | None = None  # tool name on tool results, when the source gives it
    tool_call_id: str | None = None


@dataclass(slots=True)
class Conversation:
    source_id: int  # 0-based index of the input record across all inputs, in order
    messages: tuple[Message, ...]
    tools: tuple[dict, ...] | None = None


@dataclass(slots=True)
class Document:
    """One tokenized, masked, verified conversation: what a shard row (or a piece of a packed row) holds."""

    source_id: int
    input_ids: Any  # np.ndarray[int32]
    loss_mask: Any  # np.ndarray[uint8]
    truncated: bool = False
    # token index after each trained turn's end-of-turn token: where an over-long document may be cut
    # keeping whole trained turns (cut-turns), without tokenizing again
    turn_ends: tuple[int, ...] = field(default=())
    # token index after every turn: where it may be split into pieces that start at a turn (split-turns)
    boundaries: tuple[int, ...] = field(default=())

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        return int(self.loss_mask.sum())
