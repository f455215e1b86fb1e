"""Large files as ranged GETs streamed in parallel into their part file, hashed as they land.

Each range is retried on its own, from where it stopped; a server that ignores ranges sends the
file whole, in one GET (the storage learns it once).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import hashlib
import heapq
import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import IntegrityError, WaBucketError
from .hashcache import settle
from .landing import check_file, open_part, pwrite_all
from .manifest import FileEntry
from .retry import with_retries
from .storage import RangesIgnored, Storage

RANGES_IN_FLIGHT = 4  # ranged GETs of large files, all files together (see Lanes)
RANGE_SIZE = 16 << 20
READ_BACK = 1 << 20

R = TypeVar("R")


async def in_thread(executor: Any, stop: threading.Event, fn: Callable[..., R], *args: Any) -> R:
    """fn(*args) in a thread of `executor`. A thread cannot be cancelled: if the caller is, `stop`
    is set (fn checks it between chunks) and the thread is waited for, since it may still be
    writing a file the caller is about to remove."""
    thread = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        stop.set()
        await wait_out([thread])
        raise


async def wait_out(aws: list[Any]) -> None:
    """Wait until every future or task is done, even if this task is cancelled again meanwhile
    (a second cancel must not let the caller close a file that a thread still writes)."""
    while pending := [a for a in aws if not a.done()]:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            continue
    for a in aws:  # retrieved, so that asyncio does not log them as never retrieved
        if not a.cancelled():
            a.exception()


class Lanes:
    """The ranged GETs of large files in flight, all files together, each streamed by a thread.

    A free lane goes to the waiting range nearest the start of its file, so several files stream
    side by side (each hashed as it lands) before one file is split across lanes. Streaming in
    threads through obstore's blocking API costs a third less CPU than its async one, and writing
    and hashing each chunk as it arrives keeps the bytes in cache: buffering whole ranges cost
    ~140k page faults and a cold copy per GiB.
    """

    def __init__(self, n: int):
        self.free = n
        self.waiting: list[tuple[int, int, asyncio.Future]] = []
        self.order = itertools.count()
        self.threads = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="wabucket-range")

    async def acquire(self, index: int) -> None:
        if self.free and not self.waiting:
            self.free -= 1
            return
        turn = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiting, (index, next(self.order), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # given a lane just as it was cancelled
                self.release()
            raise

    def release(self) -> None:
        while self.waiting:
            turn = heapq.heappop(self.waiting)[2]
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1

    def close(self) -> None:
        self.threads.shutdown(wait=False)


class InOrderHash:
    """sha256 of a file whose ranges are written side by side, in threads.

    Bytes next in order are hashed as they are written (still in cache); the others are read back
    from the file once everything before them is hashed.
    """

    def __init__(self, fd: int, starts: list[int]):
        self.fd = fd
        self.starts = starts
        self.lock = threading.Lock()
        self.restart()

    def restart(self) -> None:
        with self.lock:
            self.sha = hashlib.sha256()
            self.hashed_to = 0
            self.written = dict.fromkeys(self.starts, 0)  # bytes written from the start of each range

    def wrote(self, start: int, offset: int, chunk: Any) -> None:
        with self.lock:
            self.written[start] = offset + len(chunk) - start
            if self.hashed_to == offset:
                self.sha.update(chunk)
                self.hashed_to += len(chunk)

    def catch_up(self) -> None:
        """Hash what other ranges wrote ahead of the in-order one (called as each range ends)."""
        with self.lock:
            while True:
                start = self.starts[bisect.bisect_right(self.starts, self.hashed_to) - 1]
                end = start + self.written[start]
                if end <= self.hashed_to:
                    return
                while self.hashed_to < end:
                    chunk = os.pread(self.fd, min(READ_BACK, end - self.hashed_to), self.hashed_to)
                    if not chunk:
                        raise WaBucketError("part file shrank while downloading")
                    self.sha.update(chunk)
                    self.hashed_to += len(chunk)


class Stopped(WaBucketError):
    """Another range of the file failed, or the download was cancelled (not retried)."""


def stream_range(
    storage: Storage,
    key: str,
    f: FileEntry,
    start: int,
    end: int,
    hashing: InOrderHash,
    advance: Callable[[int], None],
    stop: threading.Event,
    whole: bool = False,
) -> None:
    """One ranged GET, written in place chunk by chunk (runs in a lane's thread); a retry resumes
    where the previous try stopped writing. whole: one plain GET of the file, every try from byte 0."""
    if whole:
        hashing.restart()
    offset = start + hashing.written[start]
    if offset < end:  # else the last try wrote it all and failed after
        try:
            chunks = storage.stream(key) if whole else storage.stream(key, offset, end)
        except FileNotFoundError as e:
            raise IntegrityError(f"{f.path}: missing from the bucket") from e
        for chunk in chunks:
            if stop.is_set():
                raise Stopped
            if offset + len(chunk) > end:
                break
            pwrite_all(hashing.fd, chunk, offset)
            hashing.wrote(start, offset, chunk)
            offset += len(chunk)
            advance(len(chunk))
    if offset != end:
        raise IntegrityError(f"{f.path}: the bucket returned a wrong length for bytes {start}-{end}")
    hashing.catch_up()


async def get_ranges(
    storage: Storage,
    key: str,
    final: Path,
    f: FileEntry,
    advance: Callable[[int], None],
    verify: bool,
    lanes: Lanes,
    attempts: int,
) -> str:
    """A large file as ranged GETs streamed in parallel into its part file, hashed as it lands;
    returns its sha256.

    Each range is retried on its own, from where it stopped. From a server that ignores ranges,
    the file comes whole, in one GET."""
    if storage.capabilities.ranged_gets:
        try:
            return await _get_parts(storage, key, final, f, advance, verify, lanes, attempts, whole=False)
        except RangesIgnored:
            pass  # the storage now knows: fetched whole from here on
    return await _get_parts(storage, key, final, f, advance, verify, lanes, attempts, whole=True)


async def _get_parts(
    storage: Storage,
    key: str,
    final: Path,
    f: FileEntry,
    advance: Callable[[int], None],
    verify: bool,
    lanes: Lanes,
    attempts: int,
    *,
    whole: bool,
) -> str:
    part = f.size if whole else max(storage.part_size(f.size), RANGE_SIZE)
    starts = list(range(0, f.size, part))
    tmp, fd = open_part(final)
    hashing = InOrderHash(fd, starts)
    stop = threading.Event()

    async def fetch(index: int, start: int) -> None:
        await lanes.acquire(index)
        try:
            end = min(start + part, f.size)
            await with_retries(
                lambda: in_thread(
                    lanes.threads, stop, stream_range, storage, key, f, start, end, hashing, advance, stop, whole
                ),
                f"download of {f.path} (bytes {start}-{end})",
                attempts,
            )
        finally:
            lanes.release()

    try:
        os.ftruncate(fd, f.size)
        tasks = [asyncio.ensure_future(fetch(i, start)) for i, start in enumerate(starts)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            stop.set()
            for t in tasks:
                t.cancel()
            await wait_out(tasks)  # each waits for its thread (in_thread)
            raise
        sha = hashing.sha.hexdigest()
        check_file(f, hashing.hashed_to, sha, verify)
        settle(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, final)
        return sha
    finally:
        if fd >= 0:
            os.close(fd)
        if fd >= 0 or os.path.lexists(tmp):
            tmp.unlink(missing_ok=True)
