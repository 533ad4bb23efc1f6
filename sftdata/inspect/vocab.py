"""Token ids to readable pieces, through the tokenizer the build used.

`load_vocab` loads the tokenizer the manifest names (or one given) and checks it against the manifest's
fingerprint; when it cannot be loaded, or is another tokenizer, callers get the reason and show ids
(`IdsVocab`) instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..manifest import Manifest
from ..options import setting
from ..token_bytes import Spelling
from ..tokenizer import ModelTokenizer, load_tokenizer


@dataclass(frozen=True)
class VocabSettings:
    tokenizer: str | None = setting(None, "tokenizer folder to read ids with, instead of the one the manifest names",
                                    metavar="DIR")


class _Pieces:
    def pieces(self, ids) -> list[tuple[str, str]]:
        return [self.piece(i) for i in np.asarray(ids).tolist()]


class Vocab(_Pieces):
    """How token ids read. `piece(id)` is (text, kind): the token's own text with its whitespace, kind
    'text', 'special' (a special token), 'bytes' (part of a UTF-8 character, shown as \\xNN escapes) or
    'unknown' (an id the tokenizer does not have).

    Pieces come from the table of the bytes each token spells that the tokenizer's cache entry holds
    (byte-level BPE vocabularies), so a report or a view need not parse the tokenizer itself: that costs
    half a second for Llama 3's. Other vocabularies are spelled through the parsed tokenizer."""

    def __init__(self, tokenizer: ModelTokenizer):
        self.tokenizer = tokenizer
        self.name = tokenizer.name
        specials = set(tokenizer.special_texts)
        self._added = {i: (text, "special" if text in specials else "text")
                       for text, i in tokenizer.added_ids.items()}
        self._cache: dict[int, tuple[str, str]] = {}

    def piece(self, token_id: int) -> tuple[str, str]:
        token_id = int(token_id)
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._added.get(token_id) or self._piece(token_id)
        return hit

    def _piece(self, token_id: int) -> tuple[str, str]:
        data = self._spelled(token_id)
        if data is None:
            raw = self.tokenizer.backend.id_to_token(token_id)
            return (f"<id {token_id}>", "unknown") if raw is None else (raw, "text")
        try:
            return data.decode("utf-8"), "text"
        except UnicodeDecodeError:
            return data.decode("utf-8", errors="backslashreplace"), "bytes"

    def _spelled(self, token_id: int) -> bytes | None:
        table = self.tokenizer.token_bytes
        if table is not None and 0 <= token_id < len(table.lengths) and table.lengths[token_id]:
            start = int(table.starts[token_id])
            return table.buffer[start : start + int(table.lengths[token_id])].tobytes()
        return self._spelling(token_id)

    @cached_property
    def _spelling(self) -> Spelling:
        return Spelling(self.tokenizer.backend)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` alone, no special tokens added: how the build tokenizes a response template."""
        return np.asarray(self.tokenizer.backend.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self.tokenizer.backend.decode(np.asarray(ids).tolist(), skip_special_tokens=False)


def load_vocab(manifest: Manifest, tokenizer: str | ModelTokenizer | None = None) -> tuple[Vocab | None, str | None]:
    """The build's tokenizer (or `tokenizer`: a folder, or one loaded already), checked against the
    manifest's fingerprint.

    Returns (vocab, None), or (None, why not): then callers show ids. Loaded as the build loads it
    (through transformers, or the build's cache of what transformers loaded: transformers rebuilds some
    tokenizers, so tokenizer.json alone can differ)."""
    if isinstance(tokenizer, ModelTokenizer):
        name, loaded = tokenizer.name, tokenizer
    else:
        name, loaded = tokenizer or manifest.config.tokenizer or manifest.tokenizer.name, None
    if not name:
        return None, "the manifest names no tokenizer; showing token ids"
    expected = manifest.tokenizer.fingerprint
    try:
        loaded = loaded or load_tokenizer(str(name), require_template=False)
    except Exception as err:  # transformers raises many kinds; all mean "not loadable here"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, f"cannot load the tokenizer {name!r} ({first}); showing token ids"
    if expected and loaded.fingerprint != expected:
        return None, (f"the tokenizer at {name!r} is not the one this build used (fingerprint differs); "
                      "showing token ids (pass --tokenizer with the build's tokenizer)")
    return Vocab(loaded), None


class IdsVocab(_Pieces):
    """Stands in for a Vocab when no tokenizer can be loaded: every token reads as its id."""

    name = None

    def piece(self, token_id: int) -> tuple[str, str]:
        return f"#{int(token_id)}", "id"
