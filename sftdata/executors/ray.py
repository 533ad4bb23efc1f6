"""The build's phases (units.py) on a Ray cluster: `--executor ray [--ray-address ADDRESS]`.

One actor per worker (a CPU each) does every phase's work, so each process imports sftdata and loads
what a worker needs (tokenizer, compiled template, probed facts) once: the tokenizer is shipped from the
driver through the object store, so nodes need no copy of it. The actors start while the driver plans.

- plan: one call per input file, spread over the actors;
- map: each actor takes a unit at a time, renders and encodes its batches as the local executor's
  single worker does (`overlapped`), and writes the unit's spill, rejects and record into
  OUT/.units.tmp itself. Only the unit's record and its documents' lengths come back;
- write: one call per output shard, reading the spills of the units its rows come from.

Units are numbered by their position in the input, shards by their position in the plan, and every
file is written whole under its final name only once complete: an actor that dies (a killed worker
process, a lost node) is restarted and its units run again, writing the same bytes, and the order in
which units finish changes nothing. The driver holds only units' records and lengths.

Ray owns the actors' processes: they end with the build (`close` kills them, and Ray ends a driver's
actors when the driver dies), so they need neither the parent-death signal nor the Ctrl-C handling of the
local executor's pool processes; Ctrl-C reaches the driver, which closes the executor on its way out.

Every node needs sftdata (`pip install sftdata[ray]`) and access to the inputs and OUT (a shared
filesystem or object storage, with credentials in the nodes' environment).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator

import ray

from ..config import BuildConfig, InputFormat
from ..manifest import ShardInfo
from ..sources import FilePlan, Unit, plan_file, read_unit
from ..tokenizer import ModelTokenizer
from ..units import ShardTask, UnitCounts, UnitJob, UnitOutcome, UnitSink, WriteJob, write_shard
from ..worker import Worker
from .local import overlapped, prepare_worker_process

UNITS_PER_ACTOR = 2  # units queued on each actor, so none waits for the driver between two


class UnitMapper:
    """A Ray actor turning units into spills: the worker of one CPU."""

    def __init__(self, config: BuildConfig, tokenizer: ModelTokenizer):
        prepare_worker_process()
        self.worker = Worker(config, tokenizer)

    def plan(self, path: str, fmt: InputFormat, unit_records: int) -> FilePlan:
        return plan_file(path, fmt, unit_records)

    def write(self, task: ShardTask, job: WriteJob) -> ShardInfo:
        return write_shard(task, job)

    def map(self, unit: Unit, job: UnitJob) -> UnitOutcome:
        sink = UnitSink(job, unit)
        records = read_unit(unit)
        batches = iter(lambda: list(itertools.islice(records, self.worker.config.batch_size)), [])
        for result in overlapped(self.worker, batches):
            sink.add(result)
        return sink.close()


class RayExecutor:
    def __init__(self, config: BuildConfig, local: Worker):
        self.config = config
        # with no address Ray starts a cluster of this machine for the build (no dashboard: nobody watches it)
        own = {"include_dashboard": False} if config.ray_address is None else {}
        ray.init(address=config.ray_address, logging_level=logging.WARNING, log_to_driver=False, **own)
        workers = config.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # an actor whose process dies is restarted, and the calls it had not answered run again
        mapper = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(UnitMapper)
        # held for the whole build: an actor restarted after its process died is made from it again
        self.tokenizer = ray.put(local.tokenizer)
        self.actors = [mapper.remote(config, self.tokenizer) for _ in range(workers)]

    def _spread(self, method: str, items: list, *shared) -> list:
        """`method` of the actors over `items`, dealt round-robin; the results in the items' order."""
        calls = [getattr(self.actors[i % len(self.actors)], method).remote(item, *shared)
                 for i, item in enumerate(items)]
        return ray.get(calls)

    def plan(self, paths: list[str], fmt: InputFormat, unit_records: int) -> list[FilePlan]:
        return self._spread("plan", paths, fmt, unit_records)

    def map(self, units: list[Unit], job: UnitJob, progressed: Callable[[UnitCounts], None]
            ) -> Iterator[UnitOutcome]:
        """Outcomes as units finish, whatever their order; each actor kept UNITS_PER_ACTOR units ahead."""
        todo = iter(units)
        running: dict = {}
        for actor in self.actors * UNITS_PER_ACTOR:
            self._give(actor, todo, job, running)
        while running:
            (done,), _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(done)
            outcome = ray.get(done)
            progressed(outcome.record.counts)
            yield outcome
            self._give(actor, todo, job, running)

    @staticmethod
    def _give(actor, todo: Iterator[Unit], job: UnitJob, running: dict) -> None:
        unit = next(todo, None)
        if unit is not None:
            running[actor.map.remote(unit, job)] = actor

    def write(self, tasks: list[ShardTask], job: WriteJob) -> list[ShardInfo]:
        return self._spread("write", tasks, ray.put(job))

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        ray.shutdown()
