"""Bring your own trainer: each recipe trains one step on CPU with a tiny Llama made from a config, and
its loss is sftdata's masked loss: the mean cross-entropy over exactly the tokens sftdata's loss_mask
marks, each document run on its own (so attention never crossed into another document)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import sftdata
from recipes.hf_trainer_packed import flattened, packed_trainer
from recipes.trl_sft import sft_trainer  # trl: the dev extra (scripts/setup.sh installs it)

from .conftest import FIXTURES, fixture_tokenizer

INPUTS = [FIXTURES / "data" / "messages.jsonl", FIXTURES / "data" / "sharegpt.json", FIXTURES / "data" / "alpaca.json"]
LLAMA3 = fixture_tokenizer("llama3-bpe")
ONE_STEP = dict(max_steps=1, learning_rate=1e-3, use_cpu=True, seed=0, save_strategy="no", logging_steps=1,
                dataloader_num_workers=0)
# the trainers run a padded batch, or one long sequence, where the reference runs each document alone:
# floating-point kernels differ that much (2e-5 seen); a wrong mask or crossing attention moves the loss
# by 2e-3 and more here
TOLERANCE = 1e-4


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         initializer_range=0.2)  # weights large enough for outputs that depend on the context
    return LlamaForCausalLM(config).eval()


def masked_loss(model, documents, mask_of=lambda doc: doc["loss_mask"]) -> float:
    """Sum of cross-entropy over the tokens `mask_of` marks (each predicted from the token before it),
    each document alone, over their number."""
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in documents:
            ids = torch.tensor(doc["input_ids"])
            targets = torch.tensor(mask_of(doc))[1:].bool()
            logits = model(ids[None]).logits[0, :-1]
            total += torch.nn.functional.cross_entropy(logits[targets], ids[1:][targets], reduction="sum").item()
            count += int(targets.sum())
    return total / count


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    sftdata.build(INPUTS, root / "unpacked", tokenizer=LLAMA3, max_length=512, workers=1)
    sftdata.build(INPUTS, root / "packed", tokenizer=LLAMA3, max_length=512, pack=True, workers=1)
    return root


def test_trl_sft_trainer_trains_exactly_sftdatas_mask(builds, tmp_path):
    built = sftdata.open_build(builds / "unpacked")
    documents = list(built.documents)
    model = tiny_llama(built.manifest.tokenizer.vocab_size)
    expected = masked_loss(model, documents)
    every_token = masked_loss(model, documents, mask_of=lambda doc: [0] + [1] * (len(doc["input_ids"]) - 1))
    assert abs(every_token - expected) > 5 * TOLERANCE * expected  # the mask matters: the check below can fail

    trainer = sft_trainer(str(builds / "unpacked"), model, str(tmp_path), per_device_train_batch_size=len(documents),
                          **ONE_STEP)
    assert trainer.train_dataset["labels"] == [doc["labels"] for doc in documents]  # TRL's labels are ours
    assert trainer.train().training_loss == pytest.approx(expected, rel=TOLERANCE)


def test_hf_trainer_on_packed_rows_trains_exactly_sftdatas_mask(builds, tmp_path):
    built = sftdata.open_build(builds / "packed")
    rows = list(built.rows)
    assert max(len(row["seq_lens"]) for row in rows) > 1
    model = tiny_llama(built.manifest.tokenizer.vocab_size)
    expected = masked_loss(model, built.documents)

    batch = flattened(rows)
    assert batch["position_ids"][0].tolist() == [p for row in rows for n in row["seq_lens"] for p in range(n)]
    with torch.no_grad():  # what the restarting position ids prevent: positions running on across documents
        crossing = model(input_ids=batch["input_ids"], labels=batch["labels"],
                         position_ids=torch.arange(batch["input_ids"].shape[1])[None]).loss.item()
    assert abs(crossing - expected) > 10 * TOLERANCE * expected

    trainer = packed_trainer(str(builds / "packed"), model, str(tmp_path), per_device_train_batch_size=len(rows),
                             **ONE_STEP)
    assert trainer.train().training_loss == pytest.approx(expected, rel=TOLERANCE)


def test_the_recipes_refuse_an_unpacked_build_or_another_tokenizer(builds, tmp_path):
    with pytest.raises(ValueError, match="not packed"):
        packed_trainer(str(builds / "unpacked"), tiny_llama(16), str(tmp_path), use_cpu=True)
    with pytest.raises(ValueError, match="built with another tokenizer"):
        sft_trainer(str(builds / "unpacked"), tiny_llama(16), str(tmp_path), tokenizer=fixture_tokenizer("chatml-bpe"),
                    use_cpu=True)
