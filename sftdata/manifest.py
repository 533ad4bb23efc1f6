"""The manifest: what a finished build is, typed. Written once, by the build, as its last file (a folder
with a manifest is a finished build); read by everything that uses a build (the inspect commands,
sfttrain's loader) through `Manifest.read`, which checks the format version and every key.

`records == records_written + rejected` holds per input and in total; `documents >= records_written`
(a record split with `--overlong split-turns` writes several documents, and so does a record with a turn
trained in its own context: `context_documents`). With an eval split, `counts` and `inputs` cover both
splits and `eval` says which part of them is held out.
"""

from __future__ import annotations

import json
import os
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

import numpy as np

from .config import BuildConfig
from .storage import Folder, exists, join, public, read_bytes, size

FORMAT_VERSION = 3  # 3: shards carry their file size
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
EVAL_DIR = "eval"  # the held-out split's shards, beside the train split's


class ManifestError(ValueError):
    """A build's manifest is missing, from another format version, or unreadable: the message says why."""


@dataclass
class TokenizerInfo:
    name: str
    fingerprint: str  # SHA-256 of the tokenizer's canonical JSON: equal exactly when tokenization is equal
    vocab_size: int
    prefix_ids: list[int]  # what the tokenizer itself prepends (its BOS rule)
    special_tokens: dict[str, str]


@dataclass
class TemplateInfo:
    source: str  # "tokenizer", or the path of the --chat-template file
    fingerprint: str
    header: str  # the probed text before an assistant turn
    end_of_turn: str | None  # the probed control token closing one
    renders: int  # per conversation: 1 where the template provably passes message text through, else 2
    why_two_renders: str | None = None


@dataclass
class InputInfo:
    path: str
    format: str | None  # detected (or forced) input format; None for an input without records
    records: int
    records_written: int  # records with at least one document written
    documents: int  # documents written (several per record with split-turns)
    rejected: int


@dataclass
class Counts:
    records: int
    records_written: int
    documents: int
    rejected: int
    rejected_by_reason: dict[str, int]
    tokens: int
    trained_tokens: int
    truncated: int  # documents cut to max_length (cut-turns, truncate, split-turns pieces)
    split_pieces: int  # documents beyond the first of split records
    rows: int
    span_methods: dict[str, int]  # how each document's spans were found: sentinel, difference, generation
    unrendered_fields: dict[str, int]  # documents holding a field of this kind the template does not render
    comparator_template_not_found: int = 0  # --masker response-template: documents it trains nothing of
    # --turn-context own: documents beyond a record's first, each the rendering of the conversation up to a
    # turn the whole rendering holds otherwise (earlier reasoning dropped, an end token rewritten), and
    # their tokens: what training every turn in the context it is generated in costs
    context_documents: int = 0
    context_tokens: int = 0


@dataclass
class PackingInfo:
    documents: int
    tokens: int
    capacity: int  # --max-length: tokens a row holds at most
    rows: int
    fill: float  # tokens / (rows x capacity)
    lower_bound_rows: int  # the tightest bound known: max of the two below; rows == it means optimal
    l1_lower_bound_rows: int  # ceil(tokens / capacity)
    l2_lower_bound_rows: int  # Martello-Toth L2
    max_row_tokens: int

    @property
    def optimal(self) -> bool:
        return self.rows == self.lower_bound_rows


@dataclass
class ShardInfo:
    name: str
    rows: int
    tokens: int
    sha256: str
    file_bytes: int  # the file's size: what every reader checks before use (the SHA-256 is `sftdata verify`'s)


@dataclass
class SplitInfo:
    """The held-out (eval) split: whole records, never also in the train split. Its shards are in
    EVAL_DIR/, laid out (and packed, with --pack) like the train split's."""

    records: int
    documents: int
    tokens: int
    trained_tokens: int
    rows: int
    shards: list[ShardInfo]
    packing: PackingInfo | None


