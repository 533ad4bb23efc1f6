"""Build configuration: one typed dataclass, one source of defaults, saved whole in the manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class TrainOn(str, Enum):
    ASSISTANT = "assistant"  # every assistant turn
    LAST = "last"  # only the final assistant turn
    ALL = "all"  # every token but the first


class Overlong(str, Enum):
    CUT_TURNS = "cut-turns"  # keep whole turns up to max_length; reject when nothing trainable remains
    SPLIT_TURNS = "split-turns"  # cut at turn boundaries into several documents, each <= max_length
    TRUNCATE = "truncate"  # hard cut at max_length, even inside an assistant turn
    REJECT = "reject"  # reject the whole record


class SpecialText(str, Enum):
    REJECT = "reject"  # a record whose content spells a special token is rejected
    LITERAL = "literal"  # such text is tokenized as plain text: no control token appears
    ALLOW = "allow"  # such text becomes the control token, knowingly


class Masker(str, Enum):
    SPANS = "spans"  # sftdata's exact masking (the default)
    RESPONSE_TEMPLATE = "response-template"  # comparator: the classic token search of a response template


class InputFormat(str, Enum):
    AUTO = "auto"
    MESSAGES = "messages"
    SHAREGPT = "sharegpt"
    ALPACA = "alpaca"
    PROMPT_COMPLETION = "prompt-completion"


@dataclass(frozen=True)
class BuildConfig:
    tokenizer: str
    chat_template: str | None = None  # path to a Jinja file; None: the tokenizer's own
    format: InputFormat = InputFormat.AUTO
    train_on: TrainOn = TrainOn.ASSISTANT
    train_eot: bool = True  # train the end-of-turn token closing each trained assistant turn
    max_length: int | None = 4096
    overlong: Overlong = Overlong.CUT_TURNS
    special_text: SpecialText = SpecialText.REJECT
    # what a template's strftime_now() returns: fixed, so the same inputs give the same shards
    template_date: str = "2024-07-26"
    system_prompt: str | None = None  # added to conversations that have none
    masker: Masker = Masker.SPANS
    response_template: str | None = None  # for --masker response-template, and the report's baseline
    pack: bool = False
    seed: int = 0
    workers: int = 0  # 0: one per core
    batch_size: int = 256  # conversations per batch, the unit of work a worker takes
    shard_tokens: int = 64 * 1024 * 1024  # a new shard starts past this many tokens

    def to_json(self) -> dict:
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items()}
