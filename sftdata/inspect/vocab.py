"""Token ids to readable pieces, through the tokenizer the build used.

`load_vocab` loads the tokenizer the manifest names (or one given) and checks it against the manifest's
fingerprint; when it cannot be loaded, or is another tokenizer, callers get the reason and show ids
(`IdsVocab`) instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..manifest import Manifest
from ..options import setting
from ..token_bytes import Spelling
from ..tokenizer import load_tokenizer


@dataclass(frozen=True)
class VocabSettings:
    tokenizer: str | None = setting(None, "tokenizer folder to read ids with, instead of the one the manifest names",
                                    metavar="DIR")


class _Pieces:
    def pieces(self, ids) -> list[tuple[str, str]]:
        return [self.piece(i) for i in np.asarray(ids).tolist()]


@dataclass
class Vocab(_Pieces):
    """How token ids read. `piece(id)` is (text, kind): the token's own text with its whitespace, kind
    'text', 'special' (a special token), 'bytes' (part of a UTF-8 character, shown as \\xNN escapes) or
    'unknown' (an id the tokenizer does not have)."""

    backend: object  # tokenizers.Tokenizer
    name: str
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._spell = Spelling(self.backend)
        self._added = {i: (t.content, bool(t.special)) for i, t in self.backend.get_added_tokens_decoder().items()}

    def piece(self, token_id: int) -> tuple[str, str]:
        token_id = int(token_id)
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._piece(token_id)
        return hit

    def _piece(self, token_id: int) -> tuple[str, str]:
        if token_id in self._added:
            content, special = self._added[token_id]
            return content, "special" if special else "text"
        raw = self.backend.id_to_token(token_id)
        if raw is None:
            return f"<id {token_id}>", "unknown"
        data = self._spell(token_id)
        if data is None:
            return raw, "text"
        try:
            return data.decode("utf-8"), "text"
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="backslashreplace"), "bytes"

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` alone, no special tokens added: how the build tokenizes a response template."""
        return np.asarray(self.backend.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self.backend.decode(np.asarray(ids).tolist(), skip_special_tokens=False)


def load_vocab(manifest: Manifest, tokenizer: str | None = None) -> tuple[Vocab | None, str | None]:
    """The build's tokenizer (or `tokenizer`), checked against the manifest's fingerprint.

    Returns (vocab, None), or (None, why not): then callers show ids. Loaded through transformers, as the
    build loads it (transformers rebuilds some tokenizers, so tokenizer.json alone can differ)."""
    name = tokenizer or manifest.config.tokenizer or manifest.tokenizer.name
    if not name:
        return None, "the manifest names no tokenizer; showing token ids"
    expected = manifest.tokenizer.fingerprint
    try:
        backend, fingerprint = _load_backend(str(name))
    except Exception as err:  # transformers raises many kinds; all mean "not loadable here"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, f"cannot load the tokenizer {name!r} ({first}); showing token ids"
    if expected and fingerprint != expected:
        return None, (f"the tokenizer at {name!r} is not the one this build used (fingerprint differs); "
                      "showing token ids (pass --tokenizer with the build's tokenizer)")
    return Vocab(backend, str(name)), None


def _load_backend(name: str):
    """(backend, fingerprint) of the tokenizer as the build loads it (cached after the build, so fast)."""
    tok = load_tokenizer(name, require_template=False)
    return tok.backend, tok.fingerprint


class IdsVocab(_Pieces):
    """Stands in for a Vocab when no tokenizer can be loaded: every token reads as its id."""

    name = None

    def piece(self, token_id: int) -> tuple[str, str]:
        return f"#{int(token_id)}", "id"
