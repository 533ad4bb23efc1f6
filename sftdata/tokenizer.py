"""Loading the model's tokenizer and chat template, and what the rest of a build needs to know of them.

Everything downstream uses the Rust `tokenizers.Tokenizer` directly (batch encode with offsets), or
tiktoken where it encodes exactly alike (tiktoken_bpe.py); transformers is used only to load a folder or
hub id the way the model's users load it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path

import tokenizers

from .manifest import TokenizerInfo
from .tiktoken_bpe import RankedEncoder, disagreeing_characters, ranked_pattern
from .token_bytes import Spelling, TokenBytes


class TokenizerError(Exception):
    """The tokenizer or template cannot be used: the build stops and says what to fix."""


@dataclass
class ModelTokenizer:
    # the Rust tokenizer, or its JSON as UTF-8 bytes until something needs it: parsing Llama 3's holds the
    # GIL for half a second, and a build whose documents tiktoken encodes (tiktoken_bpe.py) never needs
    # it (bytes, as a cache entry holds them: decoding them to text would cost 30 ms)
    backend_or_json: tokenizers.Tokenizer | bytes
    chat_template: str
    template_source: str  # where the template came from: the tokenizer's config, or a file
    special_tokens_map: dict[str, str]  # bos_token, eos_token, ... as the template sees them
    # every token string the tokenizer matches as one unit in text: every added token, special or not
    # (Qwen's `<think>` and `<tool_call>` are added but not special; typed in a message they still become
    # their control ids), and the special tokens the template sees
    special_texts: tuple[str, ...]
    prefix_ids: tuple[int, ...]  # what the tokenizer itself prepends (its BOS rule), possibly nothing
    name: str

    @property
    def backend(self) -> tokenizers.Tokenizer:
        if isinstance(self.backend_or_json, bytes):
            self.backend_or_json = tokenizers.Tokenizer.from_buffer(self.backend_or_json)
        return self.backend_or_json

    @cached_property
    def fingerprint(self) -> str:
        return tokenizer_fingerprint(self.backend)

    @cached_property
    def template_fingerprint(self) -> str:
        return _sha256(self.chat_template)

    @cached_property
    def special_pattern(self) -> re.Pattern | None:
        """Matches any added token's text (`special_texts`); longest first so `<|im_end|>` wins over a prefix
        of it."""
        if not self.special_texts:
            return None
        ordered = sorted(self.special_texts, key=len, reverse=True)
        return re.compile("|".join(re.escape(t) for t in ordered))

    @cached_property
    def special_text_set(self) -> frozenset[str]:
        return frozenset(self.special_texts)

    @cached_property
    def added_ids(self) -> dict[str, int]:
        return {t.content: i for i, t in self.backend.get_added_tokens_decoder().items()}

    @cached_property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, text: str) -> int | None:
        added = self.added_ids.get(text)
        return added if added is not None else self.backend.token_to_id(text)

    @cached_property
    def token_bytes(self) -> TokenBytes | None:
        """The bytes every token id stands for, if this tokenizer's tokens spell their text byte for byte
        (byte-level BPE does; a SentencePiece prefix space or a normalizer does not): then token offsets
        are running sums of token lengths. None otherwise. Each document is still checked (tokens.py)."""
        spell = Spelling(self.backend)
        probe = _SPELLING_PROBE + "".join(self.special_texts[:2]) + _SPELLING_PROBE
        ids = self.backend.encode(probe, add_special_tokens=False).ids
        if b"".join(spell(i) or b"\0" for i in ids) != probe.encode("utf-8"):
            return None
        size = max([self.vocab_size - 1, *spell.added_ids]) + 1
        return TokenBytes.of([spell(i) for i in range(size)])

    @cached_property
    def ranked(self) -> dict | None:
        """What tiktoken needs to encode for this tokenizer (tiktoken_bpe.py), if it encodes exactly as this one:
        the pre-tokenizer regex, the added tokens, the characters to leave to this tokenizer."""
        table = self.token_bytes
        pattern = ranked_pattern(json.loads(self.backend.to_str())) if table is not None else None
        if pattern is None:
            return None
        spec = {"pattern": pattern, "added": self.added_ids}
        unsafe = disagreeing_characters(self.backend, _ranked_encoder(spec, table))
        return None if unsafe is None else spec | {"unsafe": unsafe}

    @cached_property
    def ranked_encoder(self) -> RankedEncoder | None:
        """tiktoken over this vocabulary where `ranked` allows it (not pickled: each process builds its
        own, in a tenth of a second, or finds the one it built last: `_LAST_ENCODER`)."""
        if self.ranked is None:
            return None
        encoder = _LAST_ENCODER.get(self.fingerprint)
        if encoder is None:
            _LAST_ENCODER.clear()
            encoder = _LAST_ENCODER[self.fingerprint] = _ranked_encoder(self.ranked, self.token_bytes)
        return encoder

    def __getstate__(self) -> dict:
        # the tokenizer travels as its JSON (as tokenizers pickles it anyway), to be parsed only if used
        state = {k: v for k, v in self.__dict__.items() if k not in ("ranked_encoder", "literal_backend")}
        if not isinstance(self.backend_or_json, bytes):
            state["backend_or_json"] = self.backend_or_json.to_str().encode("utf-8")
        return state

    @cached_property
    def literal_backend(self) -> tokenizers.Tokenizer:
        """A copy that encodes the text of every added token as plain text (for --special-text literal):
        `encode_special_tokens` splits only tokens flagged special, so the copy flags them all."""
        data = json.loads(self.backend.to_str())
        for added in data["added_tokens"]:
            added["special"] = True
        copy = tokenizers.Tokenizer.from_str(json.dumps(data))
        copy.encode_special_tokens = True
        return copy

    def to_json(self) -> dict:
        """A cache entry's content (`_write_entry`): JSON values, and the tokenizer's JSON as UTF-8 bytes."""
        backend = self.backend_or_json
        if not isinstance(backend, bytes):
            backend = backend.to_str().encode("utf-8")
        self.__dict__.setdefault("fingerprint", hashlib.sha256(backend).hexdigest())  # one serialization serves both
        table = self.token_bytes
        return {"backend": backend, "fingerprint": self.fingerprint,
                "token_bytes": table.to_json() if table is not None else None, "ranked": self.ranked,
                "added_ids": self.added_ids, "vocab_size": self.vocab_size, "chat_template": self.chat_template,
                "template_source": self.template_source, "special_tokens_map": self.special_tokens_map,
                "special_texts": list(self.special_texts), "prefix_ids": list(self.prefix_ids)}

    @classmethod
    def from_json(cls, data: dict, name: str) -> ModelTokenizer:
        loaded = cls(backend_or_json=data["backend"], chat_template=data["chat_template"],
                     template_source=data["template_source"], special_tokens_map=data["special_tokens_map"],
                     special_texts=tuple(data["special_texts"]), prefix_ids=tuple(data["prefix_ids"]), name=name)
        # computed when the entry was written: serializing a large tokenizer again to hash it costs a sixth
        # of a second, spelling its vocabulary a third
        loaded.__dict__["fingerprint"] = data["fingerprint"]
        loaded.__dict__["token_bytes"] = TokenBytes.from_json(data["token_bytes"]) if data["token_bytes"] else None
        for key in ("ranked", "added_ids", "vocab_size"):
            loaded.__dict__[key] = data[key]
        return loaded

    def summary(self) -> TokenizerInfo:
        return TokenizerInfo(name=self.name, fingerprint=self.fingerprint, vocab_size=self.vocab_size,
                             prefix_ids=list(self.prefix_ids), special_tokens=dict(self.special_tokens_map))


# tiktoken's tables for the tokenizer (by fingerprint) whose encoder this process built last, kept for the
# process's life (35 MB for Llama 3): a process building with it again (the Python API, the benchmark, the
# tests) does not build them again, and the command exits without the 25 ms that freeing them takes
_LAST_ENCODER: dict[str, RankedEncoder] = {}

# text of every kind a template renders: words, spaces and newlines, numbers, accents, CJK, an emoji
_SPELLING_PROBE = "Hello, world!\n\n  two  spaces\tand 12345 caf\u00e9 \u65e5\u672c\u8a9e \U0001f642 end.\n"


def _ranked_encoder(spec: dict, table: TokenBytes) -> RankedEncoder:
    buffer, starts, lengths = table.buffer.tobytes(), table.starts.tolist(), table.lengths.tolist()
    added_ids = set(spec["added"].values())
    ranks = {buffer[a : a + n]: i for i, (a, n) in enumerate(zip(starts, lengths)) if n and i not in added_ids}
    return RankedEncoder(ranks, spec["added"], spec["pattern"], spec.get("unsafe"))


def tokenizer_fingerprint(backend: tokenizers.Tokenizer) -> str:
    """SHA-256 of the tokenizer's canonical serialization: equal exactly when tokenization is equal."""
    return _sha256(backend.to_str())


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# files transformers may read to build a tokenizer; model weights are not among them
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "tekken.json", "chat_template.jinja", "chat_template.json", "vocab.json",
                   "merges.txt", "config.json")


