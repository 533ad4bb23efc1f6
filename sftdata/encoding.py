"""Tokenizing renderings, and asking which tokens cover a range of characters.

Renderings are encoded in one batch call. Where the tokenizer's tokens spell their text byte for byte
(byte-level BPE: Llama 3, Qwen, Mistral's Tekken), the encode skips offsets, a quarter of its time, and
each token's offsets are the running sum of its tokens' byte lengths; a document is accepted that way
only if its tokens spell exactly its text, and is encoded again with offsets otherwise. Other tokenizers
(SentencePiece adds a space the text does not have) are asked `char_to_token` at the few span
boundaries a document has.

A record's documents beyond its whole rendering (turns trained in their own context) repeat most of it:
each is encoded from the last added token inside the text it shares with an earlier document, the
shared part's tokens taken from that one (`shared_pieces`).
"""

from __future__ import annotations

import array
import bisect
import itertools
import re
from dataclasses import dataclass

import numpy as np
import tokenizers

from .records import Range, Rendered
from .spans import common_prefix
from .token_bytes import TokenBytes
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
    """Tokens with explicit character offsets, as `array.array`s of int64: `bisect` on them is a fraction
    of a microsecond, numpy's searchsorted on a scalar several; and they are made from numpy's arrays
    by a copy of their bytes, where Python lists cost a Python int for every token."""

    ids: np.ndarray
    starts: array.array
    ends: array.array

    def span(self, chars: Range) -> tuple[int, int]:
        a, b = chars
        i = bisect.bisect_right(self.ends, a)
        j = bisect.bisect_left(self.starts, b)
        return i, max(i, j)

    def inside(self, chars: Range) -> tuple[int, int]:
        a, b = chars
        i = bisect.bisect_left(self.starts, a)
        j = bisect.bisect_right(self.ends, b)
        return i, max(i, j)


Tokens = EncodedTokens | OffsetTokens


def _prefix_to_add(ids: list[int], prefix: tuple[int, ...]) -> tuple[int, ...]:
    """The tokenizer's BOS rule, unless the template already wrote it."""
    return () if not prefix or ids[: len(prefix)] == list(prefix) else prefix


def _with_prefix(ids: np.ndarray, starts: array.array, ends: array.array, prefix: tuple[int, ...]) -> OffsetTokens:
    add = _prefix_to_add(ids[: len(prefix)].tolist(), prefix)
    if not add:
        return OffsetTokens(ids, starts, ends)
    zeros = _offsets([0] * len(add))
    return OffsetTokens(np.concatenate([np.asarray(add, dtype=np.int32), ids]), zeros + starts, zeros + ends)


def _offsets(values) -> array.array:
    """Offsets as OffsetTokens holds them."""
    return array.array("q", values)


def spelled_offsets(texts: list[str], ids: list[np.ndarray], table: TokenBytes
                    ) -> list[tuple[array.array, array.array] | None]:
    """Each document's token (starts, ends) in characters, from the bytes its tokens spell; None for a
    document whose tokens do not spell its text exactly (a normalizer rewrote it, a token absorbed
    whitespace): its offsets must come from the tokenizer. One pass of array operations per batch."""
    counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    lengths = table.lengths[flat]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    # the batch's tokens' bytes, end to end: each token's bytes copied from its place in the table
    gather = np.repeat(table.starts[flat] - starts, lengths) + np.arange(int(ends[-1]) if len(ends) else 0,
                                                                         dtype=np.int32)
    spelled = table.buffer[gather].tobytes()
    joined = "".join(texts)
    data = joined.encode("utf-8")
    # where each document begins: in its tokens' bytes, in the text's bytes, in characters
    token_at = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=token_at[1:])
    spelled_at = np.concatenate([[0], ends])[token_at]
    char_at = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)), out=char_at[1:])
    ascii_only = joined.isascii()
    if ascii_only:
        data_at = char_at
    else:  # a character begins at each byte that is not a UTF-8 continuation byte (10xxxxxx)
        begins = (np.frombuffer(data, dtype=np.uint8) & 0xC0) != 0x80
        data_at = np.append(np.flatnonzero(begins), len(data))[char_at]
    if spelled == data and np.array_equal(spelled_at, data_at):
        spells = [True] * len(texts)
    else:
        spells = [spelled[spelled_at[k] : spelled_at[k + 1]] == data[data_at[k] : data_at[k + 1]]
                  for k in range(len(texts))]
    # token offsets in the text's bytes, then in characters: a token holding part of a character holds
    # that character (as the tokenizer's own offsets say)
    shift = np.repeat(data_at[:-1] - spelled_at[:-1], counts)
    starts, ends = starts + shift, ends + shift
    if not ascii_only:
        char_of_byte = np.cumsum(begins, dtype=np.int32) - 1
        # a document whose tokens spell more than its text points past the batch's bytes (its offsets
        # are dropped below); a token has at least one byte
        char_of_byte = np.append(char_of_byte, len(joined))
        starts = char_of_byte[np.minimum(starts, len(data))]
        ends = char_of_byte[np.clip(ends - 1, 0, len(data))] + 1
    doc_start = np.repeat(char_at[:-1], counts)
    starts, ends = (_offsets((x - doc_start).astype(np.int64, copy=False).tobytes()) for x in (starts, ends))
    at = token_at.tolist()
    return [(starts[at[k] : at[k + 1]], ends[at[k] : at[k + 1]]) if spells[k] else None for k in range(len(texts))]


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
    return _with_prefix(np.asarray(ids, dtype=np.int32), _offsets(starts), _offsets(ends), tok.prefix_ids)


