"""`sftdata diff A B`: how the masks of two builds of the same inputs differ, document by document.

Documents are matched by (source_id, piece) (see build_data.py) and their tokens aligned (alignment.py).
Everything is computed as numpy arrays first (`diff_builds`), then shown in the terminal or written as
one HTML page (page.py).

Directions: "gained" tokens are trained in B and not in A; "lost" ones are trained in A and not in B.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..manifest import Manifest
from ..options import setting
from .alignment import align, aligned_masks, compare_documents
from .build_data import COMPARATOR_WARNING, BuildData, document_key, output_settings, readable, source_label
from .charts import distribution_charts
from .page import mask_string, page, vocab_table
from .terminal import (
    Display,
    add_command,
    is_plain,
    lanes_of,
    legend,
    make_console,
    render_stream,
    token_lines,
)
from .vocab import IdsVocab, load_vocab


@dataclass(frozen=True)
class DiffSettings:
    html: str | None = setting(None, "also write the comparison as one self-contained web page", metavar="FILE")
    limit: int = setting(3, "documents to show token by token")
    context: int = setting(12, "unchanged tokens shown around each difference")
    max_html_docs: int = setting(5000, "most differing documents to put in the web page, most changed first")


@dataclass(frozen=True)
class DocDiff:
    source_id: int
    piece: int
    a: int  # document number in A
    b: int  # document number in B
    status: str  # "mask": same ids, masks differ; "ids": the token ids differ
    changed: int  # aligned tokens whose mask differs, plus tokens on one side only
    gained: int  # trained in B, not in A
    lost: int  # trained in A, not in B
    tokens_a: int
    tokens_b: int
    trained_a: int
    trained_b: int
    tags: tuple[str, ...]

    @property
    def key(self) -> str:
        return document_key(self.source_id, self.piece)

    @property
    def label(self) -> str:
        return source_label(self.source_id, self.piece)


@dataclass
class BuildDiff:
    a: BuildData
    b: BuildData
    compared: int = 0
    identical: int = 0
    ids_differ: int = 0
    mask_differ: int = 0
    gained: int = 0
    lost: int = 0
    docs: list[DocDiff] = field(default_factory=list)  # differing documents, most changed first
    only_a: list[dict] = field(default_factory=list)  # documents only A holds, with B's reject if any
    only_b: list[dict] = field(default_factory=list)
    rejected_both: int = 0
    settings: list[tuple[str, object, object]] = field(default_factory=list)

    @property
    def names(self) -> tuple[str, str]:
        return self.a.side_name("A"), self.b.side_name("B")

    @property
    def any_comparator(self) -> bool:
        return self.a.is_comparator or self.b.is_comparator

    @property
    def inputs_differ(self) -> bool:
        """The builds read different inputs: source ids then name unrelated records."""
        return [(i.path, i.records) for i in self.a.manifest.inputs] != [
            (i.path, i.records) for i in self.b.manifest.inputs]

    def summary(self) -> list[tuple[str, str, str]]:
        ta, tb = int(self.a.docs.trained.sum()), int(self.b.docs.trained.sum())
        return [
            ("documents compared", f"{self.compared:,}", "matched by source id"),
            ("identical", f"{self.identical:,}", "same token ids and mask"),
            ("differing in ids", f"{self.ids_differ:,}", "the token ids themselves differ"),
            ("differing only in mask", f"{self.mask_differ:,}", "same ids, different loss mask"),
            ("trained tokens gained", f"{self.gained:,}", "trained in B, not in A"),
            ("trained tokens lost", f"{self.lost:,}", "trained in A, not in B"),
            ("trained tokens", f"{ta:,} → {tb:,}", f"A → B ({tb - ta:+,})"),
            ("only in A", f"{len(self.only_a):,}", "documents A holds and B does not"),
            ("only in B", f"{len(self.only_b):,}", "documents B holds and A does not"),
            ("rejected in both", f"{self.rejected_both:,}", "records neither build wrote"),
        ]

    @property
    def differs(self) -> bool:
        return bool(self.docs or self.only_a or self.only_b)


def _keys(data: BuildData) -> np.ndarray:
    return data.docs.source_id.astype(np.int64) * (1 << 20) + data.docs.piece


def settings_changes(a: Manifest, b: Manifest) -> list[tuple[str, object, object]]:
    """What differs between two manifests in what shapes the output."""
    pairs = [("sftdata version", a.sftdata_version, b.sftdata_version),
             ("tokenizer", a.tokenizer.name, b.tokenizer.name),
             ("tokenizer fingerprint", a.tokenizer.fingerprint[:12], b.tokenizer.fingerprint[:12]),
             ("template fingerprint", a.template.fingerprint[:12], b.template.fingerprint[:12]),
             ("inputs", [i.path for i in a.inputs], [i.path for i in b.inputs])]
    pairs += [(name, va, vb) for (name, va), (_, vb) in zip(output_settings(a.config), output_settings(b.config))
              if name != "tokenizer"]
    return [(k, va, vb) for k, va, vb in pairs if va != vb]


def _reject_map(data: BuildData) -> dict[int, dict]:
    return {r["source_id"]: r for r in data.rejects if "source_id" in r}


def diff_builds(a: BuildData, b: BuildData) -> BuildDiff:
    out = BuildDiff(a, b, settings=settings_changes(a.manifest, b.manifest))
    ka, kb = _keys(a), _keys(b)
    _, ia, ib = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
    order = np.argsort(ia)  # A's document order
    ia, ib = ia[order], ib[order]
    same_len = a.docs.length[ia] == b.docs.length[ib]
    out.compared = len(ia)
    for da, db, quick in zip(ia.tolist(), ib.tolist(), same_len.tolist()):
        ids_a, ids_b, mask_a, mask_b = a.ids(da), b.ids(db), a.mask(da), b.mask(db)
        if quick and np.array_equal(ids_a, ids_b) and np.array_equal(mask_a, mask_b):
            out.identical += 1
            continue
        _, facts = compare_documents(ids_a, mask_a, ids_b, mask_b)
        if facts["status"] == "identical":
            out.identical += 1
            continue
        out.ids_differ += facts["status"] == "ids"
        out.mask_differ += facts["status"] == "mask"
        out.gained += facts["gained"]
        out.lost += facts["lost"]
        out.docs.append(DocDiff(int(a.docs.source_id[da]), int(a.docs.piece[da]), da, db, **facts))
    out.docs.sort(key=lambda d: (-d.changed, d.source_id, d.piece))
    rej_a, rej_b = _reject_map(a), _reject_map(b)
    for data, other_keys, other_rejects, into in ((a, kb, rej_b, out.only_a), (b, ka, rej_a, out.only_b)):
        other_sources = set((other_keys >> 20).tolist())
        for doc in np.flatnonzero(~np.isin(_keys(data), other_keys)).tolist():
            sid = int(data.docs.source_id[doc])
            r = other_rejects.get(sid)
            into.append({"source_id": sid, "piece": int(data.docs.piece[doc]), "doc": doc,
                         "where": data.where(sid), "tokens": int(data.docs.length[doc]),
                         "trained": int(data.docs.trained[doc]),
                         "other": f"rejected: {r['reason']}: {r['detail']}" if r else
                                  ("a different number of pieces" if sid in other_sources else "absent")})
    out.rejected_both = len(set(rej_a) & set(rej_b))
    return out


def inputs_warning(d: BuildDiff) -> str | None:
    if not d.inputs_differ:
        return None
    return ("A and B were built from different inputs: documents are compared by source id (a record's "
            "position across the inputs), so matched documents may come from unrelated records")


# -- terminal ----------------------------------------------------------------------------------------------

def near(flags: np.ndarray, context: int) -> np.ndarray:
    """True within `context` tokens of any True in flags."""
    hits = np.flatnonzero(flags)
    keep = np.zeros(len(flags), dtype=bool)
    if hits.size:
        cover = np.zeros(len(flags) + 1, dtype=np.int64)
        np.add.at(cover, np.maximum(hits - context, 0), 1)
        np.add.at(cover, np.minimum(hits + context + 1, len(flags)), -1)
        keep = np.cumsum(cover)[:-1] > 0
    return keep


def shown(flags: np.ndarray, context: int, most: int = 600) -> np.ndarray:
    """Tokens to print for one document: those near a difference, at most `most` of them."""
    keep = near(flags, context)
    keep[np.cumsum(keep) > most] = False
    return keep


def _table(title: str, columns, rows, more: int = 0, right=()) -> Table:
    """A rich table; `more` rows left out are counted on a last line; columns in `right` align right."""
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left")
    for row in rows:
        t.add_row(*map(Text, row))  # cells hold user text (paths, templates, reasons): never markup
    if more > 0:
        t.add_row("…", f"{more:,} more", *[""] * (len(columns) - 2))
    return t


def print_diff(console: Console, d: BuildDiff, vocab_a, vocab_b, limit: int, tokens: bool, context: int) -> None:
    plain = is_plain(console)
    name_a, name_b = d.names
    for name, data in ((name_a, d.a), (name_b, d.b)):
        console.print(Text(f"{name}: {data.describe()}", style="bold yellow" if data.is_comparator else "bold"))
    if d.any_comparator:
        console.print(COMPARATOR_WARNING, style="yellow", markup=False)
    if warning := inputs_warning(d):
        console.print(f"warning: {warning}", style="bold yellow", markup=False)
    if d.settings:
        console.print(_table("settings that differ", ("setting", "A", "B"),
                             [(k, readable(va), readable(vb)) for k, va, vb in d.settings]))
    summary = Table(show_header=False, box=None)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_column(style="dim")
    for row in d.summary():
        summary.add_row(*map(Text, row))
    console.print(summary)
    for title, items in ((f"only in {name_a}", d.only_a), (f"only in {name_b}", d.only_b)):
        if items:
            console.print(_table(f"{title} ({len(items):,})", ("source", "record", "tokens", "trained",
                                                                "the other build"),
                                 [(str(r["source_id"]), r["where"], f"{r['tokens']:,}", f"{r['trained']:,}",
                                   r["other"]) for r in items[:20]], more=len(items) - 20))
    if not d.docs:
        return
    console.print(_table("most changed documents", ("source", "record", "status", "changed", "gained", "lost",
                                                    "trained A→B", "what"),
                         [(doc.label, d.a.where(doc.source_id), doc.status, f"{doc.changed:,}", f"{doc.gained:,}",
                           f"{doc.lost:,}", f"{doc.trained_a:,}→{doc.trained_b:,}", "; ".join(doc.tags))
                          for doc in d.docs[:20]], more=len(d.docs) - 20, right=("changed", "gained", "lost")))
    if plain:
        console.print(legend(True, d.names), highlight=False)
    for doc in d.docs[:limit]:
        console.rule(Text(f"{doc.label} ({d.a.where(doc.source_id)}) · {doc.status} · {doc.changed:,} "
                          f"changed · +{doc.gained:,} −{doc.lost:,} · " + "; ".join(doc.tags)), align="left")
        _print_document(console, d, doc, vocab_a, vocab_b, plain, tokens, context)


def _print_document(console: Console, d: BuildDiff, doc: DocDiff, vocab_a, vocab_b, plain: bool, tokens: bool,
                    context: int) -> None:
    name_a, name_b = d.names
    ids_a, ids_b, mask_a, mask_b = d.a.ids(doc.a), d.b.ids(doc.b), d.a.mask(doc.a), d.b.mask(doc.b)
    if doc.status == "mask":
        differs = mask_a != mask_b
        pieces = vocab_a.pieces(ids_a)
        if tokens:
            console.print(token_lines(ids_a, pieces, [mask_a, mask_b], ["A", "B"],
                                      np.flatnonzero(shown(differs, context))), highlight=False)
        else:
            console.print(render_stream(pieces, lanes_of(mask_a, mask_b), plain, shown(differs, context)),
                          highlight=False)
        return
    # ids differ: each side with its own mask, around its tokens the other lacks or masks otherwise
    al = align(ids_a, ids_b)
    ma, mb = aligned_masks(al, mask_a, mask_b)
    one_side, remasked = (al.ia < 0) | (al.ib < 0), (al.ia >= 0) & (al.ib >= 0) & (ma != mb)
    for name, ids, mask, vocab, idx in ((name_a, ids_a, mask_a, vocab_a, al.ia),
                                        (name_b, ids_b, mask_b, vocab_b, al.ib)):
        flags = np.zeros(len(ids), dtype=bool)
        flags[idx[(idx >= 0) & (one_side | remasked)]] = True
        console.print(Text(f"{name}: {len(ids):,} tokens, {int(mask.sum()):,} trained; "
                           f"{int(((idx >= 0) & one_side).sum()):,} not in the other build, "
                           f"{int(remasked.sum()):,} in both with another mask", style="bold"))
        if flags.any():
            console.print(render_stream(vocab.pieces(ids), mask, plain, shown(flags, context)), highlight=False)


# -- web page ------------------------------------------------------------------------------------------------

def _category(tag: str) -> str:
    return tag.split(" (")[0]


def diff_payload(d: BuildDiff, vocab_a, vocab_b, max_docs: int = 5000) -> dict:
    name_a, name_b = d.names
    docs, ids_a_used, ids_b_used = [], [], []
    for doc in d.docs[:max_docs]:
        ids_a, ids_b, mask_a, mask_b = d.a.ids(doc.a), d.b.ids(doc.b), d.a.mask(doc.a), d.b.mask(doc.b)
        entry = {"key": doc.key, "sid": doc.source_id, "title": f"{doc.label} · {d.a.where(doc.source_id)}",
                 "info": (f"{doc.changed:,} tokens differ · trained {doc.trained_a:,} → {doc.trained_b:,} "
                          f"(+{doc.gained:,} −{doc.lost:,}) · {doc.tokens_a:,} tokens in A, "
                          f"{doc.tokens_b:,} in B"),
                 "cats": ["masks differ" if doc.status == "mask" else "token ids differ"]
                 + [_category(t) for t in doc.tags if not t.startswith("token ids differ")],
                 "tags": list(doc.tags), "ma": mask_string(mask_a), "mb": mask_string(mask_b)}
        ids_a_used.append(ids_a)
        ids_b_used.append(ids_b)
        if doc.status == "mask":
            entry["ids"] = ids_a.tolist()
        else:
            al = align(ids_a, ids_b)
            matched_a, matched_b = np.zeros(len(ids_a), np.uint8), np.zeros(len(ids_b), np.uint8)
            both = (al.ia >= 0) & (al.ib >= 0)
            matched_a[al.ia[both]] = 1
            matched_b[al.ib[both]] = 1
            entry.update(ids_a=ids_a.tolist(), ids_b=ids_b.tolist(), ea=mask_string(matched_a),
                         eb=mask_string(matched_b))
        docs.append(entry)
    for side, (data, items, name) in enumerate(((d.a, d.only_a, name_a), (d.b, d.only_b, name_b))):
        for r in items[:max_docs]:
            ids = data.ids(r["doc"])
            (ids_a_used if side == 0 else ids_b_used).append(ids)
            docs.append({"key": "ab"[side] + document_key(r["source_id"], r["piece"]), "sid": r["source_id"],
                         "side": side, "title": f"source {r['source_id']} · {r['where']} · only in {name}",
                         "info": f"{r['tokens']:,} tokens · {r['trained']:,} trained · the other build: "
                                 f"{r['other']}",
                         "cats": [f"only in {name}"], "tags": [], "ids": ids.tolist(),
                         "ma": mask_string(data.mask(r["doc"]))})
    same_tok = vocab_b is vocab_a
    notes = [{"level": "warn", "text": w} for w in [inputs_warning(d)] if w]
    if len(d.docs) > max_docs:
        notes.append({"level": "warn", "text": f"{len(d.docs):,} documents differ; the {max_docs:,} most changed "
                      "are on this page (see --max-html-docs)."})
    tables = []
    if d.settings:
        tables.append({"title": "Settings that differ", "columns": ["setting", name_a, name_b],
                       "rows": [[k, readable(va), readable(vb)] for k, va, vb in d.settings]})
    for name, items, side in ((name_a, d.only_a, "a"), (name_b, d.only_b, "b")):
        if items:
            tables.append({"title": f"Only in {name} ({len(items):,})",
                           "note": "documents one build holds and the other does not, with the other's reason",
                           "columns": ["source", "record", "tokens", "trained", "the other build"],
                           "rows": [[{"text": str(r["source_id"]), "doc": side + document_key(r["source_id"],
                                                                                             r["piece"])},
                                     r["where"], r["tokens"], r["trained"], r["other"]] for r in items[:max_docs]]})
    if d.docs:
        tables.append({"title": f"Most changed documents ({len(d.docs):,} differ)",
                       "note": "worst first; the source links to the document below",
                       "columns": ["source", "record", "status", "tokens differing", "gained", "lost", "what"],
                       "rows": [[{"text": doc.label, "doc": doc.key}, d.a.where(doc.source_id), doc.status,
                                 doc.changed, doc.gained, doc.lost, "; ".join(doc.tags)]
                                for doc in d.docs[:max_docs]]})
    shown = f"the {len(docs):,} documents on this page"
    if len(d.docs) > max_docs:
        shown += f" (of the {len(d.docs):,} that differ, the {max_docs:,} most changed)"
    return {"kind": "diff", "summary": d.summary(), "notes": notes, "tables": tables,
            "legend": {"a": name_a, "b": name_b}, "search": shown,
            "vocab": [vocab_table(vocab_a, ids_a_used + (ids_b_used if same_tok else [])),
                      "same" if same_tok else vocab_table(vocab_b, ids_b_used)],
            "docs": docs}


def write_diff_html(d: BuildDiff, path: Path, vocab_a, vocab_b, max_docs: int = 5000) -> Path:
    name_a, name_b = d.names
    payload = diff_payload(d, vocab_a, vocab_b, max_docs)
    charts = distribution_charts([(name_a, d.a, "#0969da"), (name_b, d.b, "#d9480f")])
    text = page(f"sftdata diff: {d.a.path} vs {d.b.path}", [f"{name_a}: {d.a.describe()}",
                                                            f"{name_b}: {d.b.describe()}"],
                charts, payload, banner=COMPARATOR_WARNING if d.any_comparator else "")
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


# -- command -------------------------------------------------------------------------------------------------

DIFF_HELP = """\
Compare the masks of two builds of the same inputs, document by document (matched by source id):
counts, trained tokens gained and lost, documents only one build holds (with the other's reject reason),
and the most changed documents with both masks over their tokens.

examples:
  sftdata diff old/ new/                           after a tokenizer, template or sftdata change
  sftdata diff assistant/ last/ --html diff.html   --train-on assistant vs last, as a web page
  sftdata build data.jsonl --tokenizer tok --out classic/ --masker response-template \\
      --response-template "### Assistant:"
  sftdata diff shards/ classic/                    what the classic response-template search breaks

Exit status: 0 when every document matches, 1 when any differs, 2 on error.
"""


def add_parser(sub) -> None:
    add_command(sub, "diff", run, {"A": "a build folder", "B": "another build folder of the same inputs"},
                (DiffSettings, Display), help="compare the masks of two builds, document by document",
                description=DIFF_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)


def run(a: BuildData, b: BuildData, settings: DiffSettings, display: Display) -> int:
    err = make_console(stderr=True)
    result = diff_builds(a, b)
    vocab_a, note_a = load_vocab(a.manifest)
    same_tok = a.manifest.tokenizer.fingerprint == b.manifest.tokenizer.fingerprint
    vocab_b, note_b = (vocab_a, note_a) if same_tok else load_vocab(b.manifest)
    for note in {note_a, note_b} - {None}:
        err.print(f"[yellow]note:[/] {escape(note)}")
    print_diff(make_console(display.color), result, vocab_a or IdsVocab(), vocab_b or IdsVocab(), settings.limit,
               display.tokens, settings.context)
    if settings.html:
        path = write_diff_html(result, Path(settings.html), vocab_a, vocab_b, max_docs=settings.max_html_docs)
        err.print(f"wrote {path}", markup=False)
    return 1 if result.differs else 0
