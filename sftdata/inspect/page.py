"""One self-contained HTML page: the build report and `sftdata diff --html`.

The page needs nothing from the network. Python writes the static parts (title, charts as inline SVG)
and embeds everything else as JSON in a `<script type="application/json">`; a little vanilla JS
(static/report.js, styled by static/report.css: package data, inlined into every page) renders the
summary and tables from it, and the documents a page (PAGE_SIZE) at a time, each document's tokens only
once it scrolls near the viewport, so thousands of documents stay responsive. Search and category
filters run over the JSON. All data reaches the DOM through textContent, never as markup.

Payload (the JSON): title, summary [[label, value, note]], notes [{level, text}], tables
[{title, note, columns, rows}] (a cell may be {"text", "doc"}: a link to a document), legend
{a, b}, vocab [A's, B's] ({id: [text, kind]}; null: show ids; B's "same": A's), docs [{key, sid, title,
info, cats, tags, and either ids + ma + mb (one token sequence, two masks as "0"/"1" strings) or ids_a,
ids_b, ma, mb, ea, eb (two sequences; ea/eb flag tokens matched in the other)}]; a document one build
alone holds has ids and ma only, and side 1 when it is B's; search: which documents the search box
searches. `page` adds the page sizes and tokens_shown.
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib.resources import files

import numpy as np

PAGE_SIZE = 20  # documents per page
TABLE_PAGE_SIZE = 25  # rows of a table per page
TOKENS_SHOWN = 3000  # tokens rendered per document before a "show all" button


def embed_json(payload: dict) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' can end the element or open a comment."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def mask_string(mask: np.ndarray) -> str:
    return (np.asarray(mask, dtype=np.uint8) + ord("0")).tobytes().decode("ascii")


def vocab_table(vocab, ids_lists) -> dict | None:
    """The pieces of every id the page shows, {id: [text, kind]}; None when no tokenizer was loaded."""
    if vocab is None:
        return None
    used = np.unique(np.concatenate([np.asarray(i, dtype=np.int64) for i in ids_lists])) if ids_lists else []
    return {str(i): list(vocab.piece(i)) for i in np.asarray(used).tolist()}


@cache
def _static(name: str) -> str:
    """A file of static/, installed with the package as package data."""
    return files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def page(title: str, subtitle: list[str], charts: list[str], payload: dict, banner: str = "") -> str:
    esc = html.escape
    data = {**payload, "page_size": PAGE_SIZE, "table_page_size": TABLE_PAGE_SIZE, "tokens_shown": TOKENS_SHOWN}
    sub = "".join(f"<div>{esc(line)}</div>" for line in subtitle)
    banner_html = f'<div class="banner">{esc(banner)}</div>' if banner else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="sftdata">
<title>{esc(title)}</title>
<style>{_static("report.css")}</style>
</head>
<body>
<header class="top"><h1>{esc(title)}</h1><div class="sub">{sub}</div>{banner_html}</header>
<main>
<section class="card" id="summary-card"><h2>Summary</h2>
<div id="summary"><noscript>This page renders its summary and documents with JavaScript; the data is
embedded in the page (script id="data").</noscript></div></section>
<section class="card"><h2>Distributions</h2><div class="charts">{"".join(charts)}</div></section>
<div id="tables"></div>
<section class="card" id="documents"><h2>Documents</h2>
<div id="legend" class="legend"></div>
<div class="controls"><input id="q" type="search" placeholder="search text, or #source-id" aria-label="search">
<select id="cat" aria-label="category"></select><span id="count" class="muted"></span></div>
<div id="scope" class="muted"></div>
<div class="pager" id="pager-top"></div><div id="docs"></div><div class="pager" id="pager-bottom"></div>
</section>
</main>
<script type="application/json" id="data">{embed_json(data)}</script>
<script>{_static("report.js")}</script>
</body>
</html>
"""
