"""The loader: memory-mapped reads, each row once per epoch across ranks, determinism, resume, refusals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sfttrain_helpers import random_docs, write_build

from sftdata.manifest import ManifestError
from sftdata.shards import iter_rows, open_build
from sfttrain.loader import RowStore, ShardLoader, plan_epoch, rank_batch_ids


def _loader(build, fingerprint, model_dir, **kw):
    kw = {"batch_size": 3, "seed": 0, **kw}
    return ShardLoader(build, tokenizer_fingerprints=[fingerprint], model_dir=model_dir, **kw)


def _epoch_rows(loader) -> list[np.ndarray]:
    batches = iter(loader)
    return [next(batches).rows for _ in range(loader.micro_batches_per_epoch)]


def test_rows_read_back_exactly_across_shards(unpacked_build):
    manifest, tables = open_build(unpacked_build)
    assert len(manifest.shards) > 1
    expected = [row for table in tables for row in iter_rows(table)]
    store = RowStore(unpacked_build)
    assert len(store) == len(expected)
    for i, row in enumerate(expected):
        got = store.row(i)
        assert np.array_equal(got.input_ids, row.input_ids) and np.array_equal(got.loss_mask, row.loss_mask)
        assert list(got.seq_lens) == list(row.seq_lens) and list(got.source_ids) == list(row.source_ids)


def test_rows_are_memory_mapped_not_loaded(unpacked_build):
    before = pa.total_allocated_bytes()
    store = RowStore(unpacked_build)
    rows = [store.row(i) for i in range(len(store))]
    assert pa.total_allocated_bytes() == before  # every buffer is a view of the mapped file
    assert rows


@pytest.mark.parametrize("bucket", [0, 2])
def test_plan_covers_each_row_once_and_is_deterministic(bucket):
    lengths = np.random.default_rng(0).integers(1, 100, 103)
    plan = plan_epoch(lengths, 4, seed=5, epoch=0, bucket_batches=bucket)
    assert sorted(np.concatenate(plan).tolist()) == list(range(103))
    again = plan_epoch(lengths, 4, seed=5, epoch=0, bucket_batches=bucket)
    assert all(np.array_equal(a, b) for a, b in zip(plan, again))
    other = plan_epoch(lengths, 4, seed=5, epoch=1, bucket_batches=bucket)
    assert not all(np.array_equal(a, b) for a, b in zip(plan, other))


def test_bucketing_pads_less_than_random_batches():
    lengths = np.random.default_rng(0).integers(1, 500, 4000)

    def padding(plan):
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in plan)

    assert padding(plan_epoch(lengths, 8, 0, 0, bucket_batches=32)) < 0.2 * padding(plan_epoch(lengths, 8, 0, 0))


@pytest.mark.parametrize("batches,world,accum", [(10, 3, 2), (7, 2, 1), (1, 4, 3), (12, 2, 3)])
def test_ranks_split_batches_disjointly_in_equal_steps(batches, world, accum):
    ids = [rank_batch_ids(batches, r, world, accum) for r in range(world)]
    assert len({len(i) for i in ids}) == 1 and len(ids[0]) % accum == 0
    taken = np.concatenate([i[i >= 0] for i in ids])
    assert sorted(taken.tolist()) == list(range(batches))


@pytest.mark.parametrize("build", ["packed_build", "unpacked_build"])
def test_simulated_ranks_see_each_row_once_per_epoch(request, build, fingerprint, model_dir):
    data = request.getfixturevalue(build)
    loaders = [_loader(data, fingerprint, model_dir, rank=r, world_size=3, grad_accum=2) for r in range(3)]
    assert len({ld.steps_per_epoch for ld in loaders}) == 1
    seen = [np.concatenate(_epoch_rows(ld)) for ld in loaders]
    everything = np.concatenate(seen)
    assert len(everything) == len(set(everything.tolist())) == len(loaders[0].store)
    # the next epoch starts over, in another order
    nxt = iter(loaders[0])
    first = next(nxt)
    assert loaders[0].epoch == 1 and loaders[0].step == 1 and len(first.rows)


def test_step_k_takes_the_same_rows_whatever_the_split(packed_build, fingerprint, model_dir):
    one = _epoch_rows(_loader(packed_build, fingerprint, model_dir, grad_accum=4))
    two = [_epoch_rows(_loader(packed_build, fingerprint, model_dir, rank=r, world_size=2, grad_accum=2))
           for r in range(2)]
    for step in range(len(one) // 4):
        single = np.concatenate(one[4 * step : 4 * step + 4])
        split = np.concatenate([b for rank in two for b in rank[2 * step : 2 * step + 2]])
        assert sorted(single.tolist()) == sorted(split.tolist())


def test_resume_mid_epoch_continues_with_the_same_batches(unpacked_build, fingerprint, model_dir):
    loader = _loader(unpacked_build, fingerprint, model_dir, rank=1, world_size=2)
    batches = iter(loader)
    for _ in range(5):
        next(batches)
    state = loader.state_dict()
    assert state == {"seed": 0, "epoch": 0, "step": 5}
    expected = [next(batches) for _ in range(loader.steps_per_epoch + 3)]  # into the next epoch
    resumed = _loader(unpacked_build, fingerprint, model_dir, rank=1, world_size=2)
    resumed.load_state_dict(state)
    got = [b for b, _ in zip(resumed, expected)]
    for a, b in zip(expected, got):
        assert np.array_equal(a.rows, b.rows) and a.input_ids.equal(b.input_ids) and a.labels.equal(b.labels)
    with pytest.raises(ValueError, match="seed"):
        resumed.load_state_dict({**state, "seed": 1})


def test_a_different_tokenizer_is_refused(tmp_path, vocab, model_dir):
    data = write_build(tmp_path / "other", random_docs(np.random.default_rng(0), 3, vocab), "0" * 64, pack=False)
    with pytest.raises(ValueError, match="different tokenizer") as err:
        _loader(data, "f" * 64, model_dir)
    assert "0" * 64 in str(err.value) and "sftdata build" in str(err.value)


def test_an_unfinished_build_is_refused(tmp_path, fingerprint, model_dir):
    with pytest.raises(ManifestError, match="manifest"):
        _loader(tmp_path, fingerprint, model_dir)
