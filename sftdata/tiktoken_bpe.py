"""tiktoken as a second engine for byte-level BPE vocabularies ranked the way tiktoken ranks them.

Llama 3's tokenizer.json was converted from a tiktoken vocabulary: a token's id is its merge rank, every
pair of tokens that spells a token is a merge, and a pre-tokenized word that is a whole token is taken
as is (`ignore_merges`). For such a tokenizer, tiktoken's BPE and the tokenizers library's choose the
same merges, and tiktoken makes the ids in about a third of the CPU time, on text joined into one call
per batch (one release of the GIL, where one call per document would queue on it behind rendering).

Used only where equality is established, and checked again as the build goes:
  - `ranked_pattern` admits a tokenizer.json only with that structure (merges ordered by the rank of
    what they make, all of them present, no normalizer, a regex pre-tokenizer then byte-level);
  - the two engines' regexes are different libraries, so `disagreeing_characters` encodes every
    assigned character in several contexts with both at load time; a document holding any character
    not found alike (or unassigned in this Python's Unicode tables) is encoded by tokenizers instead;
  - tokens.py still checks that each document's tokens spell its text byte for byte.
"""

from __future__ import annotations

import sys
import unicodedata

import numpy as np
import tiktoken

# a probed character next to each kind of character a pre-tokenizer regex tells apart: a letter, a
# digit, a space, itself, an apostrophe (contractions), a newline, punctuation
_CONTEXT = "a{c}b {c}{c}1{c}'{c}\n{c}.{c}'s"
_PROBE_BLOCK = 1024


def byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2 style): each byte is one printable character; bytes that are
    printable Latin-1 stand for themselves, the others are moved past 255 in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


def ranked_pattern(config: dict) -> str | None:
    """The pre-tokenizer regex of a tokenizer.json that tiktoken encodes exactly, or None."""
    model, pre = config.get("model") or {}, config.get("pre_tokenizer") or {}
    if (model.get("type") != "BPE" or not model.get("ignore_merges") or model.get("dropout")
            or model.get("byte_fallback") or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix") or config.get("normalizer") is not None):
        return None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    split, byte_level = steps
    pattern = (split.get("pattern") or {}).get("Regex")
    if (split.get("type") != "Split" or pattern is None or split.get("behavior") != "Isolated"
            or split.get("invert") or byte_level.get("type") != "ByteLevel" or byte_level.get("use_regex")
            or byte_level.get("add_prefix_space")):
        return None
    added_tokens = config.get("added_tokens", [])
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added_tokens):
        return None
    added = [t["content"] for t in added_tokens]
    # tokenizers matches added tokens longest first, tiktoken's regex first listed first: same only
    # when no added token begins another
    if any(a != b and b.startswith(a) for a in added for b in added):
        return None
    return pattern if _merges_follow_ranks(model) else None


def _merges_follow_ranks(model: dict) -> bool:
    """Merges applied in list order are merges applied by rank of their product, and every pair of
    tokens that spells a token is a merge: what makes BPE by merge list and BPE by rank one procedure."""
    vocab: dict[str, int] = model.get("vocab") or {}
    alphabet = byte_level_alphabet()
    if any(ch not in vocab for ch in alphabet):  # each byte must be a token of its own
        return False
    pairs = set()
    last = -1
    for merge in model.get("merges") or []:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        product = vocab.get(left + right)
        if product is None or product < last:
            return False
        last = product
        pairs.add((left, right))
    return all((token[:k], token[k:]) in pairs
               for token in vocab if len(token) > 1
               for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab)


class RankedEncoder:
    """tiktoken over the same vocabulary; `agrees(text)` says whether it may encode a text."""

    def __init__(self, ranks: dict[bytes, int], added: dict[str, int], pattern: str,
                 unsafe: list[list[int]] | None = None):
        self._encoding = tiktoken.Encoding("sftdata-ranked-bpe", pat_str=pattern, mergeable_ranks=ranks,
                                           special_tokens=added)
        self._added = added
        # separators to join a batch with, the least used first (reserved tokens come last)
        self._separators = sorted(added, key=added.get, reverse=True)
        # by code point: a lookup per character in C (a regex class of hundreds of ranges scans them all)
        self._unsafe = np.zeros(sys.maxunicode + 1, dtype=bool)
        for first, last in unsafe or []:
            self._unsafe[first : last + 1] = True

    def agrees(self, text: str) -> bool:
        if text.isascii():
            return True
        return not self._unsafe[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)].any()

    def encode(self, text: str) -> np.ndarray:
        return self._encoding.encode_to_numpy(text, allowed_special="all").astype(np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's ids, from one call: an added token splits the input before BPE sees it, so texts
        joined by one that none of them holds encode to their own ids with it between them."""
        if not texts:
            return []
        joined_texts = "".join(texts)
        separator = next((s for s in self._separators if s not in joined_texts), None)
        ids = self.encode(separator.join(texts)) if separator is not None else None
        cuts = np.flatnonzero(ids == self._added[separator]) if ids is not None else None
        if cuts is None or len(cuts) != len(texts) - 1:  # no free separator, or an added token spans a join
            return [self.encode(t) for t in texts]
        bounds = np.concatenate([[0], cuts + 1])
        ends = np.append(cuts, len(ids))
        return [ids[a:b] for a, b in zip(bounds.tolist(), ends.tolist())]


def disagreeing_characters(backend, encoder: RankedEncoder) -> list[list[int]] | None:
    """Ranges [first, last] of code points holding every character tiktoken may not encode: those the
    two engines encode differently in some context, and those this Python's Unicode tables do not
    assign (a newer Unicode may class them differently in each engine), surrogates and private use.
    None if an ASCII character is among them: then the engines are not used together at all. Run once
    per tokenizer, when it is first loaded (a few seconds for Llama 3)."""
    unsafe, probed = [], []
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        (unsafe if unicodedata.category(ch) in ("Cn", "Cs", "Co") else probed).append(ch)
    unsafe = sorted(unsafe + _probe_disagreements(backend, encoder, probed))
    if unsafe and unsafe[0].isascii():
        return None
    return _ranges([ord(c) for c in unsafe])


def _probe_disagreements(backend, encoder: RankedEncoder, chars: list[str]) -> list[str]:
    """The characters whose probe text the two engines encode differently."""
    found = []
    for at in range(0, len(chars), _PROBE_BLOCK):
        block = chars[at : at + _PROBE_BLOCK]
        texts = [_CONTEXT.format(c=c) for c in block]
        theirs = backend.encode_batch_fast(texts, add_special_tokens=False)
        found += [c for c, ours, other in zip(block, encoder.encode_batch(texts), theirs) if ours.tolist() != other.ids]
    return found


def _ranges(code_points: list[int]) -> list[list[int]]:
    """Sorted code points as [first, last] runs."""
    out: list[list[int]] = []
    for cp in code_points:
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out
