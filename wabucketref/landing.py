"""Files landing in a download's destination: never half-written under their final name.

Each file is written to a part file beside it (`.NAME.XXXXXXXX.wabucket-part`), checked (size,
sha256), then renamed into place; part files a killed run left are removed by the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sqlite3
import stat
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import IntegrityError, WaBucketError
from .hashcache import HashCache, settle
from .manifest import FileEntry, checker
from .scratchdb import open_db, transaction
from .threads import in_thread, together

STREAM_CHUNK = 8 << 20
HASHING_THREADS = 8  # files of one size hashed side by side, for --reuse
PART_SUFFIX = ".wabucket-part"
_PART_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}" + re.escape(PART_SUFFIX))  # see open_part


def hash_local(path: str | os.PathLike[str], part_size: int, sha: Any = None) -> tuple[str, list[bytes]]:
    """sha256 of a file, plus the MD5 of each part of `part_size` (to compare S3 ETags). The bytes
    go to `sha` where given (a Hashing, to have their blake3 as well)."""
    sha = sha if sha is not None else hashlib.sha256()
    md5s: list[bytes] = []
    with open(path, "rb") as f:
        while True:
            part = hashlib.md5()
            got = 0
            while got < part_size and (chunk := f.read(min(STREAM_CHUNK, part_size - got))):
                sha.update(chunk)
                part.update(chunk)
                got += len(chunk)
            if got == 0 and md5s:
                break
            md5s.append(part.digest())
            if got < part_size:
                break
    return sha.hexdigest(), md5s


class Destination:
    """A download's folder as files land in it: each folder they need made once (never through a
    link that leaves it), and, unless it was empty, the names already in each folder read once;
    the part files a killed run (SIGKILL, a preempted job) left beside a file are removed as that
    file comes. A few hundred folders are remembered at a time, not every file."""

    FOLDERS = 32  # sorted paths leave a folder for its subfolders, and come back to it

    def __init__(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        self.dest = dest
        self.real = os.path.realpath(dest)
        self.fresh = not any(os.scandir(dest))
        self._folders: OrderedDict[str, tuple[set[str], dict[str, list[str]]]] = OrderedDict()

    def checked(self, entries: Iterator[FileEntry]) -> Iterator[tuple[FileEntry, bool]]:
        """Each entry, with whether a file of its name is in dest already, once its folder is
        made (a worker thread runs this: the folders are made ahead of the files)."""
        for e in entries:
            yield e, self._prepare(e.path)

    def _prepare(self, path: str) -> bool:
        folder, _, name = path.rpartition("/")
        known = self._folders.get(folder)
        if known is None:
            known = self._folders[folder] = self._open(folder)
            if len(self._folders) > self.FOLDERS:
                self._folders.popitem(last=False)
        else:
            self._folders.move_to_end(folder)
        names, parts = known
        for part in parts.pop(part_stem(name), ()):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
        return name in names

    def _open(self, folder: str) -> tuple[set[str], dict[str, list[str]]]:
        """Make the folder; the names in it and its part files by the name they were for."""
        target = self.dest / folder
        if folder:
            if not os.path.realpath(target).startswith(self.real + os.sep):  # checked before anything is made
                raise IntegrityError(f"{folder}: leads outside the destination folder")
            try:
                target.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as e:
                segments = folder.split("/")
                block = next(
                    (p for n in range(1, len(segments) + 1) if not (p := self.dest.joinpath(*segments[:n])).is_dir()),
                    target,
                )
                rel = block.relative_to(self.dest).as_posix()
                raise WaBucketError(
                    f"{block}: a file is in the way of the folder {rel}/ that the artifact needs"
                ) from e
        names: set[str] = set()
        parts: dict[str, list[str]] = {}
        if self.fresh:
            return names, parts
        for entry in os.scandir(target):
            m = _PART_NAME.fullmatch(entry.name)
            if m and entry.is_file(follow_symlinks=False):
                parts.setdefault(m.group(1), []).append(entry.path)
            else:
                names.add(entry.name)
        return names, parts


def local_matches(path: Path, f: FileEntry, verify: bool, hashes: HashCache) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != f.size:
            return False
        return not verify or hashes.sha256(path) == f.sha256
    except OSError:
        return False


def part_stem(name: str) -> str:
    """A part file's name before its random tag: the file's name, or a digest of a name too long to
    extend (a file name has at most 255 bytes)."""
    raw = os.fsencode(name)
    return name if len(raw) <= 200 else "~" + hashlib.sha256(raw).hexdigest()[:40]


def open_part(final: Path) -> tuple[Path, int]:
    """A new part file beside `final` (`.NAME.XXXXXXXX.wabucket-part`), open for writing."""
    tmp = final.with_name(f".{part_stem(final.name)}.{os.urandom(4).hex()}{PART_SUFFIX}")
    return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)


def check_file(f: FileEntry, size: int, digest: str, verify: bool) -> None:
    """The bytes a download got: f's size, and (verify) the digest manifest.checker(f) names."""
    if size != f.size:
        raise IntegrityError(f"{f.path}: got {size} bytes from the bucket, manifest says {f.size}")
    if verify and digest != checker(f)[1]:  # equal blake3s mean equal content: its sha256 differs too
        raise IntegrityError(f"{f.path}: content in the bucket does not match the manifest (sha256 differs)")


