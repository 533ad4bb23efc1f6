"""`sftdata build`: inputs -> verified documents -> Arrow shards, rejects.jsonl and manifest.json.

The orchestration only: reading is sources.py, the per-batch work pipeline.py, running it executor.py,
storage shards.py. The manifest is written last, so a directory with one is a finished build.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import __version__
from .config import BuildConfig
from .executor import default_workers, run_batches
from .pipeline import BatchResult, Worker
from .shards import FORMAT_VERSION, MANIFEST, REJECTS, Row, ShardWriter, write_json_atomic
from .sources import RawRecord, read_inputs


class BuildError(Exception):
    """The build cannot start or finish: the message says what to fix."""


@dataclass
class Progress:
    records: int = 0
    documents: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    rejected: int = 0
    truncated: int = 0
    started: float = field(default_factory=time.perf_counter)


def _chunks(records: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    it = iter(records)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    old = [p for p in out_dir.iterdir() if p.name in (MANIFEST, REJECTS) or p.suffix == ".arrow"
           or p.name.endswith(".tmp")]
    if (out_dir / MANIFEST).exists() and not overwrite:
        raise BuildError(f"{out_dir} already holds a build (manifest.json); pass --overwrite to replace it")
    (out_dir / MANIFEST).unlink(missing_ok=True)  # first, so a killed rebuild never looks complete
    for path in old:
        path.unlink(missing_ok=True)


class _InputTally:
    """Records per input file, counted as they stream past."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.first_ids = [None] * len(paths)
        self.records = [0] * len(paths)
        self.formats = [None] * len(paths)

    def watch(self, records: Iterable[RawRecord]) -> Iterator[RawRecord]:
        for r in records:
            if self.first_ids[r.input_index] is None:
                self.first_ids[r.input_index] = r.source_id
            self.records[r.input_index] += 1
            self.formats[r.input_index] = r.format.value
            yield r

    def input_of(self, source_id: int) -> int:
        starts = [s if s is not None else -1 for s in self.first_ids]
        return bisect.bisect_right(starts, source_id) - 1


def build(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: BuildConfig,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict:
    out_dir = Path(out_dir)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise BuildError("no inputs given")
    local = Worker(config)  # loads tokenizer and template: a problem with either stops the build here
    _prepare_out_dir(out_dir, overwrite)
    workers = config.workers or default_workers()

    tally = _InputTally(paths)
    progress = Progress()
    reasons: Counter = Counter()
    counters: Counter = Counter()
    seconds: Counter = Counter()
    per_input = [Counter() for _ in paths]
    writer = ShardWriter(out_dir, config.shard_tokens)
    rejects_tmp = out_dir / (REJECTS + ".tmp")
    with open(rejects_tmp, "w", encoding="utf-8") as rejects_file:
        batches = _chunks(tally.watch(read_inputs(paths, config.format)), config.batch_size)
        for result in run_batches(batches, config, local, workers):
            _record(result, writer, rejects_file, progress, reasons, counters, seconds, per_input, tally)
            if on_progress:
                on_progress(progress)
    shards = writer.close()
    os.replace(rejects_tmp, out_dir / REJECTS)

    manifest = {
        "format_version": FORMAT_VERSION,
        "sftdata_version": __version__,
        "tokenizer": local.tokenizer.summary(),
        "template": {
            "source": local.tokenizer.template_source,
            "fingerprint": local.tokenizer.template_fingerprint,
            "header": local.facts.header,
            "end_of_turn": local.facts.end_of_turn,
        },
        "config": config.to_json(),
        "inputs": [
            {"path": str(p), "format": tally.formats[i], "records": tally.records[i],
             "documents": per_input[i]["documents"], "rejected": per_input[i]["rejected"]}
            for i, p in enumerate(paths)
        ],
        "counts": {
            "records": progress.records,
            "documents": progress.documents,
            "rejected": progress.rejected,
            "rejected_by_reason": dict(sorted(reasons.items())),
            "tokens": progress.tokens,
            "trained_tokens": progress.trained_tokens,
            "truncated": progress.truncated,
            "rows": sum(s.rows for s in shards),
            **dict(sorted(counters.items())),
        },
        "shards": [s.to_json() for s in shards],
    }
    if progress.records != progress.documents + progress.rejected:
        raise BuildError(f"internal error: {progress.records} records != {progress.documents} documents "
                         f"+ {progress.rejected} rejected")
    write_json_atomic(out_dir / MANIFEST, manifest)
    manifest["_seconds"] = dict(seconds)  # for the caller's summary; not part of the reproducible manifest
    return manifest


def _record(result: BatchResult, writer: ShardWriter, rejects_file, progress: Progress, reasons: Counter,
            counters: Counter, seconds: Counter, per_input: list[Counter], tally: _InputTally) -> None:
    for doc in result.documents:
        writer.write(Row(doc.input_ids, doc.loss_mask, [doc.num_tokens], [doc.source_id]))
        progress.tokens += doc.num_tokens
        progress.trained_tokens += doc.num_trained
        per_input[tally.input_of(doc.source_id)]["documents"] += 1
    for reject in result.rejects:
        rejects_file.write(json.dumps(reject.to_json(), ensure_ascii=False) + "\n")
        reasons[reject.reason.value] += 1
        per_input[tally.input_of(reject.source_id)]["rejected"] += 1
    progress.records += result.records
    progress.documents += len(result.documents)
    progress.rejected += len(result.rejects)
    progress.truncated += result.counters.get("truncated", 0)
    counters.update({k: v for k, v in result.counters.items() if k != "truncated"})
    seconds.update(result.seconds)
