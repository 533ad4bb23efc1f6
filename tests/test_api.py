"""The Python API: sftdata.build is the command line's build (same shards, same errors), and
sftdata.open_build gives the rows, the documents of packed rows, and the manifest."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import sftdata
from sftdata.cli import main
from sftdata.shards import iter_rows, open_build

from .conftest import FIXTURES, REPO, fixture_tokenizer

DATA = FIXTURES / "data"
INPUTS = [DATA / "messages.jsonl", DATA / "sharegpt.json", DATA / "alpaca.json", DATA / "malformed.jsonl"]
LLAMA3 = fixture_tokenizer("llama3-bpe")


def test_importing_sftdata_loads_no_build_machinery():
    probe = ("import sys, sftdata; heavy = [m for m in ('sftdata.api', 'sftdata.builder', 'numpy', 'datasets', "
             "'transformers') if m in sys.modules]; print(heavy); print(sftdata.build.__module__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split("\n")[:2] == ["[]", "sftdata.api"]


def test_api_build_writes_the_shards_the_command_line_writes(tmp_path):
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    assert main(["build", *map(str, INPUTS), "--tokenizer", LLAMA3, "--out", str(cli_out), "--quiet",
                 "--no-report", "--pack", "--max-length", "256", "--train-on", "last", "--workers", "1"]) == 0
    manifest = sftdata.build(INPUTS, api_out, tokenizer=LLAMA3, pack=True, max_length=256, train_on="last",
                             workers=1)
    assert isinstance(manifest, sftdata.Manifest)
    assert manifest == sftdata.open_build(api_out).manifest
    cli_manifest = sftdata.open_build(cli_out).manifest
    assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in cli_manifest.shards]
    assert manifest.config == cli_manifest.config  # the tokenizer path made absolute by both
    assert (api_out / "rejects.jsonl").read_bytes() == (cli_out / "rejects.jsonl").read_bytes()
    assert manifest.counts.rejected > 0  # malformed.jsonl


def test_api_build_takes_one_input_and_reports_progress(tmp_path):
    seen = []
    manifest = sftdata.build(DATA / "alpaca.json", tmp_path / "o", tokenizer=LLAMA3, workers=1,
                             on_progress=lambda p: seen.append(p.records))
    assert manifest.counts.records == len(json.loads((DATA / "alpaca.json").read_text())) == seen[-1]


def test_api_errors_are_the_command_lines(tmp_path):
    with pytest.raises(sftdata.ConfigError, match="unknown build setting pak"):
        sftdata.build(INPUTS, tmp_path / "o", tokenizer=LLAMA3, pak=True)
    with pytest.raises(sftdata.ConfigError, match="pack needs max_length"):
        sftdata.build(INPUTS, tmp_path / "o", tokenizer=LLAMA3, pack=True, max_length=0)
    with pytest.raises(sftdata.TokenizerError, match="no such folder"):
        sftdata.build(INPUTS, tmp_path / "o", tokenizer=str(tmp_path / "missing"))
    with pytest.raises(sftdata.InputError, match="no such file"):
        sftdata.build([tmp_path / "missing.jsonl"], tmp_path / "o", tokenizer=LLAMA3, workers=1)
    sftdata.build(INPUTS[0], tmp_path / "o2", tokenizer=LLAMA3, workers=1)
    with pytest.raises(sftdata.OutDirError, match="overwrite"):
        sftdata.build(INPUTS[0], tmp_path / "o2", tokenizer=LLAMA3, workers=1)
    with pytest.raises(sftdata.ManifestError):
        sftdata.open_build(tmp_path)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("builds")
    for name, settings in {"packed": dict(pack=True, max_length=300), "unpacked": dict(max_length=300)}.items():
        sftdata.build(INPUTS, root / name, tokenizer=LLAMA3, workers=1, **settings)
    return root


def test_rows_are_the_shards_rows(builds):
    built = sftdata.open_build(builds / "packed")
    _, tables = open_build(builds / "packed")
    rows = [row for table in tables for row in iter_rows(table)]
    assert len(built.rows) == len(rows) == built.manifest.counts.rows > 1
    for item, row in zip(built.rows, rows):
        assert item["input_ids"] == row.input_ids.tolist() and item["loss_mask"] == row.loss_mask.tolist()
        assert item["seq_lens"] == list(row.seq_lens) and item["source_ids"] == list(row.source_ids)


def test_documents_of_packed_rows_are_the_unpacked_builds_documents(builds):
    packed, unpacked = sftdata.open_build(builds / "packed"), sftdata.open_build(builds / "unpacked")
    assert max(len(lens) for lens in packed.rows["seq_lens"]) > 1  # rows really hold several documents
    by_source = {d["source_id"]: d for d in unpacked.documents}
    docs = list(packed.documents)
    assert len(docs) == len(by_source) == packed.manifest.counts.documents
    assert [d["source_id"] for d in docs] == [s for row in packed.rows["source_ids"] for s in row]
    for doc in docs:
        assert doc == by_source[doc["source_id"]]
        ids, mask = np.array(doc["input_ids"]), np.array(doc["loss_mask"])
        assert doc["labels"] == np.where(mask == 1, ids, -100).tolist() and doc["labels"][0] == -100
        assert mask.any()


def test_rejects_and_an_empty_build(builds, tmp_path):
    assert {r["reason"] for r in sftdata.open_build(builds / "unpacked").rejects} >= {"malformed_record"}
    empty_input = tmp_path / "none.jsonl"
    empty_input.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    sftdata.build(empty_input, tmp_path / "o", tokenizer=LLAMA3, workers=1)
    built = sftdata.open_build(tmp_path / "o")
    assert len(built.rows) == len(built.documents) == 0
    assert built.rows.column_names == ["input_ids", "loss_mask", "seq_lens", "source_ids"]
    assert built.documents.column_names == ["input_ids", "loss_mask", "labels", "source_id"]
    assert [r["reason"] for r in built.rejects] == ["no_trainable_tokens"]
