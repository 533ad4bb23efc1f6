"""`sftdata view`: plain-text markers for trained / masked tokens, token and document boundaries."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sftdata.cli import main
from sftdata.inspect.build_data import BuildData
from sftdata.inspect.terminal import visible
from sftdata.inspect.vocab import Vocab, load_vocab
from sftdata.tiktoken_bpe import byte_level_alphabet
from sftdata.tokenizer import load_tokenizer

from ..conftest import fixture_tokenizer
from .builders import CHATS, make_build


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("view")
    return {"plain": make_build(root, "plain"), "packed": make_build(root, "packed", pack=True, max_length=200)}


def _view(capsys, *args) -> tuple[int, str, str]:
    code = main(["view", *map(str, args), "--color", "never", "--no-pager"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _body(out: str) -> str:
    """The tokens: what follows the last document's header rule."""
    return re.split(r"^source \d+ .*─+$\n", out, flags=re.M)[-1]


def _split(text: str) -> tuple[str, str]:
    """(trained, masked) text of plain viewer output, token separators removed."""
    body = text.replace("│", "")
    trained = "".join(re.findall(r"⟦(.*?)⟧", body, flags=re.S))
    masked = re.sub(r"⟦.*?⟧", "", body, flags=re.S)
    return trained, masked


def test_plain_output_marks_trained_and_masked_tokens(builds, capsys):
    code, out, _ = _view(capsys, builds["plain"], "--source-id", 0)
    assert code == 0
    trained, masked = _split(_body(out))
    # the replies and the end-of-turn token closing each are trained; the prompts and headers are not
    assert visible("Paris is the capital.") + "⟪<|im_end|>⟫" in trained
    assert visible("Rome is.") + "⟪<|im_end|>⟫" in trained
    assert visible("What is the capital of France?") in masked
    assert visible("And of Italy?") in masked and "Italy" not in trained
    assert "⟪<|im_start|>⟫assistant↵" in masked and "assistant" not in trained
    assert trained.count("⟪<|im_end|>⟫") == 2  # exactly the two replies' end-of-turn tokens


def test_plain_output_shows_every_token_boundary_and_whitespace(builds, capsys):
    data = BuildData(builds["plain"])
    vocab, note = load_vocab(data.manifest)
    assert note is None
    (doc,) = data.documents_of(1).tolist()
    _, out, _ = _view(capsys, builds["plain"], "--source-id", 1)
    body = _body(out)
    # each token is one cell between separators or line breaks (a token ending a line needs none)
    cells = [c for c in re.split(r"│|\n", re.sub(r"[⟦⟧]", "", body)) if c]
    expected = [f"⟪{t}⟫" if kind == "special" else visible(t).replace("\n", "")
                for t, kind in vocab.pieces(data.ids(doc))]
    assert "".join(cells) == "".join(expected)
    assert len(cells) >= len([e for e in expected if e.strip("↵")])
    assert "·" in body and "↵" in body and " " not in body.strip().replace("\n", "")


def test_header_line_per_document_with_source_tokens_and_trained(builds, capsys):
    data = BuildData(builds["plain"])
    (doc,) = data.documents_of(2).tolist()
    _, out, _ = _view(capsys, builds["plain"], "--source-id", 2)
    n, t = int(data.docs.length[doc]), int(data.docs.trained[doc])
    assert re.search(rf"source 2 \(chats\.jsonl #2\) · row \d+ · {n} tokens · {t} trained", out)


def test_packed_row_draws_each_document_with_its_own_header(builds, capsys):
    data = BuildData(builds["packed"])
    row = int(np.argmax(np.bincount(data.docs.row)))
    docs = data.documents_in_row(row)
    assert len(docs) > 1
    _, out, _ = _view(capsys, builds["packed"], "--row", row)
    assert re.search(rf"row {row} · {len(docs)} documents · {int(data.row_tokens[row])} tokens", out)
    headers = re.findall(r"source (\d+) .*? document (\d+)/(\d+) · (\d+) tokens", out)
    assert [int(h[0]) for h in headers] == data.docs.source_id[docs].tolist()
    assert [int(h[1]) for h in headers] == list(range(1, len(docs) + 1))
    assert [int(h[3]) for h in headers] == data.docs.length[docs].tolist()
    # a document boundary is a rule line between the documents' tokens, and no trained span crosses it
    for chunk in re.split(r"\n[─]+ ?source|\nsource \d+ .*?─+\n", out)[1:]:
        assert chunk.count("⟦") == chunk.count("⟧")


