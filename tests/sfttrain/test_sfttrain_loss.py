"""The loss of a step: one shift, summed token losses over the step's target count, zero-target steps."""

from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sfttrain_helpers import join, random_docs, write_build

from sfttrain.attention import attention_kwargs
from sfttrain.config import TrainConfig
from sfttrain.loader import collate
from sfttrain.loss import LeanLoss, chunked_losses, loss_sum
from sfttrain.train import forward_backward, train


def _model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")


def _grads(model, batches, lean=None):
    model.zero_grad()
    losses, _ = forward_backward(model, batches, "sdpa", nullcontext, torch.device("cpu"), world_size=1, lean=lean)
    return losses.loss, int(losses.counts.sum()), [None if p.grad is None else p.grad.clone() for p in model.parameters()]


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


def test_chunked_losses_and_gradients_equal_the_plain_ones():
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight = torch.randn(1000, 16, requires_grad=True)
    bias = torch.randn(1000, requires_grad=True)
    targets = torch.randint(0, 1000, (23,))
    scale = torch.rand(23)  # any upstream gradient, not only a sum's
    plain = F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="none")
    expected = torch.autograd.grad((plain * scale).sum(), (hidden, weight, bias))
    lean = chunked_losses(hidden, weight, bias, targets, chunk_rows=5)  # 5 chunks, the last of 3 rows
    got = torch.autograd.grad((lean * scale).sum(), (hidden, weight, bias))
    torch.testing.assert_close(lean, plain, rtol=1e-6, atol=1e-6)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_lean_loss_trains_like_the_plain_loss(model_dir, vocab, finetune):
    """Same step loss and gradients from the model whose output layer returns target losses in chunks."""
    docs = random_docs(np.random.default_rng(8), 6, vocab, min_len=6, max_len=30)
    batches = [collate([join(docs[:3]), docs[3]]), collate([join(docs[4:])])]
    model = _model(model_dir)
    if finetune == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
        for name, p in model.named_parameters():  # B starts at zero: give the adapter a gradient path to test
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    loss_plain, targets, grads_plain = _grads(model, batches)
    lean = LeanLoss(model, chunk_logits=7 * vocab)  # 7 rows a chunk: several chunks per batch
    loss_lean, targets_lean, grads_lean = _grads(model, batches, lean)
    assert targets_lean == targets > 7 and lean.chunk_rows == 7
    first = batches[0]
    with torch.no_grad(), lean.targets(first.labels):  # the output layer really returned target losses
        kwargs = attention_kwargs(first.seq_lens, first.position_ids, "sdpa")
        assert model(input_ids=first.input_ids, **kwargs).logits.shape == (first.num_targets,)
    assert loss_lean == pytest.approx(loss_plain, rel=1e-6)
    assert any(g is not None for g in grads_lean)
    for a, b in zip(grads_lean, grads_plain):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    lean.remove()
    assert _grads(model, batches)[0] == loss_plain  # the output layer's own forward is back


def test_lean_loss_is_refused_where_it_would_not_be_exact(tmp_path):
    """A model that soft-caps its logits after the output layer (Gemma 2), and a LoRA on the output layer."""
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, final_logit_softcapping=1.0)
    gemma = Gemma2ForCausalLM(config).eval()
    ids = torch.arange(1, 9)[None]
    lean = LeanLoss(gemma)
    assert "after its output layer" in lean.check(lambda: (gemma(input_ids=ids).logits, ids))
    lean.remove()
    config.final_logit_softcapping = None
    uncapped = Gemma2ForCausalLM(config).eval()
    assert LeanLoss(uncapped).check(lambda: (uncapped(input_ids=ids).logits, ids)) is None
    adapted = get_peft_model(Gemma2ForCausalLM(config), LoraConfig(r=2, target_modules=["lm_head"]))
    assert "not a plain Linear" in LeanLoss.refusal(adapted)
