"""`sftdata verify`: a sound build passes; each kind of damage fails with the check named."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sftdata.builder import build
from sftdata.cli import main
from sftdata.config import BuildConfig, Overlong
from sftdata.inspect.verify import verify_build
from sftdata.manifest import MANIFEST, REJECTS, Manifest
from sftdata.shards import Row, ShardWriter, iter_rows, open_shard

from .conftest import FIXTURES, fixture_tokenizer

DATA = FIXTURES / "data"
INPUTS = [DATA / "traps.jsonl", DATA / "messages.jsonl", DATA / "malformed.jsonl"]
CHATML = fixture_tokenizer("chatml-bpe")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    plain = BuildConfig(tokenizer=CHATML)
    packed = BuildConfig(tokenizer=CHATML, pack=True, max_length=200, overlong=Overlong.SPLIT_TURNS)
    held_out = BuildConfig(tokenizer=CHATML, pack=True, max_length=300, eval_records=4)
    for name, config in (("plain", plain), ("packed", packed), ("eval", held_out)):
        build(INPUTS, root / name, config)
    return root


def _copy(builds, name, tmp_path):
    out = tmp_path / name
    shutil.copytree(builds / name, out)
    return out


def _edit_manifest(out, edit) -> None:
    data = json.loads((out / MANIFEST).read_text())
    edit(data)
    (out / MANIFEST).write_text(json.dumps(data))


def _rewrite_shard(out, change) -> None:
    """The build's shard with its rows changed by `change`, the manifest's file entries made to match (so
    only the row checks can see it)."""
    manifest = Manifest.read(out)
    rows = [Row(r.input_ids.copy(), r.loss_mask.copy(), list(r.seq_lens), list(r.source_ids))
            for r in iter_rows(open_shard(out / manifest.shards[0].name))]
    change(rows)
    (out / manifest.shards[0].name).unlink()
    writer = ShardWriter(out, 1 << 62)
    writer.write_all(rows)
    (info,) = writer.close()
    _edit_manifest(out, lambda d: d["shards"][0].update(sha256=info.sha256, file_bytes=info.file_bytes))


@pytest.mark.parametrize("name", ["plain", "packed", "eval"])
def test_a_sound_build_passes(builds, name, capsys):
    assert verify_build(builds / name) == []
    assert main(["verify", str(builds / name)]) == 0
    assert "every check passed" in capsys.readouterr().out
    m = Manifest.read(builds / name)
    assert m.counts.rejected > 0 and (name != "packed" or m.counts.documents > m.counts.records_written)
    assert (m.eval is not None and m.eval.records == 4) == (name == "eval")


def test_an_eval_split_that_lies_fails(builds, tmp_path):
    out = _copy(builds, "eval", tmp_path)
    _edit_manifest(out, lambda d: d["eval"].update(documents=d["eval"]["documents"] + 1))
    assert any(line.startswith("eval.documents") for line in verify_build(out))
    (out / "eval" / "shard-00000.arrow").write_bytes(b"")
    assert any(line.startswith("eval/shard-00000.arrow size in bytes") for line in verify_build(out))


@pytest.mark.parametrize("damage, check", [
    (lambda d: d["counts"].update(trained_tokens=d["counts"]["trained_tokens"] + 1), "counts.trained_tokens"),
    (lambda d: d["counts"].update(documents=d["counts"]["documents"] - 1), "counts.documents"),
    (lambda d: d["inputs"][0].update(rejected=d["inputs"][0]["rejected"] + 1), "sum of inputs[].rejected"),
    (lambda d: d["shards"][0].update(rows=d["shards"][0]["rows"] + 1), "rows"),
    (lambda d: d["counts"].update(rejected_by_reason={}), "counts.rejected_by_reason"),
])
def test_a_manifest_that_lies_fails(builds, tmp_path, damage, check):
    out = _copy(builds, "plain", tmp_path)
    _edit_manifest(out, damage)
    assert any(line.startswith(check) or check in line for line in verify_build(out)), verify_build(out)


def test_a_trained_first_token_and_a_bad_seq_len_fail(builds, tmp_path):
    out = _copy(builds, "packed", tmp_path)

    def train_a_boundary(rows):
        row = next(r for r in rows if len(r.seq_lens) > 1)
        row.loss_mask[row.seq_lens[0]] = 1

    _rewrite_shard(out, train_a_boundary)
    assert any(line.startswith("a document's first token is a target") for line in verify_build(out))
    out = _copy(builds, "packed", tmp_path / "again")
    _rewrite_shard(out, lambda rows: rows[0].seq_lens.__setitem__(0, rows[0].seq_lens[0] + 1))
    assert any(line.startswith("seq_lens do not sum to the row") for line in verify_build(out))


def test_ids_outside_the_vocabulary_and_unknown_sources_fail(builds, tmp_path):
    out = _copy(builds, "plain", tmp_path)

    def corrupt(rows):
        rows[0].input_ids[1] = np.int32(10**9)
        rows[1].source_ids[0] = 10**6

    _rewrite_shard(out, corrupt)
    failed = verify_build(out)
    assert any(line.startswith("token ids outside the vocabulary") for line in failed)
    assert any(line.startswith("source ids outside the build's records") for line in failed)


def test_rejects_and_stray_shards_are_checked(builds, tmp_path):
    out = _copy(builds, "plain", tmp_path)
    lines = (out / REJECTS).read_text().splitlines()
    (out / REJECTS).write_text("\n".join(lines[1:]) + "\n")
    shutil.copy(out / "shard-00000.arrow", out / "shard-00001.arrow")
    failed = verify_build(out)
    assert any(line.startswith("counts.rejected (rejects.jsonl lines)") for line in failed)
    assert any(line.startswith("shards the manifest does not list") for line in failed)


def test_not_a_folder_is_exit_2(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
