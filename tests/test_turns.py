"""Reasoning and tool-use conversations: every assistant turn trained exactly as the model generates it
(issue 14), judged by tests/contract.py's check_generation_contract, which renders with transformers'
apply_chat_template and tokenizes with transformers, knowing nothing of sftdata's span finding.

Families: Qwen3 (the fixture ChatML tokenizer with the real template, and the shared one), Llama 3.1 with
its tool template, Mistral v3 with its tool markers (fixture and mistral-common), a harmony-style template
(gpt-oss's format) and a DeepSeek-style one written for these tests, Meta Llama 3 Instruct's
always-appended header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer

from sftdata.config import BuildConfig, EmptyReasoning, InputFormat, TurnContext, Unrendered
from sftdata.formats import to_conversation
from sftdata.records import RawRecord
from sftdata.rejects import Reason
from sftdata.worker import Worker

from .conftest import TEMPLATES, fixture_tokenizer, requires_shared, shared_tokenizer
from .contract import check_generation_contract
from .test_contract import TODAY, expected_flags

HARMONY_TOKENS = ["<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|call|>", "<|return|>"]
DEEPSEEK_TOKENS = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜tool▁calls▁begin｜>",
                   "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>",
                   "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>",
                   "<｜tool▁output▁end｜>"]


def with_special_tokens(folder: Path, tokens: list[str]) -> str:
    """The fixture Llama 3 byte-level tokenizer with `tokens` added as special tokens."""
    source = Path(fixture_tokenizer("llama3-bpe"))
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(source / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    tok.save(str(folder / "tokenizer.json"))
    config = json.loads((source / "tokenizer_config.json").read_text())
    for t in tokens:
        config["added_tokens_decoder"][str(tok.token_to_id(t))] = {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


@dataclass(frozen=True)
class Family:
    name: str
    tokenizer: str  # a fixture name, "shared:NAME", "mistral:VERSION", or "harmony"/"deepseek" (built here)
    template: str | None = None
    modes: tuple = ({},)  # the judge's own knowledge of the template's generation prompt modes
    thinks: bool = False  # renders reasoning
    parallel: bool = True  # renders several calls in one message
    null_content: bool = False  # a call's content must be null (DeepSeek); Qwen3's template fails on null
    appended: str = ""  # what the template writes after every conversation


QWEN_MODES = ({}, {"enable_thinking": False})
FAMILIES = {
    "qwen3-fixture": Family("qwen3-fixture", "chatml-bpe", modes=QWEN_MODES, thinks=True),
    "qwen3-shared": Family("qwen3-shared", "shared:qwen3", modes=QWEN_MODES, thinks=True),
    "llama3.1-tools": Family("llama3.1-tools", "llama3-bpe", "llama3_1_tools.jinja", parallel=False),
    "mistral-v3-fixture": Family("mistral-v3-fixture", "mistral-spm"),
    "mistral-common-v3": Family("mistral-common-v3", "mistral:v3", "mistral_v3.jinja"),
    "mistral-common-tekken": Family("mistral-common-tekken", "mistral:tekken", "mistral_v3.jinja"),
    "harmony": Family("harmony", "harmony", "harmony.jinja", thinks=True, parallel=False, null_content=True),
    "deepseek": Family("deepseek", "deepseek", "deepseek_tools.jinja", null_content=True),
}

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "get_time", "description": "Time in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def call(name: str, city: str, as_text: bool = False) -> dict:
    arguments = json.dumps({"city": city}) if as_text else {"city": city}
    return {"id": f"call_{name}_{city}", "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_chain(reasoning_key: str | None = None, content=None) -> dict:
    """A tool call, its result, a second call (arguments as JSON text), its result, then the answer;
    the calls' content is `content` (null, or "" for templates that fail on null)."""
    def thought(text):
        return {reasoning_key: text} if reasoning_key else {}
    return {"tools": TOOLS, "messages": [
        {"role": "user", "content": "What is the weather in Paris, and the time there?"},
        {"role": "assistant", "content": content, "tool_calls": [call("get_weather", "Paris")],
         **thought("I need the weather first.")},
        {"role": "tool", "tool_call_id": "call_get_weather_Paris", "content": "{\"temp_c\": 21}"},
        {"role": "assistant", "content": content, "tool_calls": [call("get_time", "Paris", as_text=True)],
         **thought("Now the time.")},
        {"role": "tool", "tool_call_id": "call_get_time_Paris", "content": "{\"time\": \"14:05\"}"},
        {"role": "assistant", "content": "It is 21 C in Paris, and 14:05.", **thought("Both known; answer.")}]}


