"""`sftdata view`: built rows in the terminal, each token styled by whether it is trained.

Reads only the build folder. Token ids become readable pieces through the tokenizer the manifest names
(`Vocab`, also used by diff and the report); when it cannot be loaded, or is not the one the build used,
ids are shown instead. Conventions, the same in colour and in plain text (a pipe, `--color never`):

    trained tokens   bold, underlined, green          plain: inside ⟦ … ⟧
    masked tokens    dim                              plain: as is
    token boundary   alternating background shade     plain: │ between tokens
    whitespace       · space  → tab  ␍ CR  ↵ newline (then a real line break)
    special tokens   magenta                          plain: inside ⟪ … ⟫
    document         a rule with source id, tokens, trained tokens (packed rows: one per document)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .manifest import Manifest
from .stats import BuildData
from .token_bytes import Spelling
from .tokenizer import load_tokenizer

# -- token ids to readable pieces ------------------------------------------------------------------------


@dataclass
class Vocab:
    """How token ids read. `piece(id)` is (text, kind): the token's own text with its whitespace, kind
    'text', 'special' (a special token), 'bytes' (part of a UTF-8 character, shown as \\xNN escapes) or
    'unknown' (an id the tokenizer does not have)."""

    backend: object  # tokenizers.Tokenizer
    name: str
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._spell = Spelling(self.backend)
        self._added = {i: (t.content, bool(t.special)) for i, t in self.backend.get_added_tokens_decoder().items()}

    def piece(self, token_id: int) -> tuple[str, str]:
        token_id = int(token_id)
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._piece(token_id)
        return hit

    def pieces(self, ids) -> list[tuple[str, str]]:
        return [self.piece(i) for i in np.asarray(ids).tolist()]

    def _piece(self, token_id: int) -> tuple[str, str]:
        if token_id in self._added:
            content, special = self._added[token_id]
            return content, "special" if special else "text"
        raw = self.backend.id_to_token(token_id)
        if raw is None:
            return f"<id {token_id}>", "unknown"
        data = self._spell(token_id)
        if data is None:
            return raw, "text"
        try:
            return data.decode("utf-8"), "text"
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="backslashreplace"), "bytes"

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` alone, no special tokens added: how the build tokenizes a response template."""
        return np.asarray(self.backend.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self.backend.decode(np.asarray(ids).tolist(), skip_special_tokens=False)


def load_vocab(manifest: Manifest, tokenizer: str | None = None) -> tuple[Vocab | None, str | None]:
    """The build's tokenizer (or `tokenizer`), checked against the manifest's fingerprint.

    Returns (vocab, None), or (None, why not): then callers show ids. Loaded through transformers, as the
    build loads it (transformers rebuilds some tokenizers, so tokenizer.json alone can differ)."""
    name = tokenizer or manifest.config.tokenizer or manifest.tokenizer.name
    if not name:
        return None, "the manifest names no tokenizer; showing token ids"
    expected = manifest.tokenizer.fingerprint
    try:
        backend, fingerprint = _load_backend(str(name))
    except Exception as err:  # transformers raises many kinds; all mean "not loadable here"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, f"cannot load the tokenizer {name!r} ({first}); showing token ids"
    if expected and fingerprint != expected:
        return None, (f"the tokenizer at {name!r} is not the one this build used (fingerprint differs); "
                      "showing token ids (pass --tokenizer with the build's tokenizer)")
    return Vocab(backend, str(name)), None


def _load_backend(name: str):
    """(backend, fingerprint) of the tokenizer as the build loads it (cached after the build, so fast)."""
    tok = load_tokenizer(name, require_template=False)
    return tok.backend, tok.fingerprint


class IdsVocab:
    """Stands in for a Vocab when no tokenizer can be loaded: every token reads as its id."""

    name = None

    def piece(self, token_id: int) -> tuple[str, str]:
        return f"#{int(token_id)}", "id"

    def pieces(self, ids) -> list[tuple[str, str]]:
        return [self.piece(i) for i in np.asarray(ids).tolist()]


# -- terminal rendering (shared with diff) ---------------------------------------------------------------

VISIBLE = str.maketrans({" ": "·", "\t": "→", "\r": "␍", "\n": "↵\n", "\u00a0": "⍽",
                         **{chr(c): chr(0x2400 + c) for c in range(32) if c not in (9, 10, 13)}})

# lanes: what a token is in one mask (view) or two (diff)
MASKED, TRAINED, A_ONLY, B_ONLY = 0, 1, 2, 3
LANE_STYLE = {MASKED: "dim", TRAINED: "bold underline green", A_ONLY: "bold underline white on red3",
              B_ONLY: "bold underline black on yellow3"}
LANE_MARKS = {MASKED: ("", ""), TRAINED: ("⟦", "⟧"), A_ONLY: ("[-", "-]"), B_ONLY: ("{+", "+}")}
SHADE = "on grey23"
SEP = "│"


def visible(text: str) -> str:
    return text.translate(VISIBLE)


def render_stream(pieces: list[tuple[str, str]], lanes: np.ndarray, plain: bool, keep: np.ndarray | None = None):
    """A rich Text of tokens, styled by lane; tokens where `keep` is False are elided ('… N tokens …')."""
    from rich.text import Text

    out = Text()
    lanes = np.asarray(lanes).tolist()
    keep = None if keep is None else np.asarray(keep).tolist()
    current, skipped, at_line_start = None, 0, True
    for i, ((text, kind), lane) in enumerate(zip(pieces, lanes)):
        if keep is not None and not keep[i]:
            skipped += 1
            continue
        if plain and lane != current:
            if current is not None:
                out.append(LANE_MARKS[current][1])
            out.append(LANE_MARKS[lane][0])
        if skipped:
            out.append(f" … {skipped:,} tokens … ", style="italic")
            skipped = 0
        elif plain and not at_line_start and lane == current:
            out.append(SEP, style="dim")
        current = lane
        shown = visible(text)
        if kind == "special":
            shown = f"⟪{shown}⟫" if plain else shown
        style = LANE_STYLE[lane]
        if kind == "special":
            style += " magenta" if lane in (MASKED, TRAINED) else ""
        elif kind in ("bytes", "unknown"):
            style += " italic"
        if not plain and i % 2:
            style += " " + SHADE
        out.append(shown, style=style)
        at_line_start = shown.endswith("\n")
    if skipped:
        out.append(f" … {skipped:,} tokens …", style="italic")
    if plain and current is not None:
        out.append(LANE_MARKS[current][1])
    return out


def token_lines(ids: np.ndarray, pieces, masks: list[np.ndarray], names: list[str], positions=None):
    """`--tokens`: one line per token: position, id, the piece (repr, whitespace visible), its mask(s)."""
    from rich.text import Text

    out = Text()
    header = f"{'pos':>6} {'id':>7}  " + " ".join(f"{n:>7}" for n in names) + "  piece\n"
    out.append(header, style="bold")
    positions = range(len(ids)) if positions is None else positions
    last = None
    for i in positions:
        if last is not None and i > last + 1:
            out.append(f"{'…':>6} {i - last - 1:,} tokens not shown\n", style="italic")
        last = i
        text, kind = pieces[i]
        flags = [int(m[i]) for m in masks]
        marks = " ".join(f"{'trained' if f else '·':>7}" for f in flags)
        differs = len(set(flags)) > 1
        style = "bold yellow" if differs else ("green" if any(flags) else "dim")
        shown = {"special": f"⟪{text}⟫", "bytes": text}.get(kind) or repr(text)
        out.append(f"{i:>6} {int(ids[i]):>7}  {marks}  {shown}{'   ◀ differs' if differs else ''}\n", style=style)
    return out


def document_title(data: BuildData, doc: int) -> str:
    d = data.docs
    n, t = int(d.length[doc]), int(d.trained[doc])
    sid = int(d.source_id[doc])
    piece = f" piece {int(d.piece[doc])}" if d.piece[doc] or len(data.documents_of(sid)) > 1 else ""
    where = f"row {int(d.row[doc])}"
    if d.row_documents[doc] > 1:
        where += f", document {int(d.row_position[doc]) + 1}/{int(d.row_documents[doc])}"
    return (f"source {sid}{piece} ({data.where(sid)}) · {where} · {n:,} tokens · "
            f"{t:,} trained ({t / max(n, 1):.0%})")


def legend(plain: bool) -> str:
    if plain:
        return ("⟦trained⟧ masked │ token boundary · space → tab ↵ newline ⟪special⟫")
    return ("[bold underline green]trained[/] [dim]masked[/] [on grey23]alternate[/] tokens shaded · "
            "[dim]· space → tab ↵ newline[/] [magenta]special[/]")


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
    import argparse

    p = sub.add_parser("view", help="show built rows with trained and masked tokens styled apart",
                       description=VIEW_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("build", metavar="OUT", help="a build folder (holds manifest.json)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--row", type=int, metavar="N", help="row N (0-based, across shards in order)")
    which.add_argument("--source-id", type=int, metavar="N", help="the document(s) of input record N")
    which.add_argument("--grep", metavar="TEXT", help="documents whose text contains TEXT")
    p.add_argument("--limit", type=int, default=5, help="most rows/documents to show (default 5)")
    p.add_argument("--tokens", action="store_true", help="one line per token: position, id, mask, piece")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="auto: colour on a terminal, plain text in a pipe (default)")
    p.add_argument("--no-pager", dest="pager", action="store_false", help="do not page long output")
    p.add_argument("--tokenizer", help="tokenizer folder to read ids with (default: the one in the manifest)")
    p.set_defaults(run=run_view)


def make_console(color: str, stderr: bool = False):
    from rich.console import Console

    # off a terminal rich assumes 80 columns; tables of token pieces read better wider
    width = None if "COLUMNS" in os.environ else 120
    opts = {"stderr": stderr, "soft_wrap": stderr}  # messages on stderr are never broken mid-path
    if color == "always":
        return Console(force_terminal=True, width=width, **opts)
    if color == "never":
        return Console(no_color=True, color_system=None, highlight=False, width=width, **opts)
    console = Console(**opts)
    return console if console.is_terminal else Console(width=width, **opts)


def is_plain(console) -> bool:
    return console.color_system is None or console.no_color


def run_view(args) -> int:
    from rich.markup import escape

    err = make_console("auto", stderr=True)
    try:
        data = BuildData(args.build)
    except (FileNotFoundError, ValueError) as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}")
        return 2
    vocab, note = load_vocab(data.manifest, args.tokenizer)
    if note:
        err.print(f"[yellow]note:[/] {escape(note)}")
    console = make_console(args.color)
    plain = is_plain(console)
    groups, message, status = select_rows(data, vocab, args)
    if message:
        err.print(message)
    if not groups:
        return status
    use_pager = args.pager and console.is_terminal
    if use_pager:
        os.environ.setdefault("LESS", "-FRX")
        with console.pager(styles=not plain):
            _print_groups(console, data, vocab or IdsVocab(), groups, plain, args.tokens)
    else:
        _print_groups(console, data, vocab or IdsVocab(), groups, plain, args.tokens)
    return 0


