"""Where a build reads and writes: local paths, or URLs of any filesystem fsspec opens (`s3://`, `gs://`,
`hf://`, ...), through one small interface.

A file becomes visible only when whole: it is written under a temporary name (`NAME.TOKEN.tmp`, the
token of the build writing it, see out_dir.py, so two builds never write one temporary file) and then
moved to its name, a rename on a local disk and a server-side copy on an object store, where each
object appears at once, whole, or not at all. So a reader never sees half a shard, and since the build
writes the manifest last, never a manifest before its shards.

Credentials never come from the paths the build records: `public` drops a URL's user, password and
query (where signed URLs keep their signatures); keys belong in the environment or the filesystem's own
configuration (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, or a profile).

Local paths go through `LocalFiles`, the few calls a build makes on a local disk: importing fsspec
(with asyncio and ssl) is about 0.04 s of every command's start, paid only for a URL.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import fsspec

TMP = ".tmp"


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def join(folder: str | os.PathLike, name: str) -> str:
    """`name` inside `folder`, for a local path or a URL alike (pathlib would turn `s3://` into `s3:/`)."""
    folder = str(folder)
    return f"{folder.rstrip('/')}/{name}" if is_url(folder) else os.path.join(folder, name)


def public(path: str | os.PathLike) -> str:
    """The path as the build records it: a URL without user, password or query."""
    path = str(path)
    if not is_url(path):
        return path
    parts = urlsplit(path)
    return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))


class LocalFiles:
    """A local disk, answering the calls this module and sources.py make of an fsspec filesystem, alike."""

    def open(self, path: str, mode: str = "rb") -> IO[bytes]:
        return open(path, mode)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def cat_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def mv(self, source: str, target: str) -> None:
        os.replace(source, target)

    def rm_file(self, path: str) -> None:
        os.remove(path)

    def rm(self, path: str, recursive: bool = False) -> None:
        if recursive and os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)

    def ls(self, path: str, detail: bool = False) -> list[str]:
        return [os.path.join(path, name) for name in os.listdir(path)]

    def find(self, path: str) -> list[str]:
        """Every file under `path`, at any depth."""
        return sorted(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names)

    def invalidate_cache(self) -> None:
        """A local disk's listings are never cached."""


LOCAL = LocalFiles()


def filesystem(path: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem | LocalFiles, str]:
    """The filesystem holding `path`, and the path as that filesystem names it."""
    if not is_url(path):
        return LOCAL, os.path.abspath(os.path.expanduser(path))
    import fsspec

    return fsspec.core.url_to_fs(str(path))


def open_input(path: str | os.PathLike) -> IO[bytes]:
    """An input file for reading, in binary."""
    fs, inner = filesystem(path)
    return fs.open(inner, "rb")


def exists(path: str | os.PathLike) -> bool:
    fs, inner = filesystem(path)
    return fs.exists(inner)


def is_dir(path: str | os.PathLike) -> bool:
    fs, inner = filesystem(path)
    return fs.isdir(inner)


def size(path: str | os.PathLike) -> int:
    fs, inner = filesystem(path)
    return int(fs.size(inner))


def read_bytes(path: str | os.PathLike) -> bytes:
    fs, inner = filesystem(path)
    return fs.cat_file(inner)


def temp_name(name: str, token: str = "") -> str:
    """Where `name` is written before it is whole: `NAME.TOKEN.tmp`, or `NAME.tmp` with no token."""
    return f"{name}.{token}{TMP}" if token else name + TMP


class HashingWriter:
    """A file being written under a temporary name, keeping the SHA-256 of what went through it (a
    shard's checksum then needs no second read: on an object store, a second download)."""

    def __init__(self, fs: fsspec.AbstractFileSystem | LocalFiles, final: str, token: str = ""):
        self.final, self.tmp = final, temp_name(final, token)
        fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        self._fs, self._file = fs, fs.open(self.tmp, "wb")
        self._digest = hashlib.sha256()
        self.size = 0  # bytes written: the file's size once published
        self.closed = False

    def write(self, data) -> int:
        self._digest.update(data)
        self.size += memoryview(data).nbytes
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self.closed = True  # `publish` or `discard` closes the real file, once the writer is done

    def publish(self) -> str:
        """Make the file visible under its name, whole; returns its SHA-256."""
        self._file.close()
        self._fs.mv(self.tmp, self.final)
        return self._digest.hexdigest()

    def discard(self) -> None:
        self._file.close()
        self._fs.rm_file(self.tmp)


class Folder:
    """A build's folder, on a local disk or an object store; `token` names the temporary files of what
    it creates (a build's own, out_dir.Claim)."""

    def __init__(self, path: str | os.PathLike, token: str = ""):
        self.path, self.token = str(path), token
        self.fs, self._root = filesystem(self.path)
        self.fs.invalidate_cache()  # an object store's listings, cached by this process, may be stale

    def __str__(self) -> str:
        return public(self.path)

    def _inner(self, name: str) -> str:
        return f"{self._root.rstrip('/')}/{name}"

    def url(self, name: str) -> str:
        return join(self.path, name)

    def make(self) -> None:
        self.fs.makedirs(self._root, exist_ok=True)

    def exists(self, name: str) -> bool:
        return self.fs.exists(self._inner(name))

    def names(self, under: str = "") -> list[str]:
        """Names of what the folder (or its subfolder `under`) holds, without the folder's own path."""
        where = self._inner(under) if under else self._root
        if not self.fs.isdir(where):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(where, detail=False))

    def remove(self, name: str) -> None:
        """A file or a subfolder with everything in it; nothing if it is not there."""
        path = self._inner(name)
        if self.fs.isdir(path):
            self.fs.rm(path, recursive=True)
        elif self.fs.exists(path):
            self.fs.rm_file(path)

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self._inner(name))

    def sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(self._inner(name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def create(self, name: str) -> HashingWriter:
        """`name` to be written, invisible until `publish()`."""
        return HashingWriter(self.fs, self._inner(name), self.token)

    def write_bytes(self, name: str, data: bytes) -> str:
        """Atomically; returns the SHA-256 of `data`."""
        writer = self.create(name)
        try:
            writer.write(data)
        except BaseException:
            writer.discard()
            raise
        return writer.publish()
