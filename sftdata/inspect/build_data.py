"""The read model of a finished build, shared by every inspection command.

`BuildData` opens a build's shards memory-mapped (through `shards.shard_columns`) and indexes every
document in flat numpy arrays (packed rows are split along `seq_lens` / `source_ids`), without copying a
token: `view`, `diff`, `stats` and the report read documents through it, so none of them needs the
original dataset or a tokenization. The manifest is read once, typed (`Manifest.read`).

Document numbering: documents are numbered in the order they lie in the shards (row by row, left to
right inside a packed row). A record split into pieces (`--overlong split-turns`) gives several
documents with one source id; `piece` numbers them 0, 1, ... in shard order, and (source_id, piece)
names a document across builds.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, fields
from enum import Enum
from functools import cached_property
from pathlib import Path

import numpy as np

from ..config import BuildConfig, Masker
from ..manifest import REJECTS
from ..shards import Columns, open_build, read_rejects, shard_columns
from ..storage import exists, is_url, join, open_input

# the one way a comparator build is announced, in the terminal and on the web pages
COMPARATOR_WARNING = ("COMPARATOR build: its masks reproduce the classic response-template search (train "
                      "everything after the first match of the template's token ids), kept only to show with "
                      "`sftdata diff` which examples that approach breaks. Do not train on it.")


# settings that change how the work runs and how rows are split into files, not the rows
RUN_SETTINGS = frozenset({"workers", "batch_size", "shard_tokens"})


def readable(value) -> str:
    """A setting's value as a person reads it: on/off, none, 4,096, the choice's name, a list joined."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(readable, value)) or "none"
    return str(value)


def output_settings(config: BuildConfig) -> list[tuple[str, object]]:
    """(name, value) of each setting that shapes what a build writes, in BuildConfig's order."""
    return [(f.name.replace("_", " "), getattr(config, f.name)) for f in fields(BuildConfig)
            if f.name not in RUN_SETTINGS]


@dataclass(frozen=True)
class DocIndex:
    """Per-document facts, one array element per document (see the module docstring for numbering)."""

    segment: np.ndarray  # which token segment (one Arrow record batch) holds the document
    start: np.ndarray  # offset of its first token in that segment's flat token arrays
    length: np.ndarray  # tokens
    trained: np.ndarray  # tokens with loss_mask == 1
    runs: np.ndarray  # contiguous trained runs (about one per trained turn)
    source_id: np.ndarray
    piece: np.ndarray
    row: np.ndarray  # global row number (row order across shards)
    row_position: np.ndarray  # index of the document inside its row
    row_documents: np.ndarray  # documents sharing its row (1 when not packed)

    def __len__(self) -> int:
        return len(self.length)

    @property
    def ratio(self) -> np.ndarray:
        return self.trained / np.maximum(self.length, 1)


@dataclass(frozen=True)
class Segment:
    """One record batch of a shard: the flat token and mask values, numpy views over the memory map."""

    input_ids: np.ndarray
    loss_mask: np.ndarray


