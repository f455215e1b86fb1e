"""The transfer engine, shared by upload, download, link and verify on every backend.

A transfer is "what the destination lacks": the plan compares the source with one listing of
the destination (sizes, then hashes), so rerunning an interrupted command moves only what is
missing or different. Files move with bounded concurrency; bytes are hashed while they stream;
every file is retried with backoff; a download lands under a temporary name and is moved into
place only after its size and sha256 matched the manifest.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import hashlib
import heapq
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import IntegrityError, NotFoundError, WaBucketError
from .manifest import FileEntry, LocalFile, Manifest, safe_relpath
from .progress import ProgressCallback, Stats
from .retry import ATTEMPTS, with_retries
from .storage import ObjectInfo, RangesIgnored, Storage, key_under

log = logging.getLogger("wabucketref")

DEFAULT_CONCURRENCY = 32
SMALL_FILE = 4 << 20  # sent or fetched in one request; larger files move in parts
INLINE_WRITE = 256 << 10
STREAM_CHUNK = 8 << 20
LARGE_UPLOADS_IN_FLIGHT = 2  # each buffers up to UPLOAD_PARTS_PER_FILE parts in obstore
UPLOAD_PARTS_PER_FILE = 3
RANGES_IN_FLIGHT = 4  # ranged GETs of large files, all files together (see _Lanes)
RANGE_SIZE = 16 << 20
READ_BACK = 1 << 20
PART_SUFFIX = ".wabucket-part"
_PART_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}" + re.escape(PART_SUFFIX))  # see _open_part

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Options:
    """How a command moves bytes: passed to every transfer (never changed on a shared object)."""

    concurrency: int = DEFAULT_CONCURRENCY
    quiet: bool = False  # no summary line
    attempts: int = ATTEMPTS
    progress: ProgressCallback = field(default_factory=ProgressCallback)


class _Tracker:
    """Counts what one transfer did (Stats), tells the progress callback, and logs the summary
    line of a transfer that completed."""

    def __init__(self, verb: str, files: int, total_bytes: int, opts: Options, summary: bool = True):
        self.stats = Stats(verb)
        self.files = files
        self.callback = opts.progress
        self.summary = summary and not opts.quiet
        self.callback.start(verb, files, total_bytes)

    def advance(self, nbytes: int) -> None:
        self.callback.advance(nbytes)

    def file_done(self, size: int, skipped: bool = False) -> None:
        if skipped:
            self.stats.skipped_files += 1
            self.stats.skipped_bytes += size
            self.callback.advance(size)
        else:
            self.stats.files += 1
            self.stats.bytes += size
        self.callback.file_done(self.stats.files + self.stats.skipped_files, self.files)

    def __enter__(self) -> _Tracker:
        return self

    def __exit__(self, failure: type | None, *_: object) -> None:
        self.stats.ended = time.monotonic()
        self.callback.close()
        if self.summary and failure is None:
            log.info(self.stats.summary())


async def bounded_map(fn: Callable[[T], Awaitable[R]], items: Iterable[T], concurrency: int) -> list[R]:
    """Run fn over items with at most `concurrency` in flight; stop starting new ones after a failure.

    Workers pull from one iterator, so 100k items cost 100k results, not 100k pending tasks.
    """
    it = iter(enumerate(items))
    results: dict[int, R] = {}
    errors: list[BaseException] = []

    async def worker() -> None:
        for i, item in it:
            if errors:
                return
            try:
                results[i] = await fn(item)
            except Exception as e:
                errors.append(e)
                return

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(results))]


# ---------------------------------------------------------------- hashing helpers


def _hash_local(path: Path, part_size: int) -> tuple[str, list[bytes]]:
    """sha256 of a file, plus the MD5 of each part of `part_size` (to compare S3 ETags)."""
    sha = hashlib.sha256()
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


async def _remote_sha256(storage: Storage, key: str, size: int, progress: _Tracker | None = None) -> tuple[str, int]:
    """sha256 and size of an object in the bucket: a small one read whole, a large one streamed in a
    thread and hashed chunk by chunk while in cache (as large downloads are, see _Lanes)."""
    advance = _advancer(progress)
    if size <= SMALL_FILE:
        data = await storage.get(key)
        advance(len(data))
        return hashlib.sha256(data).hexdigest(), len(data)
    stop = threading.Event()
    return await _in_thread(None, stop, _hash_stream, storage, key, advance, stop)


async def _in_thread(executor: Any, stop: threading.Event, fn: Callable[..., R], *args: Any) -> R:
    """fn(*args) in a thread of `executor`. A thread cannot be cancelled: if the caller is, `stop`
    is set (fn checks it between chunks) and the thread is waited for, since it may still be
    writing a file the caller is about to remove."""
    thread = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        stop.set()
        await _wait_out([thread])
        raise


async def _wait_out(aws: list[Any]) -> None:
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


def _hash_stream(storage: Storage, key: str, advance: Callable[[int], None], stop: threading.Event) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    for chunk in storage.stream(key):
        if stop.is_set():
            raise _Stopped
        sha.update(chunk)
        size += len(chunk)
        advance(len(chunk))
    return sha.hexdigest(), size


def _advancer(progress: _Tracker | None) -> Callable[[int], None]:
    """progress.advance, callable from any thread (the callback runs in the event loop's thread)."""
    if progress is None:
        return lambda n: None
    loop = asyncio.get_running_loop()

    def advance(n: int) -> None:
        loop.call_soon_threadsafe(progress.advance, n)

    return advance


# ---------------------------------------------------------------- upload


async def upload(
    storage: Storage, prefix: str, files: list[LocalFile], existing: dict[str, ObjectInfo], opts: Options
) -> tuple[Manifest, Stats]:
    """Put `files` under `prefix`, skipping those the destination already holds byte for byte."""
    progress = _Tracker("uploaded", len(files), sum(f.size for f in files), opts)
    large = asyncio.Semaphore(LARGE_UPLOADS_IN_FLIGHT)

    async def one(f: LocalFile) -> FileEntry:
        key = key_under(prefix, f.path)
        info = existing.get(f.path)
        if info is not None and info.size == f.size:
            part = storage.part_size(f.size) if f.size > SMALL_FILE else f.size + 1
            sha, md5s = await asyncio.to_thread(_hash_local, f.abspath, part)
            same = storage.etag_matches(info, md5s)
            if same is None:
                same = (await _remote_sha256(storage, key, info.size))[0] == sha
            if same:
                progress.file_done(f.size, skipped=True)
                return FileEntry(f.path, f.size, sha)

        async def put() -> str:
            if f.size <= SMALL_FILE:
                data, sha = await asyncio.to_thread(_read_and_hash, f.abspath)
                if len(data) != f.size:
                    raise WaBucketError(f"file changed while uploading: {f.path}")
                await storage.put(key, data)
                progress.advance(len(data))
                return sha
            async with large:
                return await _put_streaming(storage, key, f, progress)

        sha = await with_retries(put, f"upload of {f.path}", opts.attempts)
        progress.file_done(f.size)
        return FileEntry(f.path, f.size, sha)

    with progress, storage.explained():  # a missing bucket or refused credentials: one line naming the bucket
        entries = await bounded_map(one, files, opts.concurrency)
    return Manifest(entries), progress.stats


def _read_and_hash(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


async def _put_streaming(storage: Storage, key: str, f: LocalFile, progress: _Tracker) -> str:
    """A multipart upload whose parts are hashed as they are read (parts of a known size, so a
    resume can compare the object's ETag)."""
    sha = hashlib.sha256()
    sent = 0
    part = storage.part_size(f.size)

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        with open(f.abspath, "rb") as fh:
            while chunk := await asyncio.to_thread(_read_hashed, fh, sha, part):
                sent += len(chunk)
                progress.advance(len(chunk))
                yield chunk

    await storage.put_stream(key, chunks(), part, UPLOAD_PARTS_PER_FILE)
    if sent != f.size:
        raise WaBucketError(f"file changed while uploading: {f.path}")
    return sha.hexdigest()


def _read_hashed(fh: Any, sha: Any, n: int) -> bytes:
    chunk = fh.read(n)
    sha.update(chunk)
    return chunk


# ---------------------------------------------------------------- download


def check_listing(manifest: Manifest, listing: list[ObjectInfo], where: str) -> None:
    """The bucket must hold exactly the manifest's files with the manifest's sizes (and may hold
    empty objects besides: obstore lists an empty folder's `dir/` object as `dir`)."""
    found = {o.key: o for o in listing}
    for f in manifest.files:
        o = found.pop(f.path, None)
        if o is None:
            raise IntegrityError(f"{f.path}: missing from {where}")
        if o.size != f.size:
            raise IntegrityError(f"{f.path}: size in {where} is {o.size}, manifest says {f.size}")
    if found := {k: o for k, o in found.items() if o.size}:
        extra = sorted(found)[0]
        raise IntegrityError(f"{extra}: in {where} but not in the artifact's manifest")


async def download(
    storage: Storage,
    prefix: str,
    manifest: Manifest,
    dest: Path,
    opts: Options,
    *,
    trusted: Set[str] = frozenset(),
    done: set[str] | None = None,
    skip_existing: bool = False,
) -> Stats:
    """Bring every manifest file into dest, verified; files already there and equal are kept.

    trusted: paths already verified in dest (not hashed again). done: filled with the paths
    this call wrote. skip_existing: leave any file already in dest alone, and leave the summary
    line to the caller (a speculative pass, which may yet be discarded).
    """
    progress = _Tracker("downloaded", len(manifest.files), manifest.total_size, opts, summary=not skip_existing)
    lanes = _Lanes(min(RANGES_IN_FLIGHT, opts.concurrency))
    verify = manifest.verified
    present = await asyncio.to_thread(_prepare_dest, dest, [f.path for f in manifest.files])

    async def one(f: FileEntry) -> None:
        final = dest / f.path
        if f.path in trusted:
            progress.file_done(f.size, skipped=True)
            return
        if f.path in present:
            if skip_existing:
                return
            if await asyncio.to_thread(_local_matches, final, f, verify):
                progress.file_done(f.size, skipped=True)
                return
        key = key_under(prefix, f.path)

        async def get() -> None:
            if f.size > SMALL_FILE:
                await _get_ranges(storage, key, final, f, progress, verify, lanes, opts.attempts)
            else:
                data = await _fetch(storage, key, f)
                if f.size <= INLINE_WRITE:  # a thread hop costs more than writing a small file
                    _land(final, data, f, verify)
                else:
                    await asyncio.to_thread(_land, final, data, f, verify)
                progress.advance(len(data))

        await with_retries(get, f"download of {f.path}", opts.attempts)
        if done is not None:
            done.add(f.path)
        progress.file_done(f.size)

    try:
        with progress, storage.explained():  # a missing bucket or refused credentials: one line naming the bucket
            await bounded_map(one, manifest.files, opts.concurrency)
    finally:
        lanes.close()
    return progress.stats


def _prepare_dest(dest: Path, paths: list[str]) -> set[str]:
    """Make every folder the files need (once each, never through a link that leaves dest) and
    return the paths that already exist there (usually none: then nothing is hashed)."""
    dest.mkdir(parents=True, exist_ok=True)
    fresh = not any(os.scandir(dest))
    real = os.path.realpath(dest)
    for folder in sorted({p.rpartition("/")[0] for p in paths if "/" in safe_relpath(p)}):
        target = dest / folder
        if not os.path.realpath(target).startswith(real + os.sep):  # checked before anything is made
            raise IntegrityError(f"{folder}: leads outside the destination folder")
        try:
            target.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise WaBucketError(
                f"{e.filename}: a file is in the way of the folder {folder}/ that the artifact needs"
            ) from e
    return set() if fresh else _scan_dest(dest, paths)


def _scan_dest(dest: Path, paths: list[str]) -> set[str]:
    """One listing per folder: the paths already there, and the part files a killed run (SIGKILL, a
    preempted job) left beside them deleted (every try writes a part file of its own: none is reused)."""
    names: dict[str, set[str]] = {}
    for p in paths:
        folder, _, name = p.rpartition("/")
        names.setdefault(folder, set()).add(name)
    present = set()
    for folder, wanted in names.items():
        try:
            entries = list(os.scandir(dest / folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name in wanted:
                present.add(f"{folder}/{entry.name}" if folder else entry.name)
            elif (
                (m := _PART_NAME.fullmatch(entry.name))
                and m.group(1) in {_part_stem(n) for n in wanted}
                and entry.is_file(follow_symlinks=False)
            ):
                os.unlink(entry.path)
    return present


def _local_matches(path: Path, f: FileEntry, verify: bool) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != f.size:
            return False
    except OSError:
        return False
    return not verify or _hash_local(path, 1 << 62)[0] == f.sha256


def _part_stem(name: str) -> str:
    """A part file's name before its random tag: the file's name, or a digest of a name too long to
    extend (a file name has at most 255 bytes)."""
    raw = os.fsencode(name)
    return name if len(raw) <= 200 else "~" + hashlib.sha256(raw).hexdigest()[:40]


def _open_part(final: Path) -> tuple[Path, int]:
    """A new part file beside `final` (`.NAME.XXXXXXXX.wabucket-part`), open for writing."""
    tmp = final.with_name(f".{_part_stem(final.name)}.{os.urandom(4).hex()}{PART_SUFFIX}")
    return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)


async def _fetch(storage: Storage, key: str, f: FileEntry) -> Any:
    """The whole object as a buffer (hashed and written without a copy)."""
    try:
        return await storage.get(key, f.size)
    except FileNotFoundError as e:
        raise IntegrityError(f"{f.path}: missing from the bucket") from e


def _check(f: FileEntry, size: int, sha: str, verify: bool) -> None:
    if size != f.size:
        raise IntegrityError(f"{f.path}: got {size} bytes from the bucket, manifest says {f.size}")
    if verify and sha != f.sha256:
        raise IntegrityError(f"{f.path}: content in the bucket does not match the manifest (sha256 differs)")


def _land(final: Path, data: Any, f: FileEntry, verify: bool) -> None:
    """Check a small file's bytes, then write them under a temporary name and move it into place.

    Plain os calls: this runs once per file, and a buffered file object costs more than the write.
    """
    _check(f, len(data), hashlib.sha256(data).hexdigest(), verify)
    tmp, fd = _open_part(final)
    try:
        try:
            _pwrite_all(fd, data, 0)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    """pwrite may write less than asked (a disk filling up): write the rest, or raise its error."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _Lanes:
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


class _InOrderHash:
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


class _Stopped(WaBucketError):
    """Another range of the file failed, or the download was cancelled (not retried)."""


def _stream_range(
    storage: Storage,
    key: str,
    f: FileEntry,
    start: int,
    end: int,
    hashing: _InOrderHash,
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
                raise _Stopped
            if offset + len(chunk) > end:
                break
            _pwrite_all(hashing.fd, chunk, offset)
            hashing.wrote(start, offset, chunk)
            offset += len(chunk)
            advance(len(chunk))
    if offset != end:
        raise IntegrityError(f"{f.path}: the bucket returned a wrong length for bytes {start}-{end}")
    hashing.catch_up()


async def _get_ranges(
    storage: Storage,
    key: str,
    final: Path,
    f: FileEntry,
    progress: _Tracker,
    verify: bool,
    lanes: _Lanes,
    attempts: int,
) -> None:
    """A large file as ranged GETs streamed in parallel into its part file, hashed as it lands.

    Each range is retried on its own, from where it stopped. From a server that ignores ranges,
    the file comes whole, in one GET."""
    if storage.capabilities.ranged_gets:
        try:
            return await _get_parts(storage, key, final, f, progress, verify, lanes, attempts, whole=False)
        except RangesIgnored:
            pass  # the storage now knows: fetched whole from here on
    await _get_parts(storage, key, final, f, progress, verify, lanes, attempts, whole=True)


async def _get_parts(
    storage: Storage,
    key: str,
    final: Path,
    f: FileEntry,
    progress: _Tracker,
    verify: bool,
    lanes: _Lanes,
    attempts: int,
    *,
    whole: bool,
) -> None:
    part = f.size if whole else max(storage.part_size(f.size), RANGE_SIZE)
    starts = list(range(0, f.size, part))
    tmp, fd = _open_part(final)
    hashing = _InOrderHash(fd, starts)
    stop = threading.Event()
    advance = _advancer(progress)

    async def fetch(index: int, start: int) -> None:
        await lanes.acquire(index)
        try:
            end = min(start + part, f.size)
            await with_retries(
                lambda: _in_thread(
                    lanes.threads, stop, _stream_range, storage, key, f, start, end, hashing, advance, stop, whole
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
            await _wait_out(tasks)  # each waits for its thread (_in_thread)
            raise
        _check(f, hashing.hashed_to, hashing.sha.hexdigest(), verify)
        os.close(fd)
        fd = -1
        os.replace(tmp, final)
    finally:
        if fd >= 0:
            os.close(fd)
        if fd >= 0 or os.path.lexists(tmp):
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- hashing what is in a bucket


async def hash_remote(
    storage: Storage, prefix: str, listing: list[ObjectInfo], opts: Options, verb: str
) -> tuple[Manifest, Stats]:
    """A manifest of objects already in the bucket (for link and verify): every byte is read once."""
    progress = _Tracker(verb, len(listing), sum(o.size for o in listing), opts)

    async def one(o: ObjectInfo) -> FileEntry:
        safe_relpath(o.key)

        async def read() -> tuple[str, int]:
            return await _remote_sha256(storage, key_under(prefix, o.key), o.size, progress)

        try:
            sha, size = await with_retries(read, f"reading {o.key}", opts.attempts)
        except FileNotFoundError as e:
            raise NotFoundError(f"{o.key}: vanished from the bucket while reading it") from e
        progress.file_done(size)
        return FileEntry(o.key, size, sha)

    with progress, storage.explained():  # a missing bucket or refused credentials: one line naming the bucket
        entries = await bounded_map(one, listing, opts.concurrency)
    return Manifest(entries), progress.stats
