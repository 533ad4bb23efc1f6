"""A build in three phases, each a pure step any executor can run anywhere (executors/):

1. map: each unit of input (sources.Unit) becomes verified documents, written as the unit's spill
   (`OUT/.units.tmp/unit-NNNNN.arrow`, one unpacked document a row), its rejects
   (`unit-NNNNN.rejects.jsonl`) and last its record (`unit-NNNNN.json`: counts and checksums). A unit
   with a record is done: a resumed build takes it as it is once its checksums match.
2. plan: from the documents' lengths alone (a few bytes each), the rows (one document each, or packed)
   and the output shards they fall into: `plan_shards`.
3. write: each output shard from the spills, by row range: `write_shard`.

Everything is named by positions in the input (unit numbers, shard numbers), never by when a piece of
work finished, so the output is the same bytes whatever ran it, in whatever order.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import __version__
from .config import BuildConfig
from .manifest import ShardInfo
from .packing import pack_arrays
from .rejects import Reject
from .shards import MappedShard, RowColumns, ShardWriter, shard_columns, targets_per_row
from .sources import Unit
from .storage import Folder
from .timing import StageSeconds
from .worker import BatchResult

UNITS = ".units.tmp"  # the spills: gone once the build is finished, kept by a killed one for --resume
DOCUMENTS_PER_RELEASE = 256  # documents read between releases of the spills' pages: each maps 64 KB around it
NO_LIMIT = 1 << 62


def spill_name(index: int) -> str:
    return f"unit-{index:05d}.arrow"


def rejects_name(index: int) -> str:
    return f"unit-{index:05d}.rejects.jsonl"


def record_name(index: int) -> str:
    return f"unit-{index:05d}.json"


def build_key(config: BuildConfig, tokenizer_fingerprint: str, template_fingerprint: str) -> str:
    """What a unit's output depends on besides its input: settings (less those only about how the work
    runs), tokenizer, template, sftdata's version. A resumed build reuses only units of the same key."""
    settings = {k: v for k, v in config.to_json().items() if k not in BuildConfig.RUN_SETTINGS}
    text = json.dumps([settings, tokenizer_fingerprint, template_fingerprint, __version__], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class UnitCounts:
    """What a batch, or a whole unit, counted."""

    records: int = 0
    records_written: int = 0  # records with at least one document
    documents: int = 0
    rejected: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    split_pieces: int = 0
    comparator_template_not_found: int = 0
    context_documents: int = 0  # documents for turns trained in their own context (--turn-context own)
    context_tokens: int = 0
    reasons: Counter = field(default_factory=Counter)
    span_methods: Counter = field(default_factory=Counter)
    unrendered_fields: Counter = field(default_factory=Counter)
    seconds: StageSeconds = field(default_factory=StageSeconds)

    @classmethod
    def of(cls, result: BatchResult, columns: RowColumns, trained: np.ndarray) -> UnitCounts:
        """The counts of `result`, whose documents are `columns` (one a row), `trained` their target tokens."""
        return cls(records=result.records, records_written=len(set(columns.source_ids.tolist())),
                   documents=len(columns.source_ids), rejected=len(result.rejects),
                   tokens=int(columns.token_offsets[-1]), trained_tokens=int(trained.sum()), truncated=result.truncated,
                   split_pieces=result.split_pieces,
                   comparator_template_not_found=result.comparator_template_not_found,
                   context_documents=result.context_documents, context_tokens=result.context_tokens,
                   reasons=Counter(r.reason.value for r in result.rejects), span_methods=Counter(result.span_methods),
                   unrendered_fields=Counter(result.unrendered_fields), seconds=StageSeconds(result.seconds))

    def add(self, other: UnitCounts) -> None:
        for name, value in vars(other).items():
            if isinstance(value, Counter):
                getattr(self, name).update(value)
            else:
                setattr(self, name, getattr(self, name) + value)

    def to_json(self) -> dict:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> UnitCounts:
        counters = {"reasons": Counter, "span_methods": Counter, "unrendered_fields": Counter, "seconds": StageSeconds}
        return cls(**{k: counters[k](v) if k in counters else v for k, v in data.items()})


@dataclass
class UnitRecord:
    """A done unit, as `unit-NNNNN.json` holds it (written after its spill and rejects)."""

    unit: Unit
    key: str
    counts: UnitCounts
    spill_sha256: str | None  # None: no document (every record rejected)
    rejects_sha256: str

    def to_json(self) -> dict:
        return {"unit": self.unit.to_json(), "key": self.key, "counts": self.counts.to_json(),
                "spill_sha256": self.spill_sha256, "rejects_sha256": self.rejects_sha256}

    @classmethod
    def from_json(cls, data: dict) -> UnitRecord:
        return cls(Unit.from_json(data["unit"]), data["key"], UnitCounts.from_json(data["counts"]),
                   data["spill_sha256"], data["rejects_sha256"])


class UnitOutcome(NamedTuple):
    """What the driver gets back from a unit: its record and, per document in input order, its length,
    its record's source id and its trained tokens (what rows and the eval split are planned from)."""

    record: UnitRecord
    lengths: np.ndarray  # int32
    source_ids: np.ndarray  # int64
    trained: np.ndarray  # int32


class UnitJob(NamedTuple):
    """What every unit shares: where spills go, the key they are made under, and the build's token for
    temporary names (out_dir.Claim)."""

    units_dir: str
    key: str
    token: str = ""


class UnitSink:
    """Where one unit's batch results go, in input order: documents to its spill, rejects in memory
    (a unit's are few) until the unit is done."""

    def __init__(self, job: UnitJob, unit: Unit):
        self.job, self.unit = job, unit
        self.folder = Folder(job.units_dir, job.token)
        self.spill = ShardWriter(self.folder, NO_LIMIT, first_index=unit.index, prefix="unit")
        self.rejects: list[str] = []
        self.lengths: list[np.ndarray] = []  # per batch
        self.source_ids: list[np.ndarray] = []
        self.trained: list[np.ndarray] = []
        self.counts = UnitCounts()

    def add(self, result: BatchResult, read_seconds: float = 0.0) -> UnitCounts:
        """A batch's documents to the spill, its rejects kept; returns what it counted (with the seconds
        its records took to read)."""
        columns = result.document_columns()
        trained = targets_per_row(columns.loss_mask, columns.token_offsets)
        self.spill.write_rows(columns)
        self.lengths.append(columns.seq_lens)
        self.source_ids.append(columns.source_ids)
        self.trained.append(trained)
        self.rejects.extend(_reject_line(r) for r in result.rejects)
        counts = UnitCounts.of(result, columns, trained)
        counts.seconds["read"] += read_seconds
        self.counts.add(counts)
        return counts

    def close(self) -> UnitOutcome:
        spilled = self.spill.close()
        rejects_sha = self.folder.write_bytes(rejects_name(self.unit.index), "".join(self.rejects).encode("utf-8"))
        record = UnitRecord(self.unit, self.job.key, self.counts, spilled[0].sha256 if spilled else None, rejects_sha)
        self.folder.write_bytes(record_name(self.unit.index), json.dumps(record.to_json()).encode("utf-8"))
        return UnitOutcome(record, concatenated(self.lengths, np.int32), concatenated(self.source_ids, np.int64),
                           concatenated(self.trained, np.int32))


def concatenated(parts: list[np.ndarray], dtype) -> np.ndarray:
    """The parts end to end (none: an empty array), as `dtype`."""
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def _reject_line(reject: Reject) -> str:
    return json.dumps(reject.to_json(), ensure_ascii=False) + "\n"


def completed(job: UnitJob, unit: Unit) -> UnitOutcome | None:
    """The unit's outcome from what an earlier run of the same build left, if that is whole: its record
    names this very unit under the same key, and its spill and rejects match their checksums."""
    folder = Folder(job.units_dir)
    if not folder.exists(record_name(unit.index)):
        return None
    record = UnitRecord.from_json(json.loads(folder.read_bytes(record_name(unit.index))))
    if record.unit != unit or record.key != job.key:
        return None
    if not folder.exists(rejects_name(unit.index)) or folder.sha256(rejects_name(unit.index)) != record.rejects_sha256:
        return None
    if record.spill_sha256 is None:
        return UnitOutcome(record, np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32))
    if not folder.exists(spill_name(unit.index)) or folder.sha256(spill_name(unit.index)) != record.spill_sha256:
        return None
    batches = list(shard_columns(MappedShard(folder.url(spill_name(unit.index))).table))
    return UnitOutcome(record, concatenated([np.diff(c.offsets[0]) for c in batches], np.int32),
                       concatenated([c.values[3] for c in batches], np.int64),
                       concatenated([targets_per_row(c.values[1], c.offsets[1]) for c in batches], np.int32))