def multi_turn_reasoning(reasoning_key: str = "reasoning_content") -> dict:
    return {"messages": [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5", reasoning_key: "Two plus three is five."},
        {"role": "user", "content": "And times 4?"},
        {"role": "assistant", "content": "20", reasoning_key: "Five times four is twenty."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome."}]}


def call_last(content=None) -> dict:
    return {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": content, "tool_calls": [call("get_weather", "Rome")]}]}


def parallel_calls(content=None) -> dict:
    return {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather and time in Oslo?"},
        {"role": "assistant", "content": content,
         "tool_calls": [call("get_weather", "Oslo"), call("get_time", "Oslo")]},
        {"role": "tool", "tool_call_id": "call_get_weather_Oslo", "content": "{\"temp_c\": 3}"},
        {"role": "tool", "tool_call_id": "call_get_time_Oslo", "content": "{\"time\": \"09:00\"}"},
        {"role": "assistant", "content": "3 C and 09:00 in Oslo."}]}


_PATHS: dict = {}


def tokenizer_path(family: Family, mistral_dir, tmp_path_factory) -> str:
    if family.tokenizer not in _PATHS:
        kind, _, name = family.tokenizer.partition(":")
        if kind == "shared":
            path = shared_tokenizer(name)
            if not Path(path).exists():
                pytest.skip(f"shared tokenizer {name} not present")
        elif kind == "mistral":
            path = mistral_dir[name]
        elif kind == "harmony":
            path = with_special_tokens(tmp_path_factory.mktemp("harmony"), HARMONY_TOKENS)
        elif kind == "deepseek":
            path = with_special_tokens(tmp_path_factory.mktemp("deepseek"), DEEPSEEK_TOKENS)
        else:
            path = fixture_tokenizer(kind)
        _PATHS[family.tokenizer] = path
    return _PATHS[family.tokenizer]


def worker_for(family: Family, mistral_dir, tmp_path_factory, **config) -> Worker:
    template = str(TEMPLATES / family.template) if family.template else None
    return Worker(BuildConfig(tokenizer=tokenizer_path(family, mistral_dir, tmp_path_factory), chat_template=template,
                              template_date=TODAY, max_length=None, workers=1, **config))


def built(worker: Worker, record: dict):
    return worker.process([RawRecord(0, 0, InputFormat.MESSAGES, record)])


def judged(worker: Worker, family: Family, record: dict, flags: list[bool] | None = None) -> dict[int, list[str]]:
    """The record built and judged: every document, every trained turn (`flags`, or every assistant turn
    with text). Returns the trained runs."""
    result = built(worker, record)
    assert not result.rejects, result.rejects
    conversation = to_conversation(record, 0, InputFormat.MESSAGES)
    flags = flags or expected_flags(conversation, worker.config.train_on)
    return check_generation_contract(worker.config.tokenizer, worker.tokenizer.chat_template, conversation,
                                     result.documents, flags, set(worker.tokenizer.special_texts), family.modes,
                                     raw=family.null_content, appended=family.appended)


def content(family: Family):
    return None if family.null_content else ""


def family_params(names):
    marks = {"qwen3-shared": [requires_shared]}
    return [pytest.param(FAMILIES[n], id=n, marks=marks.get(n, [])) for n in names]


@pytest.mark.parametrize("family", family_params(FAMILIES))
@pytest.mark.parametrize("record", [tool_chain, call_last], ids=["tool_chain", "call_last"])
def test_tool_conversations_train_every_turn_as_generated(family, record, mistral_dir, tmp_path_factory):
    worker = worker_for(family, mistral_dir, tmp_path_factory)
    runs = [r for rs in judged(worker, family, record(content=content(family))).values() for r in rs]
    assert any("get_weather" in r for r in runs)
    assert not any("temp_c" in r for r in runs), "a tool result is trained"


@pytest.mark.parametrize("family", family_params([n for n, f in FAMILIES.items() if f.thinks]))
@pytest.mark.parametrize("key", ["reasoning_content", "thinking", "reasoning"])
def test_reasoning_under_each_name_is_trained_in_its_turn(family, key, mistral_dir, tmp_path_factory):
    worker = worker_for(family, mistral_dir, tmp_path_factory)
    runs = [r for rs in judged(worker, family, multi_turn_reasoning(key)).values() for r in rs]
    # every turn's reasoning is trained with it, the earlier ones too (the whole rendering drops them)
    assert any("Two plus three is five." in r and r.rstrip().endswith(tuple(worker.tokenizer.special_texts))
               for r in runs)
    assert any("Five times four is twenty." in r for r in runs)
    runs = [r for rs in judged(worker, family, tool_chain(key, content=content(family))).values() for r in rs]
    assert any("I need the weather first." in r and "get_weather" in r for r in runs)


@pytest.mark.parametrize("family", family_params(["qwen3-fixture", "qwen3-shared"]))
def test_qwen3_empty_think_block_is_prompt_unless_asked(family, mistral_dir, tmp_path_factory):
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    default = judged(worker_for(family, mistral_dir, tmp_path_factory), family, record)
    assert default == {0: ["Hello!<|im_end|>"]}
    train = worker_for(family, mistral_dir, tmp_path_factory, empty_reasoning=EmptyReasoning.TRAIN)
    doc, = built(train, record).documents
    text = train.tokenizer.backend.decode(doc.input_ids[doc.loss_mask.astype(bool)].tolist(), skip_special_tokens=False)
    assert text == "<think>\n\n</think>\n\nHello!<|im_end|>"


@pytest.mark.parametrize("family", family_params(["qwen3-fixture", "harmony"]))
def test_turn_context_policies_and_their_cost(family, mistral_dir, tmp_path_factory):
    record = multi_turn_reasoning("thinking")
    own = built(worker_for(family, mistral_dir, tmp_path_factory), record)
    whole = built(worker_for(family, mistral_dir, tmp_path_factory, turn_context=TurnContext.WHOLE), record)
    last = built(worker_for(family, mistral_dir, tmp_path_factory, turn_context=TurnContext.LAST), record)
    assert len(whole.documents) == len(last.documents) == 1
    assert whole.context_documents == last.context_documents == 0
    # the two earlier turns render otherwise in the whole conversation: one document each
    assert len(own.documents) == 3 and own.context_documents == 2
    assert own.context_tokens == sum(d.num_tokens for d in own.documents[1:])
    assert own.documents[0].input_ids.tolist() == last.documents[0].input_ids.tolist()
    assert 0 < last.documents[0].num_trained < whole.documents[0].num_trained


def test_fewest_documents_a_turn_context_holds_the_earlier_turns_it_renders_alike(mistral_dir, tmp_path_factory):
    family = FAMILIES["harmony"]
    # A and B are finals before the last user message: the whole rendering ends them with <|end|>, as the
    # last turn they end with <|return|>, so each needs a document of its own (the one up to B renders A
    # with <|end|> too); the call before B is held as generated by B's document, C by the whole one
    record = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "A"},
        {"role": "user", "content": "b"}, {"role": "assistant", "content": None, "tool_calls": [call("get_time", "Oslo")]},
        {"role": "tool", "content": "09:00"}, {"role": "assistant", "content": "B"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "C"}]}
    worker = worker_for(family, mistral_dir, tmp_path_factory)
    result = built(worker, record)
    assert len(result.documents) == 3  # whole (C), up to B (the call and B), up to A
    judged(worker, family, record)


