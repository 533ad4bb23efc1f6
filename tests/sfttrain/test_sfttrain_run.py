"""What a run leaves: a model folder that loads with the logits the run ended with, an honest learning rate
schedule (also when a resume changes its length), and logs for files and TensorBoard."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest
import torch
from sfttrain_helpers import random_docs

from sfttrain.attention import attention_kwargs
from sfttrain.config import DEFAULT_LR, TrainConfig
from sfttrain.loader import collate
from sfttrain.train import lr_factor, train


def _settings(data, model_dir, out, **overrides) -> TrainConfig:
    base = {"data": str(data), "model": str(model_dir), "out": str(out), "batch_size": 4, "max_steps": 3,
            "lr": 1e-2, "lora_dropout": 0.0, "progress": False}
    return TrainConfig(**{**base, **overrides})


def _logits(model, batch) -> torch.Tensor:
    kwargs = attention_kwargs(batch.seq_lens, batch.position_ids, "sdpa")
    with torch.no_grad():
        return model.eval()(input_ids=batch.input_ids, use_cache=False, **kwargs).logits


@pytest.fixture(scope="module")
def probe(vocab):
    return collate(random_docs(np.random.default_rng(9), 3, vocab))


def test_full_fine_tuning_ships_a_model_folder(tmp_path, packed_build, model_dir, probe):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = train(_settings(packed_build, model_dir, tmp_path / "run", finetune="full"))
    shipped = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "model"), attn_implementation="sdpa")
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa")
    assert torch.equal(_logits(shipped, probe), _logits(trained, probe))
    assert not torch.allclose(_logits(base, probe), _logits(trained, probe), atol=1e-3)  # it did train
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "model"))
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(str(model_dir)).chat_template is not None


def test_lora_ships_an_adapter_and_with_merge_a_merged_model(tmp_path, packed_build, model_dir, probe):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trained = train(_settings(packed_build, model_dir, tmp_path / "run", merge=True))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa")
    before = _logits(base, probe)
    adapter = PeftModel.from_pretrained(base, str(tmp_path / "run" / "model"))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "merged"), attn_implementation="sdpa")
    expected = _logits(trained, probe)
    assert torch.equal(_logits(adapter, probe), expected)
    torch.testing.assert_close(_logits(merged, probe), expected, rtol=1e-5, atol=1e-5)  # folded: rounding only
    assert not torch.allclose(before, expected, atol=1e-3)
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_defaults_for_a_real_run():
    lora = TrainConfig(data="d", model="m", out="o")
    full = TrainConfig(data="d", model="m", out="o", finetune="full")
    assert (lora.lr, full.lr) == (DEFAULT_LR["lora"], DEFAULT_LR["full"]) and full.lr < lora.lr
    assert TrainConfig(data="d", model="m", out="o", lr=3e-4).lr == 3e-4
    assert lora.warmup(1000) == 30 and lora.warmup(10) == 1
    assert lora.checkpoint_every > 0 and lora.lean_loss


def test_the_schedule_warms_up_and_never_spends_a_step_at_the_floor():
    factors = [lr_factor(step, warmup=3, total=10, min_ratio=0.0) for step in range(10)]
    assert factors[:4] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert all(a > b for a, b in pairwise(factors[3:]))  # cosine down...
    assert factors[-1] > 0.01  # ...without reaching the floor on the last step


def test_resume_with_more_steps_says_so_and_keeps_learning(tmp_path, packed_build, model_dir, capsys):
    settings = {"min_lr_ratio": 0.0, "warmup_steps": 1, "checkpoint_every": 2}
    train(_settings(packed_build, model_dir, tmp_path / "run", max_steps=4, **settings))
    capsys.readouterr()
    train(_settings(packed_build, model_dir, tmp_path / "run", max_steps=8, resume=True, **settings))
    err = capsys.readouterr().err
    assert "was to last 4 steps and this one 8" in err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(r["lr"] > 0 for r in records)
    resumed = [r["lr"] for r in records[4:]]
    assert resumed == pytest.approx([1e-2 * lr_factor(s, 1, 8, 0.0) for s in range(4, 8)])


def test_tensorboard_gets_what_metrics_jsonl_gets(tmp_path, packed_build, model_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_settings(packed_build, model_dir, tmp_path / "run", log_to="tensorboard"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in logged] == [r["step"] for r in records]
    assert [v for _, v in logged] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(events.Tags()["scalars"])
