"""Input formats: each a small pure function from one raw record (a dict) to a Conversation.

Formats are detected per file from its first record (`detect_format`) and can be forced with
`--format`. A record that does not fit its file's format raises RecordError and is rejected.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from .config import InputFormat
from .records import Conversation, Message, ToolCall
from .rejects import Reason, RecordError

SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "function_call": "assistant",  # a tool call made by the assistant
    "observation": "tool",  # the tool's result
    "tool": "tool",
    "function": "tool",
}
OPENAI_ROLES = {"system", "developer", "user", "assistant", "tool"}
TEXT_PARTS = {"text", "input_text", "output_text"}
REASONING_PARTS = {"reasoning", "thinking"}
TOOL_CALL_PARTS = {"tool_call", "function_call"}
# deepest nesting of tool-call arguments and tool definitions: rendering and span marking walk them
# recursively, and real schemas stay within a dozen levels
MAX_DEPTH = 64


def _malformed(detail: str) -> RecordError:
    return RecordError(Reason.MALFORMED, detail)


def detect_format(record: Any) -> InputFormat:
    if isinstance(record, dict):
        if "messages" in record:
            return InputFormat.MESSAGES
        if "conversations" in record:
            return InputFormat.SHAREGPT
        if "instruction" in record and ("output" in record or "response" in record):
            return InputFormat.ALPACA
        if "prompt" in record and "completion" in record:
            return InputFormat.PROMPT_COMPLETION
        keys = sorted(record)[:8]
    else:
        keys = type(record).__name__
    raise _malformed(
        f"cannot tell the format from fields {keys}: expected `messages`, `conversations`, "
        "`instruction`/`output` or `prompt`/`completion` (or pass --format)"
    )


def _train_flag(raw: dict, where: str) -> bool | None:
    if "train" in raw and raw["train"] is not None:
        if not isinstance(raw["train"], bool):
            raise _malformed(f"{where}: `train` must be true or false, got {raw['train']!r}")
        return raw["train"]
    for key in ("loss_weight", "weight"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], (int, float)) or isinstance(raw[key], bool):
                raise _malformed(f"{where}: `{key}` must be a number, got {raw[key]!r}")
            return raw[key] > 0
    return None


def _parse_json_maybe(value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
        except RecursionError:
            raise _malformed(f"{where}: JSON nested too deep to read") from None
    return value


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (0 for a scalar), without recursion."""
    deepest, level = 0, [(value, 0)]
    while level:
        item, depth = level.pop()
        if isinstance(item, (dict, list, tuple)):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_DEPTH:
                break
            level.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _shallow(value: Any, where: str) -> Any:
    if _depth(value) > MAX_DEPTH:
        raise _malformed(f"{where}: nested more than {MAX_DEPTH} levels deep")
    return value


def _tool_call(raw: Any, where: str) -> ToolCall:
    raw = _parse_json_maybe(raw, where)
    if not isinstance(raw, dict):
        raise _malformed(f"{where}: a tool call must be an object with `name` and `arguments`, got {raw!r:.80}")
    call_id = raw.get("id")
    if isinstance(raw.get("function"), dict):  # OpenAI: {"id", "type": "function", "function": {...}}
        raw = raw["function"]
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _malformed(f"{where}: tool call without a `name`")
    # as given (an object, or JSON text), with an object's nesting bounded: span marking walks it recursively
    arguments = _shallow(raw.get("arguments", raw.get("parameters", {})), f"{where}: arguments")
    return ToolCall(name=name, arguments=arguments, id=call_id if isinstance(call_id, str) else None)


def _tools(raw: Any, where: str) -> tuple[dict, ...] | None:
    if raw is None or raw == "" or raw == []:
        return None
    raw = _shallow(_parse_json_maybe(raw, where), f"{where}: `tools`")
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise _malformed(f"{where}: `tools` must be a list of objects (or a JSON string of one)")
    return tuple(raw)


def _content_parts(parts: list, where: str) -> tuple[str, str | None, list[ToolCall]]:
    """OpenAI-style content parts -> (text, reasoning, tool calls)."""
    texts, reasoning, calls = [], [], []
    for j, part in enumerate(parts):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise _malformed(f"{where}, part {j}: expected an object, got {type(part).__name__}")
        kind = part.get("type", "text")
        value = part.get("text", part.get("value"))
        if kind in TEXT_PARTS or kind in REASONING_PARTS:
            if not isinstance(value, str):
                raise _malformed(f"{where}, part {j}: `{kind}` part without a string `text`/`value`")
            (texts if kind in TEXT_PARTS else reasoning).append(value)
        elif kind in TOOL_CALL_PARTS:
            calls.append(_tool_call(value if value is not None else part, f"{where}, part {j}"))
        else:
            raise _malformed(f"{where}, part {j}: non-text content of type `{kind}` is not supported")
    return "".join(texts), ("".join(reasoning) if reasoning else None), calls


