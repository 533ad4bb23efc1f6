"""Over-long documents: one explicit policy, never a silent loss."""

from __future__ import annotations

from .config import Overlong
from .records import Document
from .rejects import Reason, RecordError


def fit_length(doc: Document, max_length: int | None, policy: Overlong) -> list[Document]:
    """The document as it may be written: itself, a cut prefix, or (split-turns) several pieces."""
    n = doc.num_tokens
    if max_length is None or n <= max_length:
        return [doc]
    if policy is Overlong.SPLIT_TURNS:
        return split_turns(doc, max_length)
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
    return [_piece(doc, 0, cut)]


def _piece(doc: Document, start: int, end: int) -> Document:
    mask = doc.loss_mask[start:end].copy()
    mask[0] = 0  # a piece's first token has nothing of its own before it to be predicted from
    return Document(doc.source_id, doc.input_ids[start:end], mask, truncated=True,
                    turn_ends=tuple(e - start for e in doc.turn_ends if start < e <= end),
                    boundaries=tuple(e - start for e in doc.boundaries if start < e <= end))


def split_turns(doc: Document, max_length: int) -> list[Document]:
    """Consecutive pieces of whole turns, each as long as fits; a single turn longer than max_length is
    cut at max_length. A piece after the first starts at a turn (a user turn, as a rule) without the
    turns before it; pieces with nothing to train are left out."""
    pieces, start, n = [], 0, doc.num_tokens
    ends = sorted(set(e for e in doc.boundaries if e < n) | {n})
    while start < n:
        fitting = [e for e in ends if start < e <= start + max_length]
        end = fitting[-1] if fitting else start + max_length
        piece = _piece(doc, start, end)
        if piece.loss_mask.any():
            pieces.append(piece)
        start = end
    if not pieces:
        raise RecordError(Reason.NO_TRAINABLE_TOKENS, f"{n} tokens; no piece of at most {max_length} "
                          "tokens holds a target (policy: split-turns)")
    return pieces