def cache_dir() -> Path | None:
    """Where loaded tokenizers are kept (SFTDATA_CACHE, default ~/.cache/sftdata; "off" to disable)."""
    where = os.environ.get("SFTDATA_CACHE", str(Path.home() / ".cache" / "sftdata"))
    return None if where == "off" else Path(where) / "tokenizers"


# what a cache entry holds changes with the code, not only with sftdata's released version
CACHE_FORMAT = 4


def _cache_key(folder: Path) -> str:
    digest = hashlib.sha256(f"format={CACHE_FORMAT};".encode())
    for name in ("sftdata", "transformers", "tokenizers", "tiktoken"):  # tiktoken: the comparison in `ranked`
        digest.update(f"{name}={metadata.version(name)};".encode())
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            digest.update(name.encode() + b"\0")  # in three updates: the file's megabytes are not copied
            digest.update((folder / name).read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def _write_entry(path: Path, data: dict) -> None:
    """A cache entry: one line of JSON, then the tokenizer's own JSON as it is (escaped inside the first,
    its megabytes cost a tenth of a second to parse at every load)."""
    meta = {k: v for k, v in data.items() if k != "backend"}
    path.write_bytes(json.dumps(meta).encode("utf-8") + b"\n" + data["backend"])


def _read_entry(path: Path) -> dict:
    """`_write_entry`'s dict, the tokenizer's JSON left as bytes (ModelTokenizer.backend_or_json)."""
    meta, _, backend = path.read_bytes().partition(b"\n")
    return json.loads(meta) | {"backend": backend}


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
            loaded = ModelTokenizer.from_json(_read_entry(cached), str(name_or_path))
        except (OSError, ValueError, KeyError, TypeError):  # a damaged or foreign entry: load afresh, rewrite it
            loaded = None
    if loaded is None:
        hub_unreachable = False
        if not folder.is_dir():
            _check_hub_id(name_or_path)
            hub_unreachable = not _hub_reachable()
        loaded = _load_with_transformers(name_or_path, local_files_only=hub_unreachable)
        if cached is not None:
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                _write_entry(tmp, loaded.to_json())
                os.replace(tmp, cached)
            except OSError:  # a read-only home or a full disk is no reason to fail a build
                tmp.unlink(missing_ok=True)
    if chat_template_file:
        loaded.chat_template = Path(chat_template_file).read_text(encoding="utf-8")
        loaded.template_source = f"file:{chat_template_file}"
    if require_template and not loaded.chat_template:
        raise TokenizerError(
            f"the tokenizer {name_or_path!r} has no chat template: pass one with --chat-template FILE "
            "(a Jinja file, as in a tokenizer_config.json's `chat_template`)"
        )
    return loaded


# a hub repository id ("org/name", or a legacy "name"); a path with more parts, or starting with "." or
# "/", is meant as a folder
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
HUB_CONNECT_SECONDS = 3.0


def _check_hub_id(name: str) -> None:
    """`name` is not a folder here: it must be a hub id."""
    if Path(name).exists():
        raise TokenizerError(f"tokenizer {name}: a file, not a folder; pass the folder holding tokenizer.json "
                             "and tokenizer_config.json")
    if not HUB_ID.fullmatch(name):
        raise TokenizerError(f"tokenizer {name}: no such folder (pass a folder holding tokenizer.json and "
                             "tokenizer_config.json, or a hub id like org/name)")


def _hub_reachable() -> bool:
    """Whether the hub can be asked, by one connection (to the proxy where one is set), so that a machine
    without network fails in a moment instead of retrying for most of a minute. Where it cannot, a hub
    id may still load from the hub's local cache."""
    from urllib.request import getproxies, proxy_bypass  # here: with http, email and ssl, 0.01 s of a start

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    proxy = getproxies().get(url.scheme)
    if proxy and not proxy_bypass(url.hostname or ""):
        url = urllib.parse.urlsplit(proxy)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_CONNECT_SECONDS).close()
    except OSError:
        return False
    return True


def _load_with_transformers(name_or_path: str, local_files_only: bool = False) -> ModelTokenizer:
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
    except Exception as err:  # transformers raises many kinds; all mean the same thing here
        if local_files_only:
            raise TokenizerError(
                f"tokenizer {name_or_path}: no such folder, and as a hub id it is not in the local hub cache "
                "while the hub cannot be reached (HF_HUB_OFFLINE is set, or no connection). Pass a folder "
                "holding tokenizer.json and tokenizer_config.json."
            ) from err
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
    specials = {tok.content for tok in hf.added_tokens_decoder.values() if tok.content}
    specials |= set(special_map.values())
    with_specials = hf("a", add_special_tokens=True)["input_ids"]
    plain = hf("a", add_special_tokens=False)["input_ids"]
    prefix = next(
        (tuple(with_specials[:i]) for i in range(len(with_specials) - len(plain) + 1)
         if with_specials[i : i + len(plain)] == plain),
        (),
    )
    return ModelTokenizer(
        backend_or_json=backend,
        chat_template=template or "",
        template_source="tokenizer",
        special_tokens_map=special_map,
        special_texts=tuple(sorted(specials)),
        prefix_ids=prefix,
        name=str(name_or_path),
    )
