"""Test helpers for sfttrain: a tiny trained tokenizer, a tiny random Llama, and shards written directly.

Imported by the tests (through conftest.py) and by the torchrun worker script, which runs outside pytest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sftdata.config import BuildConfig
from sftdata.manifest import Manifest, TokenizerInfo
from sftdata.shards import Row, ShardWriter

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
TEXT = """The quick brown fox jumps over the lazy dog. A tokenizer splits text into pieces.
Training a small language model needs data, a loss, and patience. Packing puts documents side by side.
Attention must never cross from one document into the next. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100."""


def make_tokenizer(folder: Path) -> None:
    """A byte-level BPE of a few hundred tokens, trained here so no file is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 20, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "pad_token": "<pad>", "chat_template": CHAT_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def make_model(folder: Path, hidden: int = 32, layers: int = 2) -> None:
    """A tiny random Llama beside the tokenizer already in `folder`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))


def random_docs(rng: np.random.Generator, count: int, vocab: int, min_len: int = 4, max_len: int = 24) -> list[Row]:
    """Documents of random ids: a prompt (not trained) then a response (trained); never the first token."""
    docs = []
    for i in range(count):
        n = int(rng.integers(min_len, max_len + 1))
        ids = rng.integers(len(SPECIALS), vocab, n).astype(np.int32)
        mask = np.zeros(n, dtype=np.uint8)
        mask[int(rng.integers(1, n)) :] = 1
        docs.append(Row(ids, mask, [n], [i]))
    return docs


def pack(docs: list[Row], max_length: int) -> list[Row]:
    """Greedy packing in order (a stand-in for sftdata's packer)."""
    rows, current = [], []
    for doc in docs:
        if current and sum(len(d.input_ids) for d in current) + len(doc.input_ids) > max_length:
            rows.append(current)
            current = []
        current.append(doc)
    rows.append(current)
    return [join(r) for r in rows if r]


def join(docs: list[Row]) -> Row:
    return Row(np.concatenate([d.input_ids for d in docs]), np.concatenate([d.loss_mask for d in docs]),
               [n for d in docs for n in d.seq_lens], [s for d in docs for s in d.source_ids])


def write_build(out: Path, rows: list[Row], fingerprint: str, pack: bool, max_length: int = 128,
                shard_tokens: int = 1 << 30, batch_rows: int = 1024) -> Path:
    """Shards and a manifest as `sftdata build` writes them."""
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, shard_tokens=shard_tokens, batch_rows=batch_rows)
    writer.write_all(rows)
    shards = writer.close()
    tokenizer = TokenizerInfo(name="test", fingerprint=fingerprint, vocab_size=0, prefix_ids=[], special_tokens={})
    config = BuildConfig(tokenizer="test", max_length=max_length, pack=pack)
    Manifest.for_shards(shards, tokenizer, config, int(sum(int(r.loss_mask.sum()) for r in rows))).write(out)
    return out
