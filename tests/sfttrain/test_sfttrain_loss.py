"""The loss of a step: one shift, summed token losses over the step's target count, zero-target steps."""

from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from sfttrain_helpers import join, random_docs, write_build

from sfttrain.attention import attention_kwargs
from sfttrain.config import TrainConfig
from sfttrain.loader import collate
from sfttrain.loss import loss_sum
from sfttrain.train import forward_backward, train


def _model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")


def _grads(model, batches):
    model.zero_grad()
    loss, targets, _ = forward_backward(model, batches, "sdpa", nullcontext, torch.device("cpu"), world_size=1)
    return loss, targets, [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def test_labels_are_shifted_once_exactly_like_transformers(model_dir, vocab):
    """Our loss over the labels equals the model's own (shifting) loss given the same labels."""
    docs = random_docs(np.random.default_rng(3), 2, vocab)
    model = _model(model_dir)
    batch = collate([docs[0]])
    with torch.no_grad():
        ours = loss_sum(model(input_ids=batch.input_ids).logits, batch.labels) / batch.num_targets
        theirs = model(input_ids=batch.input_ids, labels=batch.labels).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_accumulated_micro_batches_give_the_gradient_of_one_batch(model_dir, vocab):
    """Normalized by the step's target count, not a mean of per-micro-batch means."""
    docs = random_docs(np.random.default_rng(4), 5, vocab, min_len=6, max_len=30)
    small, large = collate([docs[0]]), collate([join(docs[1:3]), join(docs[3:])])
    assert small.num_targets != large.num_targets
    model = _model(model_dir)
    loss_two, targets_two, grads_two = _grads(model, [small, large])
    loss_one, targets_one, grads_one = _grads(model, [collate([docs[0], join(docs[1:3]), join(docs[3:])])])
    assert targets_two == targets_one == small.num_targets + large.num_targets
    assert loss_two == pytest.approx(loss_one, rel=1e-6)
    for a, b in zip(grads_two, grads_one):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # the check has teeth: a mean of the two micro-batch means has another gradient
    model.zero_grad()
    for b in (small, large):
        kwargs = attention_kwargs(b.seq_lens, b.position_ids, "sdpa")
        (loss_sum(model(input_ids=b.input_ids, **kwargs).logits, b.labels) / b.num_targets / 2).backward()
    assert not all(torch.allclose(p.grad, g, rtol=1e-3) for p, g in zip(model.parameters(), grads_one))


def test_a_step_without_targets_is_skipped_not_nan(model_dir):
    model = _model(model_dir)
    loss, targets, grads = _grads(model, [collate([]), collate([])])
    assert loss is None and targets == 0
    assert all(g is None for g in grads)


def test_training_reports_a_step_without_targets(tmp_path, model_dir, vocab, fingerprint):
    docs = [type(d)(d.input_ids, np.zeros_like(d.loss_mask), d.seq_lens, d.source_ids)
            for d in random_docs(np.random.default_rng(5), 8, vocab)]
    data = write_build(tmp_path / "data", docs, fingerprint, pack=False)
    cfg = TrainConfig(data=str(data), model=str(model_dir), out=str(tmp_path / "run"), batch_size=4,
                      max_steps=2, progress=False)
    train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped"], r["loss"], r["target_tokens"]) for r in records] == [
        (1, True, None, 0), (2, True, None, 0)]
    assert all(r["tokens"] > 0 for r in records)
    assert (tmp_path / "run" / "model" / "adapter_model.safetensors").exists()