def test_harmony_ends_calls_with_call_and_never_trains_the_tool_result_header(mistral_dir, tmp_path_factory):
    family = FAMILIES["harmony"]
    worker = worker_for(family, mistral_dir, tmp_path_factory)
    runs = [r for rs in judged(worker, family, tool_chain("thinking")).values() for r in rs]
    calls = [r for r in runs if "to=functions" in r]
    assert calls and all(r.endswith("<|call|>") for r in calls)
    assert not any("to=assistant" in r for r in runs)
    assert any(r.endswith("14:05.<|return|>") for r in runs)
    last = judged(worker, family, call_last())
    assert last == {0: [' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Rome"}<|call|>']}


@pytest.mark.parametrize("family", family_params(["harmony", "llama3.1-tools"]))
def test_parallel_calls_a_template_renders_one_of_are_rejected_with_the_reason(family, mistral_dir,
                                                                              tmp_path_factory):
    worker = worker_for(family, mistral_dir, tmp_path_factory)
    result = built(worker, parallel_calls(content=content(family)))
    reasons = [(r.reason, r.detail) for r in result.rejects]
    assert not result.documents and len(reasons) == 1
    reason, detail = reasons[0]
    # llama3.1-tools raises on parallel calls itself: its own message is the reason
    assert reason in (Reason.UNRENDERED_FIELD, Reason.TEMPLATE_ERROR) and reason is not Reason.MASK_VERIFICATION_FAILED
    if reason is Reason.UNRENDERED_FIELD:
        assert "message 1 tool_call" in detail


