"""Input format adapters: records in, conversations out, and a precise reason when a record is bad."""

import pytest

from sftdata.config import InputFormat
from sftdata.formats import detect_format, to_conversation
from sftdata.rejects import Reason, RecordError


def convert(record, fmt=None):
    return to_conversation(record, 7, fmt or detect_format(record))


def test_openai_content_parts_reasoning_tool_calls_and_flags():
    conv = convert({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "value": "b"}], "loss_weight": 0.0},
        {"role": "assistant", "content": [
            {"type": "reasoning", "value": "think"},
            {"type": "tool_call", "value": '{"name": "f", "arguments": {"x": 1}}'}], "loss_weight": 1.0},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"y": 2}'}}], "train": False},
    ], "tools": '[{"type": "function", "function": {"name": "f"}}]'})
    user, call, tool, second = conv.messages
    assert conv.source_id == 7 and conv.tools == ({"type": "function", "function": {"name": "f"}},)
    assert user.content == "ab" and user.train is False
    assert call.reasoning == "think" and call.tool_calls[0].name == "f" and call.tool_calls[0].arguments == {"x": 1}
    assert call.train is True and call.content == ""
    assert tool.tool_call_id == "c1"
    # arguments as given: JSON text stays text, as apply_chat_template would pass it
    assert second.tool_calls[0].arguments == '{"y": 2}' and second.tool_calls[0].id == "c2" and second.train is False


def test_sharegpt_roles_function_calls_and_system():
    conv = convert({"system": "be brief", "conversations": [
        {"from": "human", "value": "hi"},
        {"from": "function_call", "value": '{"name": "search", "arguments": {"q": "x"}}'},
        {"from": "observation", "value": "found"},
        {"from": "gpt", "value": "done"}]})
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[2].tool_calls[0].name == "search"


def test_alpaca_and_prompt_completion():
    conv = convert({"instruction": "Add", "input": "1 and 2", "output": "3"})
    assert [(m.role, m.content) for m in conv.messages] == [("user", "Add\n1 and 2"), ("assistant", "3")]
    conv = convert({"instruction": "Code", "input": "", "response": "x = 1"})
    assert conv.messages[0].content == "Code" and conv.messages[1].content == "x = 1"
    conv = convert({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "earlier"},
                               {"role": "user", "content": "q2"}], "completion": "a"})
    assert [m.train for m in conv.messages] == [False, False, False, None]


@pytest.mark.parametrize("record, words", [
    ({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}, "wizard"),
    ({"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}, "missing role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                   {"role": "assistant", "content": "y"}]}, "image_url"),
    ({"messages": "hi"}, "non-empty list"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}, "content must be"),
    ({"messages": [{"role": "user", "content": "x", "train": "yes"}, {"role": "assistant", "content": "y"}]}, "true or false"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "alien"),
    ({"conversations": [{"from": "function_call", "value": "not json"}]}, "tool call"),
])
def test_malformed_records_say_why(record, words):
    with pytest.raises(RecordError) as info:
        convert(record)
    assert info.value.reason is Reason.MALFORMED
    assert words in info.value.detail


def test_no_assistant_is_no_trainable_tokens_and_unknown_format_is_explained():
    with pytest.raises(RecordError) as info:
        convert({"messages": [{"role": "user", "content": "alone"}]})
    assert info.value.reason is Reason.NO_TRAINABLE_TOKENS
    with pytest.raises(RecordError, match="cannot tell the format"):
        detect_format({"text": "raw"})
    # a user message marked for training is a target, so the record is not "nothing to train"
    (only,) = convert({"messages": [{"role": "user", "content": "x", "train": True}]}, InputFormat.MESSAGES).messages
    assert (only.role, only.content, only.train) == ("user", "x", True)
