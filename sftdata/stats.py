"""`sftdata stats`: a finished build as a table of documents, and the numbers to check before training.

`BuildData` opens a build's shards memory-mapped and indexes every document in flat numpy arrays
(packed rows are split along `seq_lens` / `source_ids`), without copying a token: `view`, `diff` and
the report read documents through it, so none of them needs the original dataset or a tokenization.
`build_stats` is polars over that index, rejects.jsonl and the manifest.

Document numbering: documents are numbered in the order they lie in the shards (row by row, left to
right inside a packed row). A record split into pieces (`--overlong split-turns`) gives several
documents with one source id; `piece` numbers them 0, 1, ... in shard order, and (source_id, piece)
names a document across builds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import BuildConfig, Masker
from .shards import numpy_view, open_build, read_rejects

if TYPE_CHECKING:
    import polars as pl

COMPARATOR = "response-template"


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


def _index_segment(batch, seg: int, first_row: int):
    """Document facts of one record batch, vectorized; returns (Segment, dict of arrays, row_tokens)."""
    ids_col, mask_col, lens_col, src_col = (batch.column(i) for i in range(4))
    ids = numpy_view(ids_col.values)
    mask = numpy_view(mask_col.values)
    row_off = numpy_view(ids_col.offsets).astype(np.int64)
    lens_off = numpy_view(lens_col.offsets).astype(np.int64)
    lens = numpy_view(lens_col.values).astype(np.int64)[lens_off[0] : lens_off[-1]]
    srcs = numpy_view(src_col.values).astype(np.int64)[lens_off[0] : lens_off[-1]]
    lens_off = lens_off - lens_off[0]
    per_row = np.diff(lens_off)
    n_rows = batch.num_rows
    row_of_doc = np.repeat(np.arange(n_rows), per_row)
    before = np.cumsum(lens) - lens  # tokens of earlier documents in this batch
    start = row_off[row_of_doc] + before - before[lens_off[:-1]][row_of_doc]
    end = start + lens
    csum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    trained = csum[end] - csum[start]
    on = mask.astype(bool)
    run_start = on.copy()
    run_start[1:] &= ~on[:-1]
    run_start[start[lens > 0]] = on[start[lens > 0]]
    rsum = np.concatenate([[0], np.cumsum(run_start, dtype=np.int64)])
    facts = {
        "segment": np.full(len(lens), seg, dtype=np.int64),
        "start": start,
        "length": lens,
        "trained": trained,
        "runs": rsum[end] - rsum[start],
        "source_id": srcs,
        "row": row_of_doc + first_row,
        "row_position": np.arange(len(lens)) - lens_off[:-1][row_of_doc],
        "row_documents": per_row[row_of_doc],
    }
    return Segment(ids, mask), facts, np.diff(row_off)


def _pieces(source_id: np.ndarray) -> np.ndarray:
    """0, 1, ... for documents that share a source id, in document order."""
    order = np.argsort(source_id, kind="stable")
    ordered = source_id[order]
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(ordered)), 0))
    piece = np.empty(len(ordered), dtype=np.int64)
    piece[order] = np.arange(len(ordered)) - group_start
    return piece


class BuildData:
    """A finished build, read-only: manifest, rejects, and every document's tokens and mask."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest, tables = open_build(self.path)
        self.segments: list[Segment] = []
        parts: list[dict] = []
        row_tokens: list[np.ndarray] = []
        rows = 0
        for table in tables:
            for batch in table.to_batches():
                segment, facts, tokens = _index_segment(batch, len(self.segments), rows)
                self.segments.append(segment)
                parts.append(facts)
                row_tokens.append(tokens)
                rows += batch.num_rows
        keys = ["segment", "start", "length", "trained", "runs", "source_id", "row", "row_position",
                "row_documents"]
        cols = {k: (np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.int64)) for k in keys}
        self.docs = DocIndex(piece=_pieces(cols["source_id"]), **cols)
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

    def describe(self) -> str:
        """One line naming the build and how it masks, with comparators said to be comparators."""
        c = self.config
        if self.is_comparator:
            how = f"COMPARATOR: response-template masking of {c.response_template!r} (not sftdata's masks)"
        else:
            how = f"sftdata masks, train-on {c.train_on.value}" + ("" if c.train_eot else ", no eot")
        tok = self.manifest.tokenizer.name
        return f"{self.path}  ·  {how}  ·  tokenizer {tok}"

    @cached_property
    def rejects(self) -> list[dict]:
        return read_rejects(self.path)

    @cached_property
    def input_starts(self) -> np.ndarray:
        """First source id of each input file (inputs hold consecutive source ids, in order)."""
        records = [i.records for i in self.manifest.inputs]
        return np.concatenate([[0], np.cumsum(records, dtype=np.int64)])[:-1] if records else np.zeros(1, np.int64)

    def input_of(self, source_ids) -> np.ndarray:
        return np.searchsorted(self.input_starts, np.asarray(source_ids), side="right") - 1

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

    @property
    def rows(self) -> int:
        return len(self.row_tokens)

    def frame(self) -> pl.DataFrame:
        import polars as pl  # here, not at the top: `sftdata build` would pay a seventh of a second for it

        d = self.docs
        return pl.DataFrame({
            "doc": np.arange(len(d)), "source_id": d.source_id, "piece": d.piece, "row": d.row,
            "input": self.input_of(d.source_id) if len(d) else np.zeros(0, np.int64),
            "length": d.length, "trained": d.trained, "runs": d.runs,
        })