def piece_cuts(tok: ModelTokenizer) -> re.Pattern | None:
    """The added tokens after which a text may be cut, each piece encoding to its own ids whatever
    follows (the ids of a text are its pieces' ids end to end); None where that is not certain.

    Both engines split a text at its added tokens before anything else sees it, and encode each piece
    on its own (tokenizers: AddedVocabulary.extract_and_normalize cuts at the tokens matched before
    normalization, then normalizes and pre-tokenizes each piece; tiktoken: its special-token regex).
    Where no added token overlaps another or itself (no one holds another, no end of one begins one),
    every occurrence of one is a match whatever surrounds it, and a match ending inside the text two
    documents share is a match in both. A token that strips whitespace next to it or matches only as a
    whole word moves or skips cuts: then none is used. Byte-level tokenizers only (the others' tokens
    need the tokenizer's offsets, which come with whole encodings)."""
    if tok.token_bytes is None:
        return None
    if tok.ranked is not None:  # checked for stripping and whole-word tokens (tiktoken_bpe.ranked_pattern)
        texts = cuts = list(tok.ranked["added"])
    else:
        added = list(tok.backend.get_added_tokens_decoder().values())
        if any(t.lstrip or t.rstrip or t.single_word for t in added):
            return None
        texts = [t.content for t in added]
        cuts = [t.content for t in added if not t.normalized]  # matched in the text as given
    if not cuts or not _overlap_free(texts):
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(cuts, key=len, reverse=True)))


def _overlap_free(texts: list[str]) -> bool:
    """No text holds another, and no text's end (short of all of it) begins one, itself included."""
    starts = {t[:k] for t in texts for k in range(1, len(t) + 1)}
    if any(t[k:] in starts for t in texts for k in range(1, len(t))):
        return False
    return not any(a != b and a in b for a in texts for b in texts)


def shared_pieces(texts: list[str], sources: list[int], cuts: re.Pattern) -> tuple[list[str], list[list[int]]]:
    """The pieces to encode, and the pieces each text's ids are made of, end to end: a record's
    documents (consecutive texts of one source) after the first continue the earlier one they share the
    most text with, from the end of the last added token inside what they share."""
    pieces: list[str] = []
    made_of: list[list[int]] = []
    for _, group in itertools.groupby(range(len(texts)), key=sources.__getitem__):
        made_of += _record_pieces([texts[k] for k in group], cuts, pieces)
    return pieces, made_of