def select_rows(data: BuildData, vocab: Vocab | None, args) -> tuple[list[tuple[str, list[int]]], str | None, int]:
    """What to show, as (heading, document numbers) groups; a message for stderr (markup) or None; and
    the exit status when there is nothing to show (0: the message answers, e.g. a rejected record)."""
    from rich.markup import escape

    d = data.docs
    if args.row is not None:
        if not 0 <= args.row < data.rows:
            return [], f"[bold red]error:[/] no row {args.row}: the build has {data.rows:,} rows (0-based)", 2
        return [(row_heading(data, args.row), data.documents_in_row(args.row).tolist())], None, 0
    if args.source_id is not None:
        docs = data.documents_of(args.source_id).tolist()
        if docs:
            heading = row_heading(data, int(d.row[docs[0]])) if d.row_documents[docs[0]] > 1 else ""
            return [(heading, docs)], None, 0
        rejected = [r for r in data.rejects if r.get("source_id") == args.source_id]
        if rejected:
            r = rejected[0]
            return [], escape(f"source {args.source_id} ({data.where(args.source_id)}) was rejected: "
                              f"{r['reason']}: {r['detail']}"), 0
        return [], f"[bold red]error:[/] no document or reject has source id {args.source_id}", 2
    if args.grep is not None:
        if vocab is None:
            return [], "[bold red]error:[/] --grep needs the build's tokenizer to read the documents' text", 2
        hits = []
        for doc in range(len(d)):
            if args.grep in vocab.decode(data.ids(doc)):
                hits.append(doc)
                if len(hits) >= args.limit:
                    break
        if not hits:
            return [], escape(f"no document contains {args.grep!r}"), 1
        return [("", hits)], None, 0
    if not data.rows:
        return [], "the build holds no rows: every record was rejected (see `sftdata stats`)", 0
    rows = range(min(args.limit, data.rows))
    return [(row_heading(data, r), data.documents_in_row(r).tolist()) for r in rows], None, 0


def row_heading(data: BuildData, row: int) -> str:
    docs = data.documents_in_row(row)
    tokens = int(data.row_tokens[row])
    fill = f" ({tokens / data.max_length:.0%} of max length {data.max_length:,})" if data.max_length else ""
    return f"row {row} · {len(docs)} document{'s' if len(docs) != 1 else ''} · {tokens:,} tokens{fill}"


def _print_groups(console, data: BuildData, vocab, groups, plain: bool, tokens: bool) -> None:
    from rich.text import Text

    console.print(data.describe(), style="bold", markup=False, highlight=False)
    if data.is_comparator:
        console.print("COMPARATOR build: these masks reproduce the classic response-template search, "
                      "not sftdata's masks", style="bold yellow")
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
