"""`sftdata stats`: the numbers to check before training, from a finished build.

`build_stats` is numpy over the document index (build_data.py), rejects.jsonl and the manifest; the
dataset is not read again. `checks` lists any disagreement between the manifest's counts and the files.
The report shows the same numbers, through `document_stats` and `input_rows`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..options import setting
from .build_data import COMPARATOR_WARNING, BuildData
from .terminal import add_command, make_console


@dataclass(frozen=True)
class StatsSettings:
    json: bool = setting(False, "print JSON for machines")


def percentiles(values: np.ndarray, qs=(0.5, 0.9, 0.99)) -> dict:
    """min, nearest-rank percentiles, max and mean; {} when there are no values."""
    if not len(values):
        return {}
    ordered = np.sort(values)
    integer = ordered.dtype.kind in "iu"
    picked = {"min": ordered[0], **{f"p{round(q * 100)}": ordered[round(q * (len(ordered) - 1))] for q in qs},
              "max": ordered[-1]}
    out = {k: (int(v) if integer else round(float(v), 4)) for k, v in picked.items()}
    out["mean"] = round(float(values.mean()), 2 if integer else 4)
    return out


def document_stats(data: BuildData) -> dict:
    """What the shards hold, from the document index alone: documents, tokens, trained tokens, lengths,
    trained ratios, rows and fill."""
    d = data.docs
    tokens, trained = int(d.length.sum()), int(d.trained.sum())
    max_length = data.max_length
    return {
        "documents": len(d),
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_ratio": round(trained / tokens, 4) if tokens else 0.0,
        "length": percentiles(d.length),
        "trained_ratio_per_document": percentiles(d.ratio, (0.1, 0.5, 0.9)),
        "multi_turn_documents": int((d.runs > 1).sum()),
        "untrained_documents": int((d.trained == 0).sum()),
        "rows": data.rows,
        "packed": data.packed,
        "max_length": max_length,
        "fill": round(tokens / (data.rows * max_length), 4) if max_length and data.rows else None,
    }


def input_rows(data: BuildData) -> list[dict]:
    """Per input file: records and rejects as the manifest counts them, documents and tokens as the
    shards hold them."""
    inputs = data.manifest.inputs
    d = data.docs
    which = data.input_of(d.source_id) if len(d) else np.zeros(0, np.int64)
    documents = np.bincount(which, minlength=len(inputs))
    tokens = np.bincount(which, weights=d.length, minlength=len(inputs)).astype(np.int64)
    trained = np.bincount(which, weights=d.trained, minlength=len(inputs)).astype(np.int64)
    return [{"path": info.path, "format": info.format, "records": info.records, "documents": int(documents[i]),
             "tokens": int(tokens[i]), "trained_tokens": int(trained[i]),
             "trained_ratio": round(trained[i] / tokens[i], 4) if tokens[i] else 0.0, "rejected": info.rejected}
            for i, info in enumerate(inputs)]


def manifest_checks(data: BuildData, stats: dict, rejected: int) -> list[str]:
    """Where the manifest's counts disagree with what the build's files hold (`rejected`: the lines of
    rejects.jsonl)."""
    counts = data.manifest.counts
    held = {"documents": stats["documents"], "tokens": stats["tokens"], "trained_tokens": stats["trained_tokens"],
            "rows": stats["rows"], "rejected": rejected}
    return [f"manifest counts {getattr(counts, key):,} {key}, the build's files hold {value:,}"
            for key, value in held.items() if getattr(counts, key) != value]


def _by_reason(rejects: list[dict]) -> dict[str, int]:
    return dict(sorted(Counter(r.get("reason", "?") for r in rejects).items()))


def build_stats(data: BuildData) -> dict:
    """The numbers of a build, JSON-ready: documents, tokens, trained tokens, lengths, rows and fill,
    rejects by reason (read from rejects.jsonl), per input file; `checks` lists any disagreement with the
    manifest's counts."""
    counts, rejects = data.manifest.counts, data.rejects
    stats = document_stats(data)
    out = {"build": str(data.path), "masker": data.config.masker.value, "comparator": data.is_comparator,
           "records": counts.records, **stats, "truncated": counts.truncated, "rejected": len(rejects),
           "rejected_by_reason": _by_reason(rejects)}
    reject_input = data.input_of([r["source_id"] for r in rejects]) if data.manifest.inputs else []
    out["inputs"] = [row | {"rejected_by_reason": _by_reason([r for r, i in zip(rejects, reject_input) if i == n])}
                     for n, row in enumerate(input_rows(data))]
    out["checks"] = manifest_checks(data, stats, len(rejects))
    return out


# -- command line -------------------------------------------------------------------------------------

def add_parser(sub) -> None:
    add_command(sub, "stats", run, {"OUT": "a build folder (holds manifest.json)"}, (StatsSettings,),
                help="numbers of a build: documents, tokens, trained ratio, lengths, fill, rejects",
                description="Counts of a finished build, computed from its shards, rejects.jsonl and "
                            "manifest; the dataset is not read again.")


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
            it.add_row(Text(i["path"]), i["format"] or "", f"{i['records']:,}", f"{i['documents']:,}", f"{i['tokens']:,}",
                       f"{i['trained_tokens']:,} ({i['trained_ratio']:.0%})",
                       f"{i['rejected']:,}" + (f" ({reasons})" if reasons else ""))
        console.print(it)
    for check in s["checks"]:
        console.print(f"[bold red]mismatch:[/] {check}")
