"""Running batches: in this process, or in a pool of worker processes with a bounded window.

Results come back in input order whatever the number of workers, so the same inputs give the same
shards. At most `2 * workers` batches are in flight, so memory does not grow with the dataset.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Iterator

from .config import BuildConfig
from .pipeline import BatchResult, Worker
from .sources import RawRecord
from .tokenizer import ModelTokenizer

_worker: Worker | None = None


def _init_worker(config: BuildConfig, tokenizer: ModelTokenizer) -> None:
    # each worker is one core's worth of work: the tokenizer's own thread pool would oversubscribe
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _worker
    _worker = Worker(config, tokenizer)


def _process(batch: list[RawRecord]) -> BatchResult:
    return _worker.process(batch)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_batches(batches: Iterable[list[RawRecord]], config: BuildConfig, local: Worker,
                workers: int) -> Iterator[BatchResult]:
    batches = iter(batches)
    window = 2 * workers
    head = list(itertools.islice(batches, window))
    if workers <= 1 or len(head) < window:  # small inputs: starting processes would cost more than it saves
        for batch in itertools.chain(head, batches):
            yield local.process(batch)
        return
    context = multiprocessing.get_context("spawn")  # fork after the tokenizer's threads ran can deadlock
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(config, local.tokenizer)) as pool:
        pending = deque(pool.submit(_process, b) for b in head)
        for batch in batches:
            yield pending.popleft().result()
            pending.append(pool.submit(_process, batch))
        while pending:
            yield pending.popleft().result()
