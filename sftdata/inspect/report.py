"""OUT/report.html: what a build holds, the documents worth a look, and how their masks differ from a
baseline, written after every build from the shards and manifest alone (no second tokenization).

Baseline: when the build names a response template (`--response-template`), the classic comparator
(search the template's token ids in each document and train everything after the first match; see
comparators.py); else the plain default of SFT trainers, every token trained. A comparator build is
compared with the train-everything default and labelled as a comparator.

Pure parts: `baseline_counts` (vectorized over every document), `select_documents`, `report_payload`;
`write_report` does the I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape

from ..comparators import response_template_mask, train_everything_mask
from ..options import setting
from ..storage import Folder, public
from ..tokenizer import ModelTokenizer
from .alignment import classify
from .build_data import COMPARATOR_WARNING, BuildData, DocIndex, document_key, output_settings, readable
from .charts import distribution_charts
from .page import mask_string, page, vocab_table
from .stats import document_stats, input_rows, manifest_checks
from .terminal import add_command, make_console
from .vocab import Vocab, VocabSettings, load_vocab

REPORT = "report.html"
PER_CATEGORY = 5
REJECTS_SHOWN = 20  # per reason


@dataclass(frozen=True)
class ReportSettings:
    output: str | None = setting(None, f"where to write instead of OUT/{REPORT}", metavar="FILE")
    per_category: int = setting(PER_CATEGORY, "documents per category in the sample")


@dataclass(frozen=True)
class Baseline:
    name: str  # how the page names it
    template_ids: np.ndarray | None  # None: train every token

    def mask(self, ids: np.ndarray) -> np.ndarray:
        if self.template_ids is None:
            return train_everything_mask(ids)
        return response_template_mask(ids, self.template_ids)


def choose_baseline(data: BuildData, vocab: Vocab | None) -> tuple[Baseline, str | None]:
    template = data.config.response_template
    everything = Baseline("train every token", None)
    if data.is_comparator:
        return everything, None
    if not template:
        return everything, None
    if vocab is None:
        return everything, (f"the response template {template!r} cannot be tokenized without the build's "
                            "tokenizer; the baseline is train-every-token instead")
    return Baseline(f"response template {template!r}", vocab.encode(template)), None


def first_matches(ids: np.ndarray, starts: np.ndarray, ends: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Per document [starts[i], ends[i]) of the flat `ids`: where `pattern` first occurs inside it
    (absolute index), or -1. Vectorized `comparators.find_subsequence` over every document at once."""
    out = np.full(len(starts), -1, dtype=np.int64)
    k = len(pattern)
    if k == 0 or not len(starts):
        return out
    cand = np.flatnonzero(ids == pattern[0])
    for j in range(1, k):
        cand = cand[cand + j < len(ids)]
        cand = cand[ids[cand + j] == pattern[j]]
    doc = np.searchsorted(starts, cand, side="right") - 1
    inside = (doc >= 0) & (cand + k <= ends[np.maximum(doc, 0)])
    cand, doc = cand[inside], doc[inside]
    first_doc, first = np.unique(doc, return_index=True)
    out[first_doc] = cand[first]
    return out


def baseline_counts(data: BuildData, baseline: Baseline) -> dict[str, np.ndarray]:
    """Per document: tokens the baseline trains, tokens where its mask differs from the build's, and
    (response template) whether the template was found."""
    d: DocIndex = data.docs
    found = np.ones(len(d), dtype=bool)
    if baseline.template_ids is None:
        # every token but the first: it differs where the build masks a later token or trains the first
        first = np.zeros(len(d), dtype=np.int64)
        for seg_no, seg in enumerate(data.segments):
            sel = np.flatnonzero(d.segment == seg_no)
            first[sel] = seg.loss_mask[d.start[sel]]
        return {"trained": np.maximum(d.length - 1, 0), "differ": d.length - 1 - d.trained + 2 * first,
                "found": found}
    trained_b = np.zeros(len(d), dtype=np.int64)
    differ = np.zeros(len(d), dtype=np.int64)
    for seg_no, seg in enumerate(data.segments):
        sel = np.flatnonzero(d.segment == seg_no)
        if not sel.size:
            continue
        starts, lengths = d.start[sel], d.length[sel]
        ends = starts + lengths
        csum = np.concatenate([[0], np.cumsum(seg.loss_mask, dtype=np.int64)])
        order = np.argsort(starts, kind="stable")
        at = np.empty(len(sel), dtype=np.int64)
        at[order] = first_matches(seg.input_ids, starts[order], ends[order], baseline.template_ids)
        found[sel] = at >= 0
        cut = np.where(at >= 0, at + len(baseline.template_ids), ends)
        trained_b[sel] = ends - cut
        before, after = csum[cut] - csum[starts], csum[ends] - csum[cut]
        differ[sel] = before + (ends - cut) - after
    return {"trained": trained_b, "differ": differ, "found": found}


