"""Tokenizing renderings, and asking which tokens cover a range of characters.

Renderings are encoded in one batch call. The character-to-token questions are answered by the
encoding itself (`char_to_token`, a fraction of a microsecond each) at the few span boundaries a
document has, instead of materializing every token's offsets in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tokenizers

from .spans import Range, Rendered
from .tokenizer import ModelTokenizer


@dataclass(slots=True)
class EncodedTokens:
    """Tokens of one encoding, after `shift` tokens the tokenizer's BOS rule put before it."""

    ids: np.ndarray  # int32, shift tokens included
    encoding: tokenizers.Encoding
    shift: int
    text_len: int

    def _first_at_or_after(self, c: int, stop: int) -> int | None:
        while c < stop:
            t = self.encoding.char_to_token(c)
            if t is not None:
                return t
            c += 1
        return None

    def _last_at_or_before(self, c: int, stop: int) -> int | None:
        while c >= stop:
            t = self.encoding.char_to_token(c)
            if t is not None:
                # several tokens can hold one character (byte fallback, split UTF-8): take them all
                n = len(self.ids) - self.shift  # not len(encoding.ids): that builds the whole id list
                while t + 1 < n and self.encoding.token_to_chars(t + 1)[0] <= c:
                    t += 1
                return t
            c -= 1
        return None

    def span(self, chars: Range) -> tuple[int, int]:
        """Tokens [i, j) holding any of the characters [a, b)."""
        a, b = chars
        first = self._first_at_or_after(a, b)
        if first is None:
            return self._empty_at(a)
        last = self._last_at_or_before(b - 1, a)
        return first + self.shift, last + 1 + self.shift

    def _empty_at(self, a: int) -> tuple[int, int]:
        t = self._first_at_or_after(a, self.text_len)
        i = t + self.shift if t is not None else len(self.ids)
        return i, i

    def inside(self, chars: Range) -> tuple[int, int]:
        """Tokens [i, j) lying wholly inside the characters [a, b)."""
        i, j = self.span(chars)
        if i < j and self.encoding.token_to_chars(i - self.shift)[0] < chars[0]:
            i += 1
        if i < j and self.encoding.token_to_chars(j - 1 - self.shift)[1] > chars[1]:
            j -= 1
        return i, max(i, j)


@dataclass(slots=True)
class OffsetTokens:
    """Tokens with explicit offsets: pieces encoded separately and joined (--special-text literal)."""

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    def span(self, chars: Range) -> tuple[int, int]:
        a, b = chars
        i = int(np.searchsorted(self.ends, a, side="right"))
        j = int(np.searchsorted(self.starts, b, side="left"))
        return i, max(i, j)

    def inside(self, chars: Range) -> tuple[int, int]:
        a, b = chars
        i = int(np.searchsorted(self.starts, a, side="left"))
        j = int(np.searchsorted(self.ends, b, side="right"))
        return i, max(i, j)


Tokens = EncodedTokens | OffsetTokens


def _prefix_to_add(ids: list[int], prefix: tuple[int, ...]) -> tuple[int, ...]:
    """The tokenizer's BOS rule, unless the template already wrote it."""
    return () if not prefix or ids[: len(prefix)] == list(prefix) else prefix


def _encoded(encoding: tokenizers.Encoding, text_len: int, prefix: tuple[int, ...]) -> EncodedTokens:
    ids = encoding.ids
    add = _prefix_to_add(ids, prefix)
    return EncodedTokens(np.asarray(list(add) + ids, dtype=np.int32), encoding, len(add), text_len)


def _literal(text: str, literal: tuple[Range, ...], tok: ModelTokenizer) -> OffsetTokens:
    """Special-token text inside messages stays plain text; the template's own control tokens stay control.

    A fast tokenizer splits its input at added tokens before anything else and encodes each piece on its
    own, so encoding the pieces between the template's control tokens separately is the same operation.
    """
    cuts = [(m.start(), m.end()) for m in tok.special_pattern.finditer(text)
            if not any(a <= m.start() < b for a, b in literal)]
    ids, starts, ends, pos = [], [], [], 0
    for a, b in cuts + [(len(text), len(text))]:
        for piece_start, piece_end, backend in ((pos, a, tok.literal_backend), (a, b, tok.backend)):
            if piece_end > piece_start:
                enc = backend.encode(text[piece_start:piece_end], add_special_tokens=False)
                ids += enc.ids
                starts += [s + piece_start for s, _ in enc.offsets]
                ends += [e + piece_start for _, e in enc.offsets]
        pos = b
    add = _prefix_to_add(ids, tok.prefix_ids)
    zeros = [0] * len(add)
    return OffsetTokens(np.asarray(list(add) + ids, dtype=np.int32), np.asarray(zeros + starts, dtype=np.int64),
                        np.asarray(zeros + ends, dtype=np.int64))


def tokenize(rendered: list[Rendered], tok: ModelTokenizer) -> list[Tokens]:
    """One batch encode of every plain rendering (the tokenizer's threads do the work)."""
    plain = [i for i, r in enumerate(rendered) if not r.literal]
    out: list[Tokens | None] = [None] * len(rendered)
    encodings = tok.backend.encode_batch([rendered[i].text for i in plain], add_special_tokens=False)
    for i, encoding in zip(plain, encodings):
        out[i] = _encoded(encoding, len(rendered[i].text), tok.prefix_ids)
    for i, r in enumerate(rendered):
        if r.literal:
            out[i] = _literal(r.text, r.literal, tok)
    return out
