"""OUT/report.html and `sftdata diff --html`: written by default, well-formed, self-contained, holding the
documents worth a look with their baseline, and rendering in a real headless browser."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftdata.cli import main
from sftdata.comparators import response_template_mask
from sftdata.config import Masker, TrainOn
from sftdata.inspect.build_data import BuildData, DocIndex
from sftdata.inspect.charts import distribution_charts, length_bins
from sftdata.inspect.diff import diff_builds, diff_payload
from sftdata.inspect.page import PAGE_SIZE, embed_json
from sftdata.inspect.report import (
    REPORT,
    Baseline,
    baseline_counts,
    first_k,
    first_matches,
    report_payload,
    select_documents,
    write_report,
)
from sftdata.inspect.vocab import load_vocab

from ..conftest import fixture_tokenizer
from .builders import CHATML, RESPONSE_TEMPLATE, chat, make_build, plain_template, write_chats

CHROMIUM = Path("/usr/bin/chromium")
MANY = [chat(f"Question {i}?", f"Answer {i}.", f"Follow-up {i}?", f"Second answer {i}.") for i in range(45)]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    many = write_chats(root / "many_in", MANY)
    out = {
        "template": make_build(root, "template", response_template=RESPONSE_TEMPLATE),
        "comparator": make_build(root, "comparator", masker=Masker.RESPONSE_TEMPLATE,
                                 response_template=RESPONSE_TEMPLATE),
        "packed": make_build(root, "packed", pack=True, max_length=200),
        "many_assistant": make_build(root, "many_assistant", inputs=[many]),
        "many_last": make_build(root, "many_last", inputs=[many], train_on=TrainOn.LAST),
    }
    for name in ("template", "comparator", "packed"):
        write_report(BuildData(out[name]))
    assert main(["diff", str(out["many_assistant"]), str(out["many_last"]), "--html",
                 str(root / "many_diff.html"), "--color", "never", "--limit", "0"]) == 1
    assert main(["diff", str(out["template"]), str(out["comparator"]), "--html",
                 str(root / "comparator_diff.html"), "--color", "never", "--limit", "0"]) == 1
    out["many_diff"] = root / "many_diff.html"
    out["comparator_diff"] = root / "comparator_diff.html"
    return out


VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "embed", "source", "track", "wbr"}


class _Checker(HTMLParser):
    """Every element closed, in order; the embedded data kept."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.scripts, self._in_data = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.stack.append(tag)
        self._in_data = tag == "script"
        if tag == "script":
            self.scripts.append((dict(attrs), ""))

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
        self._in_data = False

    def handle_data(self, data):
        if self._in_data:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)


def _parse(path: Path) -> tuple[str, dict]:
    text = path.read_text(encoding="utf-8")
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.stack == [], f"unclosed elements: {checker.stack}"
    (data,) = [t for a, t in checker.scripts if a.get("type") == "application/json"]
    assert len(checker.scripts) == 2, "only the data and the page's own script"
    return text, json.loads(data)


def test_build_writes_the_report_by_default_and_not_with_no_report(tmp_path, capsys):
    chats = write_chats(tmp_path)
    out = tmp_path / "out"
    args = ["build", str(chats), "--tokenizer", CHATML, "--out", str(out), "--workers", "1", "--quiet"]
    assert main(args) == 0
    assert (out / REPORT).is_file() and "report:" in capsys.readouterr().err
    _parse(out / REPORT)
    assert main(args + ["--overwrite", "--no-report"]) == 0
    assert not (out / REPORT).exists(), "a stale report of the previous build is left behind"


def test_the_report_after_a_build_reads_ids_with_the_tokenizer_the_build_loaded(tmp_path, monkeypatch):
    """The command loads the tokenizer once, for the build and its report: a second load cost the
    report more than half its time."""
    import sftdata.inspect.vocab

    def no_second_load(*args, **kwargs):
        raise AssertionError("the report loaded the tokenizer again")

    monkeypatch.setattr(sftdata.inspect.vocab, "load_tokenizer", no_second_load)
    out = tmp_path / "out"
    assert main(["build", str(write_chats(tmp_path)), "--tokenizer", CHATML, "--out", str(out), "--quiet"]) == 0
    _, data = _parse(out / REPORT)
    assert data["notes"] == [] and ["<|im_end|>", "special"] in data["vocab"][0].values()  # not ids


