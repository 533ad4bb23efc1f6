from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # sfttrain_helpers, also for the torchrun worker

pytest.importorskip("torch")
pytest.importorskip("peft")

from sfttrain_helpers import make_model, make_tokenizer, pack, random_docs, write_build


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tokenizer(folder)
    make_model(folder)
    return folder


@pytest.fixture(scope="session")
def vocab(model_dir) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir)).vocab_size


@pytest.fixture(scope="session")
def fingerprint(model_dir) -> str:
    from sfttrain.model import tokenizer_fingerprints

    return tokenizer_fingerprints(model_dir)[0]


@pytest.fixture(scope="session")
def packed_build(tmp_path_factory, vocab, fingerprint) -> Path:
    """120 documents packed into rows of at most 64 tokens."""
    docs = random_docs(np.random.default_rng(1), 120, vocab)
    return write_build(tmp_path_factory.mktemp("packed"), pack(docs, 64), fingerprint, pack=True, max_length=64,
                       batch_rows=8)


@pytest.fixture(scope="session")
def unpacked_build(tmp_path_factory, vocab, fingerprint) -> Path:
    """50 documents, one per row, over two shards."""
    docs = random_docs(np.random.default_rng(2), 50, vocab)
    return write_build(tmp_path_factory.mktemp("unpacked"), docs, fingerprint, pack=False, shard_tokens=400,
                       batch_rows=8)
