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

flash_attention_2 gets no mask: the batch is one flattened row and the boundaries travel as
cu_seq_lens (cumulative lengths) to the varlen kernel, as transformers' flash path accepts them.
SDPA gets the boolean mask (True = attend), eager an additive one (0 or the dtype's minimum).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


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


def attention_kwargs(
    seq_lens_per_row: Sequence[Sequence[int]],
    positions: torch.Tensor,
    implementation: str,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """The keyword arguments that keep a Hugging Face causal LM's attention within documents."""
    if implementation == "flash_attention_2":
        if len(seq_lens_per_row) != 1:
            raise ValueError("flash_attention_2 takes the batch flattened into one row (collate flat=True)")
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
    mask = block_causal_mask(seq_lens_per_row, positions.device)
    if implementation == "eager":
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        mask = additive.masked_fill_(~mask, torch.finfo(dtype).min)
    elif implementation != "sdpa":
        raise ValueError(f"no block-causal mask for attention implementation {implementation!r}")
    return {"position_ids": positions, "attention_mask": mask}
