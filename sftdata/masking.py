"""From a rendering and its tokens to a verified loss mask.

`loss_mask[t] == 1` means token t is a training target (predicted from token t-1). The mask is computed
from character ranges by vectorized interval search over the token offsets, then checked against the
masking contract before a document may be written:
  1. ids are one tokenization of the whole rendering, with the tokenizer's own BOS rule and no double BOS;
  2. every token touching a trained message is 1, no token touching an untrained message is, and
     tokens lying wholly inside a turn header are 0;
  3. the end-of-turn token closing a trained turn is 1 (unless turned off) and the token after it is 0;
  4. the first token is never a target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .conversation import Document
from .rejects import Reason, RecordError
from .spans import Range, Rendered
from .tokenizer import ModelTokenizer


@dataclass(slots=True)
class Tokens:
    ids: np.ndarray  # int32
    starts: np.ndarray  # int64 character offsets into the rendering, one per token
    ends: np.ndarray


def _from_encoding(encoding) -> Tokens:
    ids = np.asarray(encoding.ids, dtype=np.int32)
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    return Tokens(ids, offsets[:, 0], offsets[:, 1])


def _literal_encoding(text: str, literal: tuple[Range, ...], tok: ModelTokenizer) -> Tokens:
    """Special-token text inside messages stays plain text; the template's own control tokens stay control.

    A fast tokenizer splits its input at added tokens before anything else and encodes each piece on its
    own, so encoding the pieces between the template's control tokens separately is the same operation.
    """
    cuts = [(m.start(), m.end()) for m in tok.special_pattern.finditer(text)
            if not any(a <= m.start() < b for a, b in literal)]
    parts, pos = [], 0
    for a, b in cuts + [(len(text), len(text))]:
        for piece_start, piece_end, backend in ((pos, a, tok.literal_backend), (a, b, tok.backend)):
            if piece_end > piece_start:
                t = _from_encoding(backend.encode(text[piece_start:piece_end], add_special_tokens=False))
                parts.append(Tokens(t.ids, t.starts + piece_start, t.ends + piece_start))
        pos = b
    return Tokens(*(np.concatenate([getattr(p, f) for p in parts]) if parts else np.zeros(0, np.int64)
                    for f in ("ids", "starts", "ends")))


def _with_prefix(tokens: Tokens, prefix: tuple[int, ...]) -> Tokens:
    """Apply the tokenizer's BOS rule unless the template already wrote it."""
    n = len(prefix)
    if not n or tokens.ids[:n].tolist() == list(prefix):
        return tokens
    zeros = np.zeros(n, dtype=np.int64)
    return Tokens(np.concatenate([np.asarray(prefix, np.int32), tokens.ids]),
                  np.concatenate([zeros, tokens.starts]), np.concatenate([zeros, tokens.ends]))


def tokenize(rendered: list[Rendered], tok: ModelTokenizer) -> list[Tokens]:
    """One batch encode of every plain rendering (the tokenizer's threads do the work)."""
    plain = [i for i, r in enumerate(rendered) if not r.literal]
    out: list[Tokens | None] = [None] * len(rendered)
    for i, encoding in zip(plain, tok.backend.encode_batch([rendered[i].text for i in plain],
                                                            add_special_tokens=False)):
        out[i] = _from_encoding(encoding)
    for i, r in enumerate(rendered):
        if r.literal:
            out[i] = _literal_encoding(r.text, r.literal, tok)
    return [_with_prefix(t, tok.prefix_ids) for t in out]


def token_range(tokens: Tokens, chars: Range) -> tuple[int, int]:
    """Tokens [i, j) that overlap the characters [a, b)."""
    a, b = chars
    i = int(np.searchsorted(tokens.ends, a, side="right"))
    j = int(np.searchsorted(tokens.starts, b, side="left"))
    return i, max(i, j)


