"""Packing whole documents into rows of at most `capacity` tokens, from their lengths alone.

A packed row holds several documents end to end; nothing is cut, and the row keeps where each one
starts (`seq_lens`), so training can keep them apart. A row of three documents, capacity 16:

    documents      |<--- doc 7 --->|<- doc 2 ->|<----- doc 9 ----->|
    input_ids       a0 a1 a2 a3 a4  b0 b1 b2 b3  c0 c1 c2 c3 c4 c5     15 tokens; collate pads to 16
    seq_lens        [5, 4, 6]                                          sum == len(input_ids)
    position_ids    0  1  2  3  4   0  1  2  3   0  1  2  3  4  5      restart at 0 in every document
    may be target   .  ?  ?  ?  ?   .  ?  ?  ?   .  ?  ?  ?  ?  ?      ? = the document's own loss_mask

Positions restart so each document looks to the model exactly as it would alone, and attention is
block-causal along `seq_lens` (sfttrain/attention.py). The first token of a document is never a target:
a target is predicted from the position before it, and before b0 stands a4, the end of document 7,
which sees only document 7; training it to predict b0 would teach that an unrelated document follows.

What is here is only the choice of which documents share a row: a bin-packing problem over integer
lengths. `pack` returns rows of document indices, every document exactly once, each row's total
<= capacity, row order shuffled by a seed (long and short documents mix across training steps),
documents inside a row in index order.

How: first-fit decreasing, built bin by bin (take the largest document left, then keep adding the
largest that still fits), with one look-ahead: whenever two documents left fill the row's remaining
space exactly, they go in and the row is closed. Lengths of real data are dense integers, so such
pairs are nearly always there; they close rows that plain greedy would leave a few tokens short, and
they spend mid-sized documents on that instead of the small ones the last rows need. Sets of available
lengths are Python ints used as bitsets (bit v set: a document of length v is left), so "largest that
fits" and "is there an exact pair" are a few big-int operations each, O(capacity / 64) machine words.

The result is compared with the Martello-Toth L2 lower bound (which is >= ceil(tokens / capacity));
when rows reach it the packing is optimal. When they do not, plain first-fit decreasing and best-fit
decreasing run too and the fewest rows win, so `pack` never uses more rows than either of them.
"""

from __future__ import annotations

import numpy as np

from .manifest import PackingInfo

__all__ = [
    "best_fit_decreasing",
    "fill_stats",
    "first_fit_decreasing",
    "l2_lower_bound_rows",
    "lower_bound_rows",
    "pack",
    "pack_arrays",
]


