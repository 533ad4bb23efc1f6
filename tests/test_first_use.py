"""What a new user meets first: --version, CSV/TSV inputs, inputs sftdata cannot read, datasets inputs
without datasets' progress bars, and a tokenizer that is neither a folder here nor reachable on the hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import pytest

import sftdata
from sftdata.shards import iter_rows, open_build

from .conftest import FIXTURES, REPO, fixture_tokenizer

ALPACA = json.loads((FIXTURES / "data" / "alpaca.json").read_text())
LLAMA3 = fixture_tokenizer("llama3-bpe")


def sftdata_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sftdata", *args], capture_output=True, text=True, cwd=REPO, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "1000", **env})  # rich: no wrapping


def test_version():
    out = sftdata_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"sftdata {sftdata.__version__}"


def _ids(out) -> list[list[int]]:
    _, tables = open_build(out)
    return [row.input_ids.tolist() for table in tables for row in iter_rows(table)]


@pytest.mark.parametrize("suffix,delimiter", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv_read_as_the_json_they_hold(tmp_path, suffix, delimiter):
    def cell(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    header = delimiter.join(["instruction", "input", "output"])
    lines = [header, *(delimiter.join(cell(r[k]) for k in ("instruction", "input", "output")) for r in ALPACA)]
    lines.insert(3, cell("a row with two cells") + delimiter + cell("x"))
    table = tmp_path / f"alpaca{suffix}"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    from_json = [{k: r[k] for k in ("instruction", "input", "output")} for r in ALPACA]
    (tmp_path / "alpaca.json").write_text(json.dumps(from_json))
    manifest = sftdata.build(table, tmp_path / "t", tokenizer=LLAMA3, workers=1)
    sftdata.build(tmp_path / "alpaca.json", tmp_path / "j", tokenizer=LLAMA3, workers=1)
    assert manifest.inputs[0].format == "alpaca"
    assert _ids(tmp_path / "t") == _ids(tmp_path / "j")
    rejects = sftdata.open_build(tmp_path / "t").rejects
    assert [(r["source_id"], r["reason"]) for r in rejects] == [(2, "malformed_record")]
    line = "\n".join(lines[:3]).count("\n") + 2  # cells of the rows before it span lines
    assert rejects[0]["detail"] == f"{table.name} line {line}: 2 cells where the header names 3"


def test_an_unreadable_input_type_is_refused_by_name(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("What is the capital of France?\n")
    out = sftdata_cli("build", str(text), "--tokenizer", LLAMA3, "--out", str(tmp_path / "o"), "--quiet")
    message = " ".join(out.stderr.split())
    assert out.returncode == 2 and "cannot read a .txt file as conversations" in message, out.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_datasets_inputs_draw_no_progress_bars(tmp_path):
    datasets.Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    for name in ("saved", "folder"):
        out = sftdata_cli("build", str(tmp_path / name), "--tokenizer", LLAMA3, "--out", str(tmp_path / f"o-{name}"),
                          "--quiet", "--no-report", HF_DATASETS_CACHE=str(tmp_path / "cache"))
        assert out.returncode == 0, out.stderr
        assert "it/s" not in out.stderr and "%|" not in out.stderr, out.stderr  # tqdm's marks
        assert sftdata.open_build(tmp_path / f"o-{name}").manifest.counts.documents == len(ALPACA)


@pytest.mark.parametrize("given,says", [
    ("{tmp}/no-such-tokenizer", "no-such-tokenizer: no such folder"),
    ("./tokenizers/llama3", "no such folder"),
    (f"{LLAMA3}/tokenizer.json", "a file, not a folder"),
])
def test_a_tokenizer_path_that_is_no_folder_says_so(tmp_path, given, says):
    out = sftdata_cli("build", str(FIXTURES / "data" / "alpaca.json"), "--tokenizer", given.format(tmp=tmp_path),
                      "--out", str(tmp_path / "o"), "--quiet")
    assert out.returncode == 2 and says in " ".join(out.stderr.split()), out.stderr
    assert "Repo id" not in out.stderr


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["offline", "hub-unreachable"])
def test_a_hub_id_without_the_hub_fails_at_once(tmp_path, env):
    # port 9 on loopback: nothing listens, so the connection is refused; the hub is never asked
    out = sftdata_cli("build", str(FIXTURES / "data" / "alpaca.json"), "--tokenizer", "someone/some-model",
                      "--out", str(tmp_path / "o"), "--quiet", HF_HOME=str(tmp_path / "hf"), **env)
    message = " ".join(out.stderr.split())
    assert out.returncode == 2 and "hub cannot be reached" in message and "not in the local hub cache" in message
