"""The types that flow between the build's stages, in the order they are made, as plain dataclasses:

    RawRecord (sources) -> Conversation of Messages (formats) -> Rendered with MessageSpans, using the
    template's TemplateFacts (probe, spans) -> Document (masking, truncation) -> shard rows (shards.Row)

They are values: made, read, replaced, never changed in place. They are not declared frozen because a frozen
dataclass sets each field through `object.__setattr__`, 2 µs per instance against 0.4, and a build
makes about ten of them per record: 7 % of its instructions (callgrind).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import InputFormat

Range = tuple[int, int]  # [start, end) of characters in a rendering


@dataclass(slots=True)
class RawRecord:
    source_id: int
    input_index: int  # which input file it came from
    format: InputFormat
    data: Any  # the parsed record, a RecordError when it could not be parsed, or (sources.JsonLine) its line


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: Any  # a dict for structured calls, a string when the source held raw JSON text
    id: str | None = None


@dataclass(slots=True)
class Message:
    role: str
    content: str | None  # None where the source has `content: null` (templates may test for it)
    train: bool | None = None  # None: the build's --train-on policy decides
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None  # given to templates as `reasoning_content`, `thinking` and `reasoning`
    name: str | None = None  # tool name on tool results, when the source gives it
    tool_call_id: str | None = None


@dataclass(slots=True)
class Conversation:
    source_id: int  # 0-based index of the input record across all inputs, in order
    messages: tuple[Message, ...]
    tools: tuple[dict, ...] | None = None


@dataclass(slots=True)
class TemplateFacts:
    """What probing the template once tells: the text before an assistant turn, and what closes it."""

    header: str  # generation prompt, or the last special token before an assistant reply; "" if none
    end_of_turn: str | None  # special token text closing an assistant turn; None if the template has none
    # the template variables that change its generation prompt (`enable_thinking`), one setting each, the
    # template's default ({}) first: each is a mode a turn may be generated in
    modes: tuple[dict, ...] = ({},)
    trailer: str = ""  # what the template writes after the end of the last turn (`\n`, an appended prompt)


@dataclass(slots=True)
class MessageSpan:
    role: str
    train: bool
    data: tuple[Range, ...]  # where the message's own text landed in the rendering
    turn: Range | None = None  # what the turn generates: after its header through its end-of-turn token
    target: Range | None = None  # characters to train (the turn; without the end-of-turn if that is off)
    header: Range | None = None  # the prompt text right before a trained assistant turn, checked untrained
    eot: Range | None = None  # the control token(s) closing a trained turn, checked trained


@dataclass(slots=True)
class Rendered:
    source_id: int
    text: str
    spans: tuple[MessageSpan, ...]
    method: str  # "sentinel", "difference" or "generation": how the spans were found
    literal: tuple[Range, ...] = ()  # special-token text inside messages, to tokenize as plain text
    train_all: bool = False
    unrendered: tuple[tuple[int, str], ...] = ()  # (message, field) the template left out, e.g. (3, "tool_call")
    # a document beyond the record's first: a trained turn the whole rendering renders otherwise, in the
    # rendering of the conversation up to and including it (--turn-context own)
    extra: bool = False
    # where each message's iteration of the template's message loop starts in `text` (None where the
    # rendering through the messages before it is not known from the marks), then where the loop ends,
    # for a template rendering prefixes as prefixes (prefixes.py); () when not known
    loop: tuple[int | None, ...] = ()


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
