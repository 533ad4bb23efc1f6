"""Reading inputs: files in, raw records out, one stream across all inputs in the order given.

Each record gets its source id (0-based position across all inputs). A line that is not JSON, or a CSV
row with the wrong number of cells, becomes a RecordError in place of its record, so one corrupt line
never aborts a build; so does a record whose format cannot be told (the file's format is detected from
the first record that tells it). A file that cannot be read at all (missing, unknown type, corrupt, a
folder without data) raises at once. Inputs are local paths or URLs (storage.py).

A build reads its inputs in units (`Unit`): pieces of one file, found by one planning pass over it
(`plan_file`), that are read independently (`read_unit`), anywhere, in any order, and together give
exactly the records, source ids and formats `read_inputs` gives.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import InputFormat
from .formats import detect_format
from .records import RawRecord
from .rejects import Reason, RecordError
from .storage import exists, filesystem, is_dir, join, open_input, public, read_bytes, size

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
READABLE = ".jsonl, .json, .parquet, .csv, .tsv, .arrow, or a datasets folder"
BOM = b"\xef\xbb\xbf"
DATA_FILE_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow", ".txt"}


class InputError(Exception):
    """An input that cannot be read at all: the build stops and says which and why."""


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _name(path: str) -> str:
    return os.path.basename(public(path).rstrip("/"))


@dataclass(slots=True)
class JsonLine:
    """A line of a JSON Lines file, parsed where its record is processed (`parse`): a build's own process
    then hands its pool processes a few bytes a record, where a parsed record is an object to pickle
    there and unpickle again, and the parsing is spread over the pool."""

    name: str  # the file's, for the error a bad line gets
    line: int
    raw: bytes

    def parse(self) -> Any:
        """The record, or a RecordError saying why the line is none (bytes, so one line of bad UTF-8 is one
        bad record, not a stopped build)."""
        try:
            return json.loads(self.raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return RecordError(Reason.MALFORMED, f"{self.name} line {self.line}: invalid JSON ({err})")
        except RecursionError:
            return RecordError(Reason.MALFORMED, f"{self.name} line {self.line}: JSON nested deeper than "
                               f"{sys.getrecursionlimit()} levels")


def as_parsed(data: Any) -> Any:
    """A record's data as parsed: a JsonLine parsed now, anything else as it is."""
    return data.parse() if isinstance(data, JsonLine) else data


def _json_lines(path: str, lines: Iterable[bytes], first_line: int = 1) -> Iterator[JsonLine]:
    """The lines that hold something (a record, or not JSON), numbered from `first_line`."""
    name = _name(path)
    for lineno, raw in enumerate(lines, start=first_line):
        if lineno == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        if raw.strip():
            yield JsonLine(name, lineno, raw)


def _jsonl_records(path: str, lines: Iterable[bytes], first_line: int = 1) -> Iterator[Any]:
    return (line.parse() for line in _json_lines(path, lines, first_line))


def _json_records(path: str) -> Iterator[Any]:
    data = read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        yield from _jsonl_records(path, io.BytesIO(data))  # not one valid UTF-8 document: JSON Lines, one bad line at a time
        return
    try:
        records = json.loads(text)
    except RecursionError:
        raise InputError(f"{path}: JSON nested deeper than {sys.getrecursionlimit()} levels; write it as JSON "
                         "Lines (one record a line) so such a record is one reject") from None
    except json.JSONDecodeError as err:
        # many `.json` files are really JSON Lines; anything else is unreadable as a whole
        first = text.lstrip()[:1]
        if first == "{":
            yield from _jsonl_records(path, io.BytesIO(data))
            return
        raise InputError(f"{path}: not a JSON array nor JSON Lines ({err})") from err
    yield from (records if isinstance(records, list) else [records])


