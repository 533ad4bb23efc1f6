"""From a rendering and its tokens to a verified loss mask.

`loss_mask[t] == 1` means token t is a training target (predicted from token t-1). The mask is computed
from character ranges (tokens.py answers which tokens cover them), then checked against the masking
contract before a document may be written:
  1. ids are one tokenization of the whole rendering, with the tokenizer's own BOS rule and no double BOS;
  2. every token touching a trained message is 1, no token touching an untrained message is, and
     tokens lying wholly inside a turn header, or in the text before an untrained message, are 0;
  3. the control tokens closing a trained turn (end of turn, end of a tool call, end of the answer, or a
     run of them) are 1 (unless turned off) and the token after them is 0;
  4. the first token is never a target.
"""

from __future__ import annotations

import numpy as np

from .encoding import Tokens
from .records import Document, Rendered
from .rejects import Reason, RecordError
from .tokenizer import ModelTokenizer


def compute_mask(rendered: Rendered, tokens: Tokens) -> tuple[bytearray, list[int], list[int]]:
    """The loss mask (one byte per token: slices of a bytearray are set and searched in C, where numpy
    spends a microsecond on each small slice); the token index after each trained turn (where a document
    may be cut keeping whole trained turns); and after every turn (where it may be split)."""
    n = len(tokens.ids)
    mask = bytearray(b"\x01" * n if rendered.train_all else n)
    trained_ends, boundaries = [], []
    for span in rendered.spans:
        if span.turn is None:
            continue
        turn_end = tokens.span(span.turn)[1]
        boundaries.append(turn_end)
        if rendered.train_all:
            if span.train:
                trained_ends.append(turn_end)
            else:  # train: false under --train-on all: the whole turn, header to end-of-turn, is not a target
                i, j = tokens.span(span.turn)
                mask[i:j] = bytes(j - i)
        elif span.target is not None:
            i, j = tokens.span(span.target)
            mask[i:j] = b"\x01" * (j - i)
            trained_ends.append(turn_end)
    if n:
        mask[0] = 0
    return mask, sorted(set(trained_ends)), sorted(set(boundaries))


def verify(rendered: Rendered, tokens: Tokens, mask: bytearray, tok: ModelTokenizer, train_eot: bool) -> None:
    """Raise RecordError(MASK_VERIFICATION_FAILED) unless the document meets the masking contract."""

    def fail(detail: str):
        raise RecordError(Reason.MASK_VERIFICATION_FAILED, detail)

    ids, n = tokens.ids, len(tokens.ids)
    p = len(tok.prefix_ids)
    if p and n >= 2 * p and ids[: 2 * p].tolist() == list(tok.prefix_ids) * 2:
        fail("the document starts with the BOS token twice (template and tokenizer both add it)")
    if n and mask[0]:
        fail("the first token is a target")
    target_starts = {tokens.span(s.target)[0] for s in rendered.spans if s.target}
    before = 0  # where the text of the messages before this one, and the turns trained there, ends
    for index, span in enumerate(rendered.spans):
        if span.data and not span.train and not rendered.train_all:
            # what the template writes before an untrained message (a tool result's header, even one
            # naming the tool the assistant called) is not the assistant's
            i, j = tokens.inside((before, span.data[0][0]))
            if 1 in mask[i:j]:
                fail(f"message {index} ({span.role}): token {mask.index(1, i, j)} of the text before it is a target")
        for _, b in span.data:
            before = max(before, b)
        if span.train and span.turn:
            before = max(before, span.turn[1])
        for r in span.data:
            i, j = tokens.span(r)
            if span.train and 0 in mask[i:j]:
                fail(f"message {index} ({span.role}) is trained but token {mask.index(0, i, j)} inside it is "
                     "not a target")
            if not span.train and not rendered.train_all and 1 in mask[i:j]:
                fail(f"message {index} ({span.role}) is not trained but token {mask.index(1, i, j)} inside it "
                     "is a target (a token spans two messages)")
            if not span.train and rendered.train_all and 1 in mask[i:j]:
                fail(f"message {index} ({span.role}) is marked train=false but has target tokens")
        if span.header is not None:
            i, j = tokens.inside(span.header)
            if 1 in mask[i:j]:
                fail(f"message {index}: a header token before the turn is a target")
        if span.eot is not None:
            i, j = tokens.span(span.eot)
            closing = _control_ids(rendered.text, span.eot, tok)
            if ids[i:j].tolist() != closing:
                fail(f"message {index}: the text closing the turn does not tokenize to its control tokens")
            if any(bool(flag) != train_eot for flag in mask[i:j]):
                fail(f"message {index}: the end-of-turn token is {'not ' if train_eot else ''}a target")
            if train_eot and j < n and mask[j] and j not in target_starts:
                fail(f"message {index}: token {j} after the end-of-turn token is a target")


def _control_ids(text: str, chars: tuple[int, int], tok: ModelTokenizer) -> list[int]:
    """The ids of the control tokens spelled in text[a:b]: most often one token's text exactly (then no
    search of the special-token pattern is needed: it would match that text whole)."""
    a, b = chars
    if b > a and text[a:b] in tok.special_text_set:
        return [tok.token_id(text[a:b])]
    return [tok.token_id(m.group()) for m in tok.special_pattern.finditer(text, a, b)]


def make_document(rendered: Rendered, tokens: Tokens, tok: ModelTokenizer, train_eot: bool) -> Document:
    flags, turn_ends, boundaries = compute_mask(rendered, tokens)
    verify(rendered, tokens, flags, tok, train_eot)
    mask = np.frombuffer(flags, dtype=np.uint8)
    if 1 not in flags:
        why = "no non-empty trained turn"
        if rendered.unrendered:
            left_out = ", ".join(f"message {i} {kind}" for i, kind in rendered.unrendered)
            why = f"the chat template does not render {left_out}"
        raise RecordError(Reason.NO_TRAINABLE_TOKENS, f"no token is a target ({why})")
    return Document(rendered.source_id, tokens.ids, mask, turn_ends=tuple(turn_ends), boundaries=tuple(boundaries))
