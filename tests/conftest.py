"""Shared test fixtures: tokenizers (fixture, shared, mistral-common), and an in-process builder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
SHARED = Path(os.environ.get("SFTDATA_SHARED", REPO.parent / "shared"))
TEMPLATES = FIXTURES / "templates"

# loaded tokenizers are cached (sftdata.tokenizer.cache_dir): keep the tests' cache apart from the user's
os.environ.setdefault("SFTDATA_CACHE", tempfile.mkdtemp(prefix="sftdata-test-cache-"))

requires_shared = pytest.mark.skipif(not (SHARED / "tokenizers").exists(),
                                     reason=f"real tokenizers not present at {SHARED}/tokenizers")


def fixture_tokenizer(name: str) -> str:
    return str(FIXTURES / "tokenizers" / name)


def shared_tokenizer(name: str) -> str:
    return str(SHARED / "tokenizers" / name)


def mistral_common_tokenizer(tmp_root: Path, version: str) -> str:
    """A SentencePiece model shipped inside mistral-common, as a folder transformers loads as fast."""
    import mistral_common

    data = Path(mistral_common.__file__).parent / "data"
    model = sorted(data.glob(f"*.model.{version}"))[0]
    folder = tmp_root / f"mistral-{version}"
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.read_bytes())
    (folder / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", '
        '"unk_token": "<unk>", "add_bos_token": true, "legacy": true}'
    )
    return str(folder)


def mistral_common_tekken(tmp_root: Path) -> str:
    """mistral-common's tiktoken-style Tekken vocabulary, as a folder transformers loads as fast."""
    import mistral_common

    data = Path(mistral_common.__file__).parent / "data"
    folder = tmp_root / "mistral-tekken"
    folder.mkdir(exist_ok=True)
    (folder / "tekken.json").write_bytes(sorted(data.glob("tekken_*.json"))[-1].read_bytes())
    (folder / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}')
    return str(folder)


@pytest.fixture(scope="session")
def mistral_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistral")
    dirs = {v: mistral_common_tokenizer(root, v) for v in ("v1", "v3")}
    dirs["tekken"] = mistral_common_tekken(root)
    return dirs
