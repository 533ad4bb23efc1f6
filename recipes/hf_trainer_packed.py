"""A plain Hugging Face Trainer on the rows of a packed sftdata build (sftdata build ... --pack).

The collator lays a batch out as transformers' DataCollatorWithFlattening does: the rows concatenated
into one sequence, position_ids restarting at 0 at every document (from `seq_lens`), no attention_mask,
labels = the token where sftdata's loss_mask is 1, else -100 (so every document's first token is -100:
it is never a target, and nothing is predicted across a boundary).

    packed_trainer("shards/", AutoModelForCausalLM.from_pretrained(MODEL), "run/", learning_rate=2e-5).train()

Attention stays inside each document only because the model sees restarting position_ids and no
attention_mask: flash-attention (varlen) takes the boundaries from them, and transformers 5's SDPA and
eager masks are made block-diagonal from them (models built on its create_causal_mask, Llama, Qwen,
Mistral, Gemma among them). Passing an attention_mask (padding rows instead of concatenating them), or a
model that makes its own mask, lets attention cross documents: each document then sees the ones before
it in its row. The loss of a step is the sum over target tokens divided by their number (the Trainer's
num_items_in_batch), across gradient accumulation too.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments

import sftdata
from recipes import tokenizer_of
from sftdata.api import IGNORE_INDEX


def flattened(rows: list[dict]) -> dict[str, torch.Tensor]:
    """A batch of packed rows as one sequence with restarting position ids (DataCollatorWithFlattening's layout)."""
    ids = np.concatenate([np.asarray(r["input_ids"], dtype=np.int64) for r in rows])
    mask = np.concatenate([np.asarray(r["loss_mask"]) for r in rows])
    positions = np.concatenate([np.arange(n) for r in rows for n in r["seq_lens"]])
    labels = np.where(mask == 1, ids, IGNORE_INDEX)
    return {"input_ids": torch.from_numpy(ids)[None], "labels": torch.from_numpy(labels)[None],
            "position_ids": torch.from_numpy(positions)[None]}


def packed_trainer(build_dir: str, model: PreTrainedModel, out_dir: str, tokenizer: str | None = None,
                   **settings) -> Trainer:
    """A Trainer over the build's rows; `settings` are TrainingArguments' (learning_rate, ...)."""
    built = sftdata.open_build(build_dir)
    if built.manifest.packing is None:
        raise ValueError(f"{build_dir} is not packed: build it with --pack --max-length L, or use recipes.trl_sft")
    tokenizer = tokenizer_of(built, tokenizer)
    # the collator needs loss_mask and seq_lens, which are not the model's arguments
    args = TrainingArguments(output_dir=out_dir, remove_unused_columns=False, report_to="none", **settings)
    return Trainer(model=model, args=args, train_dataset=built.rows, data_collator=flattened,
                   processing_class=tokenizer)

