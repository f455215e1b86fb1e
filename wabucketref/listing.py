"""A bucket prefix's objects, kept in SQLite on local disk: looked up by key, or read in key
order (merged with a manifest). Servers do not all list in key order (SeaweedFS walks its
folders), and a listing of millions of objects does not belong in memory."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .manifest import FileEntry, merge_join
from .scratchdb import open_db, transaction
from .storage import ObjectInfo, Storage
from .threads import in_thread

SCHEMA = "CREATE TABLE objects (key TEXT PRIMARY KEY, size INTEGER, etag TEXT) WITHOUT ROWID"
PAGE = 1000


class Listing:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_db(path)
        self._db.execute(SCHEMA)
        self.count = 0

    @classmethod
    async def of(cls, storage: Storage, prefix: str, folder: Path) -> Listing:
        """Every object under `prefix/` (keys relative to it), without the `dir/` markers of empty
        folders that some tools write (listed as `dir`, beside the folder's objects)."""
        fd, path = tempfile.mkstemp(prefix="listing-", suffix=".sqlite", dir=folder)
        os.close(fd)
        listing = cls(Path(path))
        async for page in storage.iter_objects(prefix, PAGE):
            await in_thread(listing._add, page)
        await in_thread(listing._drop_folder_markers)
        return listing

    def _add(self, page: list[ObjectInfo]) -> None:
        with transaction(self._db):
            self._db.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?)", page)
        self.count += len(page)

    def _drop_folder_markers(self) -> None:
        markers = [
            key
            for (key,) in self._db.execute("SELECT key FROM objects WHERE size = 0").fetchall()
            if self._db.execute(
                "SELECT 1 FROM objects WHERE key > ? AND key < ? LIMIT 1", (key + "/", key + "0")
            ).fetchone()
        ]
        with transaction(self._db):
            self._db.executemany("DELETE FROM objects WHERE key = ?", [(k,) for k in markers])
        self.count -= len(markers)

    def get(self, key: str) -> ObjectInfo | None:
        row = self._db.execute("SELECT size, etag FROM objects WHERE key = ?", (key,)).fetchone()
        return None if row is None else ObjectInfo(key, row[0], row[1])

    def sorted(self) -> Iterator[ObjectInfo]:
        """The objects in key order (the order of manifests)."""
        cursor = self._db.execute("SELECT key, size, etag FROM objects ORDER BY key")
        while rows := cursor.fetchmany(PAGE):
            yield from itertools.starmap(ObjectInfo, rows)

    def total_size(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM objects").fetchone()[0])

    def key_with_segment(self, segment: str) -> str | None:
        """A key that has `segment` as one of its folders or its name, if any."""
        row = self._db.execute(
            "SELECT key FROM objects WHERE '/' || key || '/' LIKE ? LIMIT 1", (f"%/{segment}/%",)
        ).fetchone()
        return None if row is None else row[0]

    def empty(self) -> list[ObjectInfo]:
        """The empty objects (few: dir markers that hold no folder, real empty files)."""
        rows = self._db.execute("SELECT key, etag FROM objects WHERE size = 0 ORDER BY key").fetchall()
        return [ObjectInfo(k, 0, e) for k, e in rows]

    def delete(self, keys: list[str]) -> None:
        with transaction(self._db):
            self._db.executemany("DELETE FROM objects WHERE key = ?", [(k,) for k in keys])
        self.count -= len(keys)

    def close(self) -> None:
        self._db.close()


def mismatches(manifest: Iterable[FileEntry], listing: Listing) -> Iterator[tuple[FileEntry | None, ObjectInfo | None]]:
    """Where a folder does not hold a manifest's files with their sizes, in path order: an entry
    without its object, an object of another size, an object the manifest lacks (empty objects,
    such as folder markers, aside)."""
    for f, o in merge_join(manifest, listing.sorted()):
        if o is None or (f is None and o.size) or (f is not None and o.size != f.size):
            yield f, o