def _check(lengths, capacity: int) -> np.ndarray:
    """The lengths as int64, or ValueError naming the first document that cannot be packed."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
        raise ValueError(f"capacity must be a positive integer number of tokens, got {capacity!r}")
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional (one length per document), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"lengths must be integer token counts, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = np.flatnonzero(arr < 1)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"document {i} has length {int(arr[i])}: every document must have at least one token "
            f"({bad.size} documents in all); reject empty documents before packing"
        )
    bad = np.flatnonzero(arr > capacity)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"document {i} has {int(arr[i])} tokens, more than the row capacity {int(capacity)} "
            f"({bad.size} documents in all are too long); split, truncate or reject them before packing"
        )
    return arr


def _bitset(values: np.ndarray) -> int:
    """A Python int with bit v set for every v in values (values >= 0)."""
    if values.size == 0:
        return 0
    bits = np.zeros(int(values.max()) + 1, dtype=bool)
    bits[values] = True
    return int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")


def _greedy_fill(lengths: np.ndarray, capacity: int, exact_pairs: bool) -> tuple[np.ndarray, int]:
    """First-fit decreasing built row by row, optionally closing a row with an exact pair.

    Returns (row of each document, number of rows), rows numbered in the order they were opened.
    Without exact_pairs this is exactly first-fit decreasing (stable order: longer first, then lower
    index): the first row FFD opens receives, scanning documents in that order, every one that still
    fits, which is "repeatedly add the largest that fits"; the next row the same over what is left.
    """
    n = len(lengths)
    row_of = np.empty(n, dtype=np.int64)
    if n == 0:
        return row_of, 0
    cap = int(capacity)
    order = np.argsort(-lengths, kind="stable")
    sizes = lengths[order]
    starts = np.flatnonzero(np.r_[True, sizes[1:] != sizes[:-1]])
    ends = np.r_[starts[1:], n]
    # per length, the documents left, lowest index last so that pop() takes it first
    left: dict[int, list[int]] = {}
    for v, s, e in zip(sizes[starts].tolist(), starts.tolist(), ends.tolist()):
        docs = order[s:e].tolist()
        docs.reverse()
        left[v] = docs
    avail = _bitset(sizes[starts])  # bit v: a document of length v is left
    ravail = _bitset(cap - sizes[starts])  # bit cap - v: the same set mirrored, for pair sums

    rows = 0
    remaining = n
    while remaining:
        v = avail.bit_length() - 1
        room = cap
        while True:
            docs = left[v]
            row_of[docs.pop()] = rows
            if not docs:
                avail ^= 1 << v
                ravail ^= 1 << (cap - v)
            remaining -= 1
            room -= v
            if not room or not avail:
                break
            fits = avail & ((1 << (room + 1)) - 1)  # lengths <= room
            if not fits:
                break
            v = fits.bit_length() - 1
            if exact_pairs and v != room:
                p = _exact_pair(avail, ravail, room, cap, left)
                if p:
                    for w in (p, room - p):
                        docs = left[w]
                        row_of[docs.pop()] = rows
                        if not docs:
                            avail ^= 1 << w
                            ravail ^= 1 << (cap - w)
                    remaining -= 2
                    break
        rows += 1
    return row_of, rows


def _exact_pair(avail: int, ravail: int, room: int, cap: int, left: dict[int, list[int]]) -> int:
    """p such that documents of lengths p and room - p are left (p <= room - p); 0 if there is none.

    Bit p of (ravail >> (cap - room)) is bit cap - (room - p) of ravail: a document of length room - p.
    Among the pairs the most balanced wins (largest p), which keeps the smallest documents for the
    rows that nothing else can close.
    """
    cand = avail & (ravail >> (cap - room)) & ((1 << (room // 2 + 1)) - 1)
    while cand:
        p = cand.bit_length() - 1
        if 2 * p != room or len(left[p]) >= 2:
            return p
        cand ^= 1 << p
    return 0


def _best_fit(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, int]:
    """Best-fit decreasing: each document, longest first, into the open row with the least room that
    still holds it. Rows are kept by room left: a bitset of the room values some row has, and per room
    value a stack of rows, so the tightest row is one shift and one lowest-set-bit away."""
    n = len(lengths)
    row_of = np.empty(n, dtype=np.int64)
    if n == 0:
        return row_of, 0
    cap = int(capacity)
    order = np.argsort(-lengths, kind="stable")
    smallest = int(lengths[order[-1]])
    has_room = 0
    by_room: dict[int, list[int]] = {}
    rows = 0
    for d, s in zip(order.tolist(), lengths[order].tolist()):
        above = has_room >> s
        if above:
            room = s + (above & -above).bit_length() - 1
            stack = by_room[room]
            r = stack.pop()
            if not stack:
                has_room ^= 1 << room
        else:
            r, room = rows, cap
            rows += 1
        row_of[d] = r
        room -= s
        if room >= smallest:  # rooms below the smallest document can never be used
            stack = by_room.setdefault(room, [])
            if not stack:
                has_room |= 1 << room
            stack.append(r)
    return row_of, rows


def _rows(row_of: np.ndarray, nrows: int, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(order, offsets) from each document's row: rows permuted by the seed (None: as numbered),
    documents inside a row by index."""
    if seed is None:
        rank = np.arange(nrows, dtype=np.int64)
    else:
        rank = np.empty(nrows, dtype=np.int64)
        rank[np.random.default_rng(seed).permutation(nrows)] = np.arange(nrows, dtype=np.int64)
    key = rank[row_of]
    order = np.argsort(key, kind="stable")  # stable: by document index within a row
    offsets = np.zeros(nrows + 1, dtype=np.int64)
    np.cumsum(np.bincount(key, minlength=nrows), out=offsets[1:])
    return order, offsets


