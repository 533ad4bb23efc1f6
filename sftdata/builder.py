"""`sftdata build`: inputs -> verified documents -> Arrow shards, rejects.jsonl and manifest.json.

The orchestration only: reading is sources.py, the per-batch work worker.py, running it executors/,
storage shards.py. The manifest is written last, so a directory with one is a finished build.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .config import BuildConfig
from .executors.local import default_workers, run_batches
from .manifest import (
    EVAL_DIR,
    MANIFEST,
    REJECTS,
    Counts,
    InputInfo,
    Manifest,
    PackingInfo,
    ShardInfo,
    SplitInfo,
    TemplateInfo,
)
from .packing import fill_stats, pack_arrays
from .records import RawRecord
from .shards import MappedShard, Row, ShardWriter, shard_columns
from .sources import read_inputs
from .split import EvalSplit
from .timing import StageSeconds
from .worker import BatchResult, Worker

ROWS_PER_RELEASE = 8  # packed rows between releases of the spill's pages: each document read maps 64 KB around it


class BuildError(Exception):
    """The build cannot start or finish: the message says what to fix."""


@dataclass
class Progress:
    records: int = 0
    records_written: int = 0
    documents: int = 0  # more than records_written when split-turns splits long records
    tokens: int = 0
    trained_tokens: int = 0
    rejected: int = 0
    started: float = field(default_factory=time.perf_counter)


def _chunks(records: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    it = iter(records)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    old = [p for p in out_dir.iterdir() if p.name in (MANIFEST, REJECTS, EVAL_DIR) or p.suffix == ".arrow"
           or p.name.endswith(".tmp")]
    if (out_dir / MANIFEST).exists() and not overwrite:
        raise BuildError(f"{out_dir} already holds a build (manifest.json); pass --overwrite to replace it")
    (out_dir / MANIFEST).unlink(missing_ok=True)  # first, so a killed rebuild never looks complete
    for path in old:  # shards, rejects, and what a killed build left (temp files, the packing spill)
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


class _Tally:
    """Everything a build counts: progress, reject reasons, the workers' counts, stage seconds, and per
    input file the records read (as they stream past), records and documents written, records rejected."""

    def __init__(self, paths: list[Path]):
        self.progress = Progress()
        self.reasons: Counter = Counter()
        self.span_methods: Counter = Counter()
        self.unrendered_fields: Counter = Counter()
        self.truncated = self.split_pieces = self.comparator_template_not_found = 0
        self.seconds = StageSeconds()
        self.records = [0] * len(paths)
        self.formats: list[str | None] = [None] * len(paths)
        self.per_input = [Counter() for _ in paths]
        self._starts: list[int] = []  # first source id of each input read so far (empty ones excepted)
        self._started_inputs: list[int] = []

    def watch(self, records: Iterable[RawRecord]) -> Iterator[RawRecord]:
        records = iter(records)
        while True:
            with self.seconds.timing("read"):
                r = next(records, None)
            if r is None:
                return
            if not self._started_inputs or self._started_inputs[-1] != r.input_index:
                self._starts.append(r.source_id)
                self._started_inputs.append(r.input_index)
            self.records[r.input_index] += 1
            self.formats[r.input_index] = r.format.value
            yield r

    def input_of(self, source_id: int) -> int:
        # inputs are read in order: a record belongs to the last input started at or before its id
        return self._started_inputs[bisect.bisect_right(self._starts, source_id) - 1]

    def add(self, result: BatchResult, documents: ShardWriter | EvalSplit, rejects_file) -> None:
        """Write one batch's documents and rejects, and count them."""
        progress, written = self.progress, set()
        for doc in result.documents:
            documents.write(Row(doc.input_ids, doc.loss_mask, [doc.num_tokens], [doc.source_id]))
            progress.tokens += doc.num_tokens
            progress.trained_tokens += doc.num_trained
            counts = self.per_input[self.input_of(doc.source_id)]
            counts["documents"] += 1
            if doc.source_id not in written:
                written.add(doc.source_id)
                counts["records_written"] += 1
        for reject in result.rejects:
            rejects_file.write(json.dumps(reject.to_json(), ensure_ascii=False) + "\n")
            self.reasons[reject.reason.value] += 1
            self.per_input[self.input_of(reject.source_id)]["rejected"] += 1
        progress.records += result.records
        progress.records_written += len(written)
        progress.documents += len(result.documents)
        progress.rejected += len(result.rejects)
        self.span_methods.update(result.span_methods)
        self.unrendered_fields.update(result.unrendered_fields)
        self.truncated += result.truncated
        self.split_pieces += result.split_pieces
        self.comparator_template_not_found += result.comparator_template_not_found
        self.seconds.update(result.seconds)

    def inputs(self, paths: list[Path]) -> list[InputInfo]:
        return [InputInfo(path=str(p), format=self.formats[i], records=self.records[i],
                          records_written=self.per_input[i]["records_written"],
                          documents=self.per_input[i]["documents"], rejected=self.per_input[i]["rejected"])
                for i, p in enumerate(paths)]

    def counts(self, rows: int) -> Counts:
        p = self.progress
        if p.records != p.records_written + p.rejected:
            raise BuildError(f"internal error: {p.records} records != {p.records_written} written "
                             f"+ {p.rejected} rejected")
        return Counts(records=p.records, records_written=p.records_written, documents=p.documents,
                      rejected=p.rejected, rejected_by_reason=dict(sorted(self.reasons.items())),
                      tokens=p.tokens, trained_tokens=p.trained_tokens, truncated=self.truncated,
                      split_pieces=self.split_pieces, rows=rows, span_methods=dict(sorted(self.span_methods.items())),
                      unrendered_fields=dict(sorted(self.unrendered_fields.items())),
                      comparator_template_not_found=self.comparator_template_not_found)