def first_k(k: int, *keys: np.ndarray) -> np.ndarray:
    """Positions of the k first entries in the order of `keys` (the first key first), ties by position:
    `np.lexsort((positions, *reversed(keys)))[:k]`, without sorting every entry."""
    candidates = np.arange(len(keys[0]))
    if len(candidates) > k:
        kth = np.partition(keys[0], k - 1)[k - 1]
        candidates = np.flatnonzero(keys[0] <= kth)
    return candidates[np.lexsort((candidates, *(key[candidates] for key in reversed(keys))))][:k]


def select_documents(d: DocIndex, max_length: int | None, differ: np.ndarray | None = None,
                     k: int = PER_CATEGORY, seed: int = 0) -> list[tuple[int, list[str]]]:
    """Documents worth a look, as (document number, categories), each document once, in category order."""
    n = len(d)
    if n == 0:
        return []
    ratio = d.ratio
    multi = np.flatnonzero(d.runs > 1)
    picks: list[tuple[str, np.ndarray]] = [
        ("multi-turn", multi[first_k(k, -d.runs[multi], -d.length[multi])]),
        ("longest", first_k(k, -d.length)),
        ("most trained", first_k(k, -ratio)),
        ("least trained", first_k(k, ratio)),
    ]
    if max_length:
        near = np.flatnonzero(d.length >= 0.9 * max_length)
        picks.append(("near length limit", near[first_k(k, -d.length[near])]))
    if differ is not None:
        hit = np.flatnonzero(differ > 0)
        picks.append(("differs most from baseline", hit[first_k(k, -differ[hit])]))
    rng = np.random.default_rng(seed)
    picks.append(("random", np.sort(rng.choice(n, size=min(k, n), replace=False))))
    chosen: dict[int, list[str]] = {}
    for name, docs in picks:
        for doc in docs.tolist():
            chosen.setdefault(int(doc), []).append(name)
    return list(chosen.items())


def report_payload(data: BuildData, vocab: Vocab | None, notes: list[str], per_category: int = PER_CATEGORY,
                   seed: int = 0) -> tuple[dict, list[str]]:
    """The page's JSON payload and its charts."""
    baseline, note = choose_baseline(data, vocab)
    notes = notes + ([note] if note else [])
    counts = baseline_counts(data, baseline)
    stats = document_stats(data)
    picks = select_documents(data.docs, data.max_length, counts["differ"], per_category, seed)
    docs, ids_used = [], []
    for doc, cats in picks:
        ids, mask = data.ids(doc), data.mask(doc)
        base = baseline.mask(ids)
        ids_used.append(ids)
        tags = classify(mask, base, "this build", "baseline")
        sid = int(data.docs.source_id[doc])
        docs.append({"key": document_key(sid, int(data.docs.piece[doc])), "sid": sid,
                     "title": f"{data.source_label(doc)} · {data.where(sid)}",
                     "info": f"{data.position(doc)} · {data.size(doc)} · {int(data.docs.runs[doc])} trained "
                             f"run(s) · baseline trains {int(base.sum()):,}",
                     "cats": cats, "tags": tags, "ids": ids.tolist(),
                     "ma": mask_string(mask), "mb": mask_string(base)})
    c = data.manifest.counts
    reasons = ", ".join(f"{k} {v:,}" for k, v in c.rejected_by_reason.items())
    summary = [
        ("records", f"{c.records:,}", "input records read"),
        ("documents", f"{stats['documents']:,}", f"{stats['multi_turn_documents']:,} with 2+ trained runs"),
        ("rejected", f"{c.rejected:,}", reasons or "none"),
        ("tokens", f"{stats['tokens']:,}", ""),
        ("trained tokens", f"{stats['trained_tokens']:,}", f"{stats['trained_ratio']:.1%} of tokens"),
    ]
    differing = int((counts["differ"] > 0).sum())
    summary.append(("baseline trains", f"{int(counts['trained'].sum()):,}",
                    f"tokens ({baseline.name}); its mask differs from this build's in {differing:,} of "
                    f"{len(data.docs):,} documents"))
    if baseline.template_ids is not None:
        summary.append(("template not found", f"{int((~counts['found']).sum()):,}",
                        "documents where the response template's ids do not occur: the classic approach "
                        "trains nothing in them"))
    if stats["length"]:
        ln = stats["length"]
        summary.append(("document length", f"{ln['p50']:,}", f"median; p90 {ln['p90']:,}, max {ln['max']:,} tokens"))
    summary.append(("truncated", f"{c.truncated:,}", f"over-long policy: {data.config.overlong.value}"))
    fill = (f"fill {stats['fill']:.1%} of rows × max length {stats['max_length']:,}" if stats["fill"] is not None
            else "")
    summary.append(("rows", f"{stats['rows']:,}", "; ".join(filter(None, [
        "packed" if stats["packed"] else "one document per row", fill]))))
    tables = []
    if c.rejected:
        rows = [[r.get("source_id"), data.where(r["source_id"]) if "source_id" in r else "", r.get("reason"),
                 r.get("detail")] for r in data.rejects_sample(REJECTS_SHOWN)]
        tables.append({"title": f"Rejected records ({c.rejected:,})",
                       "note": f"not in the shards; up to {REJECTS_SHOWN} per reason (all are in rejects.jsonl)",
                       "columns": ["source", "record", "reason", "detail"], "rows": rows})
    inputs = input_rows(data)
    if len(inputs) > 1:
        tables.append({"title": "Per input file", "columns": ["input", "format", "records", "documents",
                                                            "tokens", "trained", "rejected"],
                       "rows": [[i["path"], i["format"], f"{i['records']:,}", f"{i['documents']:,}",
                                 f"{i['tokens']:,}", f"{i['trained_tokens']:,} ({i['trained_ratio']:.0%})",
                                 f"{i['rejected']:,}"] for i in inputs]})
    checks = manifest_checks(data, stats, data.rejects_written())
    payload = {
        "kind": "report", "summary": summary,
        "notes": [{"level": "warn", "text": n} for n in notes + checks],
        "tables": tables, "legend": {"a": "this build", "b": f"the baseline ({baseline.name})"},
        "search": f"the {len(docs):,} documents sampled of {len(data.docs):,} (`sftdata view {data.path} --grep "
                  "TEXT` searches them all)",
        "vocab": [vocab_table(vocab, ids_used), "same"], "docs": docs,
    }
    return payload, distribution_charts([("this build", data, "#2da44e")])


