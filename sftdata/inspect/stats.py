"""`sftdata stats`: the numbers to check before training, from a finished build.

`build_stats` is polars over the document index (build_data.py), rejects.jsonl and the manifest; the
dataset is not read again. `checks` lists any disagreement between the manifest's counts and the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.table import Table

from ..options import setting
from .build_data import COMPARATOR_WARNING, BuildData
from .terminal import add_command, make_console

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class StatsSettings:
    json: bool = setting(False, "print JSON for machines")


def documents_frame(data: BuildData) -> pl.DataFrame:
    """One row per document: number, source id, piece, row, input, length, trained tokens, trained runs."""
    import polars as pl  # not at the top: see build_stats

    d = data.docs
    return pl.DataFrame({
        "doc": np.arange(len(d)), "source_id": d.source_id, "piece": d.piece, "row": d.row,
        "input": data.input_of(d.source_id) if len(d) else np.zeros(0, np.int64),
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
    import polars as pl  # here, not at the top: every `sftdata` command would pay a tenth of a second for it

    m, counts = data.manifest, data.manifest.counts
    docs = documents_frame(data).with_columns((pl.col("trained") / pl.col("length")).alias("ratio"))
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
    add_command(sub, "stats", run, {"OUT": "a build folder (holds manifest.json)"}, (StatsSettings,),
                help="numbers of a build: documents, tokens, trained ratio, lengths, fill, rejects",
                description="Counts of a finished build, computed from its shards, rejects.jsonl and manifest "
                            "(polars); the dataset is not read again.")


def run(data: BuildData, settings: StatsSettings) -> int:
    stats = build_stats(data)
    if settings.json:
        print(json.dumps(stats, indent=2))
    else:
        print_stats(make_console(), data, stats)
    return 0


def print_stats(console: Console, data: BuildData, s: dict) -> None:
    console.print(data.describe(), style="bold", markup=False, highlight=False)
    if s["comparator"]:
        console.print(COMPARATOR_WARNING, style="bold yellow", markup=False)
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
