"""Which messages are training targets: the --train-on policy, each message's own `train` flag, and the
assistant turns with nothing to learn."""

from __future__ import annotations

from typing import Sequence

from .config import TrainOn
from .records import Message


def resolve_train_flags(messages: Sequence[Message], policy: TrainOn) -> list[bool]:
    """Which messages are targets: the policy, overridden by each message's own `train` flag."""
    if policy is TrainOn.ALL:
        defaults = [True] * len(messages)
    elif policy is TrainOn.LAST:
        last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
        defaults = [i == last for i in range(len(messages))]
    else:
        defaults = [m.role == "assistant" for m in messages]
    return [d if m.train is None else m.train for m, d in zip(messages, defaults)]


def is_empty_turn(message: Message) -> bool:
    return not (message.content or "").strip() and not message.tool_calls and not (message.reasoning or "").strip()
