"""Keeping attention inside a document, from the documents' lengths alone.

A packed row of three documents (lengths 3, 2, 3) followed by 2 padding tokens; padding is treated as
one more "document", so no query row is ever fully masked (a fully masked row gives NaN in SDPA):

    tokens        a a a b b c c c p p
    position_ids  0 1 2 0 1 0 1 2 0 1     restart at every boundary: RoPE sees each document alone

    block-causal mask (1 = may attend), query rows x key columns:
        a  1 . . . . . . . . .
        a  1 1 . . . . . . . .
        a  1 1 1 . . . . . . .
        b  . . . 1 . . . . . .
        b  . . . 1 1 . . . . .
        c  . . . . . 1 . . . .
        c  . . . . . 1 1 . . .
        c  . . . . . 1 1 1 . .
        p  . . . . . . . . 1 .
        p  . . . . . . . . 1 1

Per backend:
    flash_attention_2   no mask: the batch is one flattened row and the boundaries travel as cu_seq_lens
                        (cumulative lengths) to flash-attn's varlen kernel, as transformers' flash path takes them
    varlen              the same layout and keywords, to PyTorch's own varlen kernel
                        (torch.nn.attention.varlen, CUDA), through the attention function registered below
    flex_attention      a FlexAttention BlockMask built from the document ids (transformers' flex path)
    sdpa                the boolean mask (True = attend)
    eager               an additive mask (0 or the dtype's minimum)
`choose_attention` picks one: the fastest exact kernel the machine has.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AttentionInterface

try:  # torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn
except ImportError:
    varlen_attn = None
try:  # torch >= 2.5
    import torch.nn.attention.flex_attention as flex_attention_module
except ImportError:
    flex_attention_module = None


VARLEN = "sfttrain_varlen"  # the name transformers knows torch's varlen kernel by (registered below)
FLAT = ("flash_attention_2", "varlen")  # backends that take the batch as one row and cu_seq_lens


def model_attention(implementation: str) -> str:
    """The attn_implementation a Hugging Face model is loaded with for one of ours."""
    return VARLEN if implementation == "varlen" else implementation


def choose_attention(requested: str, device: str, bf16: bool, flash_attn: bool, varlen: bool, flex: bool,
                     capability: tuple[int, int] | None = None) -> str:
    """The attention backend for a run, from what the machine has.

    `flash_attn`: the flash-attn package imports; `varlen`/`flex`: this torch ships
    torch.nn.attention.varlen / flex_attention; `capability`: the GPU's compute capability. The varlen
    kernels are flash kernels: CUDA, bf16/fp16, Ampere (8.0) or newer. FlexAttention has no backward on
    CPU, so it trains only on GPU; on CPU the block-causal SDPA mask is exact and fast enough.
    """
    gpu = device == "cuda"
    flash_capable = gpu and bf16 and (capability or (0, 0)) >= (8, 0)
    if requested == "auto":
        if flash_attn and flash_capable:
            return "flash_attention_2"
        if varlen and flash_capable:
            return "varlen"
        return "flex_attention" if gpu and flex else "sdpa"
    flash_gpu = "a GPU of compute capability 8.0 or newer, and bf16"
    needs = {"flash_attention_2": (flash_attn and flash_capable, f"the flash-attn package, {flash_gpu}"),
             "varlen": (varlen and flash_capable, f"torch 2.10 or newer (torch.nn.attention.varlen), {flash_gpu}"),
             "flex_attention": (flex and gpu, "a GPU (FlexAttention has no backward on CPU)")}
    if requested in needs and not needs[requested][0]:
        raise ValueError(f"attn_implementation {requested} needs {needs[requested][1]}; use auto to choose "
                         "what this machine has")
    return requested


def available_kernels() -> dict:
    """What choose_attention asks about this machine."""
    from transformers.utils import is_flash_attn_2_available

    cuda = torch.cuda.is_available()
    return {"flash_attn": cuda and is_flash_attn_2_available(), "varlen": varlen_attn is not None,
            "flex": flex_attention_module is not None,
            "capability": torch.cuda.get_device_capability() if cuda else None}


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-function interface over torch's varlen kernel: causal within each segment.

    transformers hands [1, heads, tokens, dim] tensors and the cu_seq_lens keywords attention_kwargs
    gives the model; the kernel takes [tokens, heads, dim] and grouped key/value heads as they are.
    """
    if dropout or kwargs.get("sliding_window") or kwargs.get("s_aux") is not None:
        raise ValueError(f"{type(module).__name__} uses attention dropout, a sliding window or sinks, which "
                         "sfttrain's varlen path does not implement: use attn_implementation flex_attention or sdpa")
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
    out = varlen_attn(q, k, v, kwargs["cu_seq_lens_q"], kwargs["cu_seq_lens_k"], kwargs["max_length_q"],
                      kwargs["max_length_k"], scale=scaling, window_size=(-1, 0), enable_gqa=k.shape[1] != q.shape[1])
    return out[None], None


