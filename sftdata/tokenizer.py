"""Loading the model's tokenizer and chat template, and what the rest of a build needs to know of them.

Everything downstream uses the Rust `tokenizers.Tokenizer` directly (batch encode with offsets);
transformers is used only to load a folder or hub id the way the model's users load it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path

import tokenizers


class TokenizerError(Exception):
    """The tokenizer or template cannot be used: the build stops and says what to fix."""


@dataclass
class ModelTokenizer:
    backend: tokenizers.Tokenizer
    chat_template: str
    template_source: str  # where the template came from: the tokenizer's config, or a file
    special_tokens_map: dict[str, str]  # bos_token, eos_token, ... as the template sees them
    special_texts: tuple[str, ...]  # every token string the tokenizer turns into a control token
    prefix_ids: tuple[int, ...]  # what the tokenizer itself prepends (its BOS rule), possibly nothing
    name: str

    @cached_property
    def fingerprint(self) -> str:
        return tokenizer_fingerprint(self.backend)

    @cached_property
    def template_fingerprint(self) -> str:
        return hashlib.sha256(self.chat_template.encode("utf-8")).hexdigest()

    @cached_property
    def special_pattern(self) -> re.Pattern | None:
        """Matches any special token's text; longest first so `<|im_end|>` wins over a prefix of it."""
        if not self.special_texts:
            return None
        ordered = sorted(self.special_texts, key=len, reverse=True)
        return re.compile("|".join(re.escape(t) for t in ordered))

    def token_id(self, text: str) -> int | None:
        return self.backend.token_to_id(text)

    @cached_property
    def literal_backend(self) -> tokenizers.Tokenizer:
        """A copy that encodes special-token text as plain text (for --special-text literal)."""
        copy = tokenizers.Tokenizer.from_str(self.backend.to_str())
        copy.encode_special_tokens = True
        return copy

    def to_json(self) -> dict:
        return {"backend": self.backend.to_str(), "chat_template": self.chat_template,
                "template_source": self.template_source, "special_tokens_map": self.special_tokens_map,
                "special_texts": list(self.special_texts), "prefix_ids": list(self.prefix_ids)}

    @classmethod
    def from_json(cls, data: dict, name: str) -> ModelTokenizer:
        return cls(backend=tokenizers.Tokenizer.from_str(data["backend"]), chat_template=data["chat_template"],
                   template_source=data["template_source"], special_tokens_map=data["special_tokens_map"],
                   special_texts=tuple(data["special_texts"]), prefix_ids=tuple(data["prefix_ids"]), name=name)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "vocab_size": self.backend.get_vocab_size(with_added_tokens=True),
            "prefix_ids": list(self.prefix_ids),
            "special_tokens": self.special_tokens_map,
        }


def tokenizer_fingerprint(backend: tokenizers.Tokenizer) -> str:
    """SHA-256 of the tokenizer's canonical serialization: equal exactly when tokenization is equal."""
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()


# files transformers may read to build a tokenizer; model weights are not among them
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "tekken.json", "chat_template.jinja", "chat_template.json", "vocab.json",
                   "merges.txt", "config.json")


def cache_dir() -> Path | None:
    """Where loaded tokenizers are kept (SFTDATA_CACHE, default ~/.cache/sftdata; "off" to disable)."""
    where = os.environ.get("SFTDATA_CACHE", str(Path.home() / ".cache" / "sftdata"))
    return None if where == "off" else Path(where) / "tokenizers"


def _cache_key(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("sftdata", "transformers", "tokenizers"):
        digest.update(f"{name}={metadata.version(name)};".encode())
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    return digest.hexdigest()


def load_tokenizer(name_or_path: str, chat_template_file: str | None = None,
                   require_template: bool = True) -> ModelTokenizer:
    """The tokenizer exactly as transformers loads it (the model's users tokenize with that), with the
    chat template of `chat_template_file` when given.

    Importing transformers costs seconds, so what a load found is kept in a cache keyed by the bytes of
    the tokenizer files and the library versions; the next build of the same tokenizer reads it back.
    """
    folder, cache = Path(name_or_path), cache_dir()
    cached = cache / f"{_cache_key(folder)}.json" if cache and folder.is_dir() else None
    loaded = None
    if cached is not None and cached.is_file():
        try:
            loaded = ModelTokenizer.from_json(json.loads(cached.read_text(encoding="utf-8")), str(name_or_path))
        except Exception:  # a damaged or foreign cache entry: load afresh and rewrite it
            loaded = None
    if loaded is None:
        loaded = _load_with_transformers(name_or_path)
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(loaded.to_json()), encoding="utf-8")
                os.replace(tmp, cached)
            except OSError:
                pass  # a read-only home is no reason to fail a build
    if chat_template_file:
        loaded.chat_template = Path(chat_template_file).read_text(encoding="utf-8")
        loaded.template_source = f"file:{chat_template_file}"
    if require_template and not loaded.chat_template:
        raise TokenizerError(
            f"the tokenizer {name_or_path!r} has no chat template: pass one with --chat-template FILE "
            "(a Jinja file, as in a tokenizer_config.json's `chat_template`)"
        )
    return loaded


def _load_with_transformers(name_or_path: str) -> ModelTokenizer:
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:  # transformers raises many kinds; all mean the same thing here
        raise TokenizerError(
            f"cannot load a tokenizer from {name_or_path!r}: {err}\n"
            "Pass a folder with tokenizer.json and tokenizer_config.json (or a hub id when online)."
        ) from err
    backend = getattr(hf, "backend_tokenizer", None)
    if not isinstance(backend, tokenizers.Tokenizer):
        raise TokenizerError(
            f"{name_or_path!r} loads as a slow tokenizer ({type(hf).__name__}); sftdata needs a fast one "
            "(a tokenizer.json, or sentencepiece installed so transformers can convert tokenizer.model)"
        )
    template = hf.chat_template
    if isinstance(template, dict):  # named templates: the default one is what apply_chat_template uses
        template = template.get("default")
    special_map = {
        key: value
        for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        if isinstance(value := getattr(hf, key, None), str)
    }
    specials = {tok.content for tok in hf.added_tokens_decoder.values() if tok.special}
    specials |= set(special_map.values())
    with_specials = hf("a", add_special_tokens=True)["input_ids"]
    plain = hf("a", add_special_tokens=False)["input_ids"]
    prefix = next(
        (tuple(with_specials[:i]) for i in range(len(with_specials) - len(plain) + 1)
         if with_specials[i : i + len(plain)] == plain),
        (),
    )
    return ModelTokenizer(
        backend=backend,
        chat_template=template or "",
        template_source="tokenizer",
        special_tokens_map=special_map,
        special_texts=tuple(sorted(specials)),
        prefix_ids=prefix,
        name=str(name_or_path),
    )
