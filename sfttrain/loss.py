"""Per-token cross-entropy, and the one shift between logits and labels.

labels[b, t] is the token at t when it is a training target (else IGNORE_INDEX); it is predicted by the
logits at t - 1. The model is never given labels, so Hugging Face's own shifted loss never runs and
nothing is shifted twice.

The loss of an optimizer step is sum(token losses) / (target tokens in the whole step, over every
micro-batch and rank); the trainer divides by that count, all-reduced before the first backward.

Two ways to get the target tokens' losses, equal up to float rounding:
    plain   the model returns every position's logits ([rows, length, vocab], the largest activation of a
            150k-vocabulary model, then an fp32 copy for the softmax); token_losses picks the targets.
    lean    LeanLoss makes the output layer itself return the targets' losses: it takes the hidden states
            of the positions that predict a target only, and runs them through the output layer a chunk of
            rows at a time, each chunk's logits recomputed in backward instead of kept. Peak memory is one
            chunk's logits, not the batch's.
Both give the losses of the targets in the order of `labels != IGNORE_INDEX` (row-major).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
CHUNK_LOGITS = 1 << 25  # logits per chunk of the lean loss (128 MB in fp32): rows = this // vocabulary size


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[batch, length] fp32 losses aligned with labels: 0 where labels[b, t] is IGNORE_INDEX."""
    batch, length, vocab = logits.shape
    predicted = logits[:, :-1].float().reshape(-1, vocab)
    targets = labels[:, 1:].reshape(-1)
    losses = F.cross_entropy(predicted, targets, ignore_index=IGNORE_INDEX, reduction="none")
    return F.pad(losses.view(batch, length - 1), (1, 0))  # position 0 has no previous token


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed loss over the target tokens (0, still attached to the graph, when there are none)."""
    return token_losses(logits, labels).sum()


def target_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The plain way: [targets] losses of the target tokens, from every position's logits."""
    return token_losses(logits, labels)[labels != IGNORE_INDEX]


def _chunk_losses(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="none")


def chunked_losses(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                   chunk_rows: int) -> torch.Tensor:
    """[n] losses of hidden [n, dim] through the output layer, chunk_rows rows at a time.

    Each chunk runs under activation checkpointing: its logits are freed after the forward and
    recomputed in backward, so they are never all alive at once.
    """
    if len(hidden) <= chunk_rows:  # one chunk (or none: still a graph through the weights, for a zero loss)
        return _chunk_losses(hidden, weight, bias, targets)
    return torch.cat([
        checkpoint(_chunk_losses, hidden[i : i + chunk_rows], weight, bias, targets[i : i + chunk_rows],
                   use_reentrant=False, preserve_rng_state=False)
        for i in range(0, len(hidden), chunk_rows)
    ])


class LeanLoss:
    """Inside `targets(labels)`, the model's output layer returns the target tokens' losses, not logits.

    The output layer's forward is replaced on the instance (its parameters, their names and everything
    wrapping the model stay as they are), so DDP, FSDP and peft see an ordinary forward through it.
    """

    def __init__(self, model: torch.nn.Module, chunk_logits: int = CHUNK_LOGITS):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.head = base.get_output_embeddings()
        self.chunk_rows = max(1, chunk_logits // self.head.out_features)
        self._labels: torch.Tensor | None = None
        self._plain = self.head.forward
        self.head.forward = self._forward

    @staticmethod
    def refusal(model: torch.nn.Module) -> str | None:
        """Why the lean loss cannot stand in for this model's output layer, or None when it can."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = base.get_output_embeddings()
        if type(head) is not torch.nn.Linear:
            return f"its output layer is a {type(head).__name__}, not a plain Linear (an adapter on it, say)"
        return None

    def check(self, plain_forward) -> str | None:
        """Why the lean loss would not equal the plain one for this model, or None when it does.

        Runs `plain_forward()` (a forward returning the model's logits) once, recording what the output
        layer received and returned: the lean loss is exact when the model returns that output unchanged
        (no soft cap or scale after the layer) and the layer saw one hidden state per input position.
        """
        seen = {}

        def record(hidden):
            out = self._plain(hidden)
            seen["hidden"], seen["out"] = hidden, out.clone()  # a copy: an in-place soft cap must show
            return out

        self.head.forward = record
        try:
            logits, input_ids = plain_forward()
        finally:
            self.head.forward = self._forward
        if "out" not in seen or seen["hidden"].shape[:2] != input_ids.shape:
            return "its output layer does not see one hidden state per position"
        if not torch.equal(logits, seen["out"]):
            return "it changes the logits after its output layer (a soft cap or a scale)"
        return None

    @contextmanager
    def targets(self, labels: torch.Tensor):
        self._labels = labels
        try:
            yield
        finally:
            self._labels = None

    def _forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._labels is None:
            return self._plain(hidden)
        predicting = self._labels[:, 1:] != IGNORE_INDEX  # position t - 1 predicts the label at t
        rows = hidden[:, :-1][predicting]
        return chunked_losses(rows, self.head.weight, self.head.bias, self._labels[:, 1:][predicting],
                              self.chunk_rows)

    def remove(self) -> None:
        """Give the output layer its own forward back."""
        del self.head.forward  # the class's forward again
