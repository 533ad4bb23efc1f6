"""Two ranks under torchrun (gloo, CPU): disjoint rows whose union is the epoch, and the same training.

With the loss normalized by the step's target count over all ranks, two ranks with one micro-batch
each train exactly like one process accumulating the same two micro-batches (up to float rounding).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torchrun_worker import settings

from sfttrain.loader import RowStore
from sfttrain.train import train

WORKER = Path(__file__).with_name("torchrun_worker.py")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, packed_build, model_dir):
    out = tmp_path_factory.mktemp("torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(WORKER), str(packed_build), str(model_dir), str(out), "ddp", "fsdp"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        stdout, stderr = proc.communicate()
        pytest.fail("torchrun did not finish in 300 s:\n" + stderr[-6000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return out


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_see_disjoint_rows_whose_union_is_the_epoch(two_ranks, packed_build):
    ranks = [json.loads((two_ranks / f"rows-{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert len(ranks[0]["rows"]) == len(ranks[1]["rows"])  # same number of steps on both
    seen = [{i for batch in r["rows"] for i in batch} for r in ranks]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(len(RowStore(packed_build))))
    assert sum(len(batch) for r in ranks for batch in r["rows"]) == len(RowStore(packed_build))


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_ranks_train_like_one_process_accumulating(two_ranks, tmp_path, packed_build, model_dir, engine):
    train(settings(str(packed_build), str(model_dir), str(tmp_path / "one"), grad_accum=2))
    assert _losses(two_ranks / engine) == pytest.approx(_losses(tmp_path / "one"), rel=1e-6)
    ours = load_file(two_ranks / engine / "model" / "adapter_model.safetensors")
    single = load_file(tmp_path / "one" / "model" / "adapter_model.safetensors")
    assert ours.keys() == single.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], single[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_ranks_resume_bit_for_bit(two_ranks, engine):
    straight = [json.loads(line) for line in (two_ranks / engine / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (two_ranks / f"{engine}-resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [3, 4]
    assert [(r["loss"], r["grad_norm"]) for r in resumed] == [(r["loss"], r["grad_norm"]) for r in straight[2:]]
