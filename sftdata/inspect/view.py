"""`sftdata view`: built rows in the terminal, each token styled by whether it is trained.

Reads only the build folder. Token ids become readable pieces through the tokenizer the manifest names
(vocab.py); when it cannot be loaded, or is not the one the build used, ids are shown instead. How tokens
are drawn: terminal.py. A rule with source id, position, tokens and trained tokens heads each document
(one per document of a packed row).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from ..options import setting
from .build_data import COMPARATOR_WARNING, BuildData
from .terminal import Display, add_command, is_plain, legend, make_console, render_stream, token_lines
from .vocab import IdsVocab, Vocab, VocabSettings, load_vocab


@dataclass(frozen=True)
class Selection:
    """Which documents to show: at most one of these; none: the first rows."""

    row: int | None = setting(None, "row N (0-based, across shards in order)", metavar="N")
    source_id: int | None = setting(None, "the document(s) of input record N", metavar="N")
    grep: str | None = setting(None, "documents whose text contains TEXT", metavar="TEXT")


@dataclass(frozen=True)
class ViewSettings:
    limit: int = setting(5, "most rows/documents to show")
    pager: bool = setting(True, "page long output", negative="no-pager")


def document_title(data: BuildData, doc: int) -> str:
    sid = int(data.docs.source_id[doc])
    return f"{data.source_label(doc)} ({data.where(sid)}) · {data.position(doc)} · {data.size(doc)}"


def row_heading(data: BuildData, row: int) -> str:
    docs = data.documents_in_row(row)
    tokens = int(data.row_tokens[row])
    fill = f" ({tokens / data.max_length:.0%} of max length {data.max_length:,})" if data.max_length else ""
    return f"row {row} · {len(docs)} document{'s' if len(docs) != 1 else ''} · {tokens:,} tokens{fill}"


def grep_documents(data: BuildData, vocab: Vocab, text: str, limit: int) -> tuple[list[int], bool]:
    """The first `limit` documents whose decoded text contains `text`, and whether more do."""
    hits = []
    for doc in range(len(data.docs)):
        if text in vocab.decode(data.ids(doc)):
            if len(hits) == limit:
                return hits, True
            hits.append(doc)
    return hits, False


def select_rows(data: BuildData, vocab: Vocab | None, which: Selection,
                limit: int) -> tuple[list[tuple[str, list[int]]], str | None, int]:
    """What to show, as (heading, document numbers) groups; a message for stderr (markup) or None; and
    the exit status when there is nothing to show (0: the message answers, e.g. a rejected record)."""
    d = data.docs
    if which.row is not None:
        if not 0 <= which.row < data.rows:
            return [], f"[bold red]error:[/] no row {which.row}: the build has {data.rows:,} rows (0-based)", 2
        return [(row_heading(data, which.row), data.documents_in_row(which.row).tolist())], None, 0
    if which.source_id is not None:
        docs = data.documents_of(which.source_id).tolist()
        if docs:
            heading = row_heading(data, int(d.row[docs[0]])) if d.row_documents[docs[0]] > 1 else ""
            return [(heading, docs)], None, 0
        rejected = [r for r in data.rejects if r.get("source_id") == which.source_id]
        if rejected:
            r = rejected[0]
            return [], escape(f"source {which.source_id} ({data.where(which.source_id)}) was rejected: "
                              f"{r['reason']}: {r['detail']}"), 0
        return [], f"[bold red]error:[/] no document or reject has source id {which.source_id}", 2
    if which.grep is not None:
        if vocab is None:
            return [], "[bold red]error:[/] --grep needs the build's tokenizer to read the documents' text", 2
        hits, more = grep_documents(data, vocab, which.grep, limit)
        if not hits:
            return [], escape(f"no document contains {which.grep!r}"), 1
        note = escape(f"more than {limit:,} documents contain {which.grep!r}; showing the first {limit:,} "
                      "(--limit N shows more)") if more else None
        return [("", hits)], note, 0
    if not data.rows:
        return [], "the build holds no rows: every record was rejected (see `sftdata stats`)", 0
    rows = range(min(limit, data.rows))
    return [(row_heading(data, r), data.documents_in_row(r).tolist()) for r in rows], None, 0


def print_groups(console: Console, data: BuildData, vocab, groups, tokens: bool) -> None:
    plain = is_plain(console)
    console.print(data.describe(), style="bold", markup=False, highlight=False)
    if data.is_comparator:
        console.print(COMPARATOR_WARNING, style="bold yellow", markup=False)
    console.print(legend(plain), highlight=False)
    for heading, docs in groups:
        if heading:
            console.rule(Text(heading, style="bold"), characters="═")
        for doc in docs:
            console.rule(Text(document_title(data, doc)), align="left", characters="─")
            ids, mask = data.ids(doc), data.mask(doc)
            pieces = vocab.pieces(ids)
            if tokens:
                console.print(token_lines(ids, pieces, [mask], ["mask"]), highlight=False, soft_wrap=True)
            else:
                console.print(render_stream(pieces, mask, plain), highlight=False)


# -- the command -------------------------------------------------------------------------------------------

VIEW_HELP = """\
Show built rows with each token styled by its loss mask. Reads only the build folder (and the tokenizer
the manifest names, to turn ids into text; without it ids are shown).

examples:
  sftdata view shards/                   the first rows
  sftdata view shards/ --row 12          one row (every document in it, when packed)
  sftdata view shards/ --source-id 40    the document(s) of input record 40, or why it was rejected
  sftdata view shards/ --grep "### Assistant"  --tokens
  sftdata view shards/ --row 3 --color never | less
"""


def add_parser(sub) -> None:
    add_command(sub, "view", run, {"OUT": "a build folder (holds manifest.json)"},
                (Selection, ViewSettings, Display, VocabSettings), one_of=Selection,
                help="show built rows with trained and masked tokens styled apart", description=VIEW_HELP,
                formatter_class=argparse.RawDescriptionHelpFormatter)


def run(data: BuildData, which: Selection, settings: ViewSettings, display: Display, reading: VocabSettings) -> int:
    err = make_console(stderr=True)
    vocab, note = load_vocab(data.manifest, reading.tokenizer)
    if note:
        err.print(f"[yellow]note:[/] {escape(note)}")
    groups, message, status = select_rows(data, vocab, which, settings.limit)
    if message:
        err.print(message)
    if not groups:
        return status
    console = make_console(display.color)
    if settings.pager and console.is_terminal:
        os.environ.setdefault("LESS", "-FRX")
        with console.pager(styles=not is_plain(console)):
            print_groups(console, data, vocab or IdsVocab(), groups, display.tokens)
    else:
        print_groups(console, data, vocab or IdsVocab(), groups, display.tokens)
    return 0
