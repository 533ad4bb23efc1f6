"""Builds on object storage: inputs and output on an S3-compatible server (moto, on 127.0.0.1, started
and stopped here), written as atomically as on a local disk, read back by the inspect side and by
sfttrain's loader, with no credential in what the build records."""

import json
import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

import sftdata.builder as build_module
from sftdata.builder import build
from sftdata.config import BuildConfig
from sftdata.manifest import MANIFEST, Manifest, ManifestError
from sftdata.out_dir import MARKER, OutDirError
from sftdata.shards import open_build, read_rejects
from sftdata.storage import Folder, public

from .conftest import FIXTURES, fixture_tokenizer
from .same_build import assert_same_build

CHATML = fixture_tokenizer("chatml-bpe")
DATA = FIXTURES / "data"
INPUTS = [DATA / "messages.jsonl", DATA / "sharegpt.json", DATA / "malformed.jsonl", DATA / "parquet" / "sharegpt.parquet"]
SECRET = "s3cret-never-in-a-manifest"


def test_public_paths_keep_no_credentials():
    assert public("s3://AKIA:topsecret@bucket/chats/a.jsonl") == "s3://bucket/chats/a.jsonl"
    assert public("https://host/data.jsonl?X-Amz-Signature=abc&X-Amz-Credential=k") == "https://host/data.jsonl"
    assert public("/data/a.jsonl") == "/data/a.jsonl"


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint of our own: the environment S3 clients read points at it for the module."""
    if shutil.which("moto_server") is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    pytest.importorskip("s3fs", reason="s3fs not installed (pip install sftdata[s3])")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "tester", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        bucket = Folder("s3://chats")
        bucket.make()
        for path in INPUTS:
            bucket.write_bytes(f"in/{path.name}", path.read_bytes())
        yield "s3://chats"
    finally:
        server.kill()
        server.wait()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_a_build_from_and_to_object_storage_equals_the_local_build(s3, tmp_path):
    settings = BuildConfig(tokenizer=CHATML, pack=True, max_length=512, shard_tokens=4000, unit_records=7)
    local = tmp_path / "local"
    build(INPUTS, local, settings)
    out = f"{s3}/out/v1"
    manifest = build([f"{s3}/in/{p.name}" for p in INPUTS], out, settings)
    assert len(manifest.shards) > 1
    assert_same_build(out, local, input_paths=False)
    assert [i.path for i in Manifest.read(out).inputs] == [f"{s3}/in/{p.name}" for p in INPUTS]
    # the build's folder holds the finished build only: no temporary object, no spill left
    assert Folder(out).names() == sorted([MARKER, MANIFEST, "rejects.jsonl"] + [s.name for s in manifest.shards])
    for name in Folder(out).names():
        assert SECRET not in Folder(out).read_bytes(name).decode("utf-8", "replace")
    # the reading side: manifest, shards and rejects straight from the bucket
    remote_manifest, tables = open_build(out)
    assert remote_manifest.shards == Manifest.read(local).shards and sum(t.num_rows for t in tables) == manifest.counts.rows
    assert read_rejects(out) == read_rejects(local)


def test_sfttrain_reads_rows_from_object_storage(s3, tmp_path):
    pytest.importorskip("torch", reason="sfttrain needs torch")
    from sfttrain.loader import RowStore

    settings = BuildConfig(tokenizer=CHATML, max_length=512)
    build(INPUTS, tmp_path / "local", settings)
    build([f"{s3}/in/{p.name}" for p in INPUTS], f"{s3}/out/rows", settings)
    remote, local = RowStore(f"{s3}/out/rows"), RowStore(tmp_path / "local")
    assert len(remote) == len(local) > 0
    for i in range(len(local)):
        assert np.array_equal(remote.row(i).input_ids, local.row(i).input_ids)
        assert np.array_equal(remote.row(i).loss_mask, local.row(i).loss_mask)


class Stop(Exception):
    pass


def test_a_build_on_object_storage_stopped_midway_resumes_from_its_units(s3, tmp_path):
    settings = BuildConfig(tokenizer=CHATML, unit_records=5, batch_size=5, workers=1)
    inputs = [f"{s3}/in/{p.name}" for p in INPUTS]
    out = f"{s3}/out/resumed"

    def stop_after_three_units(progress):
        if progress.records >= 15:
            raise Stop

    with pytest.raises(Stop):
        build(inputs, out, settings, on_progress=stop_after_three_units)
    assert not Folder(out).exists(MANIFEST)
    seen = []
    build(inputs, out, settings, resume=True, on_progress=seen.append)
    assert seen[-1].units_reused >= 2  # the third may have stopped before its record was written
    build(INPUTS, tmp_path / "local", settings)
    assert_same_build(out, tmp_path / "local", input_paths=False)


def test_an_object_store_folder_is_claimed_like_a_local_one(s3):
    settings = BuildConfig(tokenizer=CHATML)
    inputs = [f"{s3}/in/{p.name}" for p in INPUTS]
    Folder(f"{s3}/out/theirs").write_bytes("notes.txt", b"a user's file")
    with pytest.raises(OutDirError, match="not made by sftdata build"):
        build(inputs, f"{s3}/out/theirs", settings)
    assert Folder(f"{s3}/out/theirs").read_bytes("notes.txt") == b"a user's file"
    with pytest.raises(OutDirError, match="overlaps the input"):
        build(inputs, f"{s3}/in", settings)
    Folder(f"{s3}/out").write_bytes("a-file", b"not a folder")
    with pytest.raises(OutDirError, match="is a file"):
        build(inputs, f"{s3}/out/a-file", settings)
    # a shard cut short after the build finished: every reader refuses it by its size
    out = Folder(f"{s3}/out/claimed")
    manifest = build(inputs, out.path, settings)
    out.write_bytes(manifest.shards[0].name, out.read_bytes(manifest.shards[0].name)[:-100])
    with pytest.raises(ManifestError, match="bytes, the manifest says"):
        Manifest.read(out.path)


def test_a_build_whose_object_store_folder_was_taken_over_does_not_finish(s3, monkeypatch):
    """No lock on an object store: a second build into the same URL takes the marker over, and the first
    fails before its manifest instead of finishing beside the second's files."""
    settings = BuildConfig(tokenizer=CHATML)
    inputs = [f"{s3}/in/{p.name}" for p in INPUTS]
    out = Folder(f"{s3}/out/taken")
    merge_rejects = build_module._merge_rejects

    def second_build_claims_meanwhile(folder, units):
        out.write_bytes(MARKER, b"another-build")
        merge_rejects(folder, units)

    monkeypatch.setattr(build_module, "_merge_rejects", second_build_claims_meanwhile)
    with pytest.raises(OutDirError, match="took over"):
        build(inputs, out.path, settings)
    assert not out.exists(MANIFEST)


