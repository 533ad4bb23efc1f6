"""What the inspection tests build: a small conversation set with known shapes, and builds of it."""

from __future__ import annotations

import json
from pathlib import Path

from sftdata.builder import build
from sftdata.config import BuildConfig

from ..conftest import fixture_tokenizer

CHATML = fixture_tokenizer("chatml-bpe")
RESPONSE_TEMPLATE = "<|im_start|>assistant\n"

# a template without control tokens, so a SentencePiece tokenizer splits its header differently in context
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'user' %}### Human: {{ m.content }}\n\n"
    "{% elif m.role == 'assistant' %}### Assistant: {{ m.content }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}### Assistant:{% endif %}"
)


def chat(*turns: str) -> dict:
    roles = ["user", "assistant"]
    return {"messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]}


# source ids: 0 two exchanges, 1 one, 2 three, 3 no assistant (rejected), 4 one long reply,
# 5 an empty reply only (rejected by sftdata, kept by the comparator), 6 one exchange
CHATS = [
    chat("What is the capital of France?", "Paris is the capital.", "And of Italy?", "Rome is."),
    chat("Say hello.", "Hello there!"),
    chat("Count: one.", "two", "Next?", "three", "Next again?", "four"),
    {"messages": [{"role": "user", "content": "Nobody answers this."}]},
    chat("Write a long answer.", " ".join(f"word{i}" for i in range(40))),
    chat("Reply with nothing.", ""),
    chat("Escape <b>this</b> & </script><script>alert(1)</script>", "Done: <i>ok</i> & fine."),
]
MULTI_TURN = {0: 2, 2: 3}  # source id -> assistant turns


def write_chats(folder: Path, chats=CHATS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "chats.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    return path


def make_build(root: Path, name: str, inputs=None, **config) -> Path:
    """A build of the shared conversations (or `inputs`) in root/name, in this process."""
    root.mkdir(parents=True, exist_ok=True)
    inputs = inputs or [write_chats(root)]
    out = root / name
    config.setdefault("tokenizer", CHATML)
    # one document per record, as the inspect tests count them (Qwen3's turns each in their own context
    # would add documents: tests/test_turns.py covers that)
    config.setdefault("turn_context", "whole")
    build(inputs, out, BuildConfig(workers=1, **config), overwrite=True)
    return out


def plain_template(folder: Path) -> str:
    path = folder / "plain.jinja"
    path.write_text(PLAIN_TEMPLATE)
    return str(path)
