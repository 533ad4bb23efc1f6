"""The Ray executor on a real two-node cluster on this machine (one CPU each, so the build's two actors
run on different nodes): the same bytes as the local executor, through a killed worker and a killed
driver. Skipped without Ray (pip install sftdata[ray])."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install sftdata[ray])")
from ray.cluster_utils import Cluster

from sftdata.builder import build
from sftdata.config import BuildConfig
from sftdata.units import UNITS

from ..conftest import FIXTURES, REPO, SHARED, requires_shared, shared_tokenizer
from ..same_build import assert_same_build
from ..test_resume import SETTINGS, build_command, corpus, kill_when_units_done


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, one CPU each; stopped with everything it started."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), saved or ""])  # the nodes' workers import this sftdata
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1},
                                                          "include_dashboard": False})
    try:
        nodes.add_node(num_cpus=1, resources={"second": 1})
        nodes.wait_for_nodes()
        yield nodes.address
    finally:
        ray.shutdown()
        nodes.shutdown()
        os.environ.pop("PYTHONPATH") if saved is None else os.environ.__setitem__("PYTHONPATH", saved)


def test_a_local_build_never_imports_ray(tmp_path):
    script = ("import sys; from sftdata.builder import build; from sftdata.config import BuildConfig; "
              f"build([{str(FIXTURES / 'data' / 'messages.jsonl')!r}], {str(tmp_path / 'o')!r}, "
              f"BuildConfig(tokenizer={SETTINGS['tokenizer']!r})); assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_cluster_has_two_nodes_of_one_cpu(cluster):
    ray.init(address=cluster)
    try:
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert [n["Resources"]["CPU"] for n in alive] == [1.0, 1.0]
    finally:
        ray.shutdown()


@requires_shared
@pytest.mark.parametrize("pack", [False, True])
def test_builds_of_the_shared_data_equal_the_local_build(cluster, tmp_path, pack):
    data = SHARED / "datasets"
    inputs = [data / "dummy_conversation.json", data / "glaive_toolcall_en_demo.json",
              data / "reason_tool_use_demo_50.jsonl", data / "v1_sft_demo.jsonl", data / "alpaca_en_demo.json"]
    settings = {"tokenizer": shared_tokenizer("llama3_1"), "pack": pack, "max_length": 2048, "shard_tokens": 150_000,
                    "unit_records": 400}
    local = build(inputs, tmp_path / "local", BuildConfig(**settings, workers=2))
    distributed = build(inputs, tmp_path / "ray", BuildConfig(**settings, executor="ray", ray_address=cluster))
    assert len(local.shards) > 1 and distributed.config.executor.value == "ray"
    assert_same_build(tmp_path / "ray", tmp_path / "local")


def _actor_processes() -> list[int]:
    """Our cluster's UnitMapper actors: processes of that title descending from this one."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
            if b"ray::UnitMapper" in title and _descends_from(int(entry.name), os.getpid()):
                found.append(int(entry.name))
        except OSError:
            continue  # it ended while we looked
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return False


def test_a_killed_worker_is_retried_and_the_output_is_the_same(cluster, tmp_path):
    inputs = corpus(tmp_path, 2000)
    build(inputs, tmp_path / "local", BuildConfig(**SETTINGS))
    out = tmp_path / "ray"
    killed = []

    def kill_one_actor_midway():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            actors = _actor_processes()
            if len(list((out / UNITS).glob("unit-*.json"))) >= 2 and actors:
                os.kill(actors[0], signal.SIGKILL)
                killed.append((actors[0], (out / "manifest.json").exists()))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor_midway)
    killer.start()
    try:
        build(inputs, out, BuildConfig(**{**SETTINGS, "executor": "ray", "ray_address": cluster}))
    finally:
        killer.join()
    assert killed and killed[0][1] is False  # killed before the build finished
    assert_same_build(out, tmp_path / "local")


def test_a_killed_driver_resumes_on_the_cluster_to_the_same_output(cluster, tmp_path):
    inputs = corpus(tmp_path, 2000)
    build(inputs, tmp_path / "local", BuildConfig(**SETTINGS))
    out = tmp_path / "ray"
    settings = {**SETTINGS, "executor": "ray", "ray_address": cluster}
    kill_when_units_done(build_command(inputs, out, settings), out / UNITS, done=3)
    seen = []
    build(inputs, out, BuildConfig(**settings), resume=True, on_progress=seen.append)
    assert seen[-1].units_reused >= 3
    assert_same_build(out, tmp_path / "local")