def _openai_message(raw: Any, i: int) -> Message:
    where = f"message {i}"
    if not isinstance(raw, dict):
        raise _malformed(f"{where}: expected an object, got {type(raw).__name__}")
    role = raw.get("role")
    if role not in OPENAI_ROLES:
        raise _malformed(f"{where}: unknown or missing role {role!r} (expected one of {sorted(OPENAI_ROLES)})")
    # null stays null (DeepSeek-V3's template renders tool calls only then); a message without the key
    # has no content, which templates render as nothing
    content = raw.get("content", "")
    reasoning, calls = None, []
    if isinstance(content, list):
        content, reasoning, calls = _content_parts(content, where)
    elif content is not None and not isinstance(content, str):
        raise _malformed(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")
    for key in ("reasoning_content", "reasoning", "thinking"):
        if isinstance(raw.get(key), str):
            reasoning = raw[key]
            break
    calls += [_tool_call(c, f"{where}, tool call {k}") for k, c in enumerate(raw.get("tool_calls") or [])]
    if calls and role != "assistant":
        raise _malformed(f"{where}: only assistant messages make tool calls (role is {role})")
    return Message(
        role=role,
        content=content,
        train=_train_flag(raw, where),
        tool_calls=tuple(calls),
        reasoning=reasoning,
        name=raw.get("name") if isinstance(raw.get("name"), str) else None,
        tool_call_id=raw.get("tool_call_id") if isinstance(raw.get("tool_call_id"), str) else None,
    )


def _message_list(raw: Any, field: str) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise _malformed(f"`{field}` must be a non-empty list of messages")
    return [_openai_message(m, i) for i, m in enumerate(raw)]


def from_messages(record: dict, source_id: int) -> Conversation:
    messages = _message_list(record.get("messages"), "messages")
    return Conversation(source_id, tuple(messages), _tools(record.get("tools"), "record"))


def from_sharegpt(record: dict, source_id: int) -> Conversation:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise _malformed("`conversations` must be a non-empty list of turns")
    messages = []
    if isinstance(record.get("system"), str) and record["system"]:
        messages.append(Message("system", record["system"]))
    for i, turn in enumerate(turns):
        where = f"turn {i}"
        if not isinstance(turn, dict):
            raise _malformed(f"{where}: expected an object, got {type(turn).__name__}")
        speaker = turn.get("from", turn.get("role"))
        role = SHAREGPT_ROLES.get(speaker)
        if role is None:
            raise _malformed(f"{where}: unknown or missing speaker {speaker!r} (expected one of {sorted(SHAREGPT_ROLES)})")
        value = turn.get("value", turn.get("content"))
        if not isinstance(value, str):
            raise _malformed(f"{where}: `value` must be a string, got {type(value).__name__}")
        train = _train_flag(turn, where)
        if speaker == "function_call":
            messages.append(Message("assistant", "", train=train, tool_calls=(_tool_call(value, where),)))
        else:
            messages.append(Message(role, value, train=train))
    return Conversation(source_id, tuple(messages), _tools(record.get("tools"), "record"))


def _require_str(record: dict, key: str, optional: bool = False) -> str:
    value = record.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise _malformed(f"`{key}` must be a string, got {type(value).__name__}")
    return value


def from_alpaca(record: dict, source_id: int) -> Conversation:
    instruction = _require_str(record, "instruction")
    extra = _require_str(record, "input", optional=True)
    output = _require_str(record, "output" if "output" in record else "response")
    messages = []
    if isinstance(record.get("system"), str) and record["system"]:
        messages.append(Message("system", record["system"]))
    for k, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise _malformed(f"history {k}: expected a [prompt, response] pair of strings")
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    prompt = f"{instruction}\n{extra}" if extra else instruction
    messages += [Message("user", prompt), Message("assistant", output)]
    return Conversation(source_id, tuple(messages))


def from_prompt_completion(record: dict, source_id: int) -> Conversation:
    prompt, completion = record.get("prompt"), record.get("completion")
    if isinstance(prompt, str):
        prompt_messages = [Message("user", prompt)]
    else:
        prompt_messages = _message_list(prompt, "prompt")
    if isinstance(completion, str):
        completion_messages = [Message("assistant", completion)]
    else:
        completion_messages = _message_list(completion, "completion")
    if isinstance(record.get("system"), str) and record["system"]:
        prompt_messages.insert(0, Message("system", record["system"]))
    # the prompt is context, never a target; the completion is the target unless a message says otherwise
    prompt_messages = [m if m.train is not None else _with_train(m, False) for m in prompt_messages]
    return Conversation(source_id, tuple(prompt_messages + completion_messages), _tools(record.get("tools"), "record"))


def _with_train(message: Message, train: bool) -> Message:
    return Message(message.role, message.content, train, message.tool_calls, message.reasoning,
                   message.name, message.tool_call_id)


ADAPTERS: dict[InputFormat, Callable[[dict, int], Conversation]] = {
    InputFormat.MESSAGES: from_messages,
    InputFormat.SHAREGPT: from_sharegpt,
    InputFormat.ALPACA: from_alpaca,
    InputFormat.PROMPT_COMPLETION: from_prompt_completion,
}


def to_conversation(record: Any, source_id: int, fmt: InputFormat) -> Conversation:
    if not isinstance(record, dict):
        raise _malformed(f"a record must be a JSON object, got {type(record).__name__}")
    conversation = ADAPTERS[fmt](record, source_id)
    if not any(m.role == "assistant" for m in conversation.messages) and not any(m.train for m in conversation.messages):
        raise RecordError(Reason.NO_TRAINABLE_TOKENS, "the conversation has no assistant message")
    return conversation
