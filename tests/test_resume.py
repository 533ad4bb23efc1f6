"""`--resume`: a build whose driver was killed finishes from the units it completed, with the output an
uninterrupted build writes."""

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

from sftdata.builder import build
from sftdata.config import BuildConfig
from sftdata.out_dir import MARKER
from sftdata.units import UNITS, spill_name

from .conftest import FIXTURES, REPO, fixture_tokenizer
from .same_build import assert_same_build

CHATML = fixture_tokenizer("chatml-bpe")
SETTINGS = {"tokenizer": CHATML, "pack": True, "max_length": 512, "unit_records": 50, "batch_size": 16, "workers": 1}


def corpus(folder: Path, records: int) -> list[Path]:
    """The fixture conversations cycled to `records` lines, malformed ones included."""
    lines = [line for name in ("messages.jsonl", "traps.jsonl", "malformed.jsonl")
             for line in (FIXTURES / "data" / name).read_text().splitlines() if line.strip()]
    path = folder / "chats.jsonl"
    path.write_text("\n".join(itertools.islice(itertools.cycle(lines), records)) + "\n")
    return [path]


def kill_when_units_done(command: list[str], units_dir: Path, done: int) -> None:
    """Run the build command and kill it (SIGKILL: no clean-up) once `done` units are finished."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(list(units_dir.glob("unit-*.json"))) < done:
            assert proc.poll() is None, f"the build ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no unit finished in time"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()


def build_command(inputs, out, settings: dict) -> list[str]:
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return [sys.executable, "-m", "sftdata", "build", *map(str, inputs), "--out", str(out), "--quiet", "--no-report",
            *flags]


def test_a_killed_build_resumes_from_its_checked_units_to_the_uninterrupted_output(tmp_path):
    inputs = corpus(tmp_path, 2000)  # 40 units
    reference = tmp_path / "reference"
    build(inputs, reference, BuildConfig(**SETTINGS))
    out = tmp_path / "out"
    kill_when_units_done(build_command(inputs, out, SETTINGS), out / UNITS, done=4)
    assert not (out / "manifest.json").exists()
    assert (out / MARKER).exists()  # the killed run's claim: the resumed build takes the folder over from it
    records = sorted((out / UNITS).glob("unit-*.json"))
    finished = len(records)
    damaged = out / UNITS / spill_name(0)  # a unit whose spill no longer matches its checksum is done again
    spill = bytearray(damaged.read_bytes())
    spill[len(spill) // 2] ^= 0xFF
    damaged.write_bytes(bytes(spill))

    seen = []
    build(inputs, out, BuildConfig(**SETTINGS), resume=True, on_progress=seen.append)
    assert seen[-1].units_reused == finished - 1
    assert_same_build(out, reference)
    assert not (out / UNITS).exists()


def test_without_resume_a_rebuild_starts_over(tmp_path):
    inputs = corpus(tmp_path, 300)
    out = tmp_path / "out"
    kill_when_units_done(build_command(inputs, out, SETTINGS), out / UNITS, done=2)
    seen = []
    build(inputs, out, BuildConfig(**SETTINGS), on_progress=seen.append)
    assert seen[-1].units_reused == 0


def test_units_made_under_other_settings_are_not_reused(tmp_path):
    inputs = corpus(tmp_path, 300)
    out = tmp_path / "out"
    kill_when_units_done(build_command(inputs, out, SETTINGS), out / UNITS, done=2)
    seen = []
    other = BuildConfig(**{**SETTINGS, "max_length": 256})
    build(inputs, out, other, resume=True, on_progress=seen.append)
    assert seen[-1].units_reused == 0
    reference = tmp_path / "reference"
    build(inputs, reference, other)
    assert_same_build(out, reference)
