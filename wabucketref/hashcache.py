"""The sha256 of local files, remembered between commands, so that a folder wabucketref wrote or
read is not read again to learn what it holds (--reuse, incremental uploads, downloads into a
folder that has files already, diff --local).

A hash is remembered for a file (device and inode, so a hard link or a moved folder keeps it)
with its size, modification and change times to the nanosecond, and used only while all of
them are unchanged. Timestamps come from a clock that ticks every few milliseconds, so a write
in the same tick as the hashing would leave them unchanged: a hash is remembered only if the
file had not been modified for RACY_NS when it was read, and the files a download writes get a
modification time RACY_NS in the past for that reason (they are new: nothing else knows them).

`verify --local` never uses it: it reads every byte. The cache is a SQLite file in the user's
cache folder (~/.cache/wabucketref/hashes.sqlite); WABUCKET_CACHE=0 turns it off; failing to
open or write it only costs speed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from . import settings
from .manifest import sha256_file
from .scratchdb import transaction

log = logging.getLogger("wabucketref")

RACY_NS = 2_000_000_000  # covers coarse clocks and file systems of 2 s resolution (FAT)
MAX_AGE_NS = 60 * 86400 * 1_000_000_000  # entries not refreshed for this long are dropped
SWEEP_EVERY_NS = 86400 * 1_000_000_000
FLUSH_EVERY = 2000  # entries
QUERY_FILES = 500  # inodes per lookup statement (SQLite before 3.32 takes at most 999 parameters)
BUSY_TIMEOUT = 5.0  # seconds another command may hold the file

X = TypeVar("X")
StrPath = str | os.PathLike[str]
_Key = tuple[int, int]
_Row = tuple[int, int, int, str]  # size, mtime_ns, ctime_ns, sha256

SCHEMA = """CREATE TABLE IF NOT EXISTS hashes (
    dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
    sha256 TEXT, hashed_ns INTEGER, PRIMARY KEY (dev, ino)
) WITHOUT ROWID"""
SWEPT = "CREATE TABLE IF NOT EXISTS swept (at_ns INTEGER)"  # when old entries were last dropped


class HashCache:
    """Remembered hashes of local files; a HashCache(None) remembers nothing. Thread-safe: hashing
    runs in worker threads."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()  # the connection; writing never blocks remember()
        self._lock = threading.Lock()  # _pending
        self._pending: dict[_Key, tuple[_Row, int]] = {}

    @classmethod
    def default(cls) -> HashCache:
        """The user's cache (settings.cache_folder()), unless WABUCKET_CACHE=0 or there is no cache folder."""
        folder = settings.cache_folder() if settings.cache_enabled() else None
        return cls(folder / "hashes.sqlite" if folder is not None else None)

    def known(self, path: StrPath, st: os.stat_result | None = None) -> str | None:
        """path's sha256 if it was remembered and the file is unchanged since (`st`: its stat, if
        the caller has it)."""
        try:
            st = st or os.stat(path)
        except OSError:
            return None
        return self.known_all([st])[0]

    def known_all(self, stats: Sequence[os.stat_result]) -> list[str | None]:
        """known() of many files by their stats, read from the cache file a statement per QUERY_FILES."""
        keys = [_key(st) for st in stats]
        with self._lock:
            found = [p[0] if (p := self._pending.get(key)) is not None else None for key in keys]
        if missing := [i for i, row in enumerate(found) if row is None]:
            with self._db_lock:
                if (db := self._open()) is not None:
                    rows = _query(db, {keys[i] for i in missing})
                    for i in missing:
                        found[i] = rows.get(keys[i])
        return [
            str(row[3]) if row is not None and tuple(row[:3]) == _row(st, "")[:3] else None
            for row, st in zip(found, stats, strict=True)
        ]

    def remember(self, path: StrPath, sha256: str, before: os.stat_result, started_ns: int) -> None:
        """path's content, read from `started_ns` on, had this sha256; `before` is its stat from
        before the read. Kept only if the file had settled and is unchanged after the read."""
        if self.path is None or started_ns - before.st_mtime_ns < RACY_NS:
            return
        try:
            after = os.stat(path)
        except OSError:
            return
        if _row(after, "")[:2] != _row(before, "")[:2] or _key(after) != _key(before):
            return
        with self._lock:
            self._pending[_key(after)] = (_row(after, sha256), started_ns)
            full = len(self._pending) >= FLUSH_EVERY
        if full:
            self.flush()

    def remember_now(self, path: StrPath, sha256: str) -> None:
        """path's content is known to have this sha256 now (a file this command wrote and settled,
        or linked from a file whose hash it knew)."""
        with contextlib.suppress(OSError):
            self.remember(path, sha256, os.stat(path), time.time_ns())

    def sha256(self, path: StrPath) -> str:
        """path's sha256: remembered, else read (and remembered)."""
        return self.hashed(path, lambda p: (sha256_file(p), None))[0]

    def hashed(self, path: StrPath, compute: Callable[[StrPath], tuple[str, X]]) -> tuple[str, X | None]:
        """(sha256, what else `compute` returns): remembered (the rest is then None), else computed."""
        if (sha := self.known(path)) is not None:
            return sha, None
        return self.learn(path, compute)

    def learn(self, path: StrPath, compute: Callable[[StrPath], tuple[str, X]]) -> tuple[str, X]:
        """compute(path), its sha256 remembered (for a file whose hash is known not to be)."""
        before, started = os.stat(path), time.time_ns()
        sha, extra = compute(path)
        self.remember(path, sha, before, started)
        return sha, extra

    def flush(self) -> None:
        """Write what was learned (one transaction); a busy or broken cache file only loses it."""
        with self._lock:
            pending, self._pending = self._pending, {}
        with self._db_lock:
            if not pending or (db := self._open()) is None:
                return
            try:
                with transaction(db):  # one transaction: autocommit would commit each row
                    db.executemany(
                        "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(*key, *row, hashed) for key, (row, hashed) in pending.items()],
                    )
            except sqlite3.Error as e:
                log.debug("file hashes not remembered (%s): %s", self.path, e)

    def close(self) -> None:
        self.flush()
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _open(self) -> sqlite3.Connection | None:
        """The connection (opened once; called with _db_lock held); None if the file cannot be used.
        Write-ahead log without a sync per commit: a crash may lose the last hashes learned, which
        only costs speed, and never leaves a half-written row."""
        if self._db is not None or self.path is None:
            return self._db
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # private to the user: it names their files
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")  # where the file system allows it
            db.execute("PRAGMA synchronous=NORMAL")
            with db:
                db.execute(SCHEMA)
                db.execute(SWEPT)
                _sweep(db, time.time_ns())
        except (OSError, sqlite3.Error) as e:
            log.debug("no file hash cache (%s): %s", self.path, e)
            self.path = None
            return None
        self._db = db
        return db


