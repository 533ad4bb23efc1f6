"""`sftdata diff A B`: how the masks of two builds of the same inputs differ, document by document.

Documents are matched by (source_id, piece) (see stats.py). For each pair the tokens are aligned: the
same ids position by position when the ids are equal, else an alignment of the ids (equal stretches
matched, the rest on one side only). Everything is computed as numpy arrays first (`diff_builds`,
`compare_documents`, `classify`), then shown in the terminal or written as one HTML page.

Directions: "gained" tokens are trained in B and not in A; "lost" ones are trained in A and not in B.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .manifest import Manifest
from .stats import BuildData

ALIGN_LIMIT = 4000  # beyond this many differing tokens in the middle, no token alignment is attempted
HEADER_TOKENS = 8  # an untrained stretch right before a reply counts as its header up to this many tokens
# settings that do not change what a build writes
IGNORED_SETTINGS = {"workers", "batch_size", "shard_tokens"}


# -- pure core ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alignment:
    """Token pairs: ia[k], ib[k] index A's and B's tokens (-1: the token is on the other side only).
    Pairs with both >= 0 hold equal ids."""

    ia: np.ndarray
    ib: np.ndarray

    @property
    def same_ids(self) -> bool:
        return bool((self.ia >= 0).all() and (self.ib >= 0).all())


def align(ids_a: np.ndarray, ids_b: np.ndarray) -> Alignment:
    na, nb = len(ids_a), len(ids_b)
    if na == nb and np.array_equal(ids_a, ids_b):
        return Alignment(np.arange(na), np.arange(nb))
    n = min(na, nb)
    neq = np.flatnonzero(ids_a[:n] != ids_b[:n])
    pre = int(neq[0]) if neq.size else n
    tail_a, tail_b = ids_a[pre:][::-1], ids_b[pre:][::-1]
    m = min(len(tail_a), len(tail_b))
    neq = np.flatnonzero(tail_a[:m] != tail_b[:m])
    suf = int(neq[0]) if neq.size else m
    mid_a, mid_b = ids_a[pre : na - suf], ids_b[pre : nb - suf]
    ia, ib = [np.arange(pre)], [np.arange(pre)]
    if len(mid_a) + len(mid_b) <= ALIGN_LIMIT:
        matcher = difflib.SequenceMatcher(None, mid_a.tolist(), mid_b.tolist(), autojunk=False)
        opcodes = matcher.get_opcodes()
    else:
        opcodes = [("replace", 0, len(mid_a), 0, len(mid_b))]
    for op, a0, a1, b0, b1 in opcodes:
        if op == "equal":
            ia.append(np.arange(a0, a1) + pre)
            ib.append(np.arange(b0, b1) + pre)
            continue
        ia += [np.arange(a0, a1) + pre, np.full(b1 - b0, -1)]
        ib += [np.full(a1 - a0, -1), np.arange(b0, b1) + pre]
    ia += [np.arange(na - suf, na)]
    ib += [np.arange(nb - suf, nb)]
    return Alignment(np.concatenate(ia).astype(np.int64), np.concatenate(ib).astype(np.int64))


def aligned_masks(al: Alignment, mask_a: np.ndarray, mask_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks along the alignment; a token on one side only counts as untrained on the other."""
    ma = np.where(al.ia >= 0, mask_a[np.maximum(al.ia, 0)] if len(mask_a) else 0, 0).astype(np.uint8)
    mb = np.where(al.ib >= 0, mask_b[np.maximum(al.ib, 0)] if len(mask_b) else 0, 0).astype(np.uint8)
    return ma, mb