def _index_segment(cols: Columns, seg: int, first_row: int) -> tuple[Segment, dict, np.ndarray]:
    """Document facts of one record batch, vectorized; returns (Segment, dict of arrays, tokens per row).

    A row's documents tile it (`seq_lens` add up to its tokens, checked here), so the documents of a batch
    tile its tokens, and per-document sums are one `reduceat` pass over the mask: no array the size of
    the tokens is made but one of booleans (where trained runs start)."""
    ids, mask, all_lens, all_srcs = cols.values
    row_off = cols.offsets[0].astype(np.int64)
    lens_off = cols.offsets[2].astype(np.int64)
    lens = all_lens[lens_off[0] : lens_off[-1]].astype(np.int64)
    srcs = all_srcs[lens_off[0] : lens_off[-1]].astype(np.int64)
    lens_off = lens_off - lens_off[0]
    per_row = np.diff(lens_off)
    row_tokens = np.diff(row_off)
    ends = np.cumsum(lens)  # of each document, counted from the batch's first token
    row_sums = np.diff(np.concatenate([[0], ends])[lens_off])
    if not np.array_equal(row_sums, row_tokens):
        bad = int(np.flatnonzero(row_sums != row_tokens)[0])
        raise ValueError(f"row {first_row + bad} holds {row_tokens[bad]:,} tokens but its seq_lens add up to "
                         f"{row_sums[bad]:,}: the shard is damaged; rebuild it")
    row_of_doc = np.repeat(np.arange(cols.rows), per_row)
    at = ends - lens  # each document's first token, counted from the batch's first token
    tokens = mask[row_off[0] : row_off[-1]]
    run_start = np.empty(len(tokens), dtype=bool)  # a trained token after an untrained one, or first
    run_start[:1] = tokens[:1] > 0
    np.greater(tokens[1:], tokens[:-1], out=run_start[1:])
    run_start[at[lens > 0]] = tokens[at[lens > 0]] > 0  # a run never continues from the document before
    facts = {
        "segment": np.full(len(lens), seg, dtype=np.int64),
        "start": at + row_off[0],
        "length": lens,
        "trained": _document_sums(tokens, at, lens),
        "runs": _document_sums(run_start, at, lens),
        "source_id": srcs,
        "row": row_of_doc + first_row,
        "row_position": np.arange(len(lens)) - lens_off[:-1][row_of_doc],
        "row_documents": per_row[row_of_doc],
    }
    return Segment(ids, mask), facts, row_tokens


