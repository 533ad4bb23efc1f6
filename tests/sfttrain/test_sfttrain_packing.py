"""Packing is exact: documents side by side in a row train exactly as each would alone."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from sfttrain_helpers import join, random_docs

from sfttrain.attention import attention_kwargs, block_causal_mask, position_ids
from sfttrain.loader import PAD_ID, collate
from sfttrain.loss import IGNORE_INDEX, token_losses


def test_position_ids_restart_at_each_document():
    assert position_ids([3, 2, 1]).tolist() == [0, 1, 2, 0, 1, 0]


def test_block_causal_mask_is_the_drawn_one():
    drawn = """
        1 . . . . . . . . .
        1 1 . . . . . . . .
        1 1 1 . . . . . . .
        . . . 1 . . . . . .
        . . . 1 1 . . . . .
        . . . . . 1 . . . .
        . . . . . 1 1 . . .
        . . . . . 1 1 1 . .
        . . . . . . . . 1 .
        . . . . . . . . 1 1"""
    expected = torch.tensor([[c == "1" for c in line.split()] for line in drawn.strip().splitlines()])
    assert torch.equal(block_causal_mask([[3, 2, 3, 2]])[0, 0], expected)


def test_flash_kwargs_carry_cumulative_lengths():
    kwargs = attention_kwargs([[3, 2, 5]], torch.from_numpy(position_ids([3, 2, 5]))[None], "flash_attention_2")
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 10]
    assert kwargs["max_length_k"] == 5 and "attention_mask" not in kwargs


def _model(model_dir, attention):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation=attention)
    return model.eval()


def _losses(model, batch, attention):
    kwargs = attention_kwargs(batch.seq_lens, batch.position_ids, attention)
    return token_losses(model(input_ids=batch.input_ids, use_cache=False, **kwargs).logits, batch.labels)


def _doc_losses(losses: torch.Tensor, batch) -> list[torch.Tensor]:
    """Per-document summed losses of a batch, in row order, padding segments dropped."""
    out = []
    for row, lens in enumerate(batch.seq_lens):
        start = 0
        for n in lens:
            if not (batch.input_ids[row, start : start + n] == PAD_ID).all():
                out.append(losses[row, start : start + n].sum())
            start += n
    return out


@pytest.fixture(scope="module")
def docs(vocab):
    return random_docs(np.random.default_rng(7), 6, vocab, min_len=5, max_len=30)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("flat", [False, True])
def test_packed_losses_equal_each_document_alone(model_dir, docs, attention, flat):
    model = _model(model_dir, attention)
    packed = collate([join(docs[:3]), join(docs[3:5]), docs[5]], flat=flat)  # padding on two rows
    with torch.no_grad():
        per_doc = _doc_losses(_losses(model, packed, attention), packed)
        alone = [_losses(model, collate([d]), attention).sum() for d in docs]
    assert len(per_doc) == len(docs)
    torch.testing.assert_close(torch.stack(per_doc), torch.stack(alone), rtol=1e-5, atol=1e-5)


def test_without_the_mask_packing_would_leak(model_dir, docs):
    """The check above would catch cross-document attention: plain causal attention changes the losses."""
    model = _model(model_dir, "sdpa")
    packed = collate([join(docs[:3])])
    with torch.no_grad():
        leaky = token_losses(model(input_ids=packed.input_ids, use_cache=False).logits, packed.labels)
        alone = [_losses(model, collate([d]), "sdpa").sum() for d in docs[:3]]
    assert not torch.allclose(torch.stack(_doc_losses(leaky, packed)), torch.stack(alone), rtol=1e-3)


def test_packed_step_gradients_equal_documents_alone(model_dir, docs):
    model = _model(model_dir, "sdpa")
    packed = collate([join(docs[:4]), join(docs[4:])])
    _losses(model, packed, "sdpa").sum().backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for doc in docs:
        _losses(model, collate([doc]), "sdpa").sum().backward()
    for packed_grad, p in zip(packed_grads, model.parameters()):
        torch.testing.assert_close(packed_grad, p.grad, rtol=1e-5, atol=1e-6)


def test_labels_come_from_the_mask_unshifted(docs):
    batch = collate([join(docs[:2]), docs[2]])
    first, second = docs[0], docs[1]
    n = len(first.input_ids)
    expected = np.where(first.loss_mask == 1, first.input_ids, IGNORE_INDEX)
    assert batch.labels[0, :n].tolist() == expected.tolist()
    assert batch.labels[0, n] == IGNORE_INDEX  # the second document's first token
    assert batch.num_targets == sum(int(d.loss_mask.sum()) for d in docs[:3])
    assert batch.num_tokens == sum(len(d.input_ids) for d in docs[:3])
    assert (batch.labels[1, len(docs[2].input_ids) :] == IGNORE_INDEX).all()  # padding
    assert [sum(lens) for lens in batch.seq_lens] == [batch.input_ids.shape[1]] * 2
    assert len(second.input_ids) == batch.seq_lens[0][1]


def test_a_target_at_a_document_start_is_dropped_with_a_warning(docs):
    bad = join(docs[:2])
    mask = bad.loss_mask.copy()
    mask[len(docs[0].input_ids)] = 1
    with pytest.warns(UserWarning, match="first token of a document"):
        batch = collate([type(bad)(bad.input_ids, mask, bad.seq_lens, bad.source_ids)])
    assert batch.labels[0, len(docs[0].input_ids)] == IGNORE_INDEX


def test_an_empty_batch_has_no_targets():
    batch = collate([])
    assert batch.num_targets == 0 and batch.num_tokens == 0 and batch.input_ids.shape == (1, 1)


@pytest.fixture
def varlen_kernel():
    """A stand-in for flash-attention's varlen kernel (none runs on CPU): causal SDPA per cu_seq_lens segment.

    Registered with transformers' AttentionInterface, so the model calls it exactly where it would call
    flash_attention_2, with whatever keyword arguments transformers forwards to that kernel.
    """
    from transformers import AttentionInterface

    calls = []

    def varlen(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        cu = kwargs["cu_seq_lens_q"]
        assert attention_mask is None and torch.equal(cu, kwargs["cu_seq_lens_k"]) and query.shape[0] == 1
        calls.append(cu.tolist())
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        bounds = cu.tolist()
        out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling)
            for s, e in pairwise(bounds)], dim=2)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("sfttrain_test_varlen", varlen)
    yield calls
    del AttentionInterface._global_mapping["sfttrain_test_varlen"]


def test_flash_layout_reaches_a_varlen_kernel_and_is_exact(model_dir, docs, varlen_kernel):
    """What the trainer hands flash_attention_2 (one flat row, cu_seq_lens) trains each document alone."""
    model, reference = _model(model_dir, "sfttrain_test_varlen"), _model(model_dir, "sdpa")
    flat = collate([join(docs[:3]), join(docs[3:])], flat=True)
    with torch.no_grad():
        kwargs = attention_kwargs(flat.seq_lens, flat.position_ids, "flash_attention_2")
        losses = token_losses(model(input_ids=flat.input_ids, use_cache=False, **kwargs).logits, flat.labels)
        alone = [_losses(reference, collate([d]), "sdpa").sum() for d in docs]
    bounds = np.cumsum([0] + [len(d.input_ids) for d in docs]).tolist()
    assert varlen_kernel and all(call == bounds for call in varlen_kernel)  # every layer got the boundaries
    per_doc = [losses[0, s:e].sum() for s, e in pairwise(bounds)]
    torch.testing.assert_close(torch.stack(per_doc), torch.stack(alone), rtol=1e-5, atol=1e-5)
