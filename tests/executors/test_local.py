"""The local executor: batches in this process and a pool of worker processes; the output never depends
on how many, nor on how they were started."""

from collections import deque
from concurrent.futures import Future

import pytest

from sftdata.builder import build
from sftdata.config import BuildConfig
from sftdata.executors import local as executor
from sftdata.executors.local import _Queued, _take_back_one

from ..conftest import FIXTURES, fixture_tokenizer

DATA = FIXTURES / "data"
LLAMA3 = fixture_tokenizer("llama3-bpe")


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_same_inputs_give_byte_identical_shards_with_any_worker_count(tmp_path, monkeypatch, start_method):
    pools = []
    monkeypatch.setattr(executor, "_start_method", lambda: start_method)

    class CountedPool(executor.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(kwargs["mp_context"].get_start_method())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(executor, "ProcessPoolExecutor", CountedPool)
    inputs = [DATA / "messages.jsonl", DATA / "sharegpt.json", DATA / "traps.jsonl"]
    one = build(inputs, tmp_path / "one", BuildConfig(tokenizer=LLAMA3, workers=1, batch_size=1))
    assert not pools
    # 36 records in batches of 1: enough tasks for a pool, and this process takes some of them too
    two = build(inputs, tmp_path / "two", BuildConfig(tokenizer=LLAMA3, workers=2, batch_size=1))
    assert pools == [start_method]
    assert [s.sha256 for s in one.shards] == [s.sha256 for s in two.shards]
    assert (tmp_path / "one" / "rejects.jsonl").read_bytes() == (tmp_path / "two" / "rejects.jsonl").read_bytes()
    assert one.counts == two.counts


def test_once_the_input_is_read_this_process_takes_back_batches_the_pool_has_not_started():
    class Local:
        def process(self, batch):
            return f"done here: {batch}"

    running, unstarted_old, unstarted_new = Future(), Future(), Future()
    running.set_running_or_notify_cancel()
    pending = deque([_Queued(running, ["a"]), _Queued(unstarted_old, ["b"]), "done before",
                     _Queued(unstarted_new, ["c"])])
    _take_back_one(pending, Local())
    # the newest unstarted batch is done here, in its place; the pool keeps the rest
    assert pending[3] == "done here: ['c']" and unstarted_new.cancelled()
    assert pending[1].future is unstarted_old and not unstarted_old.cancelled()
    _take_back_one(pending, Local())
    assert pending[1] == "done here: ['b']"
    _take_back_one(pending, Local())  # a batch the pool has started stays with the pool
    assert pending[0].future is running and not running.cancelled()


def test_unreadable_lines_travel_to_pool_workers(tmp_path):
    # malformed.jsonl holds lines that are not JSON: each is read as a RecordError in place of its record,
    # and a pool worker must be able to unpickle it to reject the record (it once crashed the pool)
    inputs = [DATA / "malformed.jsonl", DATA / "messages.jsonl"]
    one = build(inputs, tmp_path / "one", BuildConfig(tokenizer=LLAMA3, workers=1, batch_size=1))
    two = build(inputs, tmp_path / "two", BuildConfig(tokenizer=LLAMA3, workers=2, batch_size=1))
    assert one.counts.rejected_by_reason.get("malformed_record", 0) >= 3
    assert one.counts == two.counts
    assert (tmp_path / "one" / "rejects.jsonl").read_bytes() == (tmp_path / "two" / "rejects.jsonl").read_bytes()