def land(final: Path, data: Any, f: FileEntry, verify: bool) -> str:
    """Check a small file's bytes, then write them under a temporary name and move it into place.
    Returns their sha256 (the entry's, once they matched its blake3).

    Plain os calls: this runs once per file, and a buffered file object costs more than the write.
    """
    hasher, _ = checker(f) if verify else (hashlib.sha256(), "")
    hasher.update(data)
    check_file(f, len(data), hasher.hexdigest(), verify)
    tmp, fd = open_part(final)
    try:
        try:
            pwrite_all(fd, data, 0)
            settle(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return f.sha256 if verify else hasher.hexdigest()


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """pwrite may write less than asked (a disk filling up): write the rest, or raise its error."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class Reuse:
    """Files of other folders (`--reuse`, typically an earlier version's) that stand in for a
    download: same size and sha256. The folders are indexed once (paths and sizes, in SQLite on
    local disk); only files of a wanted size are ever hashed, each once, the file at the same
    path first. A reused file is hard-linked into place where the file system allows (a later
    download replaces files, never writes into them), else copied and checked."""

    def __init__(self, folders: list[Path], cache: HashCache | None = None) -> None:
        self.folders = folders
        self.cache = cache or HashCache(None)
        self._db: sqlite3.Connection | None = None
        self._index: asyncio.Future[None] | None = None
        self._hashing: dict[int, asyncio.Future[None]] = {}  # sizes whose every file is being hashed

    async def find(self, f: FileEntry) -> Path | None:
        """A file with f's size and sha256, if one of the folders has it."""
        if self._index is None or self._index.cancelled():
            self._index = asyncio.ensure_future(in_thread(self._build))
        await asyncio.shield(self._index)
        db = self._db
        assert db is not None
        same_path = db.execute(
            "SELECT rowid, path, size, sha256 FROM files INDEXED BY files_path WHERE relpath = ?", (f.path,)
        )
        for row, path, size, sha in same_path.fetchall():  # usually the one: an earlier version's file
            if size == f.size and (sha or await self._hash(row, path)) == f.sha256:
                return Path(path)
        while True:
            found = db.execute("SELECT path FROM files WHERE size = ? AND sha256 = ? LIMIT 1", (f.size, f.sha256))
            if (row := found.fetchone()) is not None:
                return Path(row[0])
            unhashed = db.execute("SELECT 1 FROM files WHERE size = ? AND sha256 IS NULL LIMIT 1", (f.size,))
            if unhashed.fetchone() is None:
                return None
            every = self._hashing.get(f.size)  # every file of that size, side by side, each once
            if every is None or every.cancelled():
                every = self._hashing[f.size] = asyncio.ensure_future(self._hash_size(f.size))
            await asyncio.shield(every)

    def _build(self) -> None:
        """The folders' regular files (links are not followed), a table on local disk."""
        fd, name = tempfile.mkstemp(prefix="wabucket-reuse-", suffix=".sqlite")
        os.close(fd)
        db = open_db(name)
        os.unlink(name)  # kept open: gone with the process, however it ends
        db.execute("CREATE TABLE files (relpath TEXT, path TEXT, size INTEGER, sha256 TEXT)")
        with transaction(db):
            for folder in self.folders:
                for top, dirs, names in os.walk(folder):
                    dirs.sort()
                    db.executemany("INSERT INTO files VALUES (?, ?, ?, ?)", self._rows(folder, top, names))
        db.execute("CREATE INDEX files_path ON files (relpath)")
        db.execute("CREATE INDEX files_content ON files (size, sha256)")
        self._db = db

    def _rows(self, folder: Path, top: str, names: list[str]) -> Iterator[tuple[str, str, int, str | None]]:
        rel = os.path.relpath(top, folder)
        for name in sorted(names):
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or name.endswith(PART_SUFFIX):  # links are not followed
                continue
            relpath = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
            yield relpath, path, st.st_size, self.cache.known(Path(path), st)

    async def _hash(self, row: int, path: str) -> str | None:
        """The sha256 of one indexed file (None if it vanished or cannot be read), kept in the index."""
        sha = await in_thread(self._sha256_or_none, Path(path))
        if sha is not None and self._db is not None:
            self._db.execute("UPDATE files SET sha256 = ? WHERE rowid = ?", (sha, row))
        elif self._db is not None:
            self._db.execute("DELETE FROM files WHERE rowid = ?", (row,))
        return sha

    async def _hash_size(self, size: int) -> None:
        assert self._db is not None
        turns = asyncio.Semaphore(HASHING_THREADS)

        async def one(row: int, path: str) -> None:
            async with turns:
                await self._hash(row, path)

        query = "SELECT rowid, path FROM files WHERE size = ? AND sha256 IS NULL LIMIT 256"
        try:
            while rows := self._db.execute(query, (size,)).fetchall():  # a batch at a time: each gets its hash
                await together(*(one(r, p) for r, p in rows))
        finally:
            self._hashing.pop(size, None)

    def place(self, src: Path, final: Path, f: FileEntry) -> bool:
        """Put src's content at final (under a part file first); False if a copy did not match f."""
        tmp = final.with_name(f".{part_stem(final.name)}.{os.urandom(4).hex()}{PART_SUFFIX}")
        try:
            try:
                os.link(src, tmp)
            except OSError:  # another file system, no hard links there, or too many links
                if not _copy_checked(src, tmp, f):
                    tmp.unlink(missing_ok=True)
                    return False
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.cache.remember_now(final, f.sha256)  # a link changed the file's ctime: src's entry too
        return True

    def _sha256_or_none(self, path: Path) -> str | None:
        try:
            return self.cache.sha256(path)
        except OSError:  # vanished or unreadable: not a candidate
            return None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _copy_checked(src: Path, tmp: Path, f: FileEntry) -> bool:
    sha = hashlib.sha256()
    size = 0
    with open(src, "rb") as r, open(tmp, "xb") as w:
        while chunk := r.read(STREAM_CHUNK):
            sha.update(chunk)
            w.write(chunk)
            size += len(chunk)
        w.flush()
        settle(w.fileno())
    return size == f.size and sha.hexdigest() == f.sha256
