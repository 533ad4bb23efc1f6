"""Loading the model's tokenizer and chat template, and what the rest of a build needs to know of them.

Everything downstream uses the Rust `tokenizers.Tokenizer` directly (batch encode with offsets);
transformers is used only to load a folder or hub id the way the model's users load it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
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


def load_tokenizer(name_or_path: str, chat_template_file: str | None = None) -> ModelTokenizer:
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
    if chat_template_file:
        template, source = Path(chat_template_file).read_text(encoding="utf-8"), f"file:{chat_template_file}"
    else:
        template, source = hf.chat_template, "tokenizer"
        if isinstance(template, dict):  # named templates: the default one is what apply_chat_template uses
            template = template.get("default")
    if not template:
        raise TokenizerError(
            f"the tokenizer {name_or_path!r} has no chat template: pass one with --chat-template FILE "
            "(a Jinja file, as in a tokenizer_config.json's `chat_template`)"
        )
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
        chat_template=template,
        template_source=source,
        special_tokens_map=special_map,
        special_texts=tuple(sorted(specials)),
        prefix_ids=prefix,
        name=str(name_or_path),
    )