def build(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: BuildConfig,
    overwrite: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> Manifest:
    out_dir = Path(out_dir)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise BuildError("no inputs given")
    local = Worker(config)  # loads tokenizer and template: a problem with either stops the build here
    _prepare_out_dir(out_dir, overwrite)
    workers = config.workers or default_workers()

    tally = _Tally(paths)
    train = _SplitWriter(out_dir, ".spill.tmp", config)
    held_out = _SplitWriter(out_dir / EVAL_DIR, ".spill.tmp", config) if config.holds_out else None
    split = EvalSplit(config.eval_fraction, config.eval_records, config.seed, train.documents.write,
                      held_out.documents.write) if held_out else None
    rejects_tmp = out_dir / (REJECTS + ".tmp")
    with open(rejects_tmp, "w", encoding="utf-8") as rejects_file:
        batches = _chunks(tally.watch(read_inputs(paths, config.format)), config.batch_size)
        for result in run_batches(batches, config, local, workers):
            with tally.seconds.timing("write"):
                tally.add(result, split or train.documents, rejects_file)
            if on_progress:
                on_progress(tally.progress)
    with tally.seconds.timing("pack_write" if config.pack else "write"):
        held = split.finish() if split else None
        shards, packing = train.close()
        eval_split = None
        if held_out:
            eval_shards, eval_packing = held_out.close()
            eval_split = SplitInfo(records=held.records, documents=held.documents, tokens=held.tokens,
                                   trained_tokens=held.trained_tokens, rows=sum(s.rows for s in eval_shards),
                                   shards=eval_shards, packing=eval_packing)
    os.replace(rejects_tmp, out_dir / REJECTS)

    template = local.template
    manifest = Manifest(
        sftdata_version=__version__,
        tokenizer=local.tokenizer.summary(),
        template=TemplateInfo(
            source=local.tokenizer.template_source, fingerprint=local.tokenizer.template_fingerprint,
            header=local.facts.header, end_of_turn=local.facts.end_of_turn,
            # once per conversation where it provably passes message text through, else twice (spans.py)
            renders=2 if template.passthrough_refusal else 1, why_two_renders=template.passthrough_refusal),
        config=config,
        inputs=tally.inputs(paths),
        counts=tally.counts(rows=sum(s.rows for s in shards) + (eval_split.rows if eval_split else 0)),
        packing=packing,
        shards=shards,
        eval=eval_split,
        seconds=dict(tally.seconds),
    )
    manifest.write(out_dir)
    return manifest


class _SplitWriter:
    """Where one split's documents go: straight into its shards, or (packing needs every length first)
    into an unpacked spill that close() packs into the shards."""

    def __init__(self, out_dir: Path, spill_name: str, config: BuildConfig):
        out_dir.mkdir(exist_ok=True)
        self.config = config
        self.writer = ShardWriter(out_dir, config.shard_tokens)
        self.spill_dir = out_dir / spill_name
        if config.pack:
            self.spill_dir.mkdir(exist_ok=True)
        self.documents = ShardWriter(self.spill_dir, 1 << 62) if config.pack else self.writer

    def close(self) -> tuple[list[ShardInfo], PackingInfo | None]:
        packing = None
        if self.config.pack:
            packing = write_packed(self.spill_dir, self.documents.close(), self.writer, self.config.max_length,
                                   self.config.seed)
            shutil.rmtree(self.spill_dir)
        return self.writer.close(), packing


def write_packed(spill_dir: Path, spilled: list[ShardInfo], writer: ShardWriter, capacity: int, seed: int
                 ) -> PackingInfo:
    """Second pass of a packed build: lengths -> rows -> documents copied from the memory-mapped spill."""
    ids, masks, lens, sources = [], [], [], []
    shards = [MappedShard(spill_dir / info.name) for info in spilled]
    for shard in shards:  # per record batch: flat zero-copy views of the memory-mapped spill
        for columns in shard_columns(shard.table):
            (offsets, _, _, _), (id_values, mask_values, _, source_values) = columns.offsets, columns.values
            ids.append((id_values, offsets))
            masks.append(mask_values)
            lens.append(np.diff(offsets))
            sources.append(source_values)
    lengths = np.concatenate(lens) if lens else np.zeros(0, np.int64)
    source_ids = np.concatenate(sources) if sources else np.zeros(0, np.int64)
    batch_of = np.repeat(np.arange(len(lens)), [len(x) for x in lens])
    local = np.concatenate([np.arange(len(x)) for x in lens]) if lens else np.zeros(0, np.int64)
    order, row_offsets = pack_arrays(lengths, capacity, seed)
    for r in range(len(row_offsets) - 1):
        if r % ROWS_PER_RELEASE == 0:  # rows gather documents from all over the spill: keep memory flat
            for shard in shards:
                shard.release()
        docs = order[row_offsets[r] : row_offsets[r + 1]]
        pieces_ids, pieces_mask = [], []
        for d in docs:
            values, offsets = ids[batch_of[d]]
            a, b = offsets[local[d]], offsets[local[d] + 1]
            pieces_ids.append(values[a:b])
            pieces_mask.append(masks[batch_of[d]][a:b])
        writer.write(Row(np.concatenate(pieces_ids), np.concatenate(pieces_mask), lengths[docs], source_ids[docs]))
    return fill_stats(lengths, np.split(order, row_offsets[1:-1]), capacity)