@contextmanager
def _parquet_errors(path: str) -> Iterator[None]:
    """A Parquet file that cannot be read (truncated, not Parquet) as one InputError naming it."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{public(path)}: not a readable Parquet file ({err}); check the file is complete") from None


def _parquet_records(path: str, row_groups: list[int] | None = None) -> Iterator[Any]:
    import pyarrow.parquet as pq

    with _parquet_errors(path), open_input(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=1024, row_groups=row_groups):
            yield from batch.to_pylist()


def _has_data_files(folder: str) -> bool:
    """Whether `folder` holds (at any depth, hidden folders aside) a file of a kind `datasets.load_dataset` reads."""
    fs, inner = filesystem(folder)
    root = inner.rstrip("/")
    return any(_suffix(found) in DATA_FILE_SUFFIXES
               and not any(part.startswith(".") for part in found[len(root):].strip("/").split("/"))
               for found in fs.find(root))


def _csv_records(path: str, delimiter: str) -> Iterator[Any]:
    """One record per row, keyed by the header; every value a string, as written (an empty cell is "")."""
    with open_input(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter=delimiter)
        try:
            header = next(rows, [])
            first_line = rows.line_num + 1  # where the next row starts (a quoted cell may span lines)
            for cells in rows:
                if cells and len(cells) == len(header):
                    yield dict(zip(header, cells))
                elif cells:  # [] is a blank line
                    yield RecordError(Reason.MALFORMED, f"{_name(path)} line {first_line}: {len(cells)} cells "
                                                        f"where the header names {len(header)}")
                first_line = rows.line_num + 1
        except (csv.Error, UnicodeDecodeError) as err:
            raise InputError(f"{public(path)} line {rows.line_num}: not readable as "
                             f"{_suffix(path)[1:].upper()} ({err})") from err


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


def _load_dataset(path: str):
    import datasets

    with _datasets_quiet(datasets):
        if _suffix(path) == ".arrow":
            return datasets.Dataset.from_file(path)
        if exists(join(path, "dataset_info.json")) or exists(join(path, "state.json")):
            return datasets.load_from_disk(path)
        if not _has_data_files(path):
            raise InputError(f"{path}: a folder without data: no data files ({', '.join(sorted(DATA_FILE_SUFFIXES))}) "
                             "and no `save_to_disk` dataset (dataset_info.json, state.json) in it")
        return datasets.load_dataset(path)


def _datasets_records(path: str) -> Iterator[Any]:
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


def read_file(path: str | os.PathLike) -> Iterator[Any]:
    path = str(path)
    if not exists(path):
        raise InputError(f"{public(path)}: no such file or folder")
    suffix = _suffix(path)
    if is_dir(path) or suffix == ".arrow":
        return _datasets_records(path)
    if suffix in JSONL_SUFFIXES:
        return _jsonl_lines(path)
    if suffix == ".json":
        return _json_records(path)
    if suffix == ".parquet":
        return _parquet_records(path)
    if suffix in CSV_DELIMITERS:
        return _csv_records(path, CSV_DELIMITERS[suffix])
    raise InputError(f"{public(path)}: cannot read a {suffix or 'suffix-less'} file as conversations (expected {READABLE})")


def _jsonl_lines(path: str) -> Iterator[Any]:
    with open_input(path) as f:
        yield from _jsonl_records(path, f)


@dataclass(frozen=True)
class Unit:
    """A piece of one input that is read by itself: its records [start, start + records) in the file.
    Units come from positions in the input alone, so the same inputs always give the same units."""

    index: int  # among all units of the build, in input order
    input_index: int
    path: str
    input_bytes: int  # the file's size when planned, so a resumed build notices a changed input
    first_source_id: int
    start: int
    records: int
    format: str  # the file's format (forced, or detected from its first object record) ...
    format_from: int  # ... which records from this index in the file on are read as; earlier ones as messages
    offset: int = 0  # JSON Lines: byte offset of the unit's first line, and that line's number
    line: int = 1
    row_groups: tuple[int, ...] = ()  # Parquet: the unit's row groups

    def to_json(self) -> dict:
        return {**asdict(self), "row_groups": list(self.row_groups)}

    @classmethod
    def from_json(cls, data: dict) -> Unit:
        return cls(**{**data, "row_groups": tuple(data["row_groups"])})


@dataclass
class FilePlan:
    """One input split into units: what planning learns from a pass over the file."""

    records: int = 0
    format: str | None = None  # None: no records
    format_from: int = 0
    pieces: list[dict] = field(default_factory=list)  # per unit: start, records, and where it begins


def _detected(record: Callable[[], Any], fmt: InputFormat) -> InputFormat | None:
    """The format a forced --format, or else this record, gives the file; None when the record does not
    tell it (a malformed line, an object of unknown fields: a reject) and the next one decides."""
    if fmt is not InputFormat.AUTO:
        return fmt
    data = record()
    if not isinstance(data, dict):
        return None
    try:
        return detect_format(data)
    except RecordError:
        return None


def _no_format(plan: FilePlan) -> FilePlan:
    """A plan whose records never told the format: each is read as it is before the format is known."""
    if plan.records and plan.format is None:
        plan.format, plan.format_from = InputFormat.MESSAGES.value, plan.records
    return plan


def _plan(records: Iterator[tuple[Callable[[], Any], dict]], fmt: InputFormat, unit_records: int) -> FilePlan:
    """Count the records, note where every `unit_records`-th begins, and find the file's format: the
    first record's that tells it (records before it are read as `read_unit` reads them)."""
    plan = FilePlan()
    for record, where in records:
        if plan.format is None:
            detected = _detected(record, fmt)
            if detected is not None:
                plan.format, plan.format_from = detected.value, plan.records
        if plan.records % unit_records == 0:
            plan.pieces.append({"start": plan.records, "records": 0, **where})
        plan.pieces[-1]["records"] += 1
        plan.records += 1
    return _no_format(plan)


