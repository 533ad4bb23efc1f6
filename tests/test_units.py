"""Units of input: planned from positions in the files alone, read independently, together exactly the
records `read_inputs` gives, for every kind of input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftdata.config import InputFormat
from sftdata.sources import JsonLine, plan_file, read_inputs, read_unit, units_of

from .conftest import FIXTURES

DATA = FIXTURES / "data"
INPUTS = [DATA / "alpaca.json", DATA / "malformed.jsonl", DATA / "messages.jsonl", DATA / "sharegpt.json",
          DATA / "traps.jsonl", DATA / "parquet" / "sharegpt.parquet"]


def _same(a, b) -> bool:
    return ((a.source_id, a.input_index, a.format, repr(_data(a)))
            == (b.source_id, b.input_index, b.format, repr(_data(b))))


def _data(record):
    """The record as parsed: a line read for parsing later (read_unit's `parsed=False`) parsed now."""
    return record.data.parse() if isinstance(record.data, JsonLine) else record.data


def _units(paths, unit_records, fmt=InputFormat.AUTO):
    paths = [str(p) for p in paths]
    return units_of(paths, [plan_file(p, fmt, unit_records) for p in paths])


@pytest.mark.parametrize("parsed", [True, False])
@pytest.mark.parametrize("unit_records", [1, 3, 1000])
def test_units_read_apart_give_the_records_read_inputs_gives(unit_records, parsed):
    whole = list(read_inputs(INPUTS))
    units = _units(INPUTS, unit_records)
    # read in reverse: a unit needs nothing read before it
    parts = {u.index: list(read_unit(u, parsed)) for u in reversed(units)}
    pieces = [r for i in range(len(units)) for r in parts[i]]
    assert len(pieces) == len(whole) and all(_same(a, b) for a, b in zip(pieces, whole))
    assert [u.records for u in units] == [len(parts[u.index]) for u in units]


def test_json_lines_split_at_line_starts_keep_line_numbers_blank_lines_and_a_bom(tmp_path):
    path = tmp_path / "chats.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    path.write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n\n{broken\n" + (good.encode() + b"\n") * 3 + b"\n")
    units = _units([path], 2)
    assert [(u.start, u.records, u.line) for u in units] == [(0, 2, 1), (2, 2, 4), (4, 1, 6)]
    records = [r for u in units for r in read_unit(u)]
    assert [r.source_id for r in records] == [0, 1, 2, 3, 4]
    assert "chats.jsonl line 3: invalid JSON" in records[1].data.detail
    assert records[0].data == json.loads(good)  # the byte-order mark is not part of the record


def test_parquet_splits_at_row_groups(tmp_path):
    path = tmp_path / "chats.parquet"
    rows = [{"instruction": f"say {i}", "input": "", "output": str(i)} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
    units = _units([path], 5)
    assert [(u.start, u.records, u.row_groups) for u in units] == [(0, 6, (0, 1)), (6, 4, (2, 3))]
    records = [r for u in units for r in read_unit(u)]
    assert [r.data for r in records] == rows and {r.format for r in records} == {InputFormat.ALPACA}


def test_a_file_whose_first_records_are_malformed_takes_its_format_from_the_first_object(tmp_path):
    path = tmp_path / "late.jsonl"
    path.write_text('not json\n[1, 2]\n{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n')
    units = _units([path], 1)
    assert [u.format_from for u in units] == [2] * 4
    assert [r.format for u in units for r in read_unit(u)] == [InputFormat.MESSAGES] * 2 + [InputFormat.ALPACA] * 2
    assert [r.format for r in read_inputs([path])] == [InputFormat.MESSAGES] * 2 + [InputFormat.ALPACA] * 2
