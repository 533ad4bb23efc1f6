"""The masking contract, checked independently (tests/contract.py) on every trap, every tokenizer family.

Fixture tokenizers always run; the real ones run where ../shared is present, and mistral-common's
SentencePiece models wherever the package is installed.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import pytest

from sftdata.config import BuildConfig, InputFormat, TrainOn
from sftdata.formats import to_conversation
from sftdata.records import RawRecord
from sftdata.rejects import Reason
from sftdata.worker import Worker

from .conftest import TEMPLATES, fixture_tokenizer, requires_shared, shared_tokenizer
from .contract import check_contract, check_generation_contract
from .traps import TOOL_CALL, TRAPS, UNTRAINABLE

TODAY = datetime.date.today().isoformat()  # transformers' strftime_now sees today; make ours agree


@dataclass(frozen=True)
class Case:
    name: str
    tokenizer: str  # a path, or "mistral:v1" / "mistral:v3"
    template: str | None = None  # a file in fixtures/templates, or None for the tokenizer's own
    tools: bool = False  # the template renders tool calls
    allowed: frozenset = frozenset()  # control tokens the model itself generates inside a turn
    modes: tuple = ({},)  # template variables that change the generation prompt (the judge's own knowledge)
    needs_shared: bool = False


# Qwen's added (not special) tokens that its template writes into an assistant turn
QWEN_GENERATED = frozenset({"<think>", "</think>", "<tool_call>", "</tool_call>"})
CASES = [
    Case("llama3-bpe", fixture_tokenizer("llama3-bpe")),
    Case("llama3-bpe-tools", fixture_tokenizer("llama3-bpe"), "llama3_1_tools.jinja", tools=True,
         allowed=frozenset({"<|python_tag|>"})),
    Case("chatml-bpe-qwen3", fixture_tokenizer("chatml-bpe"), tools=True, allowed=QWEN_GENERATED,
         modes=({}, {"enable_thinking": False})),
    Case("chatml-generation", fixture_tokenizer("chatml-bpe"), "chatml_generation.jinja"),
    Case("llama2-spm", fixture_tokenizer("llama2-spm")),
    Case("mistral-spm-v3", fixture_tokenizer("mistral-spm"), tools=True, allowed=frozenset({"[TOOL_CALLS]"})),
    Case("gemma-spm", fixture_tokenizer("gemma-spm")),
    Case("mistral-common-v1", "mistral:v1", "mistral_v3.jinja"),
    Case("mistral-common-v3", "mistral:v3", "mistral_v3.jinja", tools=True, allowed=frozenset({"[TOOL_CALLS]"})),
    Case("mistral-common-tekken", "mistral:tekken", "mistral_v3.jinja", tools=True,
         allowed=frozenset({"[TOOL_CALLS]"})),
    Case("shared-llama2", shared_tokenizer("llama2"), "llama2.jinja", needs_shared=True),
    Case("shared-llama3.1", shared_tokenizer("llama3_1"), needs_shared=True),
    Case("shared-qwen3", shared_tokenizer("qwen3"), tools=True, allowed=QWEN_GENERATED, needs_shared=True,
         modes=({}, {"enable_thinking": False})),
]


def _params(cases):
    return [pytest.param(c, id=c.name, marks=[requires_shared] if c.needs_shared else []) for c in cases]


_WORKERS: dict = {}


def worker_for(case: Case, mistral_dir, train_on=TrainOn.ASSISTANT) -> Worker:
    key = (case.name, train_on)
    if key not in _WORKERS:
        path = mistral_dir[case.tokenizer.split(":")[1]] if case.tokenizer.startswith("mistral:") else case.tokenizer
        template = str(TEMPLATES / case.template) if case.template else None
        _WORKERS[key] = Worker(BuildConfig(tokenizer=path, chat_template=template, train_on=train_on,
                                           template_date=TODAY, max_length=None))
    return _WORKERS[key]


def build_one(worker: Worker, record: dict):
    result = worker.process([RawRecord(0, 0, InputFormat.MESSAGES, record)])
    return result


def expected_flags(conversation, train_on: TrainOn) -> list[bool]:
    assistants = [i for i, m in enumerate(conversation.messages) if m.role == "assistant"]
    flags = []
    for i, m in enumerate(conversation.messages):
        trainable = m.role == "assistant" and bool((m.content or "").strip() or m.tool_calls or
                                                   (m.reasoning or "").strip())
        flags.append(trainable and (train_on is TrainOn.ASSISTANT or i == assistants[-1]))
    return flags


def assert_contract(case: Case, worker: Worker, record: dict, train_on=TrainOn.ASSISTANT):
    """Each trained turn in its generation context (check_generation_contract), and the content checks of
    check_contract on the whole rendering's document. Returns the documents' trained text runs."""
    result = build_one(worker, record)
    assert not result.rejects, f"rejected: {result.rejects}"
    conversation = to_conversation(record, 0, InputFormat.MESSAGES)
    flags = expected_flags(conversation, train_on)
    path, template = worker.config.tokenizer, worker.tokenizer.chat_template
    runs = check_generation_contract(path, template, conversation, result.documents, flags,
                                     set(worker.tokenizer.special_texts), case.modes)
    if len(result.documents) == 1:  # every trained turn is in the whole rendering
        check_contract(path, template, conversation, result.documents[0], flags, worker.facts.end_of_turn,
                       set(worker.tokenizer.special_texts), case.allowed)
    return result.documents, runs


@pytest.mark.parametrize("case", _params(CASES))
@pytest.mark.parametrize("trap", sorted(TRAPS))
def test_trap_masks_exactly(case, trap, mistral_dir):
    worker = worker_for(case, mistral_dir)
    assert_contract(case, worker, TRAPS[trap])


@pytest.mark.parametrize("case", _params(CASES))
@pytest.mark.parametrize("trap", ["twelve_turns", "reply_repeats_user", "system_prompt"])
def test_train_on_last_trains_only_the_final_turn(case, trap, mistral_dir):
    worker = worker_for(case, mistral_dir, TrainOn.LAST)
    (doc,), _ = assert_contract(case, worker, TRAPS[trap], TrainOn.LAST)
    full = build_one(worker_for(case, mistral_dir), TRAPS[trap]).documents[0]
    assert doc.input_ids.tolist() == full.input_ids.tolist()
    # the whole rendering trains at least the last turn; earlier ones too where it holds them as generated
    assert 0 < doc.num_trained <= full.num_trained
    assert (doc.loss_mask <= full.loss_mask).all(), "train-on last trains a token the default does not"


@pytest.mark.parametrize("case", _params([c for c in CASES if c.tools]))
def test_tool_calls_are_trained_and_tool_results_are_not(case, mistral_dir):
    worker = worker_for(case, mistral_dir)
    _, by_document = assert_contract(case, worker, TOOL_CALL)
    runs = sorted((r for rs in by_document.values() for r in rs), key=lambda r: "get_weather" not in r)
    assert len(runs) == 2
    assert "get_weather" in runs[0] and "Paris" in runs[0]
    assert "21 °C" in runs[1]
    assert all("temp_c" not in run for run in runs)


@pytest.mark.parametrize("case", _params(CASES))
@pytest.mark.parametrize("record", sorted(UNTRAINABLE))
def test_only_empty_replies_is_rejected_with_a_reason(case, record, mistral_dir):
    result = build_one(worker_for(case, mistral_dir), UNTRAINABLE[record])
    assert not result.documents
    assert [r.reason for r in result.rejects] == [Reason.NO_TRAINABLE_TOKENS]