def test_report_is_well_formed_self_contained_and_escaped(builds):
    text, data = _parse(builds["template"] / REPORT)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text), "the page loads something remote"
    assert "<link" not in text and "@import" not in text
    # the conversation with markup in it reaches the page only as data
    assert "<b>this</b>" not in text and "</script><script>alert" not in text
    assert any("alert(1)" in "".join(data["vocab"][0][str(i)][0] for i in d["ids"]) for d in data["docs"])
    assert "<svg" in text and text.count("<svg") == 3  # lengths, trained ratios, row fill


def test_report_holds_the_documents_worth_a_look(builds):
    _, data = _parse(builds["template"] / REPORT)
    build = BuildData(builds["template"])
    assert {d["sid"] for d in data["docs"]} == {0, 1, 2, 4, 6}  # five documents: every one is worth a look
    vocab, _ = load_vocab(build.manifest)
    one_each, _ = report_payload(build, vocab, [], per_category=1)
    by_cat = {c: d["sid"] for d in one_each["docs"] for c in d["cats"]}
    ratio = dict(zip(build.docs.source_id.tolist(), build.docs.ratio.tolist()))
    assert by_cat["multi-turn"] == 2  # three trained turns
    assert by_cat["longest"] == 4
    assert by_cat["most trained"] == max(ratio, key=ratio.get)
    assert by_cat["least trained"] == min(ratio, key=ratio.get)
    assert "differs most from baseline" in by_cat and "random" in by_cat
    for d in data["docs"]:
        (doc,) = build.documents_of(d["sid"]).tolist()
        assert d["ids"] == build.ids(doc).tolist()
        assert d["ma"] == "".join(map(str, build.mask(doc).tolist()))
    (rejects,) = [t for t in data["tables"] if t["title"].startswith("Rejected records")]
    assert {(r[0], r[2]) for r in rejects["rows"]} == {(3, "no_trainable_tokens"), (5, "no_trainable_tokens")}
    summary = {row[0]: row[1] for row in data["summary"]}
    assert summary["documents"] == "5" and summary["rejected"] == "2"
    assert summary["trained tokens"] == f"{int(build.docs.trained.sum()):,}"


def test_baseline_is_the_response_template_comparator_when_one_is_given(builds):
    from transformers import AutoTokenizer

    template = np.array(AutoTokenizer.from_pretrained(CHATML).backend_tokenizer.encode(
        RESPONSE_TEMPLATE, add_special_tokens=False).ids)
    build = BuildData(builds["template"])
    _, data = _parse(builds["template"] / REPORT)
    assert "response template" in data["legend"]["b"]
    for d in data["docs"]:
        (doc,) = build.documents_of(d["sid"]).tolist()
        assert d["mb"] == "".join(map(str, response_template_mask(build.ids(doc), template).tolist()))
    counts = baseline_counts(build, Baseline("t", template))
    for doc in range(len(build.docs)):
        classic = response_template_mask(build.ids(doc), template)
        assert counts["trained"][doc] == classic.sum()
        assert counts["differ"][doc] == (classic != build.mask(doc)).sum()
    everything = baseline_counts(build, Baseline("all", None))
    assert everything["trained"].tolist() == (build.docs.length - 1).tolist()


def test_first_matches_is_find_subsequence_for_every_document():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, size=400)
    starts = np.sort(rng.choice(np.arange(1, 400), size=30, replace=False))
    starts = np.concatenate([[0], starts])
    ends = np.concatenate([starts[1:], [400]])
    for pattern in (np.array([1, 2]), np.array([3]), np.array([0, 1, 2, 3]), np.array([2, 2, 2])):
        got = first_matches(ids, starts, ends, pattern)
        for s, e, at in zip(starts, ends, got):
            mask = response_template_mask(ids[s:e], pattern)
            if at < 0:
                assert not mask.any()
            else:
                assert mask[: at - s + len(pattern)].sum() == 0 and mask[at - s + len(pattern):].all()
                assert (ids[at : at + len(pattern)] == pattern).all()


