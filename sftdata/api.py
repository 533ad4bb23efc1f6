"""The Python API: `sftdata build` from a notebook or a pipeline, and a finished build opened for any trainer.

    manifest = sftdata.build(["chats.jsonl"], "shards/", tokenizer="./Llama-3.1-8B-Instruct", pack=True)
    built = sftdata.open_build("shards/")
    built.rows       # datasets.Dataset, one item per training row: input_ids, loss_mask, seq_lens, source_ids
    built.documents  # datasets.Dataset, one item per document (packed rows unpacked):
                     #   input_ids, loss_mask, labels (the token where loss_mask is 1, else -100), source_id
    built.manifest   # the typed Manifest

Settings are `BuildConfig`'s fields, as keyword arguments; errors are the command line's (ConfigError,
BuildError, OutDirError, InputError, TokenizerError, TemplateRenderError), raised instead of printed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .builder import Progress
from .builder import build as run_build
from .config import BuildConfig, ConfigError, absolute_if_local
from .manifest import Manifest
from .shards import SCHEMA, open_shard, read_rejects, shard_columns

if TYPE_CHECKING:  # datasets costs a second to import: only a Build's datasets need it
    import datasets

IGNORE_INDEX = -100  # the label Hugging Face's and PyTorch's cross-entropy skip

DOCUMENT_SCHEMA = pa.schema([
    pa.field("input_ids", pa.list_(pa.int32())),
    pa.field("loss_mask", pa.list_(pa.uint8())),
    pa.field("labels", pa.list_(pa.int32())),
    pa.field("source_id", pa.int64()),
])


def build(inputs: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike, *, tokenizer: str,
          overwrite: bool = False, on_progress: Callable[[Progress], None] | None = None,
          **settings: Any) -> Manifest:
    """What `sftdata build INPUTS --out OUT --tokenizer T ...` does, returning the manifest it wrote.

    `settings` are BuildConfig's fields (`chat_template`, `train_on`, `max_length`, `pack`, ...; enum
    settings take their values as strings, `train_on="last"`); `on_progress` is called after every batch.
    The HTML report is the command line's: `sftdata report OUT` writes it for a build made here.
    """
    known = {f.name for f in fields(BuildConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown build setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"the settings are BuildConfig's fields: {', '.join(sorted(known - {'tokenizer'}))}")
    settings["chat_template"] = absolute_if_local(settings.get("chat_template"))
    config = BuildConfig(tokenizer=absolute_if_local(tokenizer), **settings)
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    return run_build(paths, out, config, overwrite=overwrite, on_progress=on_progress)


def open_build(out: str | os.PathLike) -> Build:
    """A finished build (raises ManifestError for a folder without a readable manifest.json)."""
    return Build(Path(out), Manifest.read(out))


@dataclass
class Build:
    """A finished build, read memory-mapped: nothing is loaded until a property is used."""

    path: Path
    manifest: Manifest

    @cached_property
    def tables(self) -> list[pa.Table]:
        """The shards as Arrow tables (SCHEMA), in order."""
        return [open_shard(self.path / shard.name) for shard in self.manifest.shards]

    @cached_property
    def rows(self) -> datasets.Dataset:
        """One item per training row, as written: several documents per row when the build is packed."""
        import datasets

        if not self.manifest.shards:
            return datasets.Dataset(datasets.table.InMemoryTable(SCHEMA.empty_table()))
        # from the files, so the dataset stays memory-mapped (and pickles as paths, not as data)
        return datasets.concatenate_datasets(
            [datasets.Dataset.from_file(str(self.path / shard.name)) for shard in self.manifest.shards])

    @cached_property
    def documents(self) -> datasets.Dataset:
        """One item per document, packed rows cut at their `seq_lens`, in row order. Each document's ids
        and mask are the build's own; `labels` is made from the mask (the ids and masks are copied into
        memory here, about 9 bytes per token)."""
        import datasets

        batches = [_documents_of(columns) for table in self.tables for columns in shard_columns(table)]
        table = pa.Table.from_batches(batches, schema=DOCUMENT_SCHEMA)
        return datasets.Dataset(datasets.table.InMemoryTable(table))

    @cached_property
    def rejects(self) -> list[dict]:
        """Every record not written: {"source_id", "reason", "detail"}."""
        return read_rejects(self.path)


def _documents_of(columns) -> pa.RecordBatch:
    """One record batch of a shard (`shards.Columns`), one document per item."""
    (id_offsets, _, len_offsets, source_offsets), (ids, mask, lens, sources) = columns.offsets, columns.values
    first, last = id_offsets[0], id_offsets[-1]
    lengths = lens[len_offsets[0] : len_offsets[-1]]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    ids, mask = ids[first:last], mask[first:last]
    labels = np.where(mask == 1, ids, np.int32(IGNORE_INDEX)).astype(np.int32)
    as_lists = [pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)) for values in (ids, mask, labels)]
    source_ids = pa.array(sources[source_offsets[0] : source_offsets[-1]])
    return pa.RecordBatch.from_arrays([*as_lists, source_ids], schema=DOCUMENT_SCHEMA)
