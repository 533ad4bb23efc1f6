"""Two builds compared the way the distributed-build contract states it: the same shards and rejects,
byte for byte, and manifests equal but for how the work ran."""

from __future__ import annotations

import json

from sftdata.config import BuildConfig
from sftdata.manifest import MANIFEST, REJECTS, Manifest
from sftdata.storage import join, read_bytes


def manifest_without_run_settings(build_dir, input_paths: bool) -> dict:
    data = json.loads(read_bytes(join(build_dir, MANIFEST)))
    for name in BuildConfig.RUN_SETTINGS:
        del data["config"][name]
    for info in data["inputs"] if not input_paths else []:
        del info["path"]
    return data


def assert_same_build(a, b, input_paths: bool = True) -> None:
    """`a` and `b` (local paths or URLs) hold the same build; of the same input paths unless
    `input_paths` is false (the same files, read from elsewhere)."""
    shards = [s.name for s in Manifest.read(a).shards]
    assert shards == [s.name for s in Manifest.read(b).shards]
    for name in shards + [REJECTS]:
        assert read_bytes(join(a, name)) == read_bytes(join(b, name)), name
    assert manifest_without_run_settings(a, input_paths) == manifest_without_run_settings(b, input_paths)
