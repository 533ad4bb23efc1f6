(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("data").textContent);
  var PAGE = data.page_size, SHOWN = data.tokens_shown, TABLE_PAGE = data.table_page_size;
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

  // a table longer than a page shows TABLE_PAGE rows at a time, with its own pager
  function renderTables() {
    var box = document.getElementById("tables");
    (data.tables || []).forEach(function (t) {
      var sec = el("section", "card"), at = 0;
      sec.appendChild(el("h2", null, t.title));
      if (t.note) sec.appendChild(el("p", "muted", t.note));
      var table = el("table", "grid"), nav = el("div", "pager");
      sec.appendChild(table);
      sec.appendChild(nav);
      function show() {
        var head = el("tr");
        t.columns.forEach(function (c) { head.appendChild(el("th", null, c)); });
        table.replaceChildren(head);
        t.rows.slice(at, at + TABLE_PAGE).forEach(function (row) { table.appendChild(tableRow(row)); });
        if (t.rows.length > TABLE_PAGE) {
          pagerInto(nav, at / TABLE_PAGE, Math.ceil(t.rows.length / TABLE_PAGE), function (p) {
            at = p * TABLE_PAGE;
            show();
          }, "rows " + (at + 1) + "\u2013" + Math.min(at + TABLE_PAGE, t.rows.length) + " of " + t.rows.length);
        }
      }
      show();
      box.appendChild(sec);
    });
  }
  function tableRow(row) {
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
    return tr;
  }
  // previous / "label" / next buttons in `box`; go(p) shows page p (0-based) of `pages`
  function pagerInto(box, page, pages, go, label) {
    box.replaceChildren();
    var prev = el("button", null, "\u2190 previous"), next = el("button", null, "next \u2192");
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
    prev.addEventListener("click", function () { go(page - 1); });
    next.addEventListener("click", function () { go(page + 1); });
    box.appendChild(prev);
    box.appendChild(el("span", "muted", label));
    box.appendChild(next);
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
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    pagerInto(box, page, pages, function (p) { page = p; renderPage(true); }, "page " + (page + 1) + " of " + pages);
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
      "documents " + (from + 1) + "\u2013" + to + " of " + shown.length : "no document matches in " + data.search;
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
      sample("bo", "trained by " + names.b + " only" + (data.kind === "report" ?
        " (dotted orange underline: the baseline is drawn only where it differs, and faintly)" :
        " (orange, bold, dotted underline)"));
    }
    sample("", "masked (grey; every other token shaded)");
    if (data.kind === "diff") sample("d", "token not in the other build (red outline)");
    sample("sp", "special token");
    box.appendChild(el("span", null, "\u00b7 space  \u2192 tab  \u21b5 newline"));
  }

  function init() {
    document.body.classList.add(data.kind);
    document.getElementById("scope").textContent = "searching " + data.search;
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
