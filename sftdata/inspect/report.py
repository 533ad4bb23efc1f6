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
from .alignment import classify
from .build_data import COMPARATOR_WARNING, BuildData, DocIndex, document_key
from .charts import distribution_charts
from .page import mask_string, page, vocab_table
from .stats import build_stats
from .terminal import add_command, make_console
from .vocab import Vocab, VocabSettings, load_vocab

REPORT = "report.html"
PER_CATEGORY = 5


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
    everything = Baseline("baseline: train every token", None)
    if data.is_comparator:
        return everything, None
    if not template:
        return everything, None
    if vocab is None:
        return everything, (f"the response template {template!r} cannot be tokenized without the build's "
                            "tokenizer; the baseline is train-every-token instead")
    return Baseline(f"baseline: response template {template!r}", vocab.encode(template)), None


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
    trained_b = np.zeros(len(d), dtype=np.int64)
    differ = np.zeros(len(d), dtype=np.int64)
    found = np.ones(len(d), dtype=bool)
    for seg_no, seg in enumerate(data.segments):
        sel = np.flatnonzero(d.segment == seg_no)
        if not sel.size:
            continue
        starts, lengths = d.start[sel], d.length[sel]
        ends = starts + lengths
        csum = np.concatenate([[0], np.cumsum(seg.loss_mask, dtype=np.int64)])
        trained = csum[ends] - csum[starts]
        if baseline.template_ids is None:
            first = seg.loss_mask[starts].astype(np.int64)
            trained_b[sel] = np.maximum(lengths - 1, 0)
            differ[sel] = lengths - 1 - trained + 2 * first
            continue
        order = np.argsort(starts, kind="stable")
        at = np.empty(len(sel), dtype=np.int64)
        at[order] = first_matches(seg.input_ids, starts[order], ends[order], baseline.template_ids)
        found[sel] = at >= 0
        cut = np.where(at >= 0, at + len(baseline.template_ids), ends)
        trained_b[sel] = ends - cut
        before, after = csum[cut] - csum[starts], csum[ends] - csum[cut]
        differ[sel] = before + (ends - cut) - after
    return {"trained": trained_b, "differ": differ, "found": found}


def select_documents(d: DocIndex, max_length: int | None, differ: np.ndarray | None = None,
                     k: int = PER_CATEGORY, seed: int = 0) -> list[tuple[int, list[str]]]:
    """Documents worth a look, as (document number, categories), each document once, in category order."""
    n = len(d)
    if n == 0:
        return []
    idx = np.arange(n)
    ratio = d.ratio
    picks: list[tuple[str, np.ndarray]] = [
        ("multi-turn", idx[d.runs > 1][np.lexsort((-d.length[d.runs > 1], -d.runs[d.runs > 1]))][:k]),
        ("longest", np.lexsort((idx, -d.length))[:k]),
        ("most trained", np.lexsort((idx, -ratio))[:k]),
        ("least trained", np.lexsort((idx, ratio))[:k]),
    ]
    if max_length:
        near = idx[d.length >= 0.9 * max_length]
        picks.append(("near length limit", near[np.lexsort((near, -d.length[near]))][:k]))
    if differ is not None:
        hit = idx[differ > 0]
        picks.append(("differs most from baseline", hit[np.lexsort((hit, -differ[hit]))][:k]))
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
    stats = build_stats(data)
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
                     "info": f"{data.position(doc)} · {data.size(doc)} · {int(data.docs.runs[doc])} trained run(s) · "
                             f"baseline trains {int(base.sum()):,}",
                     "cats": cats, "tags": tags, "ids": ids.tolist(),
                     "ma": mask_string(mask), "mb": mask_string(base)})
    s = stats
    summary = [
        ("records", f"{s['records']:,}" if s["records"] is not None else "?", "input records read"),
        ("documents", f"{s['documents']:,}", f"{s['multi_turn_documents']:,} with 2+ trained runs"),
        ("rejected", f"{s['rejected']:,}",
         ", ".join(f"{k} {v:,}" for k, v in s["rejected_by_reason"].items()) or "none"),
        ("tokens", f"{s['tokens']:,}", ""),
        ("trained tokens", f"{s['trained_tokens']:,}", f"{s['trained_ratio']:.1%} of tokens"),
    ]
    differing = int((counts["differ"] > 0).sum())
    summary.append(("baseline trains", f"{int(counts['trained'].sum()):,}",
                    f"tokens ({baseline.name.removeprefix('baseline: ')}); its mask differs from this build's "
                    f"in {differing:,} of {len(data.docs):,} documents"))
    if baseline.template_ids is not None:
        missing = int((~counts["found"]).sum())
        summary.append(("template not found", f"{missing:,}",
                        "documents where the response template's ids do not occur: the classic approach "
                        "trains nothing in them"))
    if s["length"]:
        ln = s["length"]
        summary.append(("document length", f"{ln['p50']:,}",
                        f"median; p90 {ln['p90']:,}, max {ln['max']:,} tokens"))
    summary.append(("truncated", f"{s['truncated']:,}", f"over-long policy: {data.config.overlong.value}"))
    fill = f"fill {s['fill']:.1%} of rows × max length {s['max_length']:,}" if s["fill"] is not None else ""
    summary.append(("rows", f"{s['rows']:,}", "; ".join(filter(None, ["packed" if s["packed"] else
                                                                     "one document per row", fill]))))
    tables = []
    if data.rejects:
        rows = [[r.get("source_id"), data.where(r["source_id"]) if "source_id" in r else "", r.get("reason"),
                 r.get("detail")] for r in _sample_rejects(data.rejects, 20)]
        tables.append({"title": f"Rejected records ({len(data.rejects):,})",
                       "note": "not in the shards; up to 20 per reason (all are in rejects.jsonl)",
                       "columns": ["source", "record", "reason", "detail"], "rows": rows})
    if len(s["inputs"]) > 1:
        tables.append({"title": "Per input file", "columns": ["input", "format", "records", "documents",
                                                            "tokens", "trained", "rejected"],
                       "rows": [[i["path"], i["format"], f"{i['records']:,}", f"{i['documents']:,}",
                                 f"{i['tokens']:,}", f"{i['trained_tokens']:,} ({i['trained_ratio']:.0%})",
                                 f"{i['rejected']:,}"] for i in s["inputs"]]})
    payload = {
        "kind": "report", "summary": summary,
        "notes": [{"level": "warn", "text": n} for n in notes + s["checks"]],
        "tables": tables, "legend": {"a": "this build", "b": baseline.name.replace("baseline: ", "the baseline, ")},
        "vocab": [vocab_table(vocab, ids_used), "same"], "docs": docs,
    }
    return payload, distribution_charts([("this build", data, "#2da44e")])


