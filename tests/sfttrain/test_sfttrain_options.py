"""Options that must not change what is learned: gradient checkpointing, the attention kernel; bf16 close."""

from __future__ import annotations

import json

import pytest

from sfttrain.config import TrainConfig
from sfttrain.train import train


def _run(out, build, model_dir, **overrides) -> list[float]:
    settings = {"data": str(build), "model": str(model_dir), "out": str(out), "batch_size": 3, "grad_accum": 2,
                "max_steps": 3, "lr": 1e-2, "lora_dropout": 0.0, "progress": False}
    train(TrainConfig(**{**settings, **overrides}))
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, unpacked_build, model_dir):
    return _run(tmp_path_factory.mktemp("reference"), unpacked_build, model_dir)


@pytest.mark.parametrize("overrides", [
    {"gradient_checkpointing": True},
    {"attn_implementation": "eager"},
    {"gradient_checkpointing": True, "finetune": "full"},
], ids=["checkpointing", "eager", "checkpointing-full"])
def test_option_leaves_the_losses_unchanged(tmp_path, unpacked_build, model_dir, reference, overrides):
    if overrides.get("finetune") == "full":
        reference = _run(tmp_path / "full", unpacked_build, model_dir, finetune="full")
    assert _run(tmp_path / "run", unpacked_build, model_dir, **overrides) == pytest.approx(reference, rel=1e-5)


def test_bf16_autocast_runs_on_cpu_and_stays_close(tmp_path, unpacked_build, model_dir, reference):
    assert _run(tmp_path / "run", unpacked_build, model_dir, precision="bf16") == pytest.approx(reference, abs=0.05)
