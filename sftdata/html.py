"""One self-contained HTML page for the build report and `sftdata diff --html`.

The page needs nothing from the network. Python writes the static parts (title, charts as inline SVG)
and embeds everything else as JSON in a `<script type="application/json">`; a little vanilla JS
renders the summary and tables from it, and the documents a page (PAGE_SIZE) at a time, each document's
tokens only once it scrolls near the viewport, so thousands of documents stay responsive. Search and
category filters run over the JSON. All data reaches the DOM through textContent, never as markup.

Payload (the JSON): title, summary [[label, value, note]], notes [{level, text}], tables
[{title, note, columns, rows}] (a cell may be {"text", "doc"}: a link to a document), legend
{a, b}, vocab [A's, B's] ({id: [text, kind]}; null: show ids; B's "same": A's), docs [{key, sid, title, info, cats, tags,
and either ids + ma + mb (one token sequence, two masks as "0"/"1" strings) or ids_a, ids_b, ma, mb, ea, eb
(two sequences; ea/eb flag tokens matched in the other)}]; a document one build alone holds has ids
and ma only, and side 1 when it is B's.
"""

from __future__ import annotations

import html
import json

import numpy as np

PAGE_SIZE = 20
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


# -- charts -----------------------------------------------------------------------------------------------

def _nice(n: float) -> str:
    if n >= 10000:
        return f"{n / 1000:.0f}k"
    if n >= 1000:
        return f"{n / 1000:.1f}k"
    return f"{n:g}" if n != int(n) else f"{int(n)}"