def _sample_rejects(rejects: list[dict], per_reason: int) -> list[dict]:
    seen: dict[str, int] = {}
    out = []
    for r in rejects:
        reason = r.get("reason", "?")
        if seen.get(reason, 0) < per_reason:
            seen[reason] = seen.get(reason, 0) + 1
            out.append(r)
    return out


def subtitle(data: BuildData) -> list[str]:
    m, c = data.manifest, data.config
    tok, tpl = m.tokenizer, m.template
    return [data.describe(),
            f"tokenizer {tok.name} (fingerprint {tok.fingerprint[:12]}, {tok.vocab_size:,} tokens) · template "
            f"from {tpl.source} · reply header {tpl.header!r} · end of turn {tpl.end_of_turn!r}",
            f"max length {c.max_length} · over-long {c.overlong.value} · special text {c.special_text.value} · "
            f"{'packed' if c.pack else 'not packed'} · sftdata {m.sftdata_version}"]


def write_report(data: BuildData, out: str | Path | None = None, tokenizer: str | None = None,
                 per_category: int = PER_CATEGORY) -> Path:
    """Write the report of an opened build to `out` (default OUT/report.html), atomically."""
    vocab, note = load_vocab(data.manifest, tokenizer)
    payload, charts = report_payload(data, vocab, [note] if note else [], per_category)
    text = page(f"sftdata build report: {data.path}", subtitle(data), charts, payload,
                banner=COMPARATOR_WARNING if data.is_comparator else "")
    path = Path(out) if out else data.path / REPORT
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# -- command -------------------------------------------------------------------------------------------------

def add_parser(sub) -> None:
    add_command(sub, "report", run, {"OUT": "a build folder (holds manifest.json)"}, (ReportSettings, VocabSettings),
                help="(re)write a build's report.html",
                description="Write the HTML report `sftdata build` writes to OUT/report.html: summary, charts, "
                            "and a sample of documents with their masks beside a baseline.")


def run(data: BuildData, settings: ReportSettings, reading: VocabSettings) -> int:
    t0 = time.perf_counter()
    path = write_report(data, settings.output, reading.tokenizer, settings.per_category)
    make_console(stderr=True).print(f"wrote {path} ({path.stat().st_size / 1024:,.0f} KiB in "
                                    f"{time.perf_counter() - t0:.1f}s)")
    return 0


def report_after_build(out: str | Path, enabled: bool, console: Console) -> Path | None:
    """What `sftdata build` does last: write OUT/report.html, or (--no-report) remove a stale one. A
    report that cannot be written is a warning: the build itself is complete."""
    path = Path(out) / REPORT
    if not enabled:
        path.unlink(missing_ok=True)
        return None
    t0 = time.perf_counter()
    try:
        write_report(BuildData(out))
    except Exception as err:  # the shards are written and valid; say why the report is missing
        console.print(f"[yellow]warning:[/] no report written ({type(err).__name__}: {escape(str(err))})")
        return None
    console.print(f"report: {path} ({path.stat().st_size / 1024:,.0f} KiB, {time.perf_counter() - t0:.1f}s)")
    return path
