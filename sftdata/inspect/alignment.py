"""How two masks over a document's tokens differ: token alignment and the named kinds of difference.

Used by `diff` (two builds) and the report (a build against its baseline). When the ids are equal the
tokens pair position by position; else equal stretches are matched (difflib over the ids, after the
common prefix and suffix) and the rest lies on one side only. `classify` names what differs in words a
reader of a training run knows ("B trains only the last of A's 3 trained turns").
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

ALIGN_LIMIT = 4000  # beyond this many differing tokens in the middle, no token alignment is attempted
HEADER_TOKENS = 8  # an untrained stretch right before a reply counts as its header up to this many tokens


@dataclass(frozen=True)
class Alignment:
    """Token pairs: ia[k], ib[k] index A's and B's tokens (-1: the token is on the other side only).
    Pairs with both >= 0 hold equal ids."""

    ia: np.ndarray
    ib: np.ndarray

    @property
    def same_ids(self) -> bool:
        return bool((self.ia >= 0).all() and (self.ib >= 0).all())


def align(ids_a: np.ndarray, ids_b: np.ndarray) -> Alignment:
    na, nb = len(ids_a), len(ids_b)
    if na == nb and np.array_equal(ids_a, ids_b):
        return Alignment(np.arange(na), np.arange(nb))
    n = min(na, nb)
    neq = np.flatnonzero(ids_a[:n] != ids_b[:n])
    pre = int(neq[0]) if neq.size else n
    tail_a, tail_b = ids_a[pre:][::-1], ids_b[pre:][::-1]
    m = min(len(tail_a), len(tail_b))
    neq = np.flatnonzero(tail_a[:m] != tail_b[:m])
    suf = int(neq[0]) if neq.size else m
    mid_a, mid_b = ids_a[pre : na - suf], ids_b[pre : nb - suf]
    ia, ib = [np.arange(pre)], [np.arange(pre)]
    if len(mid_a) + len(mid_b) <= ALIGN_LIMIT:
        matcher = difflib.SequenceMatcher(None, mid_a.tolist(), mid_b.tolist(), autojunk=False)
        opcodes = matcher.get_opcodes()
    else:
        opcodes = [("replace", 0, len(mid_a), 0, len(mid_b))]
    for op, a0, a1, b0, b1 in opcodes:
        if op == "equal":
            ia.append(np.arange(a0, a1) + pre)
            ib.append(np.arange(b0, b1) + pre)
            continue
        ia += [np.arange(a0, a1) + pre, np.full(b1 - b0, -1)]
        ib += [np.full(a1 - a0, -1), np.arange(b0, b1) + pre]
    ia += [np.arange(na - suf, na)]
    ib += [np.arange(nb - suf, nb)]
    return Alignment(np.concatenate(ia).astype(np.int64), np.concatenate(ib).astype(np.int64))


def aligned_masks(al: Alignment, mask_a: np.ndarray, mask_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks along the alignment; a token on one side only counts as untrained on the other."""
    ma = np.where(al.ia >= 0, mask_a[np.maximum(al.ia, 0)] if len(mask_a) else 0, 0).astype(np.uint8)
    mb = np.where(al.ib >= 0, mask_b[np.maximum(al.ib, 0)] if len(mask_b) else 0, 0).astype(np.uint8)
    return ma, mb


def runs(mask: np.ndarray) -> np.ndarray:
    """[start, end) of each contiguous stretch of 1s, shape (k, 2)."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask, dtype=np.int8), [0]]))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1)


def _ordinal(kept: list[int], n: int) -> str:
    if kept == [0]:
        return "the first"
    if kept == [n - 1]:
        return "the last"
    return f"turn {kept[0] + 1}"


def _one_way(ref: np.ndarray, other: np.ndarray, ref_name: str, other_name: str) -> list[str]:
    """What `other` does to the trained turns of `ref`, and what it trains that `ref` does not."""
    tags = []
    turns = runs(ref)
    n = len(turns)
    dropped = [k for k, (s, e) in enumerate(turns) if not other[s:e].any()]
    if dropped and n > 1:
        kept = [k for k in range(n) if k not in dropped]
        if len(kept) == 1:
            tags.append(f"{other_name} trains only {_ordinal(kept, n)} of {ref_name}'s {n} trained turns")
        elif kept:
            tags.append(f"{other_name} drops {len(dropped)} of {ref_name}'s {n} trained turns")
    partial = [(s, e) for s, e in turns if other[s:e].any() and not other[s:e].all()]
    if any(other[s] and not other[e - 1] and other[s : e - 1].all() for s, e in partial):
        tags.append(f"{other_name} leaves the end-of-turn token untrained")
    elif partial:
        tags.append(f"{other_name} trains part of a turn {ref_name} trains whole")
    ends, starts = set(turns[:, 1].tolist()), set(turns[:, 0].tolist())
    for s, e in runs((other == 1) & (ref == 0)).tolist():
        if s in ends and e in starts:
            tag = f"{other_name} trains the prompt turns between replies"
        elif s in ends and e == len(ref):
            tag = f"{other_name} trains the tokens after the last reply"
        elif s in ends:
            tag = f"{other_name} trains past the end of a reply"
        elif e in starts and e - s <= HEADER_TOKENS:
            tag = f"{other_name} trains the header before a reply"
        elif e in starts:
            tag = f"{other_name} trains prompt text before a reply"
        else:
            tag = f"{other_name} trains prompt text {ref_name} masks"
        if tag not in tags:
            tags.append(tag)
    return tags


def classify(mask_a: np.ndarray, mask_b: np.ndarray, name_a: str = "A", name_b: str = "B") -> list[str]:
    """Short phrases naming how two masks over the same tokens differ (empty when they do not)."""
    ta, tb = int(mask_a.sum()), int(mask_b.sum())
    if ta and not tb:
        return [f"{name_b} trains nothing"]
    if tb and not ta:
        return [f"{name_a} trains nothing"]
    if np.array_equal(mask_a, mask_b):
        return []
    return _one_way(mask_a, mask_b, name_a, name_b) + [
        t for t in _one_way(mask_b, mask_a, name_b, name_a) if "trains only" in t or "drops" in t]


def compare_documents(ids_a, mask_a, ids_b, mask_b, name_a="A", name_b="B") -> tuple[Alignment, dict]:
    """The alignment of two documents and what differs (the fields of DocDiff but the identifiers)."""
    al = align(ids_a, ids_b)
    ma, mb = aligned_masks(al, mask_a, mask_b)
    one_side = (al.ia < 0) | (al.ib < 0)
    differs = one_side | (ma != mb)
    same = al.same_ids
    if same:
        tags = classify(ma, mb, name_a, name_b)
    else:
        tags = [f"token ids differ ({len(ids_a):,} vs {len(ids_b):,} tokens; "
                f"{int((al.ib < 0).sum()):,} only in {name_a}, {int((al.ia < 0).sum()):,} only in {name_b})"]
        if mask_a.any() and not mask_b.any():
            tags.append(f"{name_b} trains nothing")
        elif mask_b.any() and not mask_a.any():
            tags.append(f"{name_a} trains nothing")
    facts = {
        "status": "identical" if not differs.any() else ("mask" if same else "ids"),
        "changed": int(differs.sum()),
        "gained": int(((mb == 1) & (ma == 0)).sum()),
        "lost": int(((ma == 1) & (mb == 0)).sum()),
        "tokens_a": len(ids_a), "tokens_b": len(ids_b),
        "trained_a": int(mask_a.sum()), "trained_b": int(mask_b.sum()),
        "tags": tuple(tags),
    }
    return al, facts