def test_sentencepiece_report_counts_the_template_never_found(tmp_path):
    out = make_build(tmp_path, "spm", tokenizer=fixture_tokenizer("llama2-spm"),
                     chat_template=plain_template(tmp_path), response_template="### Assistant:")
    data = BuildData(out)
    vocab, note = load_vocab(data.manifest)
    assert note is None
    payload, _ = report_payload(data, vocab, [])
    summary = {row[0]: row[1] for row in payload["summary"]}
    assert summary["template not found"] == "5" and summary["baseline trains"] == "0"
    assert all("baseline trains nothing" in d["tags"] for d in payload["docs"])


def test_comparator_build_is_labelled_and_compared_with_train_everything(builds):
    text, data = _parse(builds["comparator"] / REPORT)
    assert "COMPARATOR build" in text
    assert data["legend"]["b"] == "the baseline (train every token)"


def test_packed_report_charts_packing_fill(builds):
    text, data = _parse(builds["packed"] / REPORT)
    assert "Packing fill" in text
    rows = {row[0]: row[2] for row in data["summary"]}
    assert rows["rows"].startswith("packed; fill")
    infos = [d["info"] for d in data["docs"]]
    assert any(re.search(r"row \d+, document \d+/\d+ ·", i) for i in infos)


def test_length_axis_follows_the_documents_and_marks_the_limit_when_reached(builds):
    short = BuildData(builds["template"])  # documents of at most 170 tokens, max length 4,096
    longest = int(short.docs.length.max())
    assert longest < 200
    bins = length_bins(short.docs.length, short.max_length)
    assert longest <= bins[-1] < 1.2 * longest, "the axis runs to the length limit, not the data"
    assert 15 <= len(bins) - 1 <= 40
    (lengths, *_), = [distribution_charts([("x", short, "#000")])]
    assert "max length 4,096: beyond the longest document" in lengths and 'class="mk"' not in lengths
    packed = BuildData(builds["packed"])  # max length 200: the longest document, 170 tokens, comes near it
    (lengths, *_), = [distribution_charts([("x", packed, "#000")])]
    assert 'class="mk"' in lengths and "max length 200<" in lengths


def test_settings_read_as_words_not_python_values(builds):
    text, _ = _parse(builds["packed"] / REPORT)
    (settings,) = re.findall(r"<div>settings: (.*?)</div>", text)
    assert "pack on" in settings and "max length 200" in settings and "train on assistant" in settings
    assert not re.search(r"\b(True|False|None)\b", settings)


def test_select_documents_categories():
    n = 8
    length = np.array([10, 50, 90, 30, 95, 20, 60, 70])
    trained = np.array([5, 10, 9, 30, 1, 2, 30, 7])
    runs = np.array([1, 3, 1, 1, 1, 2, 1, 1])
    z = np.zeros(n, dtype=np.int64)
    d = DocIndex(segment=z, start=z, length=length, trained=trained, runs=runs, source_id=np.arange(n),
                 piece=z, row=np.arange(n), row_position=z, row_documents=z + 1)
    picks = dict(select_documents(d, max_length=100, differ=np.array([0, 0, 5, 0, 0, 0, 9, 0]), k=2))
    cats = {}
    for doc, names in picks.items():
        for c in names:
            cats.setdefault(c, []).append(doc)
    assert set(cats["multi-turn"]) == {1, 5}
    assert set(cats["longest"]) == {4, 2}
    assert set(cats["most trained"]) == {3, 0} and set(cats["least trained"]) == {4, 2}  # ties: first
    assert set(cats["near length limit"]) == {4, 2}
    assert set(cats["differs most from baseline"]) == {6, 2}
    assert len(cats["random"]) == 2
    assert list(picks)[:2] == [1, 5], "documents come in category order"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=40), st.lists(st.integers(0, 3), min_size=40, max_size=40),
       st.integers(1, 8))
def test_first_k_is_the_head_of_a_full_sort(primary, secondary, k):
    a, b = np.array(primary), np.array(secondary[: len(primary)])
    positions = np.arange(len(a))
    assert first_k(k, a, b).tolist() == np.lexsort((positions, b, a))[:k].tolist()
    assert first_k(k, -a).tolist() == np.lexsort((positions, -a))[:k].tolist()


