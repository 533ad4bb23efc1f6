"""End to end: conversations -> `sftdata build` -> `sfttrain train` (LoRA) -> an adapter peft reloads."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sfttrain.attention import attention_kwargs
from sfttrain.cli import main
from sfttrain.loader import ShardLoader
from sfttrain.loss import loss_sum
from sfttrain.model import tokenizer_fingerprints


def _conversations(path, count=48):
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(count):
            a, b = rng.integers(0, 10, 2)
            messages = [{"role": "user", "content": f"The fox {a} and the dog {b}?"},
                        {"role": "assistant", "content": f"The quick brown fox jumps over the lazy dog {a}."}]
            f.write(json.dumps({"messages": messages}) + "\n")


def _build(tmp_path, model_dir):
    """The real `sftdata build` CLI (the project's own builder), on a tiny tokenizer with a chat template."""
    _conversations(tmp_path / "chats.jsonl")
    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "sftdata", "build", str(tmp_path / "chats.jsonl"), "--tokenizer", str(model_dir),
           "--out", str(out), "--max-length", "128", "--workers", "1", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def _mean_loss(model, loader, steps):
    batches = iter(loader)
    total = targets = 0
    with torch.no_grad():
        for _ in range(steps):
            b = next(batches)
            kwargs = attention_kwargs(b.seq_lens, b.position_ids, "sdpa")
            total += float(loss_sum(model(input_ids=b.input_ids, **kwargs).logits, b.labels))
            targets += b.num_targets
    return total / targets


def test_lora_trains_saves_and_reloads(tmp_path, model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    shards = _build(tmp_path, model_dir)
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {shards}\nmodel: {model_dir}\nlora_r: 8\nlora_target_modules: [q_proj, v_proj, "
                      "o_proj, gate_proj, up_proj, down_proj]\nlr: 0.01\nwarmup_steps: 2\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--batch-size", "8", "--epochs", "8",
                 "--lora-dropout", "0", "--no-progress"]) == 0

    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 48  # 48 rows / 8 = 6 steps an epoch, 8 epochs
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.3  # a frozen random 32-wide Llama learns slowly
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "latest").read_text().strip() == "step-00000048"

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    loader = ShardLoader(shards, tokenizer_fingerprints=tokenizer_fingerprints(model_dir), model_dir=model_dir,
                         batch_size=8)
    before = _mean_loss(base, loader, 6)
    tuned = PeftModel.from_pretrained(base, str(run / "model")).eval()
    assert sorted(tuned.peft_config["default"].target_modules) == sorted(
        ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    loader.load_state_dict({"seed": 0, "epoch": 0, "step": 0})
    after = _mean_loss(tuned, loader, 6)
    assert after < before - 0.3
    assert after == pytest.approx(np.mean(losses[-6:]), abs=0.02)  # the last epoch's loss, as training reported it
