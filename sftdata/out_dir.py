"""The output folder of a build: claimed, locked, and holding only what sftdata wrote.

A build marks its folder as its own (MARKER, written before anything else, holding the build's token) and,
on a local disk, holds an exclusive lock on that file while it writes, so a second build into the same
folder fails at once instead of mixing its files with the first's. It refuses a folder that holds
anything sftdata does not write (a user's file is never deleted), a folder that is, holds, or lies inside
one of its inputs, and an --out that is a file. Temporary names carry the build's token (storage.Folder),
and a failed build removes its own. A resumed build (--resume) reclaims the folder of the killed run it
resumes: the lock died with that run, and its finished units (units.UNITS) are kept.

An object store (--out s3://...) has no lock. There the claim does everything else the same way, but a
second build started into the same URL while one runs is not refused: it takes the marker over (its
token replaces the first build's), and the first build, which checks the marker is still its own just
before writing its manifest (`Claim.confirm`), fails instead of finishing. What the two wrote may be
mixed until one of them finishes alone: give concurrent builds on an object store different --out URLs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .manifest import EVAL_DIR, MANIFEST
from .storage import TMP, Folder, exists, is_dir, is_url, public
from .units import UNITS

MARKER = ".sftdata-build"  # written first into a folder a build claims; the file the build's lock is on
_OWN_FILES = r"(?:manifest\.json|rejects\.jsonl|report\.html|shard-\d{5}\.arrow|" + re.escape(MARKER) + ")"
# every name a build (or `sftdata report`) writes into its folder, temporary ones included
OWN_NAMES = re.compile(rf"{_OWN_FILES}(?:\.[\w.-]*)?{re.escape(TMP)}|{_OWN_FILES}|{re.escape(UNITS)}")


class OutDirError(Exception):
    """The output folder cannot be used: the message says why and what to do."""


@dataclass(frozen=True)
class Claim:
    """A claimed output folder: `folder` writes every file under a temporary name with this build's token."""

    folder: Folder
    token: str

    def confirm(self) -> None:
        """Refuse to finish when the folder was claimed by another build meanwhile (possible only on an
        object store: a local claim is locked)."""
        holder = self.folder.read_bytes(MARKER).decode("utf-8", "replace") if self.folder.exists(MARKER) else ""
        if holder != self.token:
            raise OutDirError(f"another sftdata build took over {self.folder} while this one was writing; its "
                              "files and this build's may be mixed: build again, one build per --out")


def _overlap(out: str, inputs: list[str]) -> str | None:
    """The input that `out` is, lies inside, or holds, if any: local paths resolved, URLs as written."""
    for path in inputs:
        if is_url(out) != is_url(path):
            continue
        if is_url(out):
            o, p = public(out).rstrip("/") + "/", public(path).rstrip("/") + "/"
            if o.startswith(p) or p.startswith(o):
                return path
        else:
            o, p = Path(out).resolve(), Path(path).resolve()
            if o == p or o.is_relative_to(p) or p.is_relative_to(o):
                return path
    return None


def _entries(folder: Folder) -> list[str]:
    """What the folder holds, and what its eval split's folder holds (as `eval/NAME`)."""
    return folder.names() + [f"{EVAL_DIR}/{name}" for name in folder.names(EVAL_DIR)]


def _own(name: str, folder: Folder) -> bool:
    """Whether `name` (in the folder or its eval split's folder) is a name a build writes."""
    if name == EVAL_DIR:
        return is_dir(folder.url(EVAL_DIR))
    return OWN_NAMES.fullmatch(name.rsplit("/", 1)[-1]) is not None


def _check_contents(folder: Folder, overwrite: bool) -> None:
    entries = _entries(folder)
    if not entries:
        return
    if MARKER not in entries:
        raise OutDirError(f"{folder} is not empty and was not made by sftdata build (no {MARKER}); give --out a "
                          "new or empty folder (sftdata never deletes files it did not write)")
    foreign = sorted(name for name in entries if not _own(name, folder))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutDirError(f"{folder} holds files sftdata did not write ({shown}); move them away or give --out "
                          "another folder")
    if MANIFEST in entries and not overwrite:
        raise OutDirError(f"{folder} already holds a build ({MANIFEST}); pass --overwrite to replace it")


def _clear(folder: Folder, resume: bool) -> None:
    """Remove a previous build's files (the manifest first, so a killed rebuild never looks finished);
    with `resume`, the units a killed run finished stay."""
    folder.remove(MANIFEST)
    kept = {MARKER, UNITS} if resume else {MARKER}
    for name in folder.names():  # every name is the build's own (_check_contents)
        if name not in kept:
            folder.remove(name)


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


def _own_temp_files(folder: Folder, token: str) -> list[str]:
    """This build's temporary files, wherever the build writes."""
    suffix = f".{token}{TMP}"
    places = ("", EVAL_DIR, UNITS)
    return [f"{place}/{name}" if place else name for place in places for name in folder.names(place)
            if name.endswith(suffix)]


@contextlib.contextmanager
def claim(out: str, inputs: list[str], overwrite: bool, resume: bool = False) -> Iterator[Claim]:
    """`out` made, checked, claimed (locked on a local disk) and cleared for this build; on failure this
    build's temporary files are removed. The lock is released when the block ends."""
    inside = _overlap(out, inputs)
    if inside is not None:
        raise OutDirError(f"--out {public(out)} overlaps the input {public(inside)}: writing there could destroy "
                          "the input; give --out a folder outside every input")
    if exists(out) and not is_dir(out):
        raise OutDirError(f"--out {public(out)} is a file; give a folder (new or empty) for the build")
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder = Folder(out, token)
    folder.make()
    _check_contents(folder, overwrite)
    local = not is_url(out)
    fd = _lock(Path(out) / MARKER) if local else None
    try:
        _check_contents(folder, overwrite)  # again, under the lock: a build may have finished meanwhile
        _clear(folder, resume)
        if local:  # through the locked file itself: a new file in its place would not be locked
            os.ftruncate(fd, 0)
            os.write(fd, token.encode())
        else:
            folder.write_bytes(MARKER, token.encode())
        mine = Claim(folder, token)
        try:
            yield mine
        except BaseException:
            for name in _own_temp_files(folder, token):
                folder.remove(name)
            raise
    finally:
        if fd is not None:
            os.close(fd)