def runs(mask: np.ndarray) -> np.ndarray:
    """[start, end) of each contiguous stretch of 1s, shape (k, 2)."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask, dtype=np.int8), [0]]))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1)


def _ordinal(kept: list[int], n: int) -> str:
    if kept == [0]:
        return "the first"
    if kept == [n - 1]:
        return "the last"
    return f"turn {kept[0] + 1}"


def _one_way(ref: np.ndarray, other: np.ndarray, ref_name: str, other_name: str) -> list[str]:
    """What `other` does to the trained turns of `ref`, and what it trains that `ref` does not."""
    tags = []
    turns = runs(ref)
    n = len(turns)
    dropped = [k for k, (s, e) in enumerate(turns) if not other[s:e].any()]
    if dropped and n > 1:
        kept = [k for k in range(n) if k not in dropped]
        if len(kept) == 1:
            tags.append(f"{other_name} trains only {_ordinal(kept, n)} of {ref_name}'s {n} trained turns")
        elif kept:
            tags.append(f"{other_name} drops {len(dropped)} of {ref_name}'s {n} trained turns")
    partial = [(s, e) for s, e in turns if other[s:e].any() and not other[s:e].all()]
    if any(other[s] and not other[e - 1] and other[s : e - 1].all() for s, e in partial):
        tags.append(f"{other_name} leaves the end-of-turn token untrained")
    elif partial:
        tags.append(f"{other_name} trains part of a turn {ref_name} trains whole")
    ends, starts = set(turns[:, 1].tolist()), set(turns[:, 0].tolist())
    for s, e in runs((other == 1) & (ref == 0)).tolist():
        if s in ends and e in starts:
            tag = f"{other_name} trains the prompt turns between replies"
        elif s in ends and e == len(ref):
            tag = f"{other_name} trains the tokens after the last reply"
        elif s in ends:
            tag = f"{other_name} trains past the end of a reply"
        elif e in starts and e - s <= HEADER_TOKENS:
            tag = f"{other_name} trains the header before a reply"
        elif e in starts:
            tag = f"{other_name} trains prompt text before a reply"
        else:
            tag = f"{other_name} trains prompt text {ref_name} masks"
        if tag not in tags:
            tags.append(tag)
    return tags


def classify(mask_a: np.ndarray, mask_b: np.ndarray, name_a: str = "A", name_b: str = "B") -> list[str]:
    """Short phrases naming how two masks over the same tokens differ (empty when they do not)."""
    ta, tb = int(mask_a.sum()), int(mask_b.sum())
    if ta and not tb:
        return [f"{name_b} trains nothing"]
    if tb and not ta:
        return [f"{name_a} trains nothing"]
    if np.array_equal(mask_a, mask_b):
        return []
    return _one_way(mask_a, mask_b, name_a, name_b) + [
        t for t in _one_way(mask_b, mask_a, name_b, name_a) if "trains only" in t or "drops" in t]


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


def compare_documents(ids_a, mask_a, ids_b, mask_b, name_a="A", name_b="B") -> tuple[Alignment, dict]:
    """The alignment of two documents and what differs (the fields of DocDiff but the identifiers)."""
    al = align(ids_a, ids_b)
    ma, mb = aligned_masks(al, mask_a, mask_b)
    one_side = (al.ia < 0) | (al.ib < 0)
    differs = one_side | (ma != mb)
    same = al.same_ids
    if same:
        tags = classify(ma, mb, name_a, name_b)
    else:
        tags = [f"token ids differ ({len(ids_a):,} vs {len(ids_b):,} tokens; "
                f"{int((al.ib < 0).sum()):,} only in {name_a}, {int((al.ia < 0).sum()):,} only in {name_b})"]
        if mask_a.any() and not mask_b.any():
            tags.append(f"{name_b} trains nothing")
        elif mask_b.any() and not mask_a.any():
            tags.append(f"{name_a} trains nothing")
    facts = {
        "status": "identical" if not differs.any() else ("mask" if same else "ids"),
        "changed": int(differs.sum()),
        "gained": int(((mb == 1) & (ma == 0)).sum()),
        "lost": int(((ma == 1) & (mb == 0)).sum()),
        "tokens_a": len(ids_a), "tokens_b": len(ids_b),
        "trained_a": int(mask_a.sum()), "trained_b": int(mask_b.sum()),
        "tags": tuple(tags),
    }
    return al, facts


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
        return side_name(self.a, "A"), side_name(self.b, "B")

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


def side_name(data: BuildData, letter: str) -> str:
    return f"{letter} (comparator)" if data.is_comparator else letter


def _keys(data: BuildData) -> np.ndarray:
    return data.docs.source_id.astype(np.int64) * (1 << 20) + data.docs.piece


def settings_changes(a: Manifest, b: Manifest) -> list[tuple[str, object, object]]:
    """What differs between two manifests in what shapes the output."""
    pairs = [("sftdata version", a.sftdata_version, b.sftdata_version),
             ("tokenizer", a.tokenizer.name, b.tokenizer.name),
             ("tokenizer fingerprint", a.tokenizer.fingerprint[:12], b.tokenizer.fingerprint[:12]),
             ("template fingerprint", a.template.fingerprint[:12], b.template.fingerprint[:12]),
             ("inputs", [i.path for i in a.inputs], [i.path for i in b.inputs])]
    ca, cb = a.config.to_json(), b.config.to_json()
    pairs += [(k, ca.get(k), cb.get(k)) for k in sorted(set(ca) | set(cb)) if k not in IGNORED_SETTINGS | {"tokenizer"}]
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


# -- terminal ----------------------------------------------------------------------------------------------

def lanes_of(ma: np.ndarray, mb: np.ndarray) -> np.ndarray:
    from .viewer import A_ONLY, B_ONLY, MASKED, TRAINED

    lanes = np.full(len(ma), MASKED, dtype=np.int8)
    lanes[(ma == 1) & (mb == 1)] = TRAINED
    lanes[(ma == 1) & (mb == 0)] = A_ONLY
    lanes[(ma == 0) & (mb == 1)] = B_ONLY
    return lanes


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


def print_diff(console, d: BuildDiff, vocab_a, vocab_b, limit: int, tokens: bool, context: int) -> None:
    from rich.table import Table
    from rich.text import Text

    from .viewer import is_plain, render_stream, token_lines

    plain = is_plain(console)
    name_a, name_b = d.names
    for name, data in ((name_a, d.a), (name_b, d.b)):
        console.print(Text(f"{name}: {data.describe()}", style="bold yellow" if data.is_comparator else "bold"))
    if d.a.is_comparator or d.b.is_comparator:
        console.print("A comparator build reproduces the classic response-template masking, to show which "
                      "examples it breaks; it is not a recommended way to build.", style="yellow")
    if d.settings:
        t = Table(title="settings that differ", title_justify="left")
        for col in ("setting", "A", "B"):
            t.add_column(col)
        for k, va, vb in d.settings:
            t.add_row(k, str(va), str(vb))
        console.print(t)
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_column(style="dim")
    for row in d.summary():
        t.add_row(*row)
    console.print(t)
    for title, items in ((f"only in {name_a}", d.only_a), (f"only in {name_b}", d.only_b)):
        if not items:
            continue
        t = Table(title=f"{title} ({len(items):,})", title_justify="left")
        for col in ("source", "record", "tokens", "trained", "the other build"):
            t.add_column(col)
        for r in items[:20]:
            t.add_row(str(r["source_id"]), r["where"], f"{r['tokens']:,}", f"{r['trained']:,}", r["other"])
        if len(items) > 20:
            t.add_row("…", f"{len(items) - 20:,} more", "", "", "")
        console.print(t)
    if not d.docs:
        return
    t = Table(title="most changed documents", title_justify="left")
    for col in ("source", "record", "status", "changed", "gained", "lost", "trained A→B", "what"):
        t.add_column(col, justify="right" if col in ("changed", "gained", "lost") else "left")
    for doc in d.docs[:20]:
        t.add_row(_doc_label(doc), d.a.where(doc.source_id), doc.status, f"{doc.changed:,}", f"{doc.gained:,}",
                  f"{doc.lost:,}", f"{doc.trained_a:,}→{doc.trained_b:,}", "; ".join(doc.tags))
    if len(d.docs) > 20:
        t.add_row("…", f"{len(d.docs) - 20:,} more", "", "", "", "", "", "")
    console.print(t)
    if plain:
        console.print(f"⟦trained in both⟧ [-trained in {name_a} only-] {{+trained in {name_b} only+}} masked in both "
                      "│ token boundary · space ↵ newline ⟪special⟫", highlight=False, markup=False)
    for doc in d.docs[:limit]:
        console.rule(Text(f"{_doc_label(doc)} ({d.a.where(doc.source_id)}) · {doc.status} · {doc.changed:,} "
                          f"changed · +{doc.gained:,} −{doc.lost:,} · " + "; ".join(doc.tags)), align="left")
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
            continue
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
                console.print(render_stream(vocab.pieces(ids), mask, plain, shown(flags, context)),
                              highlight=False)


def _doc_label(doc: DocDiff) -> str:
    return f"source {doc.source_id}" + (f" piece {doc.piece}" if doc.piece else "")


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
    p = sub.add_parser("diff", help="compare the masks of two builds, document by document",
                       description=DIFF_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="A", help="a build folder")
    p.add_argument("b", metavar="B", help="another build folder of the same inputs")
    p.add_argument("--html", metavar="FILE", help="also write the comparison as one self-contained web page")
    p.add_argument("--limit", type=int, default=3, help="documents to show token by token (default 3)")
    p.add_argument("--context", type=int, default=12,
                   help="unchanged tokens shown around each difference (default 12)")
    p.add_argument("--tokens", action="store_true", help="one line per token near differences: id, masks, piece")
    p.add_argument("--max-html-docs", type=int, default=5000,
                   help="most differing documents to put in the web page, most changed first (default 5000)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    p.set_defaults(run=run_diff)


def run_diff(args) -> int:
    from rich.markup import escape

    from .viewer import IdsVocab, load_vocab, make_console

    err = make_console("auto", stderr=True)
    try:
        a, b = BuildData(args.a), BuildData(args.b)
    except (FileNotFoundError, ValueError) as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        return 2
    result = diff_builds(a, b)
    vocab_a, note_a = load_vocab(a.manifest)
    same_tok = a.manifest.tokenizer.fingerprint == b.manifest.tokenizer.fingerprint
    vocab_b, note_b = (vocab_a, note_a) if same_tok else load_vocab(b.manifest)
    for note in {note_a, note_b} - {None}:
        err.print(f"[yellow]note:[/] {escape(note)}")
    console = make_console(args.color)
    print_diff(console, result, vocab_a or IdsVocab(), vocab_b or IdsVocab(), args.limit, args.tokens, args.context)
    if args.html:
        path = write_diff_html(result, Path(args.html), vocab_a, vocab_b, max_docs=args.max_html_docs)
        err.print(f"wrote {path}")
    return 1 if result.differs else 0


# -- web page ------------------------------------------------------------------------------------------------

def _category(tag: str) -> str:
    return tag.split(" (")[0]


def diff_payload(d: BuildDiff, vocab_a, vocab_b, max_docs: int = 5000) -> dict:
    from . import html as page_html

    name_a, name_b = d.names
    docs, ids_a_used, ids_b_used = [], [], []
    for doc in d.docs[:max_docs]:
        ids_a, ids_b, mask_a, mask_b = d.a.ids(doc.a), d.b.ids(doc.b), d.a.mask(doc.a), d.b.mask(doc.b)
        entry = {"key": f"s{doc.source_id}p{doc.piece}", "sid": doc.source_id,
                 "title": f"{_doc_label(doc)} · {d.a.where(doc.source_id)}",
                 "info": (f"{doc.changed:,} tokens differ · trained {doc.trained_a:,} → {doc.trained_b:,} "
                          f"(+{doc.gained:,} −{doc.lost:,}) · {doc.tokens_a:,} tokens in A, {doc.tokens_b:,} in B"),
                 "cats": ["masks differ" if doc.status == "mask" else "token ids differ"]
                 + [_category(t) for t in doc.tags if not t.startswith("token ids differ")],
                 "tags": list(doc.tags), "ma": page_html.mask_string(mask_a), "mb": page_html.mask_string(mask_b)}
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
            entry.update(ids_a=ids_a.tolist(), ids_b=ids_b.tolist(), ea=page_html.mask_string(matched_a),
                         eb=page_html.mask_string(matched_b))
        docs.append(entry)
    for side, (data, items, name) in enumerate(((d.a, d.only_a, name_a), (d.b, d.only_b, name_b))):
        for r in items[:max_docs]:
            ids = data.ids(r["doc"])
            (ids_a_used if side == 0 else ids_b_used).append(ids)
            docs.append({"key": f"{'ab'[side]}s{r['source_id']}p{r['piece']}", "sid": r["source_id"], "side": side,
                         "title": f"source {r['source_id']} · {r['where']} · only in {name}",
                         "info": f"{r['tokens']:,} tokens · {r['trained']:,} trained · the other build: {r['other']}",
                         "cats": [f"only in {name}"], "tags": [], "ids": ids.tolist(),
                         "ma": page_html.mask_string(data.mask(r["doc"]))})
    same_tok = vocab_b is vocab_a
    notes = []
    for name, data in ((name_a, d.a), (name_b, d.b)):
        if data.is_comparator:
            notes.append({"level": "warn", "text": f"{name} is a COMPARATOR build: response-template masking of "
                          f"{data.config.response_template!r}, reproduced to show which examples it breaks."})
    if len(d.docs) > max_docs:
        notes.append({"level": "warn", "text": f"{len(d.docs):,} documents differ; the {max_docs:,} most changed "
                      "are on this page (see --max-html-docs)."})
    tables = []
    if d.settings:
        tables.append({"title": "Settings that differ", "columns": ["setting", name_a, name_b],
                       "rows": [[k, str(va), str(vb)] for k, va, vb in d.settings]})
    for name, items, side in ((name_a, d.only_a, "a"), (name_b, d.only_b, "b")):
        if items:
            tables.append({"title": f"Only in {name} ({len(items):,})",
                           "note": "documents one build holds and the other does not, with the other's reason",
                           "columns": ["source", "record", "tokens", "trained", "the other build"],
                           "rows": [[{"text": str(r["source_id"]), "doc": f"{side}s{r['source_id']}p{r['piece']}"},
                                     r["where"], r["tokens"], r["trained"], r["other"]] for r in items[:200]]})
    if d.docs:
        tables.append({"title": f"Most changed documents ({len(d.docs):,} differ)",
                       "note": "worst first; the source links to the document below",
                       "columns": ["source", "record", "status", "tokens differing", "gained", "lost", "what"],
                       "rows": [[{"text": _doc_label(doc), "doc": f"s{doc.source_id}p{doc.piece}"},
                                 d.a.where(doc.source_id), doc.status, doc.changed, doc.gained, doc.lost,
                                 "; ".join(doc.tags)] for doc in d.docs[:50]]})
    return {"kind": "diff", "summary": d.summary(), "notes": notes, "tables": tables,
            "legend": {"a": name_a, "b": name_b},
            "vocab": [page_html.vocab_table(vocab_a, ids_a_used + (ids_b_used if same_tok else [])),
                      "same" if same_tok else page_html.vocab_table(vocab_b, ids_b_used)],
            "docs": docs}


def write_diff_html(d: BuildDiff, path: Path, vocab_a, vocab_b, max_docs: int = 5000) -> Path:
    from . import html as page_html
    from .report import COMPARATOR_BANNER, distribution_charts

    name_a, name_b = d.names
    payload = diff_payload(d, vocab_a, vocab_b, max_docs)
    charts = distribution_charts([(name_a, d.a, "#0969da"), (name_b, d.b, "#d9480f")])
    banner = COMPARATOR_BANNER if d.a.is_comparator or d.b.is_comparator else ""
    text = page_html.page(f"sftdata diff: {d.a.path} vs {d.b.path}",
                          [f"{name_a}: {d.a.describe()}", f"{name_b}: {d.b.describe()}"], charts, payload, banner)
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path
