"""Two builds compared the way the distributed-build contract states it: the same shards and rejects,
byte for byte, and manifests equal but for how the work ran."""

from __future__ import annotations

import json

from sftdata.config import BuildConfig
from sftdata.manifest import MANIFEST, REJECTS, Manifest
from sftdata.storage import join, read_bytes


def manifest_without_run_settings(build_dir) -> dict:
    data = json.loads(read_bytes(join(build_dir, MANIFEST)))
    for name in BuildConfig.RUN_SETTINGS:
        del data["config"][name]
    return data


def assert_same_build(a, b) -> None:
    """`a` and `b` (local paths or URLs) hold the same build."""
    shards = [s.name for s in Manifest.read(a).shards]
    assert shards == [s.name for s in Manifest.read(b).shards]
    for name in shards + [REJECTS]:
        assert read_bytes(join(a, name)) == read_bytes(join(b, name)), name
    assert manifest_without_run_settings(a) == manifest_without_run_settings(b)