def subtitle(data: BuildData) -> list[str]:
    m = data.manifest
    tok, tpl = m.tokenizer, m.template
    settings = [f"{name} {readable(value)}" for name, value in output_settings(data.config)
                if name not in ("tokenizer", "chat template")]
    return [data.describe(),
            f"tokenizer {tok.name} (fingerprint {tok.fingerprint[:12]}, {tok.vocab_size:,} tokens) · template "
            f"from {tpl.source} · reply header {tpl.header!r} · end of turn {tpl.end_of_turn!r} · sftdata "
            f"{m.sftdata_version}",
            "settings: " + " · ".join(settings)]


def write_report(data: BuildData, out: str | Path | None = None, tokenizer: str | ModelTokenizer | None = None,
                 per_category: int = PER_CATEGORY) -> tuple[str, int]:
    """Write the report of an opened build to `out` (default OUT/report.html, on a local disk or an object
    store alike), atomically; returns where, and its size in bytes. `tokenizer`: load_vocab's."""
    vocab, note = load_vocab(data.manifest, tokenizer)
    payload, charts = report_payload(data, vocab, [note] if note else [], per_category)
    text = page(f"sftdata build report: {data.path}", subtitle(data), charts, payload,
                banner=COMPARATOR_WARNING if data.is_comparator else "")
    encoded = text.encode("utf-8")
    folder, name = (Folder(Path(out).parent), Path(out).name) if out else (Folder(data.path), REPORT)
    folder.write_bytes(name, encoded)
    return folder.url(name), len(encoded)


# -- command -------------------------------------------------------------------------------------------------

def add_parser(sub) -> None:
    add_command(sub, "report", run, {"OUT": "a build folder (holds manifest.json)"}, (ReportSettings, VocabSettings),
                help="(re)write a build's report.html",
                description="Write the HTML report `sftdata build` writes to OUT/report.html: summary, charts, "
                            "and a sample of documents with their masks beside a baseline.")


def run(data: BuildData, settings: ReportSettings, reading: VocabSettings) -> int:
    t0 = time.perf_counter()
    path, size = write_report(data, settings.output, reading.tokenizer, settings.per_category)
    make_console(stderr=True).print(f"wrote {public(path)} ({size / 1024:,.0f} KiB in "
                                    f"{time.perf_counter() - t0:.1f}s)", markup=False)
    return 0


def report_after_build(out: str | Path, enabled: bool, console: Console, tokenizer: ModelTokenizer | None = None
                       ) -> str | None:
    """What `sftdata build` does last: write OUT/report.html, or (--no-report) remove a stale one. A
    report that cannot be written is a warning: the build itself is complete. `tokenizer`: the one the
    build loaded (the report then need not load it again)."""
    if not enabled:
        Folder(out).remove(REPORT)
        return None
    t0 = time.perf_counter()
    try:
        path, size = write_report(BuildData(out), tokenizer=tokenizer)
    except Exception as err:  # the shards are written and valid; say why the report is missing
        console.print(f"[yellow]warning:[/] no report written ({type(err).__name__}: {escape(str(err))})")
        return None
    console.print(f"report: {public(path)} ({size / 1024:,.0f} KiB, {time.perf_counter() - t0:.1f}s)",
                  markup=False)
    return path
