"""`sfttrain train` refuses what it cannot train on with one message and exit status 2, never a traceback."""

from __future__ import annotations

import shutil

import numpy as np

from sfttrain.cli import main
from sfttrain_helpers import random_docs, write_build


def _train(capsys, data, model_dir, out) -> str:
    assert main(["train", "--data", str(data), "--model", str(model_dir), "--out", str(out), "--max-steps", "1",
                 "--batch-size", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfttrain: ") and "Traceback" not in err
    return " ".join(err.split())


def test_a_folder_without_a_build_is_refused(tmp_path, model_dir, capsys):
    (tmp_path / "data").mkdir()
    assert "has no manifest.json" in _train(capsys, tmp_path / "data", model_dir, tmp_path / "run")


def test_shards_of_another_tokenizer_are_refused(tmp_path, model_dir, vocab, capsys):
    data = write_build(tmp_path / "data", random_docs(np.random.default_rng(0), 8, vocab), "0" * 64, pack=False)
    assert "different tokenizer" in _train(capsys, data, model_dir, tmp_path / "run")


def test_an_existing_run_is_refused(tmp_path, model_dir, unpacked_build, capsys):
    (tmp_path / "run" / "checkpoints" / "step-00000001").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-00000001")
    assert "already has checkpoints" in _train(capsys, unpacked_build, model_dir, tmp_path / "run")


def test_a_truncated_shard_is_refused(tmp_path, model_dir, unpacked_build, capsys):
    data = tmp_path / "data"
    shutil.copytree(unpacked_build, data)
    shard = sorted(data.glob("shard-*.arrow"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    assert "does not match its manifest" in _train(capsys, data, model_dir, tmp_path / "run")
