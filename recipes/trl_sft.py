"""TRL's SFTTrainer on an sftdata build: every document with its tokens as input_ids and sftdata's loss
mask as TRL's completion_mask, so TRL's labels are the token where the mask is 1 and -100 elsewhere.

    sft_trainer("shards/", AutoModelForCausalLM.from_pretrained(MODEL), "run/", learning_rate=2e-5).train()

Packed builds work too: their rows are cut back into documents (sftdata.open_build(...).documents).
TRL pads each batch of documents (attention_mask marks the padding): the attention is exact, and the
loss of a step is the sum over target tokens divided by their number. What to keep as here:
`max_length=None` (TRL's default of 1024 would cut longer documents and drop those left untrained;
sftdata already enforced its own --max-length), `completion_only_loss=True`, and no `packing=True`
(TRL would pack the documents again its own way; recipes/hf_trainer_packed.py trains on sftdata's rows).
"""

from __future__ import annotations

import datasets
from transformers import PreTrainedModel
from trl import SFTConfig, SFTTrainer

import sftdata
from recipes import tokenizer_of


def completion_dataset(built: sftdata.Build) -> datasets.Dataset:
    """The build's documents as TRL reads a pre-tokenized dataset: input_ids and completion_mask."""
    return built.documents.select_columns(["input_ids", "loss_mask"]).rename_column("loss_mask", "completion_mask")


def sft_trainer(build_dir: str, model: PreTrainedModel, out_dir: str, tokenizer: str | None = None,
                **settings) -> SFTTrainer:
    """An SFTTrainer over the build; `settings` are SFTConfig's (learning_rate, num_train_epochs, ...)."""
    built = sftdata.open_build(build_dir)
    tokenizer = tokenizer_of(built, tokenizer)
    config = SFTConfig(output_dir=out_dir, completion_only_loss=True, max_length=None, packing=False,
                       report_to="none", **settings)
    return SFTTrainer(model=model, args=config, train_dataset=completion_dataset(built), processing_class=tokenizer)

