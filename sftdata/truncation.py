"""Over-long documents: one explicit policy, never a silent loss."""

from __future__ import annotations

from .config import Overlong
from .conversation import Document
from .rejects import Reason, RecordError


def fit_length(doc: Document, max_length: int | None, policy: Overlong) -> Document:
    n = doc.num_tokens
    if max_length is None or n <= max_length:
        return doc
    if policy is Overlong.REJECT:
        raise RecordError(Reason.TOO_LONG, f"{n} tokens > max length {max_length} (policy: reject)")
    if policy is Overlong.TRUNCATE:
        cut = max_length
        if not doc.loss_mask[:cut].any():
            raise RecordError(Reason.NO_TRAINABLE_TOKENS,
                              f"{n} tokens; every target lies past max length {max_length} (policy: truncate)")
    else:
        fitting = [e for e in doc.turn_ends if e <= max_length]
        if not fitting:
            first = doc.turn_ends[0] if doc.turn_ends else n
            raise RecordError(Reason.TOO_LONG, f"{n} tokens; the first trained turn ends at token {first} "
                              f"> max length {max_length} (policy: cut-turns)")
        cut = fitting[-1]
    return Document(doc.source_id, doc.input_ids[:cut], doc.loss_mask[:cut], truncated=True,
                    turn_ends=tuple(e for e in doc.turn_ends if e <= cut))
