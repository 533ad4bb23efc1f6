"""Build settings: one typed dataclass, the only place a default or a setting's help is written.

`sftdata build`'s flags are generated from it (options.py), the Python API takes its fields as keyword
arguments, and the manifest saves it whole. It is validated when made: a bad setting is one error
listing every problem, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar
from datetime import date
from enum import Enum
from pathlib import Path

from .options import setting


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


class TurnContext(str, Enum):
    OWN = "own"  # each trained turn in the rendering it is generated after: extra documents where needed
    WHOLE = "whole"  # every turn inside the one rendering of the whole conversation (earlier behaviour)
    LAST = "last"  # only the turns the whole rendering holds as generated (the last one at least)


class EmptyReasoning(str, Enum):
    PROMPT = "prompt"  # text a mode's generation prompt forces (Qwen3's empty think block) is prompt
    TRAIN = "train"  # it is trained, as part of the reply


class Unrendered(str, Enum):
    REJECT = "reject"  # a record with a message field the template does not render is rejected
    DROP = "drop"  # the field is left out; a turn left with no text of its own is not trained


class Masker(str, Enum):
    SPANS = "spans"  # sftdata's exact masking (the default)
    RESPONSE_TEMPLATE = "response-template"  # comparator: the classic token search of a response template


class InputFormat(str, Enum):
    AUTO = "auto"
    MESSAGES = "messages"
    SHAREGPT = "sharegpt"
    ALPACA = "alpaca"
    PROMPT_COMPLETION = "prompt-completion"


class Executor(str, Enum):
    LOCAL = "local"  # this machine: this process and a pool of worker processes
    RAY = "ray"  # a Ray cluster (pip install sftdata[ray])


class ConfigError(ValueError):
    """Settings that cannot work together or at all: the message lists each problem."""


@dataclass(frozen=True)
class BuildConfig:
    # what to render and tokenize with
    tokenizer: str = setting("", "tokenizer folder (tokenizer.json + tokenizer_config.json), or a hub id when "
                                 "online", required=True)
    chat_template: str | None = setting(None, "Jinja chat template file to use instead of the tokenizer's",
                                        metavar="FILE")
    template_date: str = setting("2024-07-26", "the date templates' strftime_now() sees, fixed so the same "
                                               "inputs give the same shards (YYYY-MM-DD)", metavar="DATE")
    system_prompt: str | None = setting(None, "system message added to conversations that have none",
                                        metavar="TEXT")
    format: InputFormat = setting(InputFormat.AUTO, "input format; auto: detected per file from its first record")

    # which tokens train
    train_on: TrainOn = setting(TrainOn.ASSISTANT, "assistant: every assistant turn; last: the final assistant "
                                                   "turn only; all: every token. A message's own `train: "
                                                   "true|false` wins")
    train_eot: bool = setting(True, "train the end-of-turn token closing each trained turn", negative="no-train-eot")
    special_text: SpecialText = setting(SpecialText.REJECT, "message text that spells a special token (a user "
                                                            "typing <|im_end|>): reject the record, tokenize it "
                                                            "as literal text, or allow it to become the control "
                                                            "token")
    turn_context: TurnContext = setting(
        TurnContext.OWN,
        "where each assistant turn is trained. own: after exactly the prompt it is generated from (the template's "
        "rendering of the conversation before it with the generation prompt); a turn the whole conversation "
        "renders otherwise (earlier reasoning dropped, an end token rewritten) gets a document of its own. whole: "
        "every turn inside the whole rendering, as rendered there. last: one document, training only the turns "
        "the whole rendering holds as generated (the last one at least)")
    empty_reasoning: EmptyReasoning = setting(
        EmptyReasoning.PROMPT,
        "text that a mode's generation prompt forces before a reply (Qwen3's empty <think></think> before a reply "
        "without reasoning): prompt (untrained) or train")
    unrendered: Unrendered = setting(
        Unrendered.REJECT,
        "a message field the chat template does not render (tool calls, reasoning, a second parallel call): "
        "reject the record, or drop the field (a turn left with no text of its own is not trained)")
    masker: Masker = setting(Masker.SPANS, "spans: sftdata's exact masks. response-template: a COMPARATOR, not a "
                                           "recommended mode: the classic search of --response-template's token "
                                           "ids in each example, training everything after the first match, to "
                                           "show with `sftdata diff` which examples that approach breaks")
    response_template: str | None = setting(None, "e.g. '### Assistant:'; used by --masker response-template and "
                                                  "as the report's baseline", metavar="TEXT")

    # length and layout of the output
    max_length: int | None = setting(4096, "longest document in tokens; 0 for no limit")
    overlong: Overlong = setting(Overlong.CUT_TURNS, "longer documents: cut-turns keeps the whole turns that fit "
                                                     "(nothing is trained without the turns before it); "
                                                     "split-turns cuts them at turn boundaries into several "
                                                     "documents (later pieces lack the earlier turns); truncate "
                                                     "cuts at max-length; reject drops the record. All counted "
                                                     "in the manifest")
    pack: bool = setting(False, "pack whole documents into rows of at most --max-length tokens (first-fit "
                                "decreasing over the whole dataset, rows shuffled by --seed); each row keeps "
                                "its documents' lengths")
    seed: int = setting(0, "shuffles the order of packed rows, and chooses the held-out records")
    eval_fraction: float = setting(0.0, "hold out this share of the records (whole records, chosen from their "
                                        "source id and --seed) as an eval split in OUT/eval/", metavar="F")
    eval_records: int = setting(0, "hold out this many records (the same choice as --eval-fraction, by count) "
                                   "as an eval split in OUT/eval/")
    shard_tokens: int = setting(64 * 1024 * 1024, "a new shard starts past this many tokens")

    # how the work runs (the output does not depend on these)
    workers: int = setting(0, "this process and N-1 worker processes; 0: one per core. With 1 this process "
                              "works alone, encoding in a thread while it renders")
    batch_size: int = setting(256, "conversations per batch: the unit of work a worker takes")
    executor: Executor = setting(Executor.LOCAL, "where the work runs: this machine, or a Ray cluster (the "
                                                 "same shards either way)")
    ray_address: str | None = setting(None, "the Ray cluster to use with --executor ray: `auto`, "
                                            "ray://host:10001, or host:6379; none starts a local one",
                                      metavar="ADDRESS")
    unit_records: int = setting(2048, "records per unit of input: what one Ray worker takes at a time, and "
                                      "what --resume reuses or redoes whole")

    # how the work runs: a build resumed with other values of these reuses the units already done
    RUN_SETTINGS: ClassVar[tuple[str, ...]] = ("workers", "batch_size", "executor", "ray_address")

    def __post_init__(self) -> None:
        for f in fields(self):  # enums from their values, so the API and a manifest can pass strings
            value = getattr(self, f.name)
            kind = f.metadata.get("enum")
            if kind is not None and not isinstance(value, kind):
                try:
                    object.__setattr__(self, f.name, kind(value))
                except ValueError:
                    raise ConfigError(f"{f.name} is {value!r}; choose one of "
                                      f"{', '.join(e.value for e in kind)}") from None
        if self.max_length == 0:
            object.__setattr__(self, "max_length", None)  # the flag's "0: no limit"
        problems = []
        if not self.tokenizer:
            problems.append("tokenizer is required (--tokenizer)")
        if self.max_length is not None and self.max_length < 1:
            problems.append(f"max_length must be at least 1 (or 0 for no limit), not {self.max_length}")
        if self.pack and self.max_length is None:
            problems.append("pack needs max_length: the row length to pack documents into")
        for name in ("batch_size", "shard_tokens", "unit_records"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.workers < 0:
            problems.append(f"workers must be 0 (one per core) or more, not {self.workers}")
        if self.seed < 0:
            problems.append(f"seed must not be negative, not {self.seed}")
        if not 0.0 <= self.eval_fraction < 1.0:
            problems.append(f"eval_fraction must be within [0, 1), not {self.eval_fraction}")
        if self.eval_records < 0:
            problems.append(f"eval_records must not be negative, not {self.eval_records}")
        if self.eval_fraction and self.eval_records:
            problems.append("give eval_fraction or eval_records, not both")
        if self.masker is Masker.RESPONSE_TEMPLATE and not self.response_template:
            problems.append("masker response-template needs response_template (--response-template TEXT)")
        try:
            date.fromisoformat(self.template_date)
        except (TypeError, ValueError):
            problems.append(f"template_date must be a date as YYYY-MM-DD, not {self.template_date!r}")
        if problems:
            raise ConfigError("invalid build settings:\n  " + "\n  ".join(problems))

    @property
    def holds_out(self) -> bool:
        """Whether the build writes an eval split."""
        return bool(self.eval_fraction or self.eval_records)

    def to_json(self) -> dict:
        return {f.name: (v.value if isinstance(v := getattr(self, f.name), Enum) else v) for f in fields(self)}


def absolute_if_local(path: str | None) -> str | None:
    """A setting's local path made absolute, so the manifest names it from anywhere; a hub id stays as given."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path
