"""Reading inputs: files in, raw records out, one stream across all inputs in the order given.

Each record gets its source id (0-based position across all inputs). A line that is not JSON, or a CSV
row with the wrong number of cells, becomes a RecordError in place of its record, so one corrupt line
never aborts a build; a file that cannot be read at all (missing, unknown type, no detectable format)
raises at once.
"""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .config import InputFormat
from .formats import detect_format
from .records import RawRecord
from .rejects import Reason, RecordError

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
READABLE = ".jsonl, .json, .parquet, .csv, .tsv, .arrow, or a datasets folder"


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


def _json_records(path: Path) -> Iterator[Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        yield from _jsonl_records(path)  # not one valid UTF-8 document: JSON Lines, one bad line at a time
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        # many `.json` files are really JSON Lines; anything else is unreadable as a whole
        first = text.lstrip()[:1]
        if first == "{":
            yield from _jsonl_records(path)
            return
        raise InputError(f"{path}: not a JSON array nor JSON Lines ({err})") from err
    yield from (data if isinstance(data, list) else [data])


def _parquet_records(path: Path) -> Iterator[Any]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def _csv_records(path: Path, delimiter: str) -> Iterator[Any]:
    """One record per row, keyed by the header; every value a string, as written (an empty cell is "")."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter=delimiter)
        try:
            header = next(rows, [])
            first_line = rows.line_num + 1  # where the next row starts (a quoted cell may span lines)
            for cells in rows:
                if cells and len(cells) == len(header):
                    yield dict(zip(header, cells))
                elif cells:  # [] is a blank line
                    yield RecordError(Reason.MALFORMED, f"{path.name} line {first_line}: {len(cells)} cells "
                                                        f"where the header names {len(header)}")
                first_line = rows.line_num + 1
        except (csv.Error, UnicodeDecodeError) as err:
            raise InputError(f"{path} line {rows.line_num}: not readable as {path.suffix[1:].upper()} ({err})") from err


@contextmanager
def _datasets_quiet(datasets):
    """datasets draws a progress bar for each load: the build has its own."""
    was_on = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def _datasets_records(path: Path) -> Iterator[Any]:
    import datasets

    with _datasets_quiet(datasets):
        if path.suffix.lower() == ".arrow":
            loaded = datasets.Dataset.from_file(str(path))
        elif (path / "dataset_info.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise InputError(f"{path}: a dataset with splits {list(loaded)} and no `train` split")
        loaded = loaded["train"]
    yield from loaded


def read_file(path: Path) -> Iterator[Any]:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".arrow":
        return _datasets_records(path)
    if suffix in JSONL_SUFFIXES:
        return _jsonl_records(path)
    if suffix == ".json":
        return _json_records(path)
    if suffix == ".parquet":
        return _parquet_records(path)
    if suffix in CSV_DELIMITERS:
        return _csv_records(path, CSV_DELIMITERS[suffix])
    raise InputError(f"{path}: cannot read a {suffix or 'suffix-less'} file as conversations (expected {READABLE})")


def read_inputs(paths: list[Path], fmt: InputFormat = InputFormat.AUTO) -> Iterator[RawRecord]:
    """All records of all inputs, in order, each with its source id and its file's format."""
    source_id = 0
    for index, path in enumerate(paths):
        file_format = None if fmt is InputFormat.AUTO else fmt
        for data in read_file(Path(path)):
            if file_format is None and isinstance(data, dict):
                try:
                    file_format = detect_format(data)
                except RecordError as err:
                    raise InputError(f"{path}: {err.detail}") from None
            yield RawRecord(source_id, index, file_format or InputFormat.MESSAGES, data)
            source_id += 1