AttentionInterface.register(VARLEN, varlen_attention)


def position_ids(seq_lens: Sequence[int]) -> np.ndarray:
    """0, 1, ... restarting at each document: [3, 2] -> [0 1 2 0 1]."""
    lens = np.asarray(seq_lens, dtype=np.int64)
    total = int(lens.sum())
    starts = np.repeat(np.cumsum(lens) - lens, lens)
    return np.arange(total, dtype=np.int64) - starts


def document_ids(seq_lens_per_row: Sequence[Sequence[int]], device=None) -> torch.Tensor:
    """[batch, length] index of the document each token belongs to (rows must have equal sums)."""
    rows = [
        torch.repeat_interleave(torch.arange(len(lens)), torch.as_tensor(list(lens), dtype=torch.long))
        for lens in seq_lens_per_row
    ]
    return torch.stack(rows).to(device)


def block_causal_mask(seq_lens_per_row: Sequence[Sequence[int]], device=None) -> torch.Tensor:
    """[batch, 1, length, length] boolean: query i may see key j when j <= i in the same document."""
    docs = document_ids(seq_lens_per_row, device)
    length = docs.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=docs.device).tril()
    return ((docs[:, :, None] == docs[:, None, :]) & causal)[:, None]


def document_block_mask(seq_lens_per_row: Sequence[Sequence[int]], device=None):
    """The block-causal mask as a FlexAttention BlockMask: only blocks holding some allowed pair are computed."""
    docs = document_ids(seq_lens_per_row, device)
    batch, length = docs.shape

    def same_document_causal(b, h, q, kv):
        return (docs[b, q] == docs[b, kv]) & (kv <= q)

    return flex_attention_module.create_block_mask(same_document_causal, batch, None, length, length,
                                                   device=docs.device)


def attention_kwargs(
    seq_lens_per_row: Sequence[Sequence[int]],
    positions: torch.Tensor,
    implementation: str,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """The keyword arguments that keep a Hugging Face causal LM's attention within documents."""
    if implementation in FLAT:
        if len(seq_lens_per_row) != 1:
            raise ValueError(f"{implementation} takes the batch flattened into one row (collate flat=True)")
        lens = torch.as_tensor(list(seq_lens_per_row[0]), dtype=torch.int32, device=positions.device)
        cu = torch.nn.functional.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))
        longest = int(lens.max())
        return {
            "position_ids": positions,
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": longest,
            "max_length_k": longest,
        }
    if implementation == "flex_attention":
        return {"position_ids": positions, "attention_mask": document_block_mask(seq_lens_per_row, positions.device)}
    mask = block_causal_mask(seq_lens_per_row, positions.device)
    if implementation == "eager":
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        mask = additive.masked_fill_(~mask, torch.finfo(dtype).min)
    elif implementation != "sdpa":
        raise ValueError(f"no block-causal mask for attention implementation {implementation!r}")
    return {"position_ids": positions, "attention_mask": mask}