@pytest.mark.parametrize("family", family_params(["qwen3-fixture", "mistral-v3-fixture", "deepseek",
                                                  "mistral-common-v3"]))
def test_parallel_calls_where_the_template_renders_them(family, mistral_dir, tmp_path_factory):
    worker = worker_for(family, mistral_dir, tmp_path_factory)
    runs = [r for rs in judged(worker, family, parallel_calls(content=content(family))).values() for r in rs]
    assert any("get_weather" in r and "get_time" in r for r in runs)


@pytest.mark.parametrize("family", family_params(["mistral-v3-fixture", "mistral-common-v3", "mistral-common-tekken"]))
def test_mistral_trains_tool_calls_marker_after_a_tool_result(family, mistral_dir, tmp_path_factory):
    worker = worker_for(family, mistral_dir, tmp_path_factory)
    runs = [r for rs in judged(worker, family, tool_chain(content="")).values() for r in rs]
    second = next(r for r in runs if "get_time" in r)
    assert second.startswith("[TOOL_CALLS]")


def test_unrendered_tool_calls_are_rejected_by_default_and_dropped_on_request(mistral_dir, tmp_path_factory):
    # the fixture Llama 3 tokenizer carries the real Llama 3.1 template, which renders no tool calls
    family = Family("llama3", "llama3-bpe")
    record = tool_chain(content="")
    rejected = built(worker_for(family, mistral_dir, tmp_path_factory), record)
    assert [r.reason for r in rejected.rejects] == [Reason.UNRENDERED_FIELD]
    assert "message 1 tool_call" in rejected.rejects[0].detail and "message 3 tool_call" in rejected.rejects[0].detail
    dropping = worker_for(family, mistral_dir, tmp_path_factory, unrendered=Unrendered.DROP)
    flags = [i == len(record["messages"]) - 1 for i in range(len(record["messages"]))]
    runs = [r for rs in judged(dropping, family, record, flags).values() for r in rs]
    # the calls had no text of their own left: not trained as "say nothing" (a lone end-of-turn token)
    assert runs == ["It is 21 C in Paris, and 14:05.<|eot_id|>"]


def test_deepseek_renders_calls_only_for_null_content(mistral_dir, tmp_path_factory):
    family = FAMILIES["deepseek"]
    worker = worker_for(family, mistral_dir, tmp_path_factory)
    runs = [r for rs in judged(worker, family, call_last()).values() for r in rs]
    assert runs == ["<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
                    "{\"city\": \"Rome\"}```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>"]
    empty_content = call_last()
    empty_content["messages"][1]["content"] = ""
    assert [r.reason for r in built(worker, empty_content).rejects] == [Reason.UNRENDERED_FIELD]


def test_always_appended_header_is_prompt(mistral_dir, tmp_path_factory):
    family = Family("llama3-always", "llama3-bpe", "llama3_always_header.jinja",
                    appended="<|start_header_id|>assistant<|end_header_id|>\n\n")
    worker = worker_for(family, mistral_dir, tmp_path_factory)
    assert worker.facts.header == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                           {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}
    assert judged(worker, family, record) == {0: ["Hello!<|eot_id|>", "Bye!<|eot_id|>"]}


@requires_shared
def test_plain_chats_on_llama3_1_are_one_document_each(mistral_dir, tmp_path_factory):
    family = Family("llama3.1", "shared:llama3_1")
    worker = worker_for(family, mistral_dir, tmp_path_factory)
    record = multi_turn_reasoning()
    for m in record["messages"]:
        m.pop("reasoning_content", None)
    assert list(judged(worker, family, record)) == [0]
