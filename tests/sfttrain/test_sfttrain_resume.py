"""Resume: a run stopped after a checkpoint and resumed trains exactly like one that never stopped."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import sfttrain.train as train_module
from sfttrain.config import TrainConfig
from sfttrain.train import train


class Stop(Exception):
    pass


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_resume_continues_bit_for_bit(tmp_path, monkeypatch, packed_build, model_dir, finetune):
    # 31 packed rows in batches of 4, 2 micro-batches a step: 4 steps an epoch. The checkpoint at step 3 is
    # mid-epoch; the run dies at step 6 and the resumed one redoes 4-7 across the epoch boundary, logging each
    # step once. LoRA dropout checks that the RNG state comes back too.
    settings = {"data": str(packed_build), "model": str(model_dir), "batch_size": 4, "grad_accum": 2,
                "max_steps": 7, "checkpoint_every": 3, "lr": 1e-2, "warmup_steps": 2, "lora_dropout": 0.1,
                "finetune": finetune, "progress": False, "seed": 11}
    train(TrainConfig(out=str(tmp_path / "straight"), **settings))

    real_save = train_module.save_checkpoint

    def crash_at_second_checkpoint(out, step, *args, **kwargs):  # steps 4-6 are logged, never checkpointed
        if step > 3:
            raise Stop(step)
        return real_save(out, step, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", crash_at_second_checkpoint)
    with pytest.raises(Stop):
        train(TrainConfig(out=str(tmp_path / "stopped"), **settings))
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    with pytest.raises(FileExistsError, match="--resume"):
        train(TrainConfig(out=str(tmp_path / "stopped"), **settings))
    train(TrainConfig(out=str(tmp_path / "stopped"), resume=True, **settings))

    straight, resumed = _records(tmp_path / "straight"), _records(tmp_path / "stopped")
    assert [r["step"] for r in resumed] == list(range(1, 8))
    assert {r["epoch"] for r in straight} == {0, 1}
    for a, b in zip(straight, resumed):
        assert (a["loss"], a["grad_norm"], a["lr"], a["tokens"]) == (b["loss"], b["grad_norm"], b["lr"], b["tokens"])
    weights = "adapter_model.safetensors" if finetune == "lora" else "model.safetensors"
    final_a = load_file(tmp_path / "straight" / "model" / weights)
    final_b = load_file(tmp_path / "stopped" / "model" / weights)
    assert final_a.keys() == final_b.keys() and all(torch.equal(final_a[k], final_b[k]) for k in final_a)