def _jsonl_positions(path: str) -> Iterator[tuple[Callable[[], Any], dict]]:
    """Each record of a JSON Lines file (parsed only if asked) with its byte offset and line number."""
    with open_input(path) as f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                yield (lambda raw=raw, lineno=lineno: next(_jsonl_records(path, [raw], lineno))), \
                    {"offset": offset, "line": lineno}
            offset += len(raw)


def _plan_parquet(path: str, fmt: InputFormat, unit_records: int) -> FilePlan:
    """Units of whole row groups, from the file's metadata and its first row."""
    import pyarrow.parquet as pq

    with _parquet_errors(path), open_input(path) as f:
        parquet = pq.ParquetFile(f)
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        first = next(parquet.iter_batches(batch_size=1), None)
    plan = FilePlan(records=sum(sizes))
    detected = _detected(lambda: first.to_pylist()[0], fmt) if plan.records else None
    plan.format = detected.value if detected else None  # the first row tells, or (every row has its fields) none
    _no_format(plan)
    for group, rows in enumerate(sizes):
        if rows and (not plan.pieces or plan.pieces[-1]["records"] >= unit_records):
            plan.pieces.append({"start": sum(sizes[:group]), "records": 0, "row_groups": ()})
        if rows:
            piece = plan.pieces[-1]
            piece["records"] += rows
            piece["row_groups"] += (group,)
    return plan


def plan_file(path: str | os.PathLike, fmt: InputFormat, unit_records: int) -> FilePlan:
    """An input split into units of about `unit_records` records: JSON Lines at line starts, Parquet at
    row groups; a JSON document or a datasets folder is one unit (it is parsed whole anyway). A pass
    over the file that parses no more than it must (JSON Lines: until the format is known)."""
    path = str(path)
    if not exists(path):
        raise InputError(f"{public(path)}: no such file or folder")
    suffix = _suffix(path)
    if suffix in JSONL_SUFFIXES:
        return _plan(_jsonl_positions(path), fmt, unit_records)
    if suffix == ".parquet":
        return _plan_parquet(path, fmt, unit_records)
    return _plan(((lambda data=data: data, {}) for data in read_file(path)), fmt, 1 << 62)


def units_of(paths: list[str], plans: list[FilePlan]) -> list[Unit]:
    """Every input's units, numbered in input order, each knowing its first source id."""
    units, source_id = [], 0
    for input_index, (path, plan) in enumerate(zip(paths, plans)):
        for piece in plan.pieces:
            units.append(Unit(index=len(units), input_index=input_index, path=str(path), input_bytes=size(path),
                              first_source_id=source_id + piece["start"], format=plan.format,
                              format_from=plan.format_from, **piece))
        source_id += plan.records
    return units


def read_unit(unit: Unit, parsed: bool = True) -> Iterator[RawRecord]:
    """The unit's records, each with its source id and format, exactly as `read_inputs` gives them; with
    `parsed` False, a JSON Lines record as its line (JsonLine), to be parsed where it is processed."""
    suffix = _suffix(unit.path)
    if suffix in JSONL_SUFFIXES:
        records = _jsonl_from(unit, parsed)
    elif suffix == ".parquet":
        records = _parquet_records(unit.path, list(unit.row_groups))
    else:
        records = read_file(unit.path)
    fmt = InputFormat(unit.format)
    for i, data in enumerate(itertools.islice(records, unit.records)):
        if unit.start + i >= unit.format_from:
            yield RawRecord(unit.first_source_id + i, unit.input_index, fmt, data)
        else:
            yield RawRecord(unit.first_source_id + i, unit.input_index, InputFormat.MESSAGES,
                            _before_format(as_parsed(data)))


def _before_format(data: Any) -> Any:
    """A record read before its file's format is known: an object there did not tell the format, so it is
    a reject saying why (`detect_format`'s error); anything else is read as a message record."""
    if isinstance(data, dict):
        try:
            detect_format(data)
        except RecordError as err:
            return err
    return data


def _jsonl_from(unit: Unit, parsed: bool) -> Iterator[Any]:
    with open_input(unit.path) as f:
        f.seek(unit.offset)
        lines = _json_lines(unit.path, f, unit.line)
        yield from ((line.parse() for line in lines) if parsed else lines)


def read_inputs(paths: list, fmt: InputFormat = InputFormat.AUTO) -> Iterator[RawRecord]:
    """All records of all inputs, in order, each with its source id and its file's format."""
    paths = [str(p) for p in paths]
    plans = [plan_file(p, fmt, 1 << 62) for p in paths]
    for unit in units_of(paths, plans):
        yield from read_unit(unit)
