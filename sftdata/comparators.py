"""Baseline maskings that sftdata is compared against. Comparators, not recommended modes.

`response_template_mask` reproduces the classic completion-only collator of the seed documents (TRL's
old DataCollatorForCompletionOnlyLM with only a response template): tokenize the response template on
its own, search those ids in the tokenized example, and train everything after the first match; when
the ids are not found (the same string tokenizes differently in context, as with SentencePiece), the
whole example is silently ignored.
"""

from __future__ import annotations

import numpy as np


def find_subsequence(ids: np.ndarray, pattern: np.ndarray) -> int:
    """Index of the first occurrence of `pattern` in `ids`, or -1."""
    n, k = len(ids), len(pattern)
    if k == 0 or k > n:
        return -1
    candidates = np.flatnonzero(ids[: n - k + 1] == pattern[0])
    for i in candidates:
        if np.array_equal(ids[i : i + k], pattern):
            return int(i)
    return -1


def response_template_mask(ids: np.ndarray, template_ids: np.ndarray) -> np.ndarray:
    mask = np.zeros(len(ids), dtype=np.uint8)
    at = find_subsequence(ids, template_ids)
    if at >= 0:
        mask[at + len(template_ids) :] = 1
    return mask


def train_everything_mask(ids: np.ndarray) -> np.ndarray:
    """The plain default of SFT trainers: every token but the first is a target."""
    mask = np.ones(len(ids), dtype=np.uint8)
    mask[:1] = 0
    return mask