def _record_pieces(docs: list[str], cuts: re.Pattern, pieces: list[str]) -> list[list[int]]:
    """Each document's pieces (indices into `pieces`, extended here)."""
    if len(docs) == 1:
        pieces.append(docs[0])
        return [[len(pieces) - 1]]
    base: list[int | None] = [None]
    start = [0]  # where each document's own pieces begin
    for j in range(1, len(docs)):
        shared = [common_prefix(docs[i], docs[j]) for i in range(j)]
        best = max(range(j), key=shared.__getitem__)  # the earliest of equals
        after_cut = [m.end() for m in cuts.finditer(docs[j], 0, shared[best])]
        base.append(best if after_cut else None)
        start.append(after_cut[-1] if after_cut else 0)
    # a later document's start is a cut of its base: at or past the base's own start, since the base's
    # start ends an added token inside the text the two share
    splits = [sorted({start[j] for j in range(len(docs)) if base[j] == i}) for i in range(len(docs))]
    out: list[list[int]] = []
    ends: list[list[int]] = []  # where each of a document's pieces ends in it
    for j, doc in enumerate(docs):
        kept = [] if base[j] is None else [(p, e) for p, e in zip(out[base[j]], ends[base[j]]) if e <= start[j]]
        mine, at = [p for p, _ in kept], [e for _, e in kept]
        bounds = [start[j], *(c for c in splits[j] if c > start[j]), len(doc)]
        for a, b in zip(bounds, bounds[1:]):
            if b > a:
                pieces.append(doc[a:b])
                mine.append(len(pieces) - 1)
                at.append(b)
        out.append(mine)
        ends.append(at)
    return out


def encode(rendered: list[Rendered], tok: ModelTokenizer, cuts: re.Pattern | None = None
           ) -> list[tokenizers.Encoding | np.ndarray]:
    """One batch encode of every plain rendering, with the GIL released: by tiktoken where it encodes
    exactly as the tokenizer (tiktoken_bpe.py), into ids; by the tokenizer's own threads otherwise, into encodings.
    With `cuts` (piece_cuts), what a record's documents share is encoded once. What follows, in
    `tokens_of`, is Python and runs where the rest of the Python work runs."""
    plain = [r for r in rendered if not r.literal]
    texts = [r.text for r in plain]
    if tok.token_bytes is None:
        return tok.backend.encode_batch(texts, add_special_tokens=False)
    sources = [r.source_id for r in plain]
    if cuts is None or len(set(sources)) == len(sources):
        return _encode_byte_level(texts, tok)
    pieces, made_of = shared_pieces(texts, sources, cuts)
    ids = [e if isinstance(e, np.ndarray) else np.array(e.ids, dtype=np.int32)
           for e in _encode_byte_level(pieces, tok)]
    return [ids[k[0]] if len(k) == 1 else np.concatenate([ids[p] for p in k]) for k in made_of]


def _encode_byte_level(texts: list[str], tok: ModelTokenizer) -> list[tokenizers.Encoding | np.ndarray]:
    ranked = tok.ranked_encoder
    if ranked is None:
        return tok.backend.encode_batch_fast(texts, add_special_tokens=False)
    mine = [ranked.agrees(t) for t in texts]
    ours = iter(ranked.encode_batch([t for t, m in zip(texts, mine) if m]))
    others = [t for t, m in zip(texts, mine) if not m]  # none, mostly: then the tokenizer is never parsed
    theirs = iter(tok.backend.encode_batch_fast(others, add_special_tokens=False) if others else [])
    return [next(ours) if m else next(theirs) for m in mine]


def tokens_of(rendered: list[Rendered], encodings: list[tokenizers.Encoding | np.ndarray], tok: ModelTokenizer
              ) -> list[Tokens]:
    """Tokens of each rendering, from `encode`'s encodings (or ids) of the plain ones."""
    plain = [i for i, r in enumerate(rendered) if not r.literal]
    out: list[Tokens | None] = [None] * len(rendered)
    table = tok.token_bytes
    if table is None:
        for i, encoding in zip(plain, encodings):
            out[i] = _encoded(encoding, len(rendered[i].text), tok.prefix_ids)
    else:
        texts = [rendered[i].text for i in plain]
        ids = [e if isinstance(e, np.ndarray) else np.array(e.ids, dtype=np.int32) for e in encodings]
        for i, doc, offsets in zip(plain, ids, spelled_offsets(texts, ids, table)):
            if offsets is not None:
                out[i] = _with_prefix(doc, *offsets, tok.prefix_ids)
        again = [i for i in plain if out[i] is None]
        if again:  # tiktoken's builds need not parse the tokenizer at all (tokenizer.py)
            for i, encoding in zip(again, tok.backend.encode_batch([rendered[i].text for i in again],
                                                                   add_special_tokens=False)):
                out[i] = _encoded(encoding, len(rendered[i].text), tok.prefix_ids)
    for i, r in enumerate(rendered):
        if r.literal:
            out[i] = _literal(r.text, r.literal, tok)
    return out


def tokenize(rendered: list[Rendered], tok: ModelTokenizer) -> list[Tokens]:
    """Both steps in one call, where nothing needs to run between them."""
    return tokens_of(rendered, encode(rendered, tok), tok)
