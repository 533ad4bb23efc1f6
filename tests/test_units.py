"""Units of input: planned from positions in the files alone, read independently, together exactly the
records `read_inputs` gives, for every kind of input."""

import functools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sftdata.units as units
from sftdata.builder import build
from sftdata.config import BuildConfig, InputFormat
from sftdata.shards import ShardWriter, iter_rows, open_build
from sftdata.sources import as_parsed, plan_file, read_inputs, read_unit, units_of

from .conftest import FIXTURES, fixture_tokenizer

DATA = FIXTURES / "data"
INPUTS = [DATA / "alpaca.json", DATA / "malformed.jsonl", DATA / "messages.jsonl", DATA / "sharegpt.json",
          DATA / "traps.jsonl", DATA / "parquet" / "sharegpt.parquet"]


def _same(a, b) -> bool:
    return ((a.source_id, a.input_index, a.format, repr(as_parsed(a.data)))
            == (b.source_id, b.input_index, b.format, repr(as_parsed(b.data))))




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


@pytest.mark.parametrize("pack", [False, True])
def test_shards_are_the_same_however_their_documents_are_gathered(tmp_path, monkeypatch, pack):
    """write_shard copies documents out of the spills DOCUMENTS_PER_RELEASE at a time and writes the
    writer's `batch_rows` rows a record batch: pieces that end inside a row or a batch change nothing."""
    config = BuildConfig(tokenizer=fixture_tokenizer("chatml-bpe"), workers=1, pack=pack, max_length=128)
    base = build(INPUTS, tmp_path / "base", config)
    monkeypatch.setattr(units, "DOCUMENTS_PER_RELEASE", 3)
    copied = build(INPUTS, tmp_path / "copied", config)
    assert [s.sha256 for s in copied.shards] == [s.sha256 for s in base.shards]
    monkeypatch.setattr(units, "ShardWriter", functools.partial(ShardWriter, batch_rows=2))
    batched = build(INPUTS, tmp_path / "batched", config)

    def rows(out):
        return [[r.input_ids.tolist(), r.loss_mask.tolist(), r.seq_lens.tolist(), r.source_ids.tolist()]
                for table in open_build(out)[1] for r in iter_rows(table)]

    assert rows(tmp_path / "batched") == rows(tmp_path / "base") and base.counts.rows > 4
    stream = pa.ipc.open_stream(pa.memory_map(str(tmp_path / "batched" / batched.shards[0].name)))
    assert max(batch.num_rows for batch in stream) == 2