def _sweep(db: sqlite3.Connection, now: int) -> None:
    """Drop entries not refreshed for MAX_AGE_NS, at most once per SWEEP_EVERY_NS: the sweep reads
    the whole file (a million files' entries: hundreds of MB), a command should not."""
    last = db.execute("SELECT max(at_ns) FROM swept").fetchone()[0]
    if last is not None and now - last < SWEEP_EVERY_NS:
        return
    db.execute("DELETE FROM hashes WHERE hashed_ns < ?", (now - MAX_AGE_NS,))
    db.execute("DELETE FROM swept")
    db.execute("INSERT INTO swept VALUES (?)", (now,))


def settle(fd: int) -> None:
    """Give a file this command has just written a modification time RACY_NS in the past, so its
    hash can be remembered (see the module's docstring)."""
    then = time.time_ns() - RACY_NS
    os.utime(fd, ns=(then, then))


def _key(st: os.stat_result) -> _Key:
    return st.st_dev, st.st_ino


def _row(st: os.stat_result, sha256: str) -> _Row:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, sha256


def _query(db: sqlite3.Connection, keys: set[_Key]) -> dict[_Key, tuple]:
    """The rows of these files, a statement per device and QUERY_FILES files."""
    by_dev: dict[int, list[int]] = {}
    for dev, ino in keys:
        by_dev.setdefault(dev, []).append(ino)
    rows: dict[_Key, tuple] = {}
    try:
        for dev, inodes in by_dev.items():
            for i in range(0, len(inodes), QUERY_FILES):
                some = inodes[i : i + QUERY_FILES]
                marks = ",".join("?" * len(some))
                query = f"SELECT ino, size, mtime_ns, ctime_ns, sha256 FROM hashes WHERE dev = ? AND ino IN ({marks})"
                rows.update(((dev, r[0]), r[1:]) for r in db.execute(query, (dev, *some)))
    except sqlite3.Error as e:
        log.debug("file hash cache: %s", e)
    return rows
