"""What each token spells: the bytes of text a token id stands for, per vocabulary kind (byte-level BPE,
SentencePiece, added tokens), and the table of them all that encoding.py sums into character offsets
and the viewer draws tokens with."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import numpy as np
import tokenizers

from .tiktoken_bpe import byte_level_alphabet


def _component_types(node) -> set[str]:
    if isinstance(node, dict):
        found = {node["type"]} if isinstance(node.get("type"), str) else set()
        for value in node.values():
            found |= _component_types(value)
        return found
    if isinstance(node, list):
        return set().union(*(_component_types(v) for v in node)) if node else set()
    return set()


class Spelling:
    """`spell(token_id)`: the UTF-8 bytes a token stands for in text. Byte-level BPE tokens map through
    the byte alphabet; SentencePiece tokens read `\u2581` as a space and `<0xNN>` as that byte; added
    tokens are their content. None for an unknown id or a vocabulary of another kind."""

    def __init__(self, backend: tokenizers.Tokenizer):
        decoder = backend.decoder  # its own JSON only: the whole tokenizer's is megabytes
        kinds = _component_types(json.loads(decoder.__getstate__())) if decoder is not None else set()
        self._byte_level = "ByteLevel" in kinds
        self._metaspace = bool(kinds & {"Metaspace", "Replace"})
        # to Latin-1 characters, then `encode("latin-1")` makes the bytes in C; any character outside the
        # alphabet (Latin-1 ones included) goes to U+FFFF first, so that it fails there
        self._to_latin1 = {c: "\uffff" for c in range(256)} | {ord(ch): b for ch, b in byte_level_alphabet().items()}
        self._added = {i: t.content.encode("utf-8") for i, t in backend.get_added_tokens_decoder().items()}
        self._backend = backend

    @property
    def added_ids(self) -> list[int]:
        return list(self._added)

    def __call__(self, token_id: int) -> bytes | None:
        added = self._added.get(token_id)
        if added is not None:
            return added
        raw = self._backend.id_to_token(token_id)
        if raw is None:
            return None
        if self._byte_level:
            try:
                return raw.translate(self._to_latin1).encode("latin-1")
            except UnicodeEncodeError:  # a character outside the byte alphabet: not a byte-level token
                pass
        if self._metaspace:
            if len(raw) == 6 and raw.startswith("<0x") and raw.endswith(">"):
                return bytes([int(raw[3:5], 16)])
            return raw.replace("\u2581", " ").encode("utf-8")
        return None


@dataclass(frozen=True)
class TokenBytes:
    """Every token id's bytes laid end to end: `buffer[starts[i] : starts[i] + lengths[i]]`."""

    buffer: np.ndarray  # uint8
    lengths: np.ndarray  # int32, by token id; 0 for an id with no spelling (its documents fail the check)
    starts: np.ndarray = field(init=False)  # int32: a batch's offsets are computed in int32, half the memory

    def __post_init__(self):
        object.__setattr__(self, "lengths", self.lengths.astype(np.int32))
        starts = np.zeros(len(self.lengths), dtype=np.int32)
        np.cumsum(self.lengths[:-1], out=starts[1:])
        object.__setattr__(self, "starts", starts)

    @classmethod
    def of(cls, spellings: list[bytes | None]) -> TokenBytes:
        spelled = [b or b"" for b in spellings]
        lengths = np.fromiter(map(len, spelled), dtype=np.int32, count=len(spelled))
        return cls(np.frombuffer(b"".join(spelled), dtype=np.uint8), lengths)

    def to_json(self) -> dict:
        return {"buffer": base64.b64encode(self.buffer.tobytes()).decode("ascii"),
                "lengths": base64.b64encode(self.lengths.astype("<i4").tobytes()).decode("ascii")}

    @classmethod
    def from_json(cls, data: dict) -> TokenBytes:
        return cls(np.frombuffer(base64.b64decode(data["buffer"]), dtype=np.uint8),
                   np.frombuffer(base64.b64decode(data["lengths"]), dtype="<i4"))
