"""Arrow shard storage: the on-disk contract between sftdata and everything that reads its output.

Layout of a build directory:
    manifest.json         written last; its presence means the build is complete
    rejects.jsonl         one line per input record that was not written
    shard-00000.arrow     Arrow IPC, streaming format (the format of Hugging Face datasets' own .arrow
                          files, so `datasets.Dataset.from_file` opens a shard; pyarrow reads it
                          memory-mapped with `pa.ipc.open_stream(pa.memory_map(path))`), one row per
                          training row:
        input_ids   list<int32>   tokens of the row (several documents when packed)
        loss_mask   list<uint8>   1 where the token is a training target (predicted from the token before)
        seq_lens    list<int32>   lengths of the documents in the row, in order; sum == len(input_ids)
        source_ids  list<int64>   0-based index of each document's input record across all inputs
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from .manifest import REJECTS, Manifest, ShardInfo
from .records import Document
from .storage import Folder, HashingWriter, exists, is_url, join, read_bytes

SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("loss_mask", pa.list_(pa.uint8())),
        pa.field("seq_lens", pa.list_(pa.int32())),
        pa.field("source_ids", pa.list_(pa.int64())),
    ]
)


@dataclass(slots=True)
class Row:
    """One training row: one document, or several packed ones."""

    input_ids: np.ndarray  # int32
    loss_mask: np.ndarray  # uint8
    seq_lens: Sequence[int]
    source_ids: Sequence[int]


def _numpy_array(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
    # from the buffer, not pa.array(): that imports pandas (a third of a second) to ask whether it is one
    values = np.ascontiguousarray(values, dtype=dtype.to_pandas_dtype())
    return pa.Array.from_buffers(dtype, len(values), [None, pa.py_buffer(values)])


@dataclass(slots=True)
class RowColumns:
    """Rows as columns: every row's tokens and masks end to end (`token_offsets`: where each row starts,
    and the end), every row's documents' lengths and source ids end to end (`document_offsets`). Built
    and written a record batch at a time, where a row at a time costs a few microseconds per document in
    Python."""

    input_ids: np.ndarray  # int32
    loss_mask: np.ndarray  # uint8
    token_offsets: np.ndarray  # int64, one more than there are rows
    seq_lens: np.ndarray  # int32
    source_ids: np.ndarray  # int64
    document_offsets: np.ndarray  # int64, one more than there are rows

    @property
    def rows(self) -> int:
        return len(self.token_offsets) - 1

    def record_batch(self) -> pa.RecordBatch:
        tokens, documents = self.token_offsets.astype(np.int32), self.document_offsets.astype(np.int32)
        return pa.RecordBatch.from_arrays(
            [pa.ListArray.from_arrays(_numpy_array(tokens, pa.int32()), _numpy_array(self.input_ids, pa.int32())),
             pa.ListArray.from_arrays(_numpy_array(tokens, pa.int32()), _numpy_array(self.loss_mask, pa.uint8())),
             pa.ListArray.from_arrays(_numpy_array(documents, pa.int32()), _numpy_array(self.seq_lens, pa.int32())),
             pa.ListArray.from_arrays(_numpy_array(documents, pa.int32()), _numpy_array(self.source_ids, pa.int64()))],
            schema=SCHEMA)


def document_rows(documents: Sequence[Document]) -> RowColumns:
    """A batch's documents, one row each."""
    offsets = _offsets((len(d.input_ids) for d in documents), len(documents))
    each = np.arange(len(documents) + 1, dtype=np.int64)
    if not documents:
        return RowColumns(np.zeros(0, np.int32), np.zeros(0, np.uint8), offsets, np.zeros(0, np.int32),
                          np.zeros(0, np.int64), each)
    return RowColumns(np.concatenate([d.input_ids for d in documents]).astype(np.int32, copy=False),
                      np.concatenate([d.loss_mask for d in documents]).astype(np.uint8, copy=False), offsets,
                      np.diff(offsets).astype(np.int32), np.fromiter((d.source_id for d in documents), np.int64,
                                                                     len(documents)), each)


def targets_per_row(loss_mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each row's target tokens, row r being loss_mask[offsets[r] : offsets[r + 1]] (an empty row: 0)."""
    cumulative = np.zeros(len(loss_mask) + 1, dtype=np.int64)
    np.cumsum(loss_mask, out=cumulative[1:])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def _offsets(sizes: Iterable[int], count: int) -> np.ndarray:
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.fromiter(sizes, np.int64, count), out=offsets[1:])
    return offsets


def rows_to_columns(rows: Sequence[Row]) -> RowColumns:
    if not rows:
        return document_rows([])
    return RowColumns(np.concatenate([np.asarray(r.input_ids, dtype=np.int32) for r in rows]),
                      np.concatenate([np.asarray(r.loss_mask, dtype=np.uint8) for r in rows]),
                      _offsets((len(r.input_ids) for r in rows), len(rows)),
                      np.concatenate([np.asarray(r.seq_lens, dtype=np.int32) for r in rows]),
                      np.concatenate([np.asarray(r.source_ids, dtype=np.int64) for r in rows]),
                      _offsets((len(r.seq_lens) for r in rows), len(rows)))


