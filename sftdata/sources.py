"""Reading inputs: files in, raw records out, one stream across all inputs in the order given.

Each record gets its source id (0-based position across all inputs). A line that is not JSON becomes a
RecordError in place of its record, so one corrupt line never aborts a build; so does a record whose
format cannot be told (the file's format is detected from the first record that tells it). A file that
cannot be read at all (missing, unknown type, corrupt, a folder without data) raises at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

from .config import InputFormat
from .formats import detect_format
from .records import RawRecord
from .rejects import Reason, RecordError

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
DATASETS_BUILDERS = {".csv": "csv", ".tsv": "csv", ".txt": "text", ".arrow": "arrow"}
DATA_FILE_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow", ".txt"}


class InputError(Exception):
    """An input that cannot be read at all: the build stops and says which and why."""


def _jsonl_records(path: Path) -> Iterator[Any]:
    with open(path, "rb") as f:  # bytes, so one line of bad UTF-8 is one bad record, not a stopped build
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark
            if not raw.strip():
                continue
            try:
                yield json.loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                yield RecordError(Reason.MALFORMED, f"{path.name} line {lineno}: invalid JSON ({err})")
            except RecursionError:
                yield RecordError(Reason.MALFORMED, f"{path.name} line {lineno}: JSON nested deeper than "
                                  f"{sys.getrecursionlimit()} levels")


def _json_records(path: Path) -> Iterator[Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        yield from _jsonl_records(path)  # not one valid UTF-8 document: JSON Lines, one bad line at a time
        return
    try:
        data = json.loads(text)
    except RecursionError:
        raise InputError(f"{path}: JSON nested deeper than {sys.getrecursionlimit()} levels; write it as JSON "
                         "Lines (one record a line) so such a record is one reject") from None
    except json.JSONDecodeError as err:
        # many `.json` files are really JSON Lines; anything else is unreadable as a whole
        first = text.lstrip()[:1]
        if first == "{":
            yield from _jsonl_records(path)
            return
        raise InputError(f"{path}: not a JSON array nor JSON Lines ({err})") from err
    yield from (data if isinstance(data, list) else [data])


def _parquet_records(path: Path) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err}); check the file is complete") from None


def _data_files(folder: Path) -> list[Path]:
    """Files in `folder` (at any depth) of a kind `datasets.load_dataset` reads."""
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_FILE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def _load_dataset(path: Path):
    import datasets

    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        return datasets.load_from_disk(str(path))
    if path.is_dir():
        if not _data_files(path):
            raise InputError(f"{path}: a folder without data: no data files ({', '.join(sorted(DATA_FILE_SUFFIXES))}) "
                             "and no `save_to_disk` dataset (dataset_info.json, state.json) in it")
        return datasets.load_dataset(str(path))
    if path.suffix in DATASETS_BUILDERS:
        return datasets.load_dataset(DATASETS_BUILDERS[path.suffix], data_files=str(path))
    raise InputError(f"{path}: unknown input type (expected .jsonl, .json, .parquet, or a datasets folder)")


def _datasets_records(path: Path) -> Iterator[Any]:
    import datasets

    try:
        loaded = _load_dataset(path)
    except (datasets.exceptions.DatasetsError, ValueError, OSError) as err:  # what `datasets` raises for bad data
        raise InputError(f"{path}: `datasets` cannot read it ({type(err).__name__}: {err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise InputError(f"{path}: a dataset with splits {list(loaded)} and no `train` split")
        loaded = loaded["train"]
    yield from loaded


def read_file(path: Path) -> Iterator[Any]:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl_records(path)
    if suffix == ".json":
        return _json_records(path)
    if suffix == ".parquet":
        return _parquet_records(path)
    return _datasets_records(path)


def read_inputs(paths: list[Path], fmt: InputFormat = InputFormat.AUTO) -> Iterator[RawRecord]:
    """All records of all inputs, in order, each with its source id and its file's format."""
    source_id = 0
    for index, path in enumerate(paths):
        file_format = None if fmt is InputFormat.AUTO else fmt
        for data in read_file(Path(path)):
            if file_format is None and isinstance(data, dict):
                try:
                    file_format = detect_format(data)
                except RecordError as err:  # this record is a reject; the next one may tell the format
                    data = err
            yield RawRecord(source_id, index, file_format or InputFormat.MESSAGES, data)
            source_id += 1
