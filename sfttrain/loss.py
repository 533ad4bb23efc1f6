"""Per-token cross-entropy, and the one shift between logits and labels.

labels[b, t] is the token at t when it is a training target (else IGNORE_INDEX); it is predicted by the
logits at t - 1. The model is never given labels, so Hugging Face's own shifted loss never runs and
nothing is shifted twice.

The loss of an optimizer step is sum(token losses) / (target tokens in the whole step, over every
micro-batch and rank); the trainer divides by that count, all-reduced before the first backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


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
