"""The output folder of a build: claimed, locked, and holding only what sftdata wrote.

A build marks its folder as its own (MARKER, written before anything else) and holds an exclusive lock
on that file while it writes, so a second build into the same folder fails at once instead of mixing its
files with the first's. It refuses a folder that holds anything sftdata does not write (a user's file is
never deleted) and a folder that is, holds, or lies inside one of its inputs. Temporary names carry a
per-build token, and a failed build removes its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .manifest import EVAL_DIR, MANIFEST

MARKER = ".sftdata-build"  # written first into a folder a build claims; the file the build's lock is on
# every name a build (or `sftdata report`) writes into its folder, temporary ones included
OWN_NAMES = re.compile(r"(?:manifest\.json|rejects\.jsonl|report\.html|shard-\d{5}\.arrow)(?:\.[\w.-]*)?\.tmp"
                       r"|manifest\.json|rejects\.jsonl|report\.html|shard-\d{5}\.arrow"
                       r"|\.spill[\w.-]*\.tmp|" + re.escape(MARKER))


class OutDirError(Exception):
    """The output folder cannot be used: the message says why and what to do."""


@dataclass(frozen=True)
class Claim:
    """A locked output folder and this build's token for temporary names."""

    path: Path
    token: str

    def temp(self, name: str) -> Path:
        """A temporary path for `name`, unique to this build."""
        return self.path / f"{name}.{self.token}.tmp"


def _overlap(out: Path, inputs: list[Path]) -> Path | None:
    """The input that `out` is, lies inside, or holds, if any."""
    out = out.resolve()
    for path in inputs:
        p = path.resolve()
        if out == p or out.is_relative_to(p) or p.is_relative_to(out):
            return path
    return None


def _own(path: Path, out: Path) -> bool:
    """Whether `path` (in `out` or its eval split's folder) is a name a build writes."""
    return OWN_NAMES.fullmatch(path.name) is not None or (path == out / EVAL_DIR and path.is_dir())


def _entries(out: Path) -> list[Path]:
    """What `out` holds, and what its eval split's folder holds."""
    held = list(out.iterdir())
    split = out / EVAL_DIR
    return held + (list(split.iterdir()) if split.is_dir() else [])


def _foreign(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in _entries(out) if not _own(p, out))


def _check_contents(out: Path, overwrite: bool) -> None:
    entries = list(out.iterdir())
    if not entries:
        return
    if not (out / MARKER).exists():
        raise OutDirError(f"{out} is not empty and was not made by sftdata build (no {MARKER}); give --out a "
                          "new or empty folder (sftdata never deletes files it did not write)")
    foreign = _foreign(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutDirError(f"{out} holds files sftdata did not write ({shown}); move them away or give --out "
                          "another folder")
    if (out / MANIFEST).exists() and not overwrite:
        raise OutDirError(f"{out} already holds a build ({MANIFEST}); pass --overwrite to replace it")


def _clear(out: Path) -> None:
    """Remove a previous build's files (the manifest first, so a killed rebuild never looks finished)."""
    (out / MANIFEST).unlink(missing_ok=True)
    for path in sorted(_entries(out), key=lambda p: len(p.parts), reverse=True):  # the split's files first
        if path.name != MARKER and _own(path, out):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _lock(marker: Path) -> int:
    fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise OutDirError(f"another sftdata build is writing to {marker.parent} now; wait for it to finish "
                              "or give --out another folder") from None
        raise
    return fd


@contextlib.contextmanager
def claim(out: Path, inputs: list[Path], overwrite: bool) -> Iterator[Claim]:
    """`out` made, checked, locked and cleared for this build; on failure this build's temporary files
    are removed. The lock is released when the block ends."""
    inside = _overlap(out, inputs)
    if inside is not None:
        raise OutDirError(f"--out {out} overlaps the input {inside}: writing there could destroy the input; "
                          "give --out a folder outside every input")
    if out.exists() and not out.is_dir():
        raise OutDirError(f"--out {out} is a file; give a folder (new or empty) for the build")
    out.mkdir(parents=True, exist_ok=True)
    _check_contents(out, overwrite)
    fd = _lock(out / MARKER)
    try:
        _check_contents(out, overwrite)  # again, under the lock: a build may have finished meanwhile
        _clear(out)
        mine = Claim(out, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            yield mine
        except BaseException:
            for path in [*out.glob(f"*.{mine.token}.tmp"), *(out / EVAL_DIR).glob(f"*.{mine.token}.tmp")]:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)
