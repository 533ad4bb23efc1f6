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


def _build(tmp_path, model_dir, pack):
    """The real `sftdata build` CLI (the project's own builder), on a tiny tokenizer with a chat template."""
    _conversations(tmp_path / "chats.jsonl")
    out = tmp_path / "shards"
    cmd = [sys.executable, "-m", "sftdata", "build", str(tmp_path / "chats.jsonl"), "--tokenizer", str(model_dir),
           "--out", str(out), "--max-length", "128", "--workers", "1", "--quiet", *(["--pack"] if pack else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
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


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "unpacked"])
def test_lora_trains_saves_and_reloads(tmp_path, model_dir, pack):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    shards = _build(tmp_path, model_dir, pack)
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {shards}\nmodel: {model_dir}\nlora_r: 8\nlora_target_modules: [q_proj, v_proj, "
                      "o_proj, gate_proj, up_proj, down_proj]\nlr: 0.01\nwarmup_steps: 2\n")
    run = tmp_path / "run"
    batch_size = 4 if pack else 8  # packed: ~20 rows of <= 128 tokens
    assert main(["train", "--config", str(config), "--out", str(run), "--batch-size", str(batch_size),
                 "--epochs", "8", "--lora-dropout", "0", "--no-progress"]) == 0

    loader = ShardLoader(shards, tokenizer_fingerprints=tokenizer_fingerprints(model_dir), model_dir=model_dir,
                         batch_size=batch_size)
    documents_per_row = [len(loader.store.row(i).seq_lens) for i in range(len(loader.store))]
    assert loader.packed == pack and (max(documents_per_row) > 1) == pack
    epoch = loader.steps_per_epoch
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8 * epoch
    assert np.mean(losses[-epoch:]) < np.mean(losses[:epoch]) - 0.3  # a frozen random 32-wide Llama learns slowly
    assert (run / "config.yaml").exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{8 * epoch:08d}"

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    before = _mean_loss(base, loader, epoch)
    tuned = PeftModel.from_pretrained(base, str(run / "model")).eval()
    assert sorted(tuned.peft_config["default"].target_modules) == sorted(
        ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    loader.load_state_dict({"seed": 0, "epoch": 0, "step": 0})
    after = _mean_loss(tuned, loader, epoch)
    assert after < before - 0.3
    assert after == pytest.approx(np.mean(losses[-epoch:]), abs=0.02)  # the last epoch's loss, as training reported it
