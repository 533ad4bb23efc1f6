"""Which records are held out for evaluation: decided per record from its source id and the seed alone.

A record's score is a hash of (seed, source id) in [0, 1). `--eval-fraction F` holds out the records
scoring below F; `--eval-records N` the N records with the lowest scores. Neither depends on workers,
batch sizes or the order results arrive in, and every document of a record (the pieces of a record cut
by split-turns included) goes where its record goes: a record is never on both sides.
"""

from __future__ import annotations

import hashlib

import numpy as np


def eval_score(source_id: int, seed: int) -> float:
    """A uniform, reproducible number in [0, 1) for a record: the same in every build with this seed."""
    digest = hashlib.blake2b(f"{seed}:{source_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def held_out(source_ids: np.ndarray, fraction: float, records: int, seed: int) -> np.ndarray:
    """Per document (by its record's source id), whether it is held out: with `fraction`, the records
    scoring below it; with `records`, that many records scoring lowest (on equal scores, the higher
    source id). Every document of a record goes where its record goes."""
    ids = np.unique(source_ids)
    scores = np.fromiter((eval_score(int(i), seed) for i in ids), dtype=np.float64, count=len(ids))
    chosen = ids[np.lexsort((-ids, scores))[:records]] if records else ids[scores < fraction]
    return np.isin(source_ids, chosen)
