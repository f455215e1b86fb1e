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
from .manifest import FileEntry, checker
from .retry import with_retries
from .storage import RangesIgnored, Storage
from .threads import in_thread, wait_out

RANGES_IN_FLIGHT = 4  # ranged GETs of large files, all files together (see Lanes)
RANGE_SIZE = 16 << 20
READ_BACK = 1 << 20
PROGRESS_STEP = 4 << 20  # bytes a lane writes between two progress updates (each wakes the event loop)
HASHING_THREADS = 32  # files whose read-backs run at once (transfer.download has up to `concurrency` files in flight)
STOP_POLL = 0.1  # seconds between two looks at `stop` of a hashing thread with nothing to hash

R = TypeVar("R")


class Lanes:
    """The ranged GETs of large files in flight, all files together, each streamed by a thread.

    A free lane goes to the waiting range nearest the start of its file, so several files stream
    side by side (each hashed as it lands) before one file is split across lanes. Streaming in
    threads through obstore's blocking API costs a third less CPU than its async one, and writing
    and hashing each chunk as it arrives keeps the bytes in cache: buffering whole ranges cost
    ~140k page faults and a cold copy per GiB.
    """

    def __init__(self, n: int, files: int = HASHING_THREADS):
        self.free = n
        self.waiting: list[tuple[int, int, asyncio.Future]] = []
        self.order = itertools.count()
        self.threads = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="wabucket-range")
        # A hashing thread per file in ranges (up to `files` at once; more wait for one): the first
        # ranges of many files stream side by side.
        self.hashers = concurrent.futures.ThreadPoolExecutor(files, thread_name_prefix="wabucket-hash")

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
        self.hashers.shutdown(wait=False)


class InOrderHash:
    """The digest (sha256, or the hasher `new` makes) of a file whose ranges are written side by
    side by lane threads.

    A lane that writes where the hash has got to hashes its chunk at once, still in cache.
    Bytes written ahead by other ranges are read back from the file by a thread of its own
    (`run`) as soon as everything before them is written: beside the lanes, never holding
    them up (hashlib releases the GIL).
    """

    def __init__(self, fd: int, starts: list[int], size: int, new: Callable[[], Any] = hashlib.sha256):
        self.new = new
        self.fd = fd
        self.starts = starts
        self.size = size
        self.cond = threading.Condition()
        self.generation = 0
        self.restart()

    def restart(self) -> None:
        """Start over from byte 0 (a whole-file GET tried again)."""
        with self.cond:
            self.generation += 1  # a read-back under way is dropped
            self.hasher = self.new()
            self.hashed_to = 0
            self.next = 0  # hashed_to, plus the bytes being hashed
            self.busy = False  # someone is hashing: updates must follow each other, in order
            self.written = dict.fromkeys(self.starts, 0)  # bytes written from the start of each range

    def wrote(self, start: int, offset: int, chunk: Any) -> None:
        """A lane wrote `chunk` at `offset`, in the range that begins at `start`."""
        with self.cond:
            self.written[start] = offset + len(chunk) - start
            if offset != self.next or self.busy:  # read back later
                return
            self.busy = True
            self.next += len(chunk)
            sha = self.hasher
        sha.update(chunk)
        with self.cond:
            self.hashed_to += len(chunk)
            self.busy = False
            if self.hashed_to == self.size or self._written_from(self.next) > self.next:
                self.cond.notify()  # the end, or bytes of other ranges to read back

    def run(self, stop: threading.Event) -> None:
        """Read back and hash, in order, what lanes wrote ahead; returns once the whole file is
        hashed (runs in a thread of its own)."""
        buffer = memoryview(bytearray(READ_BACK))
        while True:
            with self.cond:
                while True:
                    if stop.is_set():
                        raise Stopped
                    if self.hashed_to == self.size:
                        return
                    if not self.busy and (n := min(READ_BACK, self._written_from(self.next) - self.next)) > 0:
                        break
                    self.cond.wait(STOP_POLL)
                at, self.next, self.busy = self.next, self.next + n, True
                sha, generation = self.hasher, self.generation
            if os.preadv(self.fd, [buffer[:n]], at) != n:
                raise WaBucketError("part file shrank while downloading")
            sha.update(buffer[:n])
            with self.cond:
                if generation == self.generation:
                    self.hashed_to += n
                    self.busy = False

    def _written_from(self, offset: int) -> int:
        """Where the bytes written without a gap from `offset` on end (called with cond held)."""
        while offset < self.size:
            start = self.starts[bisect.bisect_right(self.starts, offset) - 1]
            end = start + self.written[start]
            if end <= offset:
                break
            offset = end
        return offset


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
    if whole and hashing.written[start] < end - start:
        hashing.restart()
    offset = start + hashing.written[start]
    unreported = 0  # bytes written since the last progress update
    try:
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
                unreported += len(chunk)
                if unreported >= PROGRESS_STEP:
                    advance(unreported)
                    unreported = 0
    finally:
        if unreported:
            advance(unreported)
    if offset != end:
        raise IntegrityError(f"{f.path}: the bucket returned a wrong length for bytes {start}-{end}")


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
    """A large file as ranged GETs streamed in parallel into its part file, hashed as it lands
    (with the entry's blake3 where it has one, else sha256); returns its sha256.

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
    hashing = InOrderHash(fd, starts, f.size, (lambda: checker(f)[0]) if verify else hashlib.sha256)
    stop = threading.Event()

    async def fetch(index: int, start: int) -> None:
        await lanes.acquire(index)
        try:
            end = min(start + part, f.size)
            await with_retries(
                lambda: in_thread(
                    stream_range,
                    storage,
                    key,
                    f,
                    start,
                    end,
                    hashing,
                    advance,
                    stop,
                    whole,
                    executor=lanes.threads,
                    stop=stop,
                ),
                f"download of {f.path} (bytes {start}-{end})",
                attempts,
            )
        finally:
            lanes.release()

    try:
        os.ftruncate(fd, f.size)
        tasks = [asyncio.ensure_future(fetch(i, start)) for i, start in enumerate(starts)]
        tasks.append(asyncio.ensure_future(in_thread(hashing.run, stop, executor=lanes.hashers, stop=stop)))
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            stop.set()
            for t in tasks:
                t.cancel()
            await wait_out(tasks)  # each waits for its thread (in_thread), the hashing one too
            raise
        digest = hashing.hasher.hexdigest()
        check_file(f, hashing.hashed_to, digest, verify)
        settle(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, final)
        return f.sha256 if verify else digest
    finally:
        if fd >= 0:
            os.close(fd)
        if fd >= 0 or os.path.lexists(tmp):
            tmp.unlink(missing_ok=True)
