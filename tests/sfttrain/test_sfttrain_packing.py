"""Packing is exact: documents side by side in a row train exactly as each would alone."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from sfttrain_helpers import join, random_docs

import sfttrain.attention as attention_module
from sfttrain.attention import (
    FLAT,
    attention_kwargs,
    available_kernels,
    block_causal_mask,
    choose_attention,
    model_attention,
    position_ids,
)
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

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                 attn_implementation=model_attention(attention))
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


def reference_varlen(calls):
    """torch's varlen kernel, which has no CPU implementation, as causal SDPA over each cu_seq_lens segment."""

    def varlen(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        assert torch.equal(cu_q, cu_k) and window_size == (-1, 0)  # causal, within the segments only
        assert max_q == max_k == int(torch.diff(cu_q).max())
        calls.append(cu_q.tolist())
        segments = [torch.nn.functional.scaled_dot_product_attention(
            query[s:e].transpose(0, 1), key[s:e].transpose(0, 1), value[s:e].transpose(0, 1), is_causal=True,
            scale=scale, enable_gqa=enable_gqa).transpose(0, 1) for s, e in pairwise(cu_q.tolist())]
        return torch.cat(segments)

    return varlen


@pytest.fixture(params=["sdpa", "eager", "flex_attention", "varlen"])
def backend(request, monkeypatch):
    """Every attention backend this machine runs: FlexAttention's forward runs on CPU (compiled by
    transformers); torch's varlen kernel runs on CUDA only, so on CPU it is replaced by reference_varlen and
    what is checked is sfttrain's adapter around it (layout, heads, keywords)."""
    if request.param == "flex_attention" and attention_module.flex_attention_module is None:
        pytest.skip("this torch has no FlexAttention")
    calls = []
    if request.param == "varlen" and not torch.cuda.is_available():
        monkeypatch.setattr(attention_module, "varlen_attn", reference_varlen(calls))
    return request.param, calls


@pytest.mark.parametrize("flat", [False, True])
def test_packed_losses_equal_each_document_alone(model_dir, docs, backend, flat):
    attention, varlen_calls = backend
    if attention in FLAT and not flat:
        pytest.skip(f"{attention} takes the batch as one row")
    model, reference = _model(model_dir, attention), _model(model_dir, "sdpa")
    packed = collate([join(docs[:3]), join(docs[3:5]), docs[5]], flat=flat)  # padding on two rows unless flat
    with torch.no_grad():
        per_doc = _doc_losses(_losses(model, packed, attention), packed)
        alone = [_losses(reference, collate([d]), "sdpa").sum() for d in docs]  # plain causal attention
    assert len(per_doc) == len(docs)
    torch.testing.assert_close(torch.stack(per_doc), torch.stack(alone), rtol=1e-5, atol=1e-5)
    if varlen_calls:  # every layer got the documents' boundaries
        bounds = np.cumsum([0] + [len(d.input_ids) for d in docs]).tolist()
        assert len(varlen_calls) == model.config.num_hidden_layers and all(c == bounds for c in varlen_calls)


@pytest.mark.parametrize("requested, device, bf16, have, chosen", [
    ("auto", "cpu", False, {"flash_attn", "varlen", "flex"}, "sdpa"),
    ("auto", "cuda", True, {"flash_attn", "varlen", "flex"}, "flash_attention_2"),
    ("auto", "cuda", True, {"varlen", "flex"}, "varlen"),
    ("auto", "cuda", False, {"varlen", "flex"}, "flex_attention"),  # fp32: the flash kernels take bf16 only
    ("auto", "cuda", True, {"varlen", "flex", "turing"}, "flex_attention"),  # compute capability 7.5
    ("auto", "cuda", True, set(), "sdpa"),
    ("eager", "cpu", False, set(), "eager"),
    ("sdpa", "cuda", True, {"varlen"}, "sdpa"),
])
def test_attention_is_chosen_from_what_the_machine_has(requested, device, bf16, have, chosen):
    capability = (7, 5) if "turing" in have else (9, 0)
    got = choose_attention(requested, device, bf16, flash_attn="flash_attn" in have, varlen="varlen" in have,
                           flex="flex" in have, capability=capability if device == "cuda" else None)
    assert got == chosen


@pytest.mark.parametrize("requested, device, needs", [
    ("flash_attention_2", "cpu", "flash-attn"),
    ("varlen", "cpu", "torch 2.10"),
    ("flex_attention", "cpu", "no backward on CPU"),
])
def test_a_backend_the_machine_lacks_is_refused(requested, device, needs):
    with pytest.raises(ValueError, match=needs):
        choose_attention(requested, device, False, flash_attn=False, varlen=True, flex=True)


def test_this_machine_picks_a_backend_that_trains_here():
    """On this CPU machine auto resolves to SDPA; on a CUDA machine with bf16 to one of the GPU paths."""
    kernels = available_kernels()
    cuda = torch.cuda.is_available()
    chosen = choose_attention("auto", "cuda" if cuda else "cpu", cuda, **kernels)
    assert chosen in (("flash_attention_2", "varlen", "flex_attention", "sdpa") if cuda else ("sdpa",))


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