def _percentiles(col: pl.Series, qs=(0.5, 0.9, 0.99)) -> dict:
    if col.len() == 0:
        return {}
    integer = col.dtype.is_integer()
    out = {"min": col.min(), **{f"p{round(q * 100)}": col.quantile(q, "nearest") for q in qs}, "max": col.max()}
    out = {k: (int(v) if integer else round(float(v), 4)) for k, v in out.items()}
    out["mean"] = round(float(col.mean()), 2 if integer else 4)
    return out


def build_stats(data: BuildData) -> dict:
    """The numbers of a build, JSON-ready: documents, tokens, trained tokens, lengths, rows and fill,
    rejects by reason, per input file; `checks` lists any disagreement with the manifest's counts."""
    import polars as pl

    m, counts = data.manifest, data.manifest.counts
    docs = data.frame().with_columns((pl.col("trained") / pl.col("length")).alias("ratio"))
    rejects = pl.DataFrame(data.rejects, schema={"source_id": pl.Int64, "reason": pl.Utf8, "detail": pl.Utf8})
    if data.manifest.inputs:
        rejects = rejects.with_columns(pl.Series("input", data.input_of(rejects["source_id"].to_numpy())))
    else:
        rejects = rejects.with_columns(pl.lit(0).alias("input"))
    tokens, trained = int(docs["length"].sum()), int(docs["trained"].sum())
    max_length = data.max_length
    out = {
        "build": str(data.path),
        "masker": data.config.masker.value,
        "comparator": data.is_comparator,
        "records": counts.records,
        "documents": docs.height,
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_ratio": round(trained / tokens, 4) if tokens else 0.0,
        "length": _percentiles(docs["length"]),
        "trained_ratio_per_document": _percentiles(docs["ratio"], (0.1, 0.5, 0.9)),
        "multi_turn_documents": int((docs["runs"] > 1).sum()),
        "untrained_documents": int((docs["trained"] == 0).sum()),
        "truncated": counts.truncated,
        "rows": data.rows,
        "packed": data.packed,
        "max_length": max_length,
        "fill": round(tokens / (data.rows * max_length), 4) if max_length and data.rows else None,
        "rejected": rejects.height,
        "rejected_by_reason": dict(sorted(
            (r, int(n)) for r, n in rejects.group_by("reason").len().iter_rows())),
    }
    per_doc = docs.group_by("input").agg(pl.len().alias("documents"), pl.col("length").sum().alias("tokens"),
                                         pl.col("trained").sum().alias("trained_tokens"))
    per_doc = {r["input"]: r for r in per_doc.iter_rows(named=True)}
    inputs = []
    for i, info in enumerate(m.inputs):
        row = per_doc.get(i, {"documents": 0, "tokens": 0, "trained_tokens": 0})
        mine = rejects.filter(pl.col("input") == i)
        inputs.append({
            "path": info.path, "format": info.format, "records": info.records,
            "documents": int(row["documents"]), "tokens": int(row["tokens"]),
            "trained_tokens": int(row["trained_tokens"]),
            "trained_ratio": round(row["trained_tokens"] / row["tokens"], 4) if row["tokens"] else 0.0,
            "rejected": mine.height,
            "rejected_by_reason": dict(sorted((r, int(n)) for r, n in mine.group_by("reason").len().iter_rows())),
        })
    out["inputs"] = inputs
    checks = []
    for key, value in (("documents", docs.height), ("tokens", tokens), ("trained_tokens", trained),
                       ("rows", data.rows), ("rejected", rejects.height)):
        if getattr(counts, key) != value:
            checks.append(f"manifest counts {getattr(counts, key):,} {key}, the build's files hold {value:,}")
    out["checks"] = checks
    return out