def test_embedded_json_cannot_close_the_script():
    text = embed_json({"x": "</script><!-- & -->"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"x": "</script><!-- & -->"}


def test_diff_page_pages_the_documents_and_labels_the_comparator(builds):
    text, data = _parse(builds["many_diff"])
    assert len(data["docs"]) == 45 and all("masks differ" in d["cats"] for d in data["docs"])
    assert {row[0]: row[1] for row in data["summary"]}["differing only in mask"] == "45"
    text, data = _parse(builds["comparator_diff"])
    assert "COMPARATOR build" in text and data["legend"]["b"] == "B (comparator)"
    assert any(d["cats"] == ["only in B (comparator)"] and d["sid"] == 5 for d in data["docs"])


def test_diff_page_reads_every_token_of_both_sides(tmp_path):
    a, b = make_build(tmp_path, "a"), make_build(tmp_path, "b", system_prompt="Be brief.")
    d = diff_builds(BuildData(a), BuildData(b))
    vocab, _ = load_vocab(d.a.manifest)
    data = diff_payload(d, vocab, vocab)
    assert data["vocab"][1] == "same"
    table = data["vocab"][0]
    for doc in data["docs"]:
        assert doc["cats"] == ["token ids differ"]
        for ids in (doc["ids_a"], doc["ids_b"]):
            assert all(str(i) in table for i in ids)
        assert "".join(table[str(i)][0] for i in doc["ids_b"]).startswith("<|im_start|>system\nBe brief.")
        assert doc["ea"] == "1" * len(doc["ids_a"]) and doc["eb"].count("0") == len(doc["ids_b"]) - len(doc["ids_a"])


def _chromium(tmp_path: Path, page: Path, *extra: str, url: str | None = None) -> str:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", *extra, url or page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed at /usr/bin/chromium "
                    "(scripts/setup.sh installs it: apt-get install chromium)")
def test_pages_render_in_a_headless_browser(builds, tmp_path):
    dom = _chromium(tmp_path, builds["template"] / REPORT, "--dump-dom")
    assert 'data-rendered="1"' in dom, "the page's script did not run to the end"
    # these elements exist only once the script has turned the embedded JSON into the page
    assert re.search(r"<th>documents</th><td class=\"num\">5</td>", dom)
    assert re.search(r"<th>baseline trains</th>", dom)
    assert "documents 1–5 of 5" in dom and "searching the 5 documents sampled of 5" in dom
    assert dom.count('<article class="doc"') == 5
    assert re.search(r"<body class=\"report\" data-rendered", dom), "the baseline is not drawn faintly"
    dom = _chromium(tmp_path, builds["many_diff"], "--dump-dom")
    assert re.search(r"<th>differing only in mask</th><td class=\"num\">45</td>", dom)
    assert dom.count('<article class="doc"') == PAGE_SIZE, "all documents rendered at once, not a page"
    assert "page 1 of 3" in dom
    # the table of 45 changed documents shows a page of rows, with a pager saying how many there are
    (table,) = re.findall(r"<h2>Most changed documents \(45 differ\)</h2>(.*?)</section>", dom)
    assert table.count("<tr>") == 1 + 25 and "rows 1–25 of 45" in table
    # the search box filters the documents (set here through the page's #q= link form)
    page = (builds["many_diff"]).resolve().as_uri()
    dom = _chromium(tmp_path, Path(builds["many_diff"]), "--dump-dom", url=page + "#q=answer%2017.")
    assert "documents 1–1 of 1" in dom and dom.count('<article class="doc"') == 1
    dom = _chromium(tmp_path, Path(builds["many_diff"]), "--dump-dom", url=page + "#q=nowhere%20said")
    assert "no document matches in the 45 documents on this page" in dom
    dom = _chromium(tmp_path, Path(builds["many_diff"]), "--dump-dom", url=page + "#s30p0")
    assert 'id="s30p0"' in dom and dom.count('<article class="doc"') == 1
    shot = tmp_path / "report.png"
    _chromium(tmp_path, builds["template"] / REPORT, f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.stat().st_size > 10_000
