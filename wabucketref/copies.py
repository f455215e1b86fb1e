"""Incremental uploads: the base version's files by content (SQLite on local disk), and the
copies made inside the bucket, checked once they are all done."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .hashcache import HashCache
from .landing import hash_local
from .localtree import LocalFile
from .manifest import NO_HASH, FileEntry, Manifest, merge_join
from .scratchdb import open_db, transaction
from .storage import ObjectInfo, Objects, Storage, key_under
from .threads import in_thread, in_thread_unless_small

log = logging.getLogger("wabucketref")

SMALL_FILE = 4 << 20  # sent or fetched in one request; larger files move in parts (transfer.py)
INSERT_BATCH = 5000


@dataclass(frozen=True)
class CopySource:
    """An object of the base version with a local file's content: copied inside the bucket
    instead of sent."""

    key: str  # the object's key in the bucket
    etag: str | None  # the object's, as the base's listing showed it
    sha256: str  # of the local file (equal to the base manifest's)
    blake3: str | None  # the base manifest's, where it has one
    md5s: Sequence[bytes] | None  # of the local file's parts, to compare ETags (None: its hash was remembered)


BaseFile = tuple[FileEntry, ObjectInfo | None]  # a base version's entry and its object


def hash_part(storage: Storage, size: int) -> int:
    """The part size the ETag of an object of `size` bytes was computed over (as uploads write it)."""
    return storage.part_size(size) if size > SMALL_FILE else size + 1


class BaseVersion:
    """The files of the version an incremental upload copies from, and its data under `root` as
    the bucket lists it (a folder bucket's is read in place as the walk goes). A base object is
    used only if it is still there with its manifest's size and, where the server's ETags
    describe content and the local file was read, with the local file's content.

    A new version mostly keeps its files where they were: the local files come in path order,
    and the base's manifest and objects are read alongside them, as sorted streams. Only a file
    the base has elsewhere is looked up by content, in a table on local disk built the first
    time one is asked for."""

    def __init__(self, storage: Storage, root: str, manifest: Manifest, objects: Objects, folder: Path) -> None:
        self.storage = storage
        self.root = root
        self._manifest = manifest
        self._objects = objects
        self._folder = folder
        self._aligned = merge_join(iter(manifest), objects.sorted())
        self._ahead = next(self._aligned, None)
        self._db: sqlite3.Connection | None = None
        self._building: asyncio.Future[sqlite3.Connection] | None = None

    def at(self, path: str) -> BaseFile | None:
        """The base's entry at `path` and its object, if any. Asked by one thread, in path order
        (the walk's): the base's manifest and objects are read alongside."""
        while self._ahead is not None and _of(self._ahead) < path:
            self._ahead = next(self._aligned, None)
        if self._ahead is None or self._ahead[0] is None or self._ahead[0].path != path:
            return None
        return self._ahead[0], self._ahead[1]

    def source_at(self, f: LocalFile, known: str | None, at: BaseFile | None) -> CopySource | None:
        """The base's object at the file's own path, if its remembered sha256 (`known`) says the
        content is the same: found without hashing or a lookup (most files of a new version)."""
        if at is None or known is None:
            return None
        entry, o = at
        if entry.size != f.size or entry.sha256 != known or o is None or o.size != f.size:
            return None
        if self.storage.etag_matches(o, None) is False:
            return None
        return CopySource(key_under(self.root, entry.path), o.etag, known, entry.blake3, None)

    async def source_for(
        self, f: LocalFile, known: str | None, at: BaseFile | None, hashes: HashCache
    ) -> CopySource | None:
        """The base's object with the local file's content, if any (`known`: the file's remembered
        sha256; `at`: the base's file at its path). Only files of a size the base has are hashed
        (in a thread), and only if their hash is not remembered (hashcache.py)."""
        if (source := self.source_at(f, known, at)) is not None:
            return source
        abspath, size = f.abspath, f.size
        if at is None or at[0].size != size or at[0].sha256 == NO_HASH:
            at = None
            if not await self._has_size(size):
                return None
        if known is not None:
            sha, md5s = known, None
        else:
            part = hash_part(self.storage, size)
            sha, md5s = await in_thread_unless_small(size, hashes.learn, abspath, lambda p: hash_local(p, part))
        found: tuple[str, str | None] | None  # the base's path and blake3
        if at is not None and at[0].sha256 == sha:
            found, o = (at[0].path, at[0].blake3), at[1]
        else:
            found = await self._path_of(size, sha)
            o = self._objects.get(found[0]) if found is not None else None
        if found is None or o is None or o.size != size:
            return None
        if self.storage.etag_matches(o, md5s) is False:  # the base's object is not what its manifest says
            log.warning("%s: the base version's copy differs from its manifest; sending the file", f.path)
            return None
        return CopySource(key_under(self.root, found[0]), o.etag, sha, found[1], md5s)

    async def _by_content(self) -> sqlite3.Connection:
        if self._building is None:
            self._building = asyncio.ensure_future(in_thread(self._build))
        return await asyncio.shield(self._building)

    def _build(self) -> sqlite3.Connection:
        """The base's files by size and sha256 (reads the manifest once more; a thread's work)."""
        db = open_db(self._folder / "base.sqlite")
        db.execute("CREATE TABLE base (size INTEGER, sha256 TEXT, path TEXT, blake3 TEXT)")
        with transaction(db):
            for batch in self._manifest.batches():
                rows = [(e.size, e.sha256, e.path, e.blake3) for e in batch if e.sha256 != NO_HASH]
                db.executemany("INSERT INTO base VALUES (?, ?, ?, ?)", rows)
        db.execute("CREATE INDEX base_content ON base (size, sha256)")
        self._db = db
        return db

    async def _has_size(self, size: int) -> bool:
        db = await self._by_content()
        return db.execute("SELECT 1 FROM base WHERE size = ? LIMIT 1", (size,)).fetchone() is not None

    async def _path_of(self, size: int, sha256: str) -> tuple[str, str | None] | None:
        """The path and blake3 of a base file with this content, if any."""
        db = await self._by_content()
        query = "SELECT path, blake3 FROM base WHERE size = ? AND sha256 = ? LIMIT 1"
        row = db.execute(query, (size, sha256)).fetchone()
        return None if row is None else (row[0], row[1])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        self._objects.close()


def _of(pair: tuple[FileEntry | None, ObjectInfo | None]) -> str:
    entry, o = pair
    return entry.path if entry is not None else o.key if o is not None else ""


def copy_checks_out(storage: Storage, copy: ObjectInfo | None, copied: Copied) -> bool:
    """Is an object copied from a base object whole? Its size must be the file's; its ETag must
    be the source's (a server that keeps ETags on copy: the source was checked before copying)
    or not contradict the local file's content. Where the server's ETags say nothing of content
    (Azure, a folder: there a copy is a hard link) or the local file was not read (its hash was
    remembered), the size is what can be checked: the manifest's sha256 is the local file's,
    and every download and `verify` checks the object against it."""
    if copy is None or copy.size != copied.size:
        return False
    if copy.etag and copy.etag == copied.source_etag:
        return True
    return storage.etag_matches(copy, copied.md5s) is not False


@dataclass(frozen=True)
class Copied:
    path: str
    abspath: str
    size: int
    sha256: str
    md5s: Sequence[bytes] | None
    source_etag: str | None


class CopyLog:
    """The files an upload copied inside the bucket, on local disk until they are checked."""

    def __init__(self, folder: Path) -> None:
        self._db = open_db(folder / "copies.sqlite")
        self._db.execute(
            "CREATE TABLE copied (path TEXT, abspath TEXT, size INTEGER, sha256 TEXT, md5s BLOB, etag TEXT)"
        )
        self._pending: list[tuple] = []
        self.count = 0

    def add(self, path: str, abspath: str, size: int, source: CopySource) -> None:
        md5s = b"".join(source.md5s) if source.md5s is not None else None
        self._pending.append((path, abspath, size, source.sha256, md5s, source.etag))
        self.count += 1
        if len(self._pending) >= INSERT_BATCH:
            self._write()

    def _write(self) -> None:
        with transaction(self._db):
            self._db.executemany("INSERT INTO copied VALUES (?, ?, ?, ?, ?, ?)", self._pending)
        self._pending = []

    def __iter__(self) -> Iterator[Copied]:
        self._write()
        cursor = self._db.execute("SELECT path, abspath, size, sha256, md5s, etag FROM copied")
        while rows := cursor.fetchmany(INSERT_BATCH):
            for path, abspath, size, sha, md5s, etag in rows:
                parts = None if md5s is None else [md5s[i : i + 16] for i in range(0, len(md5s), 16)]
                yield Copied(path, abspath, size, sha, parts, etag)

    def close(self) -> None:
        self._db.close()