# -- command line -------------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("stats", help="numbers of a build: documents, tokens, trained ratio, lengths, fill, rejects",
                       description="Counts of a finished build, computed from its shards, rejects.jsonl and "
                                   "manifest (polars); the dataset is not read again.")
    p.add_argument("build", metavar="OUT", help="a build folder (holds manifest.json)")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(run=run_stats)


def run_stats(args) -> int:
    from rich.markup import escape

    from .viewer import make_console

    try:
        data = BuildData(args.build)
    except (FileNotFoundError, ValueError) as err:
        make_console("auto", stderr=True).print(f"[bold red]error:[/] {escape(str(err))}")
        return 2
    stats = build_stats(data)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print_stats(make_console("auto"), data, stats)
    return 0


def print_stats(console, data: BuildData, s: dict) -> None:
    from rich.table import Table

    console.print(f"[bold]{data.describe()}[/]")
    if s["comparator"]:
        console.print("[bold yellow]This is a COMPARATOR build[/]: its masks reproduce the classic response-template "
                      "search, kept to show with `sftdata diff` what that approach breaks.")
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_column(style="dim")
    t.add_row("records", f"{s['records']:,}" if s["records"] is not None else "?", "")
    t.add_row("documents", f"{s['documents']:,}", f"{s['multi_turn_documents']:,} with 2+ trained runs, "
              f"{s['untrained_documents']:,} train nothing")
    t.add_row("tokens", f"{s['tokens']:,}", "")
    t.add_row("trained tokens", f"{s['trained_tokens']:,}", f"{s['trained_ratio']:.1%} of tokens")
    ln = s["length"]
    if ln:
        t.add_row("document length", f"{ln['p50']:,}", f"median; min {ln['min']:,}  p90 {ln['p90']:,}  "
                  f"p99 {ln['p99']:,}  max {ln['max']:,}  mean {ln['mean']:,}")
        r = s["trained_ratio_per_document"]
        t.add_row("trained ratio", f"{r['p50']:.1%}", f"median per document; p10 {r['p10']:.1%}  p90 {r['p90']:.1%}")
    t.add_row("truncated", f"{s['truncated']:,}", "")
    fill = f"fill {s['fill']:.1%} of rows × max length {s['max_length']:,}" if s["fill"] is not None else ""
    t.add_row("rows", f"{s['rows']:,}", ", ".join(filter(None, ["packed" if s["packed"] else "one document per row",
                                                               fill])))
    t.add_row("rejected", f"{s['rejected']:,}", ", ".join(f"{k} {v:,}" for k, v in s["rejected_by_reason"].items()))
    console.print(t)
    if s["inputs"]:
        it = Table(title="per input file", title_justify="left")
        for col in ("input", "format", "records", "documents", "tokens", "trained", "rejected"):
            it.add_column(col, justify="left" if col in ("input", "format") else "right")
        for i in s["inputs"]:
            reasons = ", ".join(f"{k} {v}" for k, v in i["rejected_by_reason"].items())
            it.add_row(i["path"], i["format"] or "", f"{i['records']:,}", f"{i['documents']:,}", f"{i['tokens']:,}",
                       f"{i['trained_tokens']:,} ({i['trained_ratio']:.0%})",
                       f"{i['rejected']:,}" + (f" ({reasons})" if reasons else ""))
        console.print(it)
    for check in s["checks"]:
        console.print(f"[bold red]mismatch:[/] {check}")

