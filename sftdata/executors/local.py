"""Running batches: in this process, or in a pool of worker processes with a bounded window.

With one worker, this process does everything, and its Python work (rendering, masking) overlaps the
encoding of the batches before, which runs in a thread with the GIL released. With N workers, a pool of
N - 1 processes takes batches and this process takes one whenever the pool has enough queued; each
runs its batches one after another on one core, since a second thread would only contend for the GIL and
the cores with the other workers. Once the input is read, this process takes back the batches the pool
has not started, so no core idles at the end. The default is a worker per core.

Results come back in input order whatever the number of workers, so the same inputs give the same
shards. A bounded number of batches is in flight, so memory does not grow with the dataset.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import NamedTuple

from ..config import BuildConfig, InputFormat
from ..manifest import ShardInfo
from ..records import RawRecord
from ..sources import FilePlan, Unit, plan_file, read_unit
from ..tokenizer import ModelTokenizer
from ..units import ShardTask, UnitCounts, UnitJob, UnitOutcome, UnitSink, WriteJob, write_shard
from ..worker import BatchResult, Worker

ENCODE_QUEUE = 4  # rendered batches waiting for the encoder, at most
QUEUED_PER_PROCESS = 4  # batches queued for each pool process, so that none waits for this one
# a pool process costs CPU before its first batch: a forked one a few batches' work (copying the page
# tables, then the pages it writes), a spawned one about a dozen (imports, the tokenizer, tiktoken's
# tables); smaller inputs are done here
MIN_BATCHES_FOR_POOL = {"fork": 8, "spawn": 32}
GC_THRESHOLD = 10_000  # allocations between young-generation collections (Python's default: 700)

_worker: Worker | None = None


def _collect_less() -> tuple[int, ...]:
    """A build allocates millions of small containers that die young (token lists, spans, dicts for the
    template): the cyclic collector, run every 700 of them by default, spent about 4 % of the per-record
    instructions re-walking them. Returns the thresholds it replaced."""
    previous = gc.get_threshold()
    gc.freeze()  # what exists before the build (modules, the tokenizer) is never walked again
    gc.set_threshold(GC_THRESHOLD, *previous[1:])
    return previous


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """`_collect_less` for the build, then put back: a library call leaves the interpreter as it found it."""
    previous = _collect_less()
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when the process that made it dies


def _die_with(parent: int) -> None:
    """Exit when `parent` dies, however it dies (kill -9, the OOM killer): a pool process would otherwise
    wait forever on its pipe, holding its memory. Linux delivers SIGKILL on the parent's death; elsewhere
    a thread polls for it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # died before the signal was asked for
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def prepare_worker_process() -> None:
    """For a process that is the build's for its whole life (a pool process, a Ray actor)."""
    # a core per worker: the tokenizer's own thread pool would oversubscribe them
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _collect_less()


def _init_worker(config: BuildConfig, tokenizer: ModelTokenizer, parent: int) -> None:
    _die_with(parent)
    # a forked process starts with this one's streams, which a progress display may have wrapped (rich
    # redraws its bar around every write): a worker writes to the process's own streams
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    # Ctrl-C is the main process's to handle, once; it reaches this process blocked (`_submit`) until here
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    prepare_worker_process()
    global _worker
    _worker = Worker(config, tokenizer)


def _process(batch: list[RawRecord]) -> BatchResult:
    return _worker.process(batch).for_transport()


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores)


def overlapped(worker: Worker, batches: Iterable[list[RawRecord]]) -> Iterator[BatchResult]:
    """Batches are rendered, and masked once encoded, while the batches between encode in a thread.

    Up to ENCODE_QUEUE rendered batches wait for the encoder, so neither side idles when one batch is
    slower to render or to encode than the next; a batch is masked as soon as it is encoded."""
    with ThreadPoolExecutor(1) as encoder:
        pending: deque = deque()
        for batch in batches:
            pending.append(encoder.submit(worker.encode, worker.prepare(batch)))
            while pending and (len(pending) > ENCODE_QUEUE or pending[0].done()):
                yield worker.finish(pending.popleft().result())
        while pending:
            yield worker.finish(pending.popleft().result())


def run_batches(batches: Iterable[list[RawRecord]], config: BuildConfig, local: Worker,
                workers: int) -> Iterator[BatchResult]:
    """Results of every batch, in input order. This process is one of the `workers`: it takes a batch
    itself whenever the pool has enough queued, so the pool needs one process fewer (each costs its
    start-up: imports, the tokenizer, tiktoken's tables) and the batches it does are never pickled.
    A batch at a time keeps the pool and this process evenly loaded to the last batch."""
    with _fewer_collections():
        yield from _run(iter(batches), config, local, workers)


def _start_method() -> str:
    """`fork` where it is safe, `spawn` elsewhere. A forked process starts with this one's imports,
    tokenizer, tiktoken tables and compiled template (about 0.65 s of CPU that a spawned one spends
    building them again). Only on Linux (macOS system libraries do not survive fork), and only from a
    process running no other Python thread, which could hold a lock the child would inherit held; the
    native pools of numpy and the tokenizers library handle fork themselves."""
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "spawn"