class ShardWriter:
    """Writes rows into numbered shards, each made visible only when complete (temp file + rename).

    A shard closes once it holds `shard_tokens` tokens. Rows given one at a time (`write`) are written in
    record batches of `batch_rows`, so a reader can stream a shard without loading it whole; `write_rows`
    writes the rows it is given as one record batch (its callers make them `batch_rows` or fewer).
    Temporary names are the folder's (a build's Folder carries its token).
    """

    def __init__(self, out_dir: str | os.PathLike | Folder, shard_tokens: int, batch_rows: int = 1024,
                 first_index: int = 0, prefix: str = "shard"):
        self.folder = out_dir if isinstance(out_dir, Folder) else Folder(out_dir)
        self.first_index, self.prefix = first_index, prefix  # shards are named PREFIX-NNNNN.arrow from first_index
        self.shard_tokens = shard_tokens
        self.batch_rows = batch_rows
        self.shards: list[ShardInfo] = []
        self._pending: list[Row] = []
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._file: HashingWriter | None = None
        self._rows = 0
        self._tokens = 0

    def write(self, row: Row) -> None:
        self._pending.append(row)
        self._rows += 1
        self._tokens += len(row.input_ids)
        if len(self._pending) >= self.batch_rows:
            self._flush_batch()
        if self._tokens >= self.shard_tokens:
            self._close_shard()

    def write_rows(self, columns: RowColumns) -> None:
        """Rows as one record batch, after the rows written before them."""
        if not columns.rows:
            return
        self._flush_batch()
        self._open()
        self._writer.write_batch(columns.record_batch())
        self._rows += columns.rows
        self._tokens += int(columns.token_offsets[-1])
        if self._tokens >= self.shard_tokens:
            self._close_shard()

    def write_all(self, rows: Iterable[Row]) -> None:
        for row in rows:
            self.write(row)

    def close(self) -> list[ShardInfo]:
        self._close_shard()
        return self.shards

    def _flush_batch(self) -> None:
        if not self._pending:
            return
        self._open()
        self._writer.write_batch(rows_to_columns(self._pending).record_batch())
        self._pending = []

    def _open(self) -> None:
        if self._writer is None:
            self._file = self.folder.create(f"{self.prefix}-{self.first_index + len(self.shards):05d}.arrow")
            self._writer = pa.ipc.new_stream(self._file, SCHEMA)

    def _close_shard(self) -> None:
        self._flush_batch()
        if self._writer is None:
            return
        self._writer.close()
        name = self._file.final.rsplit("/", 1)[-1]
        self.shards.append(ShardInfo(name, self._rows, self._tokens, self._file.publish(), self._file.size))
        self._writer, self._file, self._rows, self._tokens = None, None, 0, 0


def open_shard(path: str | os.PathLike) -> pa.Table:
    """A shard as an Arrow table: on a local disk backed by a memory map (nothing is read until it is
    touched), on an object store read whole."""
    if is_url(path):
        return pa.ipc.open_stream(pa.py_buffer(read_bytes(path))).read_all()
    return pa.ipc.open_stream(pa.memory_map(str(path), "r")).read_all()


class MappedShard:
    """A shard read through a memory map whose pages can be let go: `release()` drops what was touched
    from this process's resident memory (touched again, pages come back from the page cache). A pass
    that reads a large shard in random order then holds only what it touched since the last release,
    where a plain map would end up holding the whole file."""

    def __init__(self, path: str | os.PathLike):
        self._map = None  # a shard on an object store is read whole: nothing to release
        if is_url(path):
            self.table = open_shard(path)
            return
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.table = pa.ipc.open_stream(pa.py_buffer(self._map)).read_all()

    def release(self) -> None:
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)


def open_build(build_dir: str | os.PathLike) -> tuple[Manifest, list[pa.Table]]:
    manifest = Manifest.read(build_dir)
    tables = [open_shard(join(build_dir, s.name)) for s in manifest.shards]
    return manifest, tables


def numpy_view(array: pa.Array) -> np.ndarray:
    """A zero-copy numpy view of a primitive Arrow array without nulls (what every column of a shard
    holds). `Array.to_numpy` would import pandas, a fifth of a second in every process."""
    dtype = np.dtype(array.type.to_pandas_dtype())
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


class Columns(NamedTuple):
    """One record batch of a shard as zero-copy numpy views: per column (SCHEMA order), the row offsets
    and the flat values; row i of a column is `values[offsets[i] : offsets[i + 1]]`."""

    rows: int
    offsets: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]

    def row(self, i: int) -> Row:
        return Row(*(v[o[i] : o[i + 1]] for v, o in zip(self.values, self.offsets)))


def shard_columns(table: pa.Table) -> Iterator[Columns]:
    """Every record batch of a shard as `Columns`: how everything that reads shards reads them."""
    for batch in table.to_batches():
        cols = [batch.column(i) for i in range(len(SCHEMA))]
        yield Columns(batch.num_rows, tuple(numpy_view(c.offsets) for c in cols),
                      tuple(numpy_view(c.values) for c in cols))


def iter_rows(table: pa.Table) -> Iterator[Row]:
    """Rows of a shard as numpy views over the Arrow buffers (no copies)."""
    for columns in shard_columns(table):
        for i in range(columns.rows):
            yield columns.row(i)


def read_rejects(build_dir: str | os.PathLike) -> list[dict]:
    path = join(build_dir, REJECTS)
    if not exists(path):
        return []
    return [json.loads(line) for line in read_bytes(path).decode("utf-8").splitlines() if line.strip()]