def test_tokens_mode_lists_id_mask_and_piece(builds, capsys):
    data = BuildData(builds["plain"])
    (doc,) = data.documents_of(1).tolist()
    _, out, _ = _view(capsys, builds["plain"], "--source-id", 1, "--tokens")
    lines = [line for line in out.splitlines() if re.match(r"\s+\d+\s+\d+\s", line)]
    assert len(lines) == data.docs.length[doc]
    ids, mask = data.ids(doc), data.mask(doc)
    for line, tid, m in zip(lines, ids, mask):
        _, id_, flag = line.split()[:3]
        assert int(id_) == tid and (flag == "trained") == bool(m)
    assert "⟪<|im_end|>⟫" in out and "'Hel" in out


def test_rejected_grep_and_errors(builds, capsys):
    code, out, err = _view(capsys, builds["plain"], "--source-id", 3)
    assert code == 0 and "rejected: no_trainable_tokens" in err and "no assistant message" in err
    code, out, err = _view(capsys, builds["plain"], "--grep", "word39")
    assert code == 0 and "source 4 " in out and "source 0 " not in out
    code, out, err = _view(capsys, builds["plain"], "--grep", "word39", "--limit", "1")
    assert code == 0 and "more than" not in err
    code, out, err = _view(capsys, builds["plain"], "--grep", "<|im_start|>assistant", "--limit", "2")
    assert code == 0 and len(re.findall(r"^source \d+ ", out, flags=re.M)) == 2
    assert "more than 2 documents contain '<|im_start|>assistant'; showing the first 2" in " ".join(err.split())
    code, out, err = _view(capsys, builds["plain"], "--row", 99)
    assert code == 2 and "no row 99" in err


def test_colour_output_styles_trained_tokens_apart(builds, capsys):
    code = main(["view", str(builds["plain"]), "--source-id", "1", "--color", "always", "--no-pager"])
    out = capsys.readouterr().out
    assert code == 0
    # underline (4) marks trained tokens, dim (2) masked ones: readable without colour too
    assert re.search(r"\x1b\[[0-9;]*\b4\b[0-9;]*mHello", out)
    assert re.search(r"\x1b\[2[;m]", out)


def test_ids_when_the_tokenizer_cannot_be_loaded(builds, capsys, tmp_path):
    import json
    import shutil

    copy = tmp_path / "moved"
    shutil.copytree(builds["plain"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config"]["tokenizer"] = str(tmp_path / "gone")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = _view(capsys, copy, "--source-id", 1)
    assert code == 0 and "showing token ids" in " ".join(err.split())
    data = BuildData(copy)
    first = int(data.ids(int(data.documents_of(1)[0]))[0])
    assert f"#{first}" in out


def test_vocab_pieces_keep_whitespace_and_mark_specials():
    from transformers import AutoTokenizer

    # chatml-bpe is spelled from the cached table of token bytes, llama2-spm through the parsed tokenizer
    for name, from_table in (("chatml-bpe", True), ("llama2-spm", False)):
        hf = AutoTokenizer.from_pretrained(fixture_tokenizer(name))
        loaded = load_tokenizer(fixture_tokenizer(name), require_template=False)
        assert (loaded.token_bytes is not None) == from_table
        vocab = Vocab(loaded)
        text = "Hi there,\n  friend\tok"
        ids = hf.backend_tokenizer.encode(text, add_special_tokens=False).ids
        joined = "".join(t for t, _ in vocab.pieces(ids))
        assert joined.lstrip(" ") == text or joined == text
        accent = vocab.pieces(hf.backend_tokenizer.encode("é", add_special_tokens=False).ids)
        # whole, or split into bytes each shown as an escape
        assert "".join(t for t, _ in accent).strip() in ("é", "\\xc3\\xa9")
        assert all(k == "bytes" for t, k in accent if t.startswith("\\x"))
        eos = hf.backend_tokenizer.token_to_id(hf.eos_token)
        assert vocab.piece(eos) == (hf.eos_token, "special")
        assert vocab.piece(hf.backend_tokenizer.get_vocab_size() + 7)[1] == "unknown"
    alphabet = byte_level_alphabet()
    assert len(alphabet) == 256 and sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == 32 and alphabet["Ċ"] == 10 and alphabet["a"] == ord("a")


def test_viewer_never_reads_the_dataset(builds, capsys, tmp_path):
    import shutil

    copy = tmp_path / "alone"
    shutil.copytree(builds["plain"], copy)
    (builds["plain"].parent / "chats.jsonl").rename(tmp_path / "hidden.jsonl")
    try:
        code, out, _ = _view(capsys, copy, "--source-id", 0)
        assert code == 0 and visible(CHATS[0]["messages"][1]["content"]) in out.replace("│", "")
    finally:
        (tmp_path / "hidden.jsonl").rename(builds["plain"].parent / "chats.jsonl")