def _run(batches: Iterator[list[RawRecord]], config: BuildConfig, local: Worker, workers: int
         ) -> Iterator[BatchResult]:
    pool_size = workers - 1
    window = QUEUED_PER_PROCESS * pool_size
    start_method = _start_method()
    enough = max(window + 1, MIN_BATCHES_FOR_POOL[start_method])
    head = list(itertools.islice(batches, enough))
    if pool_size < 1 or len(head) < enough:
        yield from overlapped(local, itertools.chain(head, batches))
        return
    if start_method == "fork":
        # a forked process starts with what this one has built: tiktoken's encoder (a tenth of a second of
        # CPU for Llama 3) is built here once, not here and again in every pool process
        local.tokenizer.ranked_encoder
    pool = ProcessPoolExecutor(pool_size, mp_context=multiprocessing.get_context(start_method),
                               initializer=_init_worker, initargs=(config, local.tokenizer, os.getpid()))
    try:
        pending: deque[_Queued | BatchResult] = deque()  # in input order: the pool's, and this process's
        for batch in itertools.chain(head, batches):
            queued = sum(isinstance(p, _Queued) and not p.future.done() for p in pending)
            pending.append(_Queued(_submit(pool, batch), batch) if queued < window else local.process(batch))
            # done results leave at once; the wait for a slow one is bounded, and so is what waits behind it
            while pending and (_ready(pending[0]) or len(pending) > 4 * workers):
                yield _result(pending.popleft())
        while pending:
            if not _ready(pending[0]):
                _take_back_one(pending, local)
            yield _result(pending.popleft())
    finally:
        # the pool's processes exit on their own: the build's last, serial steps need not wait for them
        pool.shutdown(wait=False, cancel_futures=True)


def _submit(pool: ProcessPoolExecutor, batch: list[RawRecord]) -> Future:
    """`pool.submit`, with Ctrl-C held back while it may start a process: a process started then would take
    it before it can ignore it, and this one could lose it inside fork's handlers. Held back, it arrives
    here when the submit returns."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.submit(_process, batch)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class _Queued(NamedTuple):
    future: Future
    batch: list[RawRecord]


def _ready(item: _Queued | BatchResult) -> bool:
    return not isinstance(item, _Queued) or item.future.done()


def _take_back_one(pending: deque, local: Worker) -> None:
    """The input is read and the oldest result is not ready: rather than wait, this process does the
    newest batch the pool has not started (the pool works from the oldest)."""
    for k in range(len(pending) - 1, -1, -1):
        item = pending[k]
        if isinstance(item, _Queued) and item.future.cancel():
            pending[k] = local.process(item.batch)
            return


def _result(item: _Queued | BatchResult) -> BatchResult:
    return item.future.result() if isinstance(item, _Queued) else item


class LocalExecutor:
    """A build's phases (units.py) on this machine: units planned and shards written in this process;
    units mapped batch by batch over this process and its pool (`run_batches`), each unit's results
    written to its spill here as they come back, in input order."""

    def __init__(self, config: BuildConfig, local: Worker, workers: int):
        self.config, self.local, self.workers = config, local, workers

    def plan(self, paths: list[str], fmt: InputFormat, unit_records: int) -> list[FilePlan]:
        return [plan_file(p, fmt, unit_records) for p in paths]

    def map(self, units: list[Unit], job: UnitJob, progressed: Callable[[UnitCounts], None]
            ) -> Iterator[UnitOutcome]:
        """Each unit's outcome once its last batch is back; `progressed` after every batch."""
        batches_of: deque[tuple[Unit, bool, float]] = deque()  # per batch read: its unit, whether last, read time
        sink = None
        for result in run_batches(_unit_batches(units, self.config.batch_size, batches_of), self.config,
                                  self.local, self.workers):
            unit, last, read_seconds = batches_of.popleft()
            sink = sink or UnitSink(job, unit)
            progressed(sink.add(result, read_seconds))
            if last:
                yield sink.close()
                sink = None

    def write(self, tasks: list[ShardTask], job: WriteJob) -> list[ShardInfo]:
        return [write_shard(task, job) for task in tasks]

    def close(self) -> None:
        """Nothing held: the pool ends with the map phase."""


def _unit_batches(units: list[Unit], size: int, batches_of: deque) -> Iterator[list[RawRecord]]:
    """The units' records in batches that never span two units; each batch's unit noted in `batches_of`."""
    for unit in units:
        records = read_unit(unit, parsed=False)  # parsed by whichever process takes the batch
        started = time.perf_counter()
        batch = list(itertools.islice(records, size))
        while batch:
            after = list(itertools.islice(records, size))
            batches_of.append((unit, not after, time.perf_counter() - started))
            yield batch
            batch, started = after, time.perf_counter()