@dataclass
class Manifest:
    sftdata_version: str
    tokenizer: TokenizerInfo
    template: TemplateInfo
    config: BuildConfig
    inputs: list[InputInfo]
    counts: Counts
    packing: PackingInfo | None
    shards: list[ShardInfo]  # the train split
    eval: SplitInfo | None = None  # with --eval-fraction / --eval-records; counts above include it
    format_version: int = FORMAT_VERSION
    # how long each stage took: for the summary a build prints, never written (a manifest is reproducible)
    seconds: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict:
        data = _plain(self)
        del data["seconds"]
        return {"format_version": data.pop("format_version"), **data}

    def write(self, build_dir: str | os.PathLike | Folder) -> None:
        """Atomically: a reader sees no manifest or the whole one (a build's Folder: under its temporary name)."""
        folder = build_dir if isinstance(build_dir, Folder) else Folder(build_dir)
        folder.write_bytes(MANIFEST, json_bytes(self.to_json()))

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest") -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: not a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise ManifestError(f"{where}: format version {data.get('format_version')} is not {FORMAT_VERSION}, "
                                "the version this sftdata reads; rebuild with this version")
        return _typed(cls, data, where)

    @classmethod
    def read(cls, build_dir: str | os.PathLike, check_files: bool = True) -> Manifest:
        """The manifest of a finished build; with `check_files`, only if every shard it lists is there with
        its size (a cheap check that a shard was not truncated or replaced)."""
        manifest = cls._read(build_dir)
        problems = manifest.file_problems(build_dir) if check_files else []
        if problems:
            raise ManifestError(f"{build_dir} does not match its manifest: {'; '.join(problems)}. The build was "
                                "damaged after it finished: rebuild it (`sftdata verify` checks it in full)")
        return manifest

    def file_problems(self, build_dir: str | os.PathLike) -> list[str]:
        """What is wrong with the shard files against this manifest, by existence and size."""
        problems = []
        for name, shard in self.shard_files():
            path = join(build_dir, name)  # a local path or a URL: the size is the filesystem's either way
            if not exists(path):
                problems.append(f"{name} is missing")
            elif size(path) != shard.file_bytes:
                problems.append(f"{name} is {size(path):,} bytes, the manifest says {shard.file_bytes:,}")
        return problems

    def shard_files(self) -> list[tuple[str, ShardInfo]]:
        """Every shard of the build, both splits, with its path relative to the build folder."""
        held_out = self.eval.shards if self.eval else []
        return [(s.name, s) for s in self.shards] + [(f"{EVAL_DIR}/{s.name}", s) for s in held_out]

    @classmethod
    def _read(cls, build_dir: str | os.PathLike) -> Manifest:
        path = join(build_dir, MANIFEST)
        if not exists(path):
            raise ManifestError(f"{build_dir} has no {MANIFEST}: it is not a finished sftdata build (run "
                                "`sftdata build` first, or let a running build finish)")
        try:
            data = json.loads(read_bytes(path).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ManifestError(f"{path} is not valid JSON ({err}): the build was damaged; rebuild it") from None
        return cls.from_json(data, public(path))

    @classmethod
    def for_shards(cls, shards: list[ShardInfo], tokenizer: TokenizerInfo, config: BuildConfig,
                   trained_tokens: int = 0) -> Manifest:
        """A manifest for shards written with `ShardWriter` by other means than a build (tests,
        benchmarks, a conversion from another tool): counts from the shards, no inputs, no template."""
        rows, tokens = sum(s.rows for s in shards), sum(s.tokens for s in shards)
        counts = Counts(records=rows, records_written=rows, documents=rows, rejected=0, rejected_by_reason={},
                        tokens=tokens, trained_tokens=trained_tokens, truncated=0, split_pieces=0, rows=rows,
                        span_methods={}, unrendered_fields={})
        template = TemplateInfo(source="none", fingerprint="", header="", end_of_turn=None, renders=0)
        return cls(sftdata_version="external", tokenizer=tokenizer, template=template, config=config, inputs=[],
                   counts=counts, packing=None, shards=shards)

    def input_of(self, source_ids) -> np.ndarray:
        """Which input each record came from (source ids in, input indices out): inputs are numbered in
        order, each taking the next `records` source ids. The one answer to that question, for the
        inspect commands, verify and sfttrain's loss per input."""
        ends = np.cumsum([info.records for info in self.inputs], dtype=np.int64)
        return np.searchsorted(ends, np.asarray(source_ids, dtype=np.int64), side="right")


def json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _typed(hint: Any, value: Any, where: str) -> Any:
    """`value` (parsed JSON) as `hint`, checked: every dataclass key present and known, every leaf of its type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(inner, value, where)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected an object, found {type(value).__name__}")
        hints = typing.get_type_hints(hint)
        known = {f.name for f in fields(hint) if f.init and f.name != "seconds"}
        unknown = set(value) - known
        if unknown:
            raise ManifestError(f"{where}: unknown key(s) {sorted(unknown)}")
        required = {f.name for f in fields(hint) if f.name in known and f.default is f.default_factory is MISSING}
        missing = required - set(value)
        if missing:
            raise ManifestError(f"{where}: missing key(s) {sorted(missing)}")
        try:
            return hint(**{k: _typed(hints[k], v, f"{where}.{k}") for k, v in value.items()})
        except (TypeError, ValueError) as err:
            raise ManifestError(f"{where}: {err}") from None
    if origin is list:
        if not isinstance(value, list):
            raise ManifestError(f"{where}: expected a list, found {type(value).__name__}")
        return [_typed(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected an object, found {type(value).__name__}")
        return {k: _typed(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise ManifestError(f"{where}: {value!r} is not one of {[e.value for e in hint]}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        return value
    raise ManifestError(f"{where}: {value!r} is not of type {getattr(hint, '__name__', hint)}")