def _document_sums(values: np.ndarray, at: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Sum of `values` over each document, documents tiling `values` from the offsets `at`."""
    if not len(values):
        return np.zeros(len(at), np.int64)
    sums = np.add.reduceat(values, np.minimum(at, len(values) - 1), dtype=np.int64)
    sums[lens == 0] = 0  # reduceat reads one value for an empty range
    return sums


def pieces_of(source_id: np.ndarray) -> np.ndarray:
    """0, 1, ... for documents that share a source id, in document order."""
    order = np.argsort(source_id, kind="stable")
    ordered = source_id[order]
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(ordered)), 0))
    piece = np.empty(len(ordered), dtype=np.int64)
    piece[order] = np.arange(len(ordered)) - group_start
    return piece


_INDEXED = ("segment", "start", "length", "trained", "runs", "source_id", "row", "row_position", "row_documents")


class BuildData:
    """A finished build, read-only: manifest, rejects, and every document's tokens and mask.

    Raises FileNotFoundError or ValueError (`ManifestError`) for a folder that is not a finished build."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path) if is_url(path) else Path(path)  # a local folder, or a URL (storage.py)
        self.manifest, tables = open_build(self.path)
        self.segments: list[Segment] = []
        parts: list[dict] = []
        row_tokens: list[np.ndarray] = []
        rows = 0
        for table in tables:
            for cols in shard_columns(table):
                segment, facts, tokens = _index_segment(cols, len(self.segments), rows)
                self.segments.append(segment)
                parts.append(facts)
                row_tokens.append(tokens)
                rows += cols.rows
        arrays = {k: (np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.int64)) for k in _INDEXED}
        self.docs = DocIndex(piece=pieces_of(arrays["source_id"]), **arrays)
        self.row_tokens = np.concatenate(row_tokens) if row_tokens else np.zeros(0, np.int64)

    # -- what the build is -------------------------------------------------------------------------
    @property
    def config(self) -> BuildConfig:
        return self.manifest.config

    @property
    def is_comparator(self) -> bool:
        return self.config.masker is Masker.RESPONSE_TEMPLATE

    @property
    def max_length(self) -> int | None:
        return self.config.max_length

    @property
    def packed(self) -> bool:
        return self.config.pack or bool(len(self.docs) and self.docs.row_documents.max() > 1)

    @property
    def rows(self) -> int:
        return len(self.row_tokens)

    def describe(self) -> str:
        """One line naming the build and how it masks, with comparators said to be comparators."""
        c = self.config
        if self.is_comparator:
            how = f"COMPARATOR: response-template masking of {c.response_template!r} (not sftdata's masks)"
        else:
            how = f"sftdata masks, train-on {c.train_on.value}" + ("" if c.train_eot else ", no eot")
        return f"{self.path}  ·  {how}  ·  tokenizer {self.manifest.tokenizer.name}"

    def side_name(self, letter: str) -> str:
        """How a comparison names this build: 'A', or 'A (comparator)'."""
        return f"{letter} (comparator)" if self.is_comparator else letter

    @cached_property
    def rejects(self) -> list[dict]:
        return read_rejects(self.path)

    def rejects_sample(self, per_reason: int) -> list[dict]:
        """Up to `per_reason` rejects of each reason, in file order. Reads rejects.jsonl only until each
        reason the manifest counts has them: a report's cost follows its sample, not the dataset."""
        wanted = {reason: min(n, per_reason) for reason, n in self.manifest.counts.rejected_by_reason.items()}
        taken: dict[str, int] = {}
        sample = []
        path = join(self.path, REJECTS)
        if not wanted or not exists(path):
            return sample
        with open_input(path) as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                reject = json.loads(line)
                reason = reject.get("reason", "?")
                if taken.get(reason, 0) < per_reason:
                    taken[reason] = taken.get(reason, 0) + 1
                    sample.append(reject)
                    if all(taken.get(r, 0) >= n for r, n in wanted.items()):
                        break
        return sample

    def rejects_written(self) -> int:
        """Lines of rejects.jsonl, counted without reading them as JSON."""
        path = join(self.path, REJECTS)
        if not exists(path):
            return 0
        with open_input(path) as f:
            return sum(1 for line in f if line.strip())

    # -- which input a record came from -------------------------------------------------------------
    @cached_property
    def input_starts(self) -> np.ndarray:
        """First source id of each input (inputs hold consecutive source ids, in order)."""
        records = [i.records for i in self.manifest.inputs]
        return np.concatenate([[0], np.cumsum(records, dtype=np.int64)])[:-1] if records else np.zeros(1, np.int64)

    def input_of(self, source_ids) -> np.ndarray:
        return self.manifest.input_of(source_ids)

    def where(self, source_id: int) -> str:
        """'file.jsonl #3': the input file and the record's 0-based index in it."""
        inputs = self.manifest.inputs
        if not inputs:
            return f"source {source_id}"
        i = int(self.input_of([source_id])[0])
        return f"{Path(inputs[i].path).name} #{source_id - int(self.input_starts[i])}"

    # -- tokens ------------------------------------------------------------------------------------
    def ids(self, doc: int) -> np.ndarray:
        d = self.docs
        s = int(d.start[doc])
        return self.segments[int(d.segment[doc])].input_ids[s : s + int(d.length[doc])]

    def mask(self, doc: int) -> np.ndarray:
        d = self.docs
        s = int(d.start[doc])
        return self.segments[int(d.segment[doc])].loss_mask[s : s + int(d.length[doc])]

    def documents_of(self, source_id: int) -> np.ndarray:
        return np.flatnonzero(self.docs.source_id == source_id)

    def documents_in_row(self, row: int) -> np.ndarray:
        return np.flatnonzero(self.docs.row == row)

    # -- how a document is named -------------------------------------------------------------------
    def source_label(self, doc: int) -> str:
        """'source 3', or 'source 3 piece 0' when the record was split into several documents."""
        sid, piece = int(self.docs.source_id[doc]), int(self.docs.piece[doc])
        return source_label(sid, piece, several=len(self.documents_of(sid)) > 1)

    def position(self, doc: int) -> str:
        """'row 12', or 'row 12, document 2/3' inside a packed row."""
        d = self.docs
        where = f"row {int(d.row[doc])}"
        if d.row_documents[doc] > 1:
            where += f", document {int(d.row_position[doc]) + 1}/{int(d.row_documents[doc])}"
        return where

    def size(self, doc: int) -> str:
        """'40 tokens · 12 trained (30%)'."""
        n, t = int(self.docs.length[doc]), int(self.docs.trained[doc])
        return f"{n:,} tokens · {t:,} trained ({t / max(n, 1):.0%})"


def source_label(source_id: int, piece: int, several: bool = False) -> str:
    return f"source {source_id}" + (f" piece {piece}" if piece or several else "")


def document_key(source_id: int, piece: int) -> str:
    """How a document is named across builds and in the web pages' links."""
    return f"s{source_id}p{piece}"
