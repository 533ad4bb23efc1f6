"""Which records are held out for evaluation: decided per record from its source id and the seed alone.

A record's score is a hash of (seed, source id) in [0, 1). `--eval-fraction F` holds out the records
scoring below F; `--eval-records N` the N records with the lowest scores. Neither depends on workers,
batch sizes or the order results arrive in, and every document of a record (the pieces of a record cut
by split-turns included) goes where its record goes: a record is never on both sides.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable
from dataclasses import dataclass

from .shards import Row


def eval_score(source_id: int, seed: int) -> float:
    """A uniform, reproducible number in [0, 1) for a record: the same in every build with this seed."""
    digest = hashlib.blake2b(f"{seed}:{source_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class SplitCounts:
    records: int = 0
    documents: int = 0
    tokens: int = 0
    trained_tokens: int = 0

    def add(self, row: Row) -> None:
        self.documents += 1
        self.tokens += len(row.input_ids)
        self.trained_tokens += int(row.loss_mask.sum())


class EvalSplit:
    """Hands each document to `train` or `held_out` (callables taking a Row), record by record.

    Documents arrive one record at a time (a record's documents are consecutive). With a count of
    records to hold out, the records scoring lowest so far wait in memory (a max-heap on score); one
    pushed out by a lower score goes to `train`, and `finish()` writes the N left, in source id order.
    """

    def __init__(self, fraction: float, records: int, seed: int, train: Callable[[Row], None],
                 held_out: Callable[[Row], None]):
        self.fraction, self.records, self.seed = fraction, records, seed
        self.train, self.held_out = train, held_out
        self.counts = SplitCounts()  # of what is held out
        self._heap: list[tuple[float, int]] = []  # (-score, source id) of the records waiting
        self._waiting: dict[int, list[Row]] = {}
        self._current: tuple[int, Callable[[Row], None]] | None = None  # a record's id and its destination

    def write(self, document: Row) -> None:
        source_id = int(document.source_ids[0])
        if self._current is None or self._current[0] != source_id:
            self._current = (source_id, self._destination(source_id))
        self._current[1](document)

    def _destination(self, source_id: int) -> Callable[[Row], None]:
        if self.records:
            return self._wait_or_train(source_id)
        if eval_score(source_id, self.seed) < self.fraction:
            self.counts.records += 1
            return self._hold
        return self.train

    def _hold(self, document: Row) -> None:
        self.counts.add(document)
        self.held_out(document)

    def _wait_or_train(self, source_id: int) -> Callable[[Row], None]:
        entry = (-eval_score(source_id, self.seed), source_id)
        if len(self._heap) == self.records:
            if entry <= self._heap[0]:  # scores no lower than the N waiting: trains
                return self.train
            _, pushed_out = heapq.heapreplace(self._heap, entry)
            for document in self._waiting.pop(pushed_out):
                self.train(document)
        else:
            heapq.heappush(self._heap, entry)
        waiting = self._waiting[source_id] = []
        return waiting.append

    def finish(self) -> SplitCounts:
        """Write the held-out records still waiting (count mode); returns what was held out."""
        for source_id in sorted(self._waiting):
            self.counts.records += 1
            for document in self._waiting[source_id]:
                self._hold(document)
        self._waiting.clear()
        return self.counts