def histogram_svg(title: str, series: list[tuple[str, np.ndarray, str]], bins: np.ndarray, x_label: str,
                  x_format=_nice, marker: tuple[float, str] | None = None, note: str = "") -> str:
    """A histogram as inline SVG; several series share the bins as side-by-side bars."""
    w, h, left, right, top, bottom = 400, 220, 46, 14, 40, 44
    pw, ph = w - left - right, h - top - bottom
    esc = html.escape
    counts = [np.histogram(np.asarray(v, dtype=np.float64), bins=bins)[0] for _, v, _ in series]
    ymax = max([int(c.max()) for c in counts if c.size] + [1])
    ymax += ymax % 2  # so the middle grid line is a whole count
    nb = len(bins) - 1
    bw = pw / nb
    out = [f'<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
           f'aria-label="{esc(title)}" xmlns="http://www.w3.org/2000/svg">',
           f'<text x="{left}" y="16" class="ct">{esc(title)}</text>']
    if note:
        out.append(f'<text x="{left}" y="31" class="cn">{esc(note)}</text>')
    for frac in (0, 0.5, 1):
        y = top + ph - frac * ph
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="gl"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" class="yt">{esc(_nice(round(ymax * frac)))}</text>')
    s = len(series)
    for k, ((name, _, color), c) in enumerate(zip(series, counts)):
        for i, n in enumerate(c.tolist()):
            if not n:
                continue
            bh = n / ymax * ph
            x = left + i * bw + k * bw / s + 0.5
            label = f"{name}: " if s > 1 else ""
            out.append(f'<rect x="{x:.1f}" y="{top + ph - bh:.1f}" width="{max(bw / s - 1, 1):.1f}" '
                       f'height="{bh:.1f}" fill="{color}"><title>{esc(label)}{esc(x_format(bins[i]))}–'
                       f'{esc(x_format(bins[i + 1]))}: {n:,}</title></rect>')
    for i in range(0, nb + 1, max(nb // 5, 1)):
        x = left + i * bw
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" class="xt">{esc(x_format(bins[i]))}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{h - 6}" class="xl">{esc(x_label)}</text>')
    if marker is not None and bins[0] <= marker[0] <= bins[-1]:
        x = left + (marker[0] - bins[0]) / (bins[-1] - bins[0]) * pw
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" class="mk"/>'
                   f'<text x="{x - 4:.1f}" y="{top + 10}" class="mt">{esc(marker[1])}</text>')
    if s > 1:
        x = w - right
        for name, _, color in reversed(series):
            x -= 14 + 6 * len(name) + 10
            out.append(f'<rect x="{x:.0f}" y="8" width="10" height="10" fill="{color}"/>'
                       f'<text x="{x + 14:.0f}" y="17" class="lg">{esc(name)}</text>')
    if not any(c.sum() for c in counts):
        out.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" class="xl">no data</text>')
    out.append("</svg>")
    return "".join(out)


# -- the page ------------------------------------------------------------------------------------------------

def page(title: str, subtitle: list[str], charts: list[str], payload: dict, banner: str = "") -> str:
    esc = html.escape
    sub = "".join(f"<div>{esc(line)}</div>" for line in subtitle)
    banner_html = f'<div class="banner">{esc(banner)}</div>' if banner else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="sftdata">
<title>{esc(title)}</title>
<style>{CSS}</style>
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
<div class="pager" id="pager-top"></div><div id="docs"></div><div class="pager" id="pager-bottom"></div>
</section>
</main>
<script type="application/json" id="data">{embed_json(payload)}</script>
<script>{JS.replace("__PAGE_SIZE__", str(PAGE_SIZE)).replace("__TOKENS_SHOWN__", str(TOKENS_SHOWN))}</script>
</body>
</html>
"""


CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--bg:#f6f8fa;--train:#c4ecc9;--train2:#94d8a0;
--alt:#e4e8ec;--diff:#cf222e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header.top{background:#fff;border-bottom:1px solid var(--line);padding:16px 24px}
h1{font-size:20px;margin:0 0 6px}h2{font-size:16px;margin:0 0 10px}h3{font-size:14px;margin:0}
.sub{color:var(--muted);font-size:13px;overflow-wrap:anywhere}
.banner{margin-top:10px;padding:8px 12px;background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;font-weight:600}
main{padding:16px 24px;max-width:1400px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin-bottom:16px}
table{border-collapse:collapse}
table.summary th{text-align:left;font-weight:600;padding:3px 16px 3px 0;white-space:nowrap}
table.summary td{padding:3px 16px 3px 0}
td.num{text-align:right;font-variant-numeric:tabular-nums;font-weight:600}
td.note,.muted{color:var(--muted)}
table.grid{width:100%;font-size:13px}
table.grid th,table.grid td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
table.grid th{background:var(--bg)}
.notes p{margin:6px 0;padding:6px 10px;border-radius:6px;background:#ddf4ff}
.notes p.warn{background:#fff8c5}
.charts{display:flex;flex-wrap:wrap;gap:10px}
svg.chart{background:#fff;border:1px solid var(--line);border-radius:6px;max-width:100%;height:auto}
svg .ct{font-size:13px;font-weight:600;fill:var(--fg)}svg .cn,svg .lg{font-size:11px;fill:var(--muted)}
svg .yt{font-size:10px;fill:var(--muted);text-anchor:end}svg .xt{font-size:10px;fill:var(--muted);text-anchor:middle}
svg .xl{font-size:11px;fill:var(--muted);text-anchor:middle}svg .gl{stroke:#eaeef2}
svg .mk{stroke:var(--diff);stroke-dasharray:4 3}svg .mt{font-size:10px;fill:var(--diff);text-anchor:end}
.controls{display:flex;gap:8px;align-items:center;margin:10px 0}
.controls input{flex:1;max-width:420px;padding:6px 8px;border:1px solid var(--line);border-radius:6px;font:inherit}
.controls select{padding:6px;border:1px solid var(--line);border-radius:6px;font:inherit}
.pager{display:flex;gap:6px;align-items:center;margin:8px 0}
.pager button,.more{font:inherit;padding:3px 10px;border:1px solid var(--line);border-radius:6px;background:#fff;cursor:pointer}
.pager button:disabled{opacity:.4;cursor:default}
article.doc{border:1px solid var(--line);border-radius:8px;margin:12px 0;background:#fff}
article.doc>header{padding:8px 12px;border-bottom:1px solid var(--line);background:var(--bg);border-radius:8px 8px 0 0}
.info{color:var(--muted);font-size:12px;margin-top:2px}
.badge{display:inline-block;font-size:11px;padding:1px 7px;border-radius:10px;margin:3px 4px 0 0;background:#ddf4ff;color:#0550ae}
.badge.tag{background:#ffebe9;color:#a40e26}
.body{padding:10px 12px;min-height:24px}
.toks{font:12.5px/1.9 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere;white-space:normal}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px}.cols h4{margin:0 0 4px;font-size:12px}
.t{padding:1px 0;color:#8c959f;text-underline-offset:3px;box-shadow:inset -1px 0 0 rgba(255,255,255,.9)}
.t.k1{background:var(--alt)}
.t.tr{background:var(--train);color:#0a3622;text-decoration:underline;text-decoration-color:#1a7f37}
.t.tr.k1{background:var(--train2)}
.t.ao{background:#cfe2ff;color:#052c65;font-weight:700;text-decoration:underline;text-decoration-color:#0550ae}
.t.ao.k1{background:#9ec5fe}
.t.bo{background:#ffe4c4;color:#6b2c00;font-weight:700;text-decoration:underline dotted;text-decoration-color:#bc4c00}
.t.bo.k1{background:#ffc785}
.t.d{outline:2px solid var(--diff);outline-offset:-1px}
.t.sp{color:#8250df;font-style:italic}.t.tr.sp,.t.ao.sp,.t.bo.sp{color:#5a32a3}
.t.by{font-style:italic}
.legend{display:flex;flex-wrap:wrap;gap:14px;font-size:12px;color:var(--muted)}
.legend .toks{font-size:12px}
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("data").textContent);
  var PAGE = __PAGE_SIZE__, SHOWN = __TOKENS_SHOWN__;
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }

  function renderSummary() {
    var box = document.getElementById("summary");
    var table = el("table", "summary");
    data.summary.forEach(function (r) {
      var tr = el("tr");
      tr.appendChild(el("th", null, r[0]));
      tr.appendChild(el("td", "num", r[1]));
      tr.appendChild(el("td", "note", r[2] || ""));
      table.appendChild(tr);
    });
    box.replaceChildren(table);
    if (data.notes && data.notes.length) {
      var notes = el("div", "notes");
      data.notes.forEach(function (n) { notes.appendChild(el("p", n.level || "", n.text)); });
      box.appendChild(notes);
    }
  }

  function renderTables() {
    var box = document.getElementById("tables");
    (data.tables || []).forEach(function (t) {
      var sec = el("section", "card");
      sec.appendChild(el("h2", null, t.title));
      if (t.note) sec.appendChild(el("p", "muted", t.note));
      var table = el("table", "grid"), head = el("tr");
      t.columns.forEach(function (c) { head.appendChild(el("th", null, c)); });
      table.appendChild(head);
      t.rows.forEach(function (row) {
        var tr = el("tr");
        row.forEach(function (cell) {
          var td = el("td");
          if (cell && typeof cell === "object") {
            var a = el("a", null, cell.text);
            a.href = "#" + cell.doc;
            a.addEventListener("click", function (ev) { ev.preventDefault(); showDoc(cell.doc); });
            td.appendChild(a);
          } else {
            td.textContent = cell == null ? "" : String(cell);
          }
          tr.appendChild(td);
        });
        table.appendChild(tr);
      });
      sec.appendChild(table);
      box.appendChild(sec);
    });
  }

  // ---- tokens
  var vocabs = data.vocab || [null, null];
  function piece(side, id) {
    var v = vocabs[side];
    if (v === "same") v = vocabs[0];
    var p = v ? v[id] : null;
    return p || ["#" + id, "id"];
  }
  function visible(text) {
    return text.replace(/ /g, "\u00b7").replace(/\t/g, "\u2192").replace(/\r/g, "\u240d").replace(/\n/g, "\u21b5");
  }
  function stream(side, ids, ma, mb, marks, limit) {
    var box = el("div", "toks"), n = Math.min(ids.length, limit);
    for (var i = 0; i < n; i++) {
      var p = piece(side, ids[i]), cls = "t";
      if (i % 2) cls += " k1";
      var ta = ma[i] === "1", tb = mb ? mb[i] === "1" : ta;
      if (ta && tb) cls += " tr";
      else if (ta) cls += " ao";
      else if (tb) cls += " bo";
      if (marks && marks(i)) cls += " d";
      if (p[1] === "special") cls += " sp";
      else if (p[1] === "bytes" || p[1] === "unknown") cls += " by";
      var span = el("span", cls, visible(p[0]));
      span.dataset.i = i;
      box.appendChild(span);
      for (var k = p[0].split("\n").length - 1; k > 0; k--) box.appendChild(document.createElement("br"));
    }
    box.addEventListener("mouseover", function (ev) {
      var t = ev.target;
      if (!t.dataset || t.dataset.i == null || t.title) return;
      var j = +t.dataset.i, names = data.legend || {};
      t.title = "token " + j + " \u00b7 id " + ids[j] + " \u00b7 " + (names.a || "A") + ": " +
        (ma[j] === "1" ? "trained" : "masked") +
        (mb ? " \u00b7 " + (names.b || "B") + ": " + (mb[j] === "1" ? "trained" : "masked") : "");
    });
    return box;
  }
  function renderBody(d, body, all) {
    var limit = all ? Infinity : SHOWN;
    body.replaceChildren();
    var total;
    if (d.ids) {
      total = d.ids.length;
      body.appendChild(stream(d.side || 0, d.ids, d.ma, d.mb, null, limit));
    } else {
      total = Math.max(d.ids_a.length, d.ids_b.length);
      var cols = el("div", "cols"), names = data.legend || {};
      [[0, d.ids_a, d.ma, d.ea, names.a || "A"], [1, d.ids_b, d.mb, d.eb, names.b || "B"]].forEach(function (s) {
        var col = el("div");
        col.appendChild(el("h4", null, s[4] + " \u00b7 " + s[1].length + " tokens"));
        col.appendChild(stream(s[0], s[1], s[2], null, function (i) { return s[3][i] !== "1"; }, limit));
        cols.appendChild(col);
      });
      body.appendChild(cols);
    }
    if (total > limit) {
      var more = el("button", "more", "show all " + total + " tokens");
      more.addEventListener("click", function () { renderBody(d, body, true); });
      body.appendChild(more);
    }
  }

  // ---- documents: filter, pages, lazy bodies
  var docs = data.docs || [], shown = [], page = 0, texts = {};
  var observer = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (e) {
      if (e.isIntersecting && e.target._doc) {
        observer.unobserve(e.target);
        renderBody(e.target._doc, e.target, false);
        e.target._doc = null;
      }
    });
  }, {rootMargin: "600px"}) : null;
  function textOf(i) {
    if (texts[i] == null) {
      var d = docs[i], ids = d.ids || d.ids_a, parts = [];
      for (var k = 0; k < ids.length; k++) parts.push(piece(0, ids[k])[0]);
      if (d.ids_b) for (k = 0; k < d.ids_b.length; k++) parts.push(piece(1, d.ids_b[k])[0]);
      texts[i] = (d.title + "\n" + (d.tags || []).join("\n") + "\n" + parts.join("")).toLowerCase();
    }
    return texts[i];
  }
  function filter() {
    var q = document.getElementById("q").value.trim().toLowerCase();
    var cat = document.getElementById("cat").value;
    shown = [];
    for (var i = 0; i < docs.length; i++) {
      var d = docs[i];
      if (cat && (d.cats || []).indexOf(cat) < 0) continue;
      if (q) {
        if (q.charAt(0) === "#") { if (String(d.sid) !== q.slice(1)) continue; }
        else if (textOf(i).indexOf(q) < 0) continue;
      }
      shown.push(i);
    }
    page = 0;
    renderPage();
  }
  function pager(box) {
    box.replaceChildren();
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    var prev = el("button", null, "\u2190 previous"), next = el("button", null, "next \u2192");
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
    prev.addEventListener("click", function () { page--; renderPage(true); });
    next.addEventListener("click", function () { page++; renderPage(true); });
    box.appendChild(prev);
    box.appendChild(el("span", "muted", "page " + (page + 1) + " of " + pages));
    box.appendChild(next);
  }
  function card(d) {
    var art = el("article", "doc"), head = el("header");
    art.id = d.key;
    head.appendChild(el("h3", null, d.title));
    if (d.info) head.appendChild(el("div", "info", d.info));
    var badges = el("div");
    (d.cats || []).forEach(function (c) { badges.appendChild(el("span", "badge", c)); });
    (d.tags || []).forEach(function (c) {
      if ((d.cats || []).indexOf(c) < 0) badges.appendChild(el("span", "badge tag", c));
    });
    head.appendChild(badges);
    art.appendChild(head);
    var body = el("div", "body");
    body.appendChild(el("span", "muted", "\u2026"));
    art.appendChild(body);
    if (observer) { body._doc = d; observer.observe(body); } else renderBody(d, body, false);
    return art;
  }
  function renderPage(scroll) {
    var box = document.getElementById("docs");
    box.replaceChildren();
    var from = page * PAGE, to = Math.min(shown.length, from + PAGE);
    for (var i = from; i < to; i++) box.appendChild(card(docs[shown[i]]));
    document.getElementById("count").textContent = shown.length ?
      "documents " + (from + 1) + "\u2013" + to + " of " + shown.length : "no document matches";
    pager(document.getElementById("pager-top"));
    pager(document.getElementById("pager-bottom"));
    if (scroll) document.getElementById("documents").scrollIntoView();
  }
  function showDoc(key) {
    for (var i = 0; i < docs.length; i++) if (docs[i].key === key) {
      document.getElementById("q").value = "#" + docs[i].sid;
      document.getElementById("cat").value = "";
      filter();
      var target = document.getElementById(key);
      if (target) target.scrollIntoView();
      return;
    }
  }

  function renderLegend() {
    var box = document.getElementById("legend"), names = data.legend || {};
    function sample(cls, label) {
      var item = el("span"), t = el("span", "toks");
      t.appendChild(el("span", "t " + cls, "token"));
      item.appendChild(t);
      item.appendChild(document.createTextNode(" " + label));
      box.appendChild(item);
    }
    sample("tr", "trained" + (names.b ? " by both" : "") + " (green, underlined)");
    if (names.b) {
      sample("ao", "trained by " + (names.a || "A") + " only (blue, bold)");
      sample("bo", "trained by " + names.b + " only (orange, bold, dotted underline)");
    }
    sample("", "masked (grey; every other token shaded)");
    if (data.kind === "diff") sample("d", "token not in the other build (red outline)");
    sample("sp", "special token");
    box.appendChild(el("span", null, "\u00b7 space  \u2192 tab  \u21b5 newline"));
  }

  function init() {
    renderSummary();
    renderTables();
    renderLegend();
    var cats = {};
    docs.forEach(function (d) { (d.cats || []).forEach(function (c) { cats[c] = (cats[c] || 0) + 1; }); });
    var sel = document.getElementById("cat");
    sel.appendChild(el("option", null, "all categories (" + docs.length + ")")).value = "";
    Object.keys(cats).forEach(function (c) { sel.appendChild(el("option", null, c + " (" + cats[c] + ")")).value = c; });
    var timer = null;
    document.getElementById("q").addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(filter, 200);
    });
    sel.addEventListener("change", filter);
    // page.html#q=TEXT opens with that search, page.html#KEY with that document
    var hash = decodeURIComponent(location.hash.slice(1));
    if (hash.indexOf("q=") === 0) document.getElementById("q").value = hash.slice(2);
    filter();
    if (hash && hash.indexOf("q=") !== 0) showDoc(hash);
    document.body.setAttribute("data-rendered", "1");
  }
  init();
})();
"""
