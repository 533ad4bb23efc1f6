"""`sftdata stats` and the document index every inspection command reads builds through."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sftdata.cli import main
from sftdata.inspect.build_data import BuildData, pieces_of
from sftdata.inspect.stats import build_stats
from sftdata.config import BuildConfig
from sftdata.manifest import Manifest, TokenizerInfo
from sftdata.shards import Row, ShardWriter, iter_rows, open_build

from .builders import CHATML, make_build


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    return {"plain": make_build(root, "plain"),
            "packed": make_build(root, "packed", pack=True, max_length=200)}


def test_index_splits_rows_into_the_documents_the_shards_hold(builds):
    for name in ("plain", "packed"):
        data = BuildData(builds[name])
        _, tables = open_build(builds[name])
        expected = []
        for table in tables:
            for row in iter_rows(table):
                at = 0
                for length, sid in zip(row.seq_lens, row.source_ids):
                    expected.append((int(sid), row.input_ids[at : at + length], row.loss_mask[at : at + length]))
                    at += length
        assert len(data.docs) == len(expected)
        for doc, (sid, ids, mask) in enumerate(expected):
            assert data.docs.source_id[doc] == sid
            assert np.array_equal(data.ids(doc), ids) and np.array_equal(data.mask(doc), mask)
            assert data.docs.trained[doc] == mask.sum()
        assert sorted(data.docs.source_id.tolist()) == [0, 1, 2, 4, 6]
    packed = BuildData(builds["packed"])
    assert packed.packed and packed.docs.row_documents.max() > 1, "the packed fixture packs nothing"
    assert packed.rows < len(packed.docs)


def test_trained_runs_count_assistant_turns(builds):
    data = BuildData(builds["packed"])  # runs must not leak across documents packed side by side
    runs = dict(zip(data.docs.source_id.tolist(), data.docs.runs.tolist()))
    assert runs == {0: 2, 1: 1, 2: 3, 4: 1, 6: 1}


def test_pieces_number_documents_sharing_a_source_id():
    assert pieces_of(np.array([5, 3, 5, 5, 3, 7])).tolist() == [0, 0, 1, 2, 1, 0]


def test_stats_agree_with_the_manifest_and_the_data(builds):
    for name in ("plain", "packed"):
        data = BuildData(builds[name])
        s = build_stats(data)
        c = data.manifest.counts
        assert s["checks"] == []
        assert (s["documents"], s["tokens"], s["trained_tokens"], s["rows"]) == (
            c.documents, c.tokens, c.trained_tokens, c.rows)
        assert s["rejected"] == 2 and s["rejected_by_reason"] == {"no_trainable_tokens": 2}
        assert s["trained_ratio"] == round(c.trained_tokens / c.tokens, 4)
        lengths = data.docs.length
        assert s["length"]["max"] == lengths.max() and s["length"]["min"] == lengths.min()
        assert s["length"]["p50"] in lengths.tolist()
        assert s["multi_turn_documents"] == 2
        (only,) = s["inputs"]
        assert (only["records"], only["documents"], only["rejected"]) == (7, 5, 2)
    packed = build_stats(BuildData(builds["packed"]))
    assert packed["packed"] is True
    expected_fill = packed["tokens"] / (packed["rows"] * 200)
    assert packed["fill"] == pytest.approx(expected_fill, abs=1e-4)
    assert packed["fill"] == pytest.approx(BuildData(builds["packed"]).manifest.packing.fill, abs=1e-4)


def test_stats_cli_json_and_table(builds, capsys):
    assert main(["stats", str(builds["packed"]), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["documents"] == 5 and s["packed"] and 0 < s["fill"] <= 1
    assert main(["stats", str(builds["plain"])]) == 0
    out = capsys.readouterr().out
    assert "trained tokens" in out and "no_trainable_tokens 2" in out and "one document per row" in out


def test_stats_flags_a_manifest_that_disagrees_with_the_shards(builds, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(builds["plain"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["counts"]["trained_tokens"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    checks = build_stats(BuildData(copy))["checks"]
    assert len(checks) == 1 and "trained_tokens" in checks[0]


def test_a_row_whose_seq_lens_do_not_add_up_is_an_error(tmp_path, capsys):
    ids, mask = np.arange(10, dtype=np.int32), np.ones(10, dtype=np.uint8)
    writer = ShardWriter(tmp_path, 1 << 30)
    writer.write_all([Row(ids, mask, [4, 6], [0, 1]), Row(ids, mask, [4, 5], [2, 3])])
    config = BuildConfig(tokenizer=CHATML, pack=True, max_length=16)
    Manifest.for_shards(writer.close(), TokenizerInfo("t", "", 0, [], {}), config).write(tmp_path)
    assert main(["stats", str(tmp_path)]) == 2
    assert "row 1 holds 10 tokens but its seq_lens add up to 9" in " ".join(capsys.readouterr().err.split())


def test_not_a_build_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main(["stats", str(tmp_path)]) == 2
    assert "not a finished sftdata build" in capsys.readouterr().err