def _inside(tokens: Tokens, chars: Range) -> tuple[int, int]:
    """Tokens [i, j) lying wholly inside the characters [a, b)."""
    a, b = chars
    i = int(np.searchsorted(tokens.starts, a, side="left"))
    j = int(np.searchsorted(tokens.ends, b, side="right"))
    return i, max(i, j)


def compute_mask(rendered: Rendered, tokens: Tokens) -> tuple[np.ndarray, list[int]]:
    """The loss mask, and the token index after each trained turn (where a document may be cut)."""
    n = len(tokens.ids)
    turn_ends = []
    if rendered.train_all:
        mask = np.ones(n, dtype=np.uint8)
        for span in rendered.spans:
            if not span.train:
                for r in span.data:
                    i, j = token_range(tokens, r)
                    mask[i:j] = 0
            elif span.data:
                turn_ends.append(token_range(tokens, (span.data[-1][1] - 1, span.data[-1][1]))[1])
    else:
        mask = np.zeros(n, dtype=np.uint8)
        for span in rendered.spans:
            if span.target is not None:
                i, j = token_range(tokens, span.target)
                mask[i:j] = 1
                turn_ends.append(j)
    if n:
        mask[0] = 0
    return mask, sorted(set(turn_ends))


def verify(rendered: Rendered, tokens: Tokens, mask: np.ndarray, tok: ModelTokenizer, train_eot: bool) -> None:
    """Raise RecordError(MASK_VERIFICATION_FAILED) unless the document meets the masking contract."""

    def fail(detail: str):
        raise RecordError(Reason.MASK_VERIFICATION_FAILED, detail)

    ids, n = tokens.ids, len(tokens.ids)
    p = len(tok.prefix_ids)
    if p and n >= 2 * p and ids[: 2 * p].tolist() == list(tok.prefix_ids) * 2:
        fail("the document starts with the BOS token twice (template and tokenizer both add it)")
    if n and mask[0]:
        fail("the first token is a target")
    for index, span in enumerate(rendered.spans):
        for r in span.data:
            i, j = token_range(tokens, r)
            if span.train and not mask[i:j].all():
                bad = i + int(np.argmin(mask[i:j]))
                fail(f"message {index} ({span.role}) is trained but token {bad} inside it is not a target")
            if not span.train and not rendered.train_all and mask[i:j].any():
                bad = i + int(np.argmax(mask[i:j]))
                fail(f"message {index} ({span.role}) is not trained but token {bad} inside it is a target "
                     "(a token spans two messages)")
            if not span.train and rendered.train_all and mask[i:j].any():
                fail(f"message {index} ({span.role}) is marked train=false but has target tokens")
        if span.header is not None:
            i, j = _inside(tokens, span.header)
            if mask[i:j].any():
                fail(f"message {index}: a header token before the turn is a target")
        if span.eot is not None:
            i, j = token_range(tokens, span.eot)
            eot_id = tok.token_id(rendered.text[span.eot[0] : span.eot[1]])
            if j - i != 1 or ids[i] != eot_id:
                fail(f"message {index}: the end-of-turn text does not tokenize to its single control token")
            if bool(mask[i]) != train_eot:
                fail(f"message {index}: the end-of-turn token is {'not ' if train_eot else ''}a target")
            if train_eot and i + 1 < n and mask[i + 1] and not any(
                s.target and token_range(tokens, s.target)[0] == i + 1 for s in rendered.spans
            ):
                fail(f"message {index}: token {i + 1} after the end-of-turn token is a target")


def make_document(rendered: Rendered, tokens: Tokens, tok: ModelTokenizer, train_eot: bool) -> Document:
    mask, turn_ends = compute_mask(rendered, tokens)
    verify(rendered, tokens, mask, tok, train_eot)
    if not mask.any():
        why = "no non-empty trained turn"
        if rendered.unrendered:
            why = f"the chat template does not render this record's {' and '.join(rendered.unrendered)} fields"
        raise RecordError(Reason.NO_TRAINABLE_TOKENS, f"no token is a target ({why})")
    return Document(rendered.source_id, tokens.ids, mask, turn_ends=tuple(turn_ends))
