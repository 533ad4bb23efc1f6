"""The known traps of completion-only masking, as conversations (OpenAI `messages` records)."""


def _chat(*turns, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    roles = ("user", "assistant")
    messages += [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
    return {"messages": messages}


TRAPS = {
    "reply_repeats_user": _chat("Say exactly: the sky is green.", "the sky is green.",
                                "the sky is green.", "Yes, the sky is green."),
    "user_has_response_template": _chat(
        "Format it like this:\n### Human: hi\n### Assistant: hello\n### Assistant:", "### Assistant: done."),
    "reply_is_role_word": _chat("Which role are you?", "assistant", "And the other?", "model", "Last?", "user"),
    "whitespace_and_crlf": _chat("  leading and trailing  \r\n", "\r\n  Line one\r\nLine two  \r\n\r\n",
                                 "\tok\t", "  spaced  "),
    "emoji_zwj": _chat("Family emoji please", "Here: 👨‍👩‍👧‍👦 and 🏳️‍🌈 and 👍🏽 done 😀"),
    "cjk": _chat("日本語で答えて", "はい、日本語で答えます。中文也可以。한국어도 가능합니다."),
    "rtl": _chat("Translate hello to Arabic and Hebrew", "مرحبا — שלום — hello"),
    "combining_marks": _chat("Decompose é", "e\u0301 and a\u0308 and n\u0303 and Z\u0351\u0352\u0353"),
    "code_block": _chat("Write a loop", "```python\nfor i in range(3):\n    print(i)  # done\n```\n"),
    "json_reply": _chat("Give JSON", '{"name": "x", "list": [1, 2, {"nested": "}"}], "quote": "\\""}'),
    "twelve_turns": _chat(*[f"question {k}" if k % 2 == 0 else f"answer {k} with some words"
                            for k in range(24)], system="You are terse."),
    "empty_middle_reply": _chat("first", "", "second", "a real answer"),
    "whitespace_only_reply": _chat("first", "   \n ", "second", "the answer"),
    "system_prompt": _chat("What is 2+2?", "4", system="You are a calculator.\nAnswer with digits."),
}

# conversations where no assistant turn has anything to train: rejected with no_trainable_tokens
UNTRAINABLE = {
    "only_empty_reply": _chat("hello?", ""),
    "only_whitespace_reply": _chat("hello?", "  \n"),
}

TOOL_CALL = {
    "messages": [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": '{"temp_c": 21}'},
        {"role": "assistant", "content": "It is 21 °C in Paris."},
    ],
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
}

# texts whose tokens' offsets are checked: accents, CJK, emoji sequences, RTL, control-token text, nothing
SPELLING_TEXTS = [
    "plain ASCII, with  two spaces\tand a tab\n\nand newlines",
    "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e\u306e\u6587 \U0001f642\U0001f3f3\ufe0f\u200d\U0001f308 \u0645\u0631\u062d\u0628\u0627",
    "<|im_start|>user\nqu\u00e9?<|im_end|>\n<|im_start|>assistant\n\U0001f600 s\u00ed<|im_end|>\n",
    "",
]