def test_the_inspect_commands_read_and_report_a_build_on_object_storage(s3, capsys):
    from sftdata.cli import main
    from sftdata.inspect.report import REPORT

    out = f"{s3}/out/inspected"
    assert main(["build", *[f"{s3}/in/{p.name}" for p in INPUTS], "--tokenizer", CHATML, "--out", out,
                 "--quiet", "--workers", "1"]) == 0
    page = Folder(out).read_bytes(REPORT).decode("utf-8")  # the build's report, written beside its shards
    assert "<html" in page and "sftdata build report" in page
    capsys.readouterr()
    assert main(["stats", out, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["checks"] == [] and stats["documents"] == Manifest.read(out).counts.documents > 0
    assert main(["view", out, "--row", "0", "--color", "never"]) == 0
    assert "⟦" in capsys.readouterr().out
    assert main(["report", out]) == 0
    assert main(["diff", out, out, "--color", "never"]) == 0


def test_local_paths_are_answered_as_fsspec_answers_them(tmp_path, monkeypatch):
    """storage.LocalFiles stands in for fsspec's local filesystem (not imported for local paths): the same
    paths, the same answers, `~` and a dangling link included."""
    from fsspec.implementations.local import LocalFileSystem

    from sftdata.storage import filesystem

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "a.jsonl").write_text("{}\n")
    (tmp_path / "d" / "e" / "b.json").write_text("[]")
    (tmp_path / "d" / "dangling").symlink_to(tmp_path / "nowhere")
    ours, theirs = filesystem("~/d")[0], LocalFileSystem()
    assert filesystem("~/d")[1] == theirs._strip_protocol("~/d") == str(tmp_path / "d")
    for name in ("d", "d/a.jsonl", "d/e", "d/dangling", "d/missing"):
        path = str(tmp_path / name)
        assert (ours.exists(path), ours.isdir(path)) == (theirs.exists(path), theirs.isdir(path)), name
    path = str(tmp_path / "d" / "a.jsonl")
    assert (ours.size(path), ours.cat_file(path)) == (theirs.size(path), theirs.cat_file(path))
    folder = str(tmp_path / "d")
    assert sorted(ours.ls(folder, detail=False)) == sorted(theirs.ls(folder, detail=False))
    assert sorted(ours.find(folder)) == sorted(theirs.find(folder))