def pack_arrays(lengths, capacity: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`pack` as two flat arrays: row i holds documents order[offsets[i]:offsets[i + 1]]."""
    arr = _check(lengths, capacity)
    row_of, nrows = _greedy_fill(arr, capacity, exact_pairs=True)
    if nrows > l2_lower_bound_rows(arr, capacity):  # not provably optimal: let the classics try
        for other, other_rows in (_greedy_fill(arr, capacity, exact_pairs=False), _best_fit(arr, capacity)):
            if other_rows < nrows:
                row_of, nrows = other, other_rows
    return _rows(row_of, nrows, seed)


def pack(lengths, capacity: int, seed: int = 0) -> list[np.ndarray]:
    """Rows of document indices (int64 arrays): each document in exactly one row, each row's lengths
    summing to <= capacity. Deterministic for a seed; the seed only permutes the rows.

    Raises ValueError, naming the document, when a length is < 1 or > capacity: the caller splits,
    truncates or rejects such documents first.
    """
    order, offsets = pack_arrays(lengths, capacity, seed)
    return np.split(order, offsets[1:-1]) if len(offsets) > 1 else []


def first_fit_decreasing(lengths, capacity: int) -> list[np.ndarray]:
    """The textbook reference: documents longest first (ties: lower index first), each into the first
    row with room for it. Rows in the order opened, documents in the order placed. O(documents x rows)."""
    arr = _check(lengths, capacity)
    room = np.empty(len(arr), dtype=np.int64)
    rows: list[list[int]] = []
    for d in np.argsort(-arr, kind="stable").tolist():
        s = int(arr[d])
        fits = np.flatnonzero(room[: len(rows)] >= s)
        if fits.size:
            r = int(fits[0])
        else:
            r = len(rows)
            rows.append([])
            room[r] = capacity
        rows[r].append(d)
        room[r] -= s
    return [np.asarray(r, dtype=np.int64) for r in rows]


def best_fit_decreasing(lengths, capacity: int) -> list[np.ndarray]:
    """Best-fit decreasing over the whole dataset: rows in the order opened, documents by index."""
    arr = _check(lengths, capacity)
    order, offsets = _rows(*_best_fit(arr, capacity), seed=None)
    return np.split(order, offsets[1:-1]) if len(offsets) > 1 else []


def lower_bound_rows(lengths, capacity: int) -> int:
    """ceil(tokens / capacity): no packing has fewer rows."""
    return -(-int(np.asarray(lengths, dtype=np.int64).sum()) // int(capacity))


def l2_lower_bound_rows(lengths, capacity: int) -> int:
    """Martello and Toth's L2 bound (1990), >= lower_bound_rows, and tight far more often.

    For each a in [0, capacity/2]: documents longer than capacity - a each need a row of their own;
    so do those longer than capacity/2, and the documents of length in [a, capacity/2] fit only into
    what the latter leave free, plus whole new rows. The largest such count over a is a bound.
    """
    arr = np.asarray(lengths, dtype=np.int64)
    if arr.size == 0:
        return 0
    cap = int(capacity)
    count = np.bincount(arr, minlength=cap + 1)[: cap + 1]
    cum_n = np.r_[0, np.cumsum(count)]  # cum_n[v]: documents shorter than v
    cum_t = np.r_[0, np.cumsum(count * np.arange(cap + 1, dtype=np.int64))]  # their tokens
    half = cap // 2  # lengths <= half are "small", > half "big" (for odd cap, > cap/2 is >= half + 1)
    a = np.arange(half + 1)
    n_huge = cum_n[cap + 1] - cum_n[cap - a + 1]  # lengths > cap - a
    n_big = cum_n[cap - a + 1] - cum_n[half + 1]  # half < length <= cap - a
    t_big = cum_t[cap - a + 1] - cum_t[half + 1]
    t_small = cum_t[half + 1] - cum_t[a]  # a <= length <= half
    spill = t_small - (n_big * cap - t_big)
    bound = n_huge + n_big + np.maximum(0, -(-spill // cap))
    return max(int(bound.max()), lower_bound_rows(arr, cap))


def fill_stats(lengths, bins, capacity: int) -> PackingInfo:
    """How full the rows are, against the tightest lower bound known (the larger of ceil(tokens / capacity)
    and Martello and Toth's L2): rows equal to it are an optimal packing."""
    arr = np.asarray(lengths, dtype=np.int64)
    tokens = int(arr.sum())
    rows = len(bins)
    l1, l2 = lower_bound_rows(arr, capacity), l2_lower_bound_rows(arr, capacity)
    return PackingInfo(
        documents=int(sum(len(b) for b in bins)),
        tokens=tokens,
        capacity=int(capacity),
        rows=rows,
        fill=tokens / (rows * capacity) if rows else 1.0,
        lower_bound_rows=max(l1, l2),
        l1_lower_bound_rows=l1,
        l2_lower_bound_rows=l2,
        max_row_tokens=max((int(arr[b].sum()) for b in bins), default=0),
    )
