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

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import html as page_html
from .comparators import response_template_mask, train_everything_mask
from .diff import classify
from .stats import BuildData, DocIndex, build_stats
from .viewer import Vocab, load_vocab

REPORT = "report.html"
PER_CATEGORY = 5


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


def _bins_length(lengths: np.ndarray, max_length: int | None) -> np.ndarray:
    """About 30 bins of a round width, covering the longest document and the length limit."""
    top = max(int(lengths.max()) if len(lengths) else 1, max_length or 0, 1)
    raw = top / 30
    step = next(m * 10 ** e for e in range(0, 12) for m in (1, 2, 5) if m * 10 ** e >= raw)
    return np.arange(0, top + step, step, dtype=np.float64)


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def distribution_charts(sides: list[tuple[str, BuildData, str]]) -> list[str]:
    """Document lengths, trained-token ratios and row fill, one series per build."""
    max_length = max((s[1].max_length or 0) for s in sides) or None
    lengths = np.concatenate([s[1].docs.length for s in sides]) if sides else np.zeros(0)
    marker = (max_length, f"max length {max_length:,}") if max_length else None
    charts = [
        page_html.histogram_svg("Document length", [(n, b.docs.length, c) for n, b, c in sides],
                                _bins_length(lengths, max_length), "tokens per document", marker=marker),
        page_html.histogram_svg("Trained-token ratio", [(n, b.docs.ratio, c) for n, b, c in sides],
                                np.linspace(0, 1, 21), "trained tokens / tokens, per document", x_format=_pct),
    ]
    if max_length:
        packed = any(b.packed for _, b, _ in sides)
        charts.append(page_html.histogram_svg(
            "Packing fill" if packed else "Row fill (not packed)",
            [(n, np.minimum(b.row_tokens / max_length, 1.0), c) for n, b, c in sides], np.linspace(0, 1, 21),
            f"tokens per row / max length {max_length:,}", x_format=_pct,
            note="" if packed else "one document per row: the rest of each row is padding"))
    return charts


def _doc_title(data: BuildData, doc: int) -> str:
    d = data.docs
    sid = int(d.source_id[doc])
    piece = f" piece {int(d.piece[doc])}" if d.piece[doc] else ""
    return f"source {sid}{piece} · {data.where(sid)}"


def _doc_info(data: BuildData, doc: int) -> str:
    d = data.docs
    where = f"row {int(d.row[doc])}"
    if d.row_documents[doc] > 1:
        where += f" (document {int(d.row_position[doc]) + 1} of {int(d.row_documents[doc])} packed)"
    n, t = int(d.length[doc]), int(d.trained[doc])
    return f"{where} · {n:,} tokens · {t:,} trained ({t / max(n, 1):.0%}) · {int(d.runs[doc])} trained run(s)"


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
        docs.append({"key": f"s{int(data.docs.source_id[doc])}p{int(data.docs.piece[doc])}",
                     "sid": int(data.docs.source_id[doc]), "title": _doc_title(data, doc),
                     "info": _doc_info(data, doc) + f" · baseline trains {int(base.sum()):,}",
                     "cats": cats, "tags": tags, "ids": ids.tolist(),
                     "ma": page_html.mask_string(mask), "mb": page_html.mask_string(base)})
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
        "vocab": [page_html.vocab_table(vocab, ids_used), "same"], "docs": docs,
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


COMPARATOR_BANNER = ("COMPARATOR build: its masks reproduce the classic response-template search (train "
                     "everything after the first match of the template's token ids), kept only to show with "
                     "`sftdata diff` which examples that approach breaks. Do not train on it.")


def write_report(build_dir: str | Path, out: str | Path | None = None, tokenizer: str | None = None,
                 per_category: int = PER_CATEGORY) -> Path:
    data = BuildData(build_dir)
    vocab, note = load_vocab(data.manifest, tokenizer)
    payload, charts = report_payload(data, vocab, [note] if note else [], per_category)
    title = f"sftdata build report: {data.path}"
    text = page_html.page(title, subtitle(data), charts, payload,
                          banner=COMPARATOR_BANNER if data.is_comparator else "")
    path = Path(out) if out else data.path / REPORT
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# -- command -------------------------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("report", help="(re)write a build's report.html",
                       description="Write the HTML report `sftdata build` writes to OUT/report.html: summary, "
                                   "charts, and a sample of documents with their masks beside a baseline.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("build", metavar="OUT", help="a build folder (holds manifest.json)")
    p.add_argument("--output", metavar="FILE", help=f"where to write (default OUT/{REPORT})")
    p.add_argument("--per-category", type=int, default=PER_CATEGORY,
                   help=f"documents per category in the sample (default {PER_CATEGORY})")
    p.add_argument("--tokenizer", help="tokenizer folder to read ids with (default: the one in the manifest)")
    p.set_defaults(run=run_report)


def run_report(args) -> int:
    from rich.markup import escape

    from .viewer import make_console

    console = make_console("auto", stderr=True)
    t0 = time.perf_counter()
    try:
        path = write_report(args.build, args.output, args.tokenizer, args.per_category)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        return 2
    console.print(f"wrote {path} ({path.stat().st_size / 1024:,.0f} KiB in {time.perf_counter() - t0:.1f}s)")
    return 0


def report_after_build(out: str | Path, enabled: bool, console) -> Path | None:
    """What `sftdata build` does last: write OUT/report.html, or (--no-report) remove a stale one. A
    report that cannot be written is a warning: the build itself is complete."""
    from rich.markup import escape

    path = Path(out) / REPORT
    if not enabled:
        path.unlink(missing_ok=True)
        return None
    t0 = time.perf_counter()
    try:
        write_report(out)
    except Exception as err:  # the shards are written and valid; say why the report is missing
        console.print(f"[yellow]warning:[/] no report written ({type(err).__name__}: {escape(str(err))})")
        return None
    console.print(f"report: {path} ({path.stat().st_size / 1024:,.0f} KiB, {time.perf_counter() - t0:.1f}s)")
    return path