class ShardTask(NamedTuple):
    """One output shard: its number, and its rows as documents (numbered across the build, in input
    order): row r holds documents[row_offsets[r] : row_offsets[r + 1]]."""

    index: int
    documents: np.ndarray
    row_offsets: np.ndarray


class WriteJob(NamedTuple):
    units_dir: str
    out_dir: str
    unit_starts: np.ndarray  # the number of the first document of each unit; one more: all documents
    unit_indices: np.ndarray  # each of those units' number (units without documents are left out)
    token: str = ""  # the build's, for temporary names (out_dir.Claim)


def plan_rows(lengths: np.ndarray, capacity: int | None, seed: int, pack: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    """(order, offsets): row r holds documents order[offsets[r] : offsets[r + 1]]; one document a row
    in input order unless packed."""
    if pack:
        return pack_arrays(lengths, capacity, seed)
    return np.arange(len(lengths), dtype=np.int64), np.arange(len(lengths) + 1, dtype=np.int64)


def plan_shards(lengths: np.ndarray, order: np.ndarray, offsets: np.ndarray, shard_tokens: int) -> list[ShardTask]:
    """The rows cut into shards as one ShardWriter would cut them: a shard closes after the row that
    brings it to `shard_tokens` tokens."""
    ends = np.cumsum(lengths[order], dtype=np.int64)[offsets[1:] - 1] if len(offsets) > 1 else np.zeros(0, np.int64)
    tasks, first, base = [], 0, 0
    while first < len(ends):
        last = min(int(np.searchsorted(ends, base + shard_tokens, side="left")), len(ends) - 1)
        rows = offsets[first : last + 2]
        tasks.append(ShardTask(len(tasks), order[rows[0] : rows[-1]], rows - rows[0]))
        first, base = last + 1, int(ends[last])
    return tasks


def write_shard(task: ShardTask, job: WriteJob) -> ShardInfo:
    """One output shard from the spills of the units its documents come from (only those are opened),
    written the writer's `batch_rows` rows a record batch. Rows gather documents from all over the spills: the pages read
    are let go every DOCUMENTS_PER_RELEASE documents, to keep memory flat."""
    units = Folder(job.units_dir)
    position = np.searchsorted(job.unit_starts, task.documents, side="right") - 1  # which unit, by position
    local = (task.documents - job.unit_starts[position]).tolist()  # which document of that unit's spill
    position, rows = position.tolist(), task.row_offsets.tolist()
    spills: dict[int, _Spill] = {}
    writer = ShardWriter(Folder(job.out_dir, job.token), NO_LIMIT, first_index=task.index)
    for first in range(0, len(rows) - 1, writer.batch_rows):
        last = min(first + writer.batch_rows, len(rows) - 1)
        ids, mask, lengths, sources = [], [], [], []  # copied out of the spills, a chunk at a time
        for at in range(rows[first], rows[last], DOCUMENTS_PER_RELEASE):
            chunk_ids, chunk_mask = [], []  # views into the spills
            for k in range(at, min(at + DOCUMENTS_PER_RELEASE, rows[last])):
                p = position[k]
                if p not in spills:
                    spills[p] = _Spill(MappedShard(units.url(spill_name(int(job.unit_indices[p])))))
                spills[p].gather(local[k], chunk_ids, chunk_mask, lengths, sources)
            ids.append(np.concatenate(chunk_ids))  # read while the pages are there, then let go
            mask.append(np.concatenate(chunk_mask))
            for spill in spills.values():
                spill.shard.release()
        documents = np.asarray(rows[first : last + 1], dtype=np.int64) - rows[first]
        seq_lens = np.asarray(lengths, dtype=np.int32)
        tokens = np.zeros(len(seq_lens) + 1, dtype=np.int64)
        np.cumsum(seq_lens, out=tokens[1:])
        writer.write_rows(RowColumns(np.concatenate(ids), np.concatenate(mask), tokens[documents], seq_lens,
                                     np.asarray(sources, dtype=np.int64), documents))
    (info,) = writer.close()
    return info


class _Spill:
    """A unit's spill (one document a row), its record batches as columns with their first documents."""

    def __init__(self, shard: MappedShard):
        self.shard, self.firsts, self.batches = shard, [], []
        for columns in shard_columns(shard.table):
            self.firsts.append(self.firsts[-1] + self.batches[-1].rows if self.batches else 0)
            self.batches.append(columns)

    def gather(self, i: int, ids: list, mask: list, lengths: list, sources: list) -> None:
        """Document i's tokens, mask, length and source id, each appended to its list."""
        k = bisect.bisect_right(self.firsts, i) - 1
        if k < 0 or i - self.firsts[k] >= self.batches[k].rows:
            raise IndexError(f"document {i} is not in this spill")
        (id_at, mask_at, len_at, source_at), (id_values, mask_values, len_values, source_values) = \
            self.batches[k].offsets, self.batches[k].values
        j = i - self.firsts[k]
        ids.append(id_values[id_at[j] : id_at[j + 1]])
        mask.append(mask_values[mask_at[j] : mask_at[j + 1]])
        lengths.append(len_values[len_at[j]])
        sources.append(source_values[source_at[j]])
