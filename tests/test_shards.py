"""Shard storage helpers."""

import subprocess
import sys

import numpy as np
import pyarrow as pa

from sftdata.shards import MappedShard, Row, ShardWriter, numpy_view

from .conftest import FIXTURES, fixture_tokenizer


def test_numpy_view_honours_slices_of_arrays_and_of_list_offsets():
    assert numpy_view(pa.array(np.arange(10, dtype=np.int32)).slice(3, 4)).tolist() == [3, 4, 5, 6]
    lists = pa.array([[1, 2], [3], [4, 5, 6]], type=pa.list_(pa.int32())).slice(1)
    assert numpy_view(lists.offsets).tolist() == [2, 3, 6]
    assert numpy_view(lists.values).tolist() == [1, 2, 3, 4, 5, 6]
    assert numpy_view(pa.array([7, 8], type=pa.uint8())).dtype == np.uint8


def test_a_packed_build_does_not_import_pandas(tmp_path):
    """pyarrow imports pandas on `to_numpy` (a fifth of a second in every build process)."""
    script = (
        "import sys\n"
        "from sftdata.builder import build\n"
        "from sftdata.config import BuildConfig\n"
        f"build([{str(FIXTURES / 'data' / 'messages.jsonl')!r}], {str(tmp_path / 'out')!r}, "
        f"BuildConfig(tokenizer={fixture_tokenizer('llama3-bpe')!r}, pack=True, max_length=512, workers=1))\n"
        "print('pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_a_mapped_shard_reads_the_same_after_its_pages_are_released(tmp_path):
    rng = np.random.default_rng(0)
    rows = [Row(rng.integers(0, 50_000, n, dtype=np.int32), rng.integers(0, 2, n, dtype=np.uint8), [n], [i])
            for i, n in enumerate(rng.integers(1, 3000, 200))]
    writer = ShardWriter(tmp_path, 1 << 62)
    writer.write_all(rows)
    (info,) = writer.close()
    shard = MappedShard(tmp_path / info.name)
    views = [numpy_view(batch.column("input_ids").values) for batch in shard.table.to_batches()]  # no copies
    before = [v.copy() for v in views]
    shard.release()
    assert all(np.array_equal(v, b) for v, b in zip(views, before))
    assert np.array_equal(np.concatenate(before), np.concatenate([r.input_ids for r in rows]))
