"""The transfer engine, shared by upload, download, link and verify on every backend.

A transfer is "what the destination lacks": the plan compares the source with one listing of
the destination (sizes, then hashes), so rerunning an interrupted command moves only what is
missing or different. Files move with bounded concurrency; bytes are hashed while they stream;
every file is retried with backoff; a download lands under a temporary name and is moved into
place only after its size and sha256 matched the manifest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import IntegrityError, NotFoundError, TransferError, WaBucketError
from .hashcache import HashCache
from .landing import Reuse, hash_local, land, local_matches, prepare_dest
from .manifest import NO_HASH, FileEntry, LocalFile, Manifest, safe_relpath
from .progress import ProgressCallback, Stats
from .ranges import RANGES_IN_FLIGHT, Lanes, Stopped, get_ranges, in_thread
from .retry import ATTEMPTS, with_retries
from .storage import CopiesRefused, ObjectInfo, Storage, key_under

log = logging.getLogger("wabucketref")

DEFAULT_CONCURRENCY = 32
SMALL_FILE = 4 << 20  # sent or fetched in one request; larger files move in parts
INLINE_WRITE = 256 << 10
LARGE_UPLOADS_IN_FLIGHT = 2  # each buffers up to UPLOAD_PARTS_PER_FILE parts in obstore
UPLOAD_PARTS_PER_FILE = 3

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Options:
    """How a command moves bytes: passed to every transfer (never changed on a shared object)."""

    concurrency: int = DEFAULT_CONCURRENCY
    quiet: bool = False  # no summary line
    attempts: int = ATTEMPTS
    progress: ProgressCallback = field(default_factory=ProgressCallback)
    hashes: HashCache = field(default_factory=lambda: HashCache(None))  # local files' hashes, kept between commands


class _Tracker:
    """Counts what one transfer did (Stats), tells the progress callback, logs the summary line
    of a transfer that completed, and writes the local hashes it learned."""

    def __init__(self, verb: str, files: int, total_bytes: int, opts: Options, summary: bool = True):
        self.stats = Stats(verb)
        self.files = files
        self.callback = opts.progress
        self.hashes = opts.hashes
        self.summary = summary and not opts.quiet
        self.callback.start(verb, files, total_bytes)

    def advance(self, nbytes: int) -> None:
        self.callback.advance(nbytes)

    def file_done(self, size: int, skipped: bool = False, reused: bool = False, copied: bool = False) -> None:
        if reused:
            self.stats.reused_files += 1
            self.stats.reused_bytes += size
            self.callback.advance(size)
        elif skipped:
            self.stats.skipped_files += 1
            self.stats.skipped_bytes += size
            self.callback.advance(size)
        elif copied:
            self.stats.copied_files += 1
            self.stats.copied_bytes += size
            self.callback.advance(size)
        else:
            self.stats.files += 1
            self.stats.bytes += size
        done = self.stats.files + self.stats.skipped_files + self.stats.reused_files + self.stats.copied_files
        self.callback.file_done(done, self.files)

    def __enter__(self) -> _Tracker:
        return self

    def __exit__(self, failure: type | None, *_: object) -> None:
        self.stats.ended = time.monotonic()
        self.callback.close()
        self.hashes.flush()
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


async def _remote_sha256(storage: Storage, key: str, size: int, progress: _Tracker | None = None) -> tuple[str, int]:
    """sha256 and size of an object in the bucket: a small one read whole, a large one streamed in a
    thread and hashed chunk by chunk while in cache (as large downloads are, see Lanes)."""
    advance = _advancer(progress)
    if size <= SMALL_FILE:
        data = await storage.get(key)
        advance(len(data))
        return hashlib.sha256(data).hexdigest(), len(data)
    stop = threading.Event()
    return await in_thread(None, stop, _hash_stream, storage, key, advance, stop)


def _hash_stream(storage: Storage, key: str, advance: Callable[[int], None], stop: threading.Event) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    for chunk in storage.stream(key):
        if stop.is_set():
            raise Stopped
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


@dataclass(frozen=True)
class CopySource:
    """An object of the base version with a local file's content: copied inside the bucket
    instead of sent (an incremental upload)."""

    key: str  # the object's key in the bucket
    info: ObjectInfo  # as the base's listing showed it (size, ETag)
    sha256: str  # of the local file (equal to the base manifest's)
    md5s: Sequence[bytes] | None  # of the local file's parts, to compare ETags (None: its hash was remembered)


def _hash_part(storage: Storage, size: int) -> int:
    """The part size the ETag of an object of `size` bytes was computed over (as uploads write it)."""
    return storage.part_size(size) if size > SMALL_FILE else size + 1


class BaseVersion:
    """The files of the version an incremental upload copies from, by content: its manifest, and
    the data under `root` as `listing` shows it. A base object is used only if it is still there
    with its manifest's size and, where the server's ETags describe content and the local file
    was read, with the local file's content."""

    def __init__(self, storage: Storage, manifest: Manifest, root: str, listing: list[ObjectInfo]) -> None:
        self.storage = storage
        listed = {o.key: o for o in listing}
        self._by_content: dict[tuple[str, int], tuple[str, ObjectInfo]] = {}
        for e in manifest.files:
            o = listed.get(e.path)
            if e.sha256 != NO_HASH and o is not None and o.size == e.size:
                self._by_content.setdefault((e.sha256, e.size), (key_under(root, e.path), o))
        self._sizes = {size for _, size in self._by_content}

    async def source_for(self, f: LocalFile, hashes: HashCache) -> CopySource | None:
        """The base's object with f's content, if any. Only files of a size the base has are
        hashed (in a thread), and only if their hash is not remembered (hashcache.py)."""
        if f.size not in self._sizes:
            return None
        known = hashes.known(f.abspath)  # here: a thread hop costs more than the lookup
        if known is not None:
            sha, md5s = known, None
        else:
            part = _hash_part(self.storage, f.size)
            sha, md5s = await asyncio.to_thread(hashes.hashed, f.abspath, lambda p: hash_local(p, part))
        found = self._by_content.get((sha, f.size))
        if found is None:
            return None
        key, o = found
        if self.storage.etag_matches(o, md5s) is False:  # the base's object is not what its manifest says
            log.warning("%s: the base version's copy differs from its manifest; sending the file", f.path)
            return None
        return CopySource(key, o, sha, md5s)


def copy_checks_out(storage: Storage, copy: ObjectInfo | None, source: CopySource, size: int) -> bool:
    """Is an object copied from `source` whole? Its size must be the file's; its ETag must be the
    source's (a server that keeps ETags on copy: the source was checked before copying) or
    describe the local file's content. Where the server's ETags say nothing of content (Azure, a
    folder: there a copy is a hard link) or the local file was not read (its hash was
    remembered), the size is what can be checked: the manifest's sha256 is the local file's, and
    every download and `verify` checks the object against it."""
    if copy is None or copy.size != size:
        return False
    if copy.etag and copy.etag == source.info.etag:
        return True
    return storage.etag_matches(copy, source.md5s) is not False


async def upload(
    storage: Storage,
    prefix: str,
    files: list[LocalFile],
    existing: dict[str, ObjectInfo],
    opts: Options,
    base: BaseVersion | None = None,
) -> tuple[Manifest, Stats]:
    """Put `files` under `prefix`, skipping those the destination already holds byte for byte;
    those whose content the `base` version has are copied inside the bucket (then checked)
    instead of sent, where the server copies."""
    progress = _Tracker("uploaded", len(files), sum(f.size for f in files), opts)
    large = asyncio.Semaphore(LARGE_UPLOADS_IN_FLIGHT)
    copied: dict[str, tuple[LocalFile, CopySource]] = {}

    async def send(f: LocalFile) -> FileEntry:
        key = key_under(prefix, f.path)

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

        before, started = os.stat(f.abspath), time.time_ns()
        sha = await with_retries(put, f"upload of {f.path}", opts.attempts)
        opts.hashes.remember(f.abspath, sha, before, started)
        progress.file_done(f.size)
        return FileEntry(f.path, f.size, sha)

    async def one(f: LocalFile) -> FileEntry:
        key = key_under(prefix, f.path)
        info = existing.get(f.path)
        source = await base.source_for(f, opts.hashes) if base is not None else None
        if info is not None and info.size == f.size:
            if source is not None:
                sha, md5s = source.sha256, source.md5s
            else:
                sha, md5s = await asyncio.to_thread(hash_local, f.abspath, _hash_part(storage, f.size))
            same = storage.etag_matches(info, md5s)
            if same is None and source is not None:
                # copied by an earlier, interrupted try (a folder's hard link keeps the ETag); else
                # copying again is cheaper than reading the object back
                same = bool(info.etag) and info.etag == source.info.etag
            elif same is None:
                same = (await _remote_sha256(storage, key, info.size))[0] == sha
            if same:
                progress.file_done(f.size, skipped=True)
                return FileEntry(f.path, f.size, sha)
        if source is not None and storage.capabilities.copies:
            try:
                await with_retries(lambda: storage.copy(source.key, key), f"copy of {f.path}", opts.attempts)
            except CopiesRefused:
                pass  # storage warned once; the bytes are sent
            except TransferError as e:  # a copy is not retried (see ObjectStoreStorage.copy)
                log.warning("copy of %s failed (%s); sending the file", f.path, e)
            except FileNotFoundError:
                log.warning("%s: gone from the base version while copying; sending the file", f.path)
            else:
                copied[f.path] = f, source
                progress.file_done(f.size, copied=True)
                return FileEntry(f.path, f.size, source.sha256)
        return await send(f)

    with progress, storage.explained():  # a missing bucket or refused credentials: one line naming the bucket
        entries = await bounded_map(one, files, opts.concurrency)
        if copied:
            entries = await _check_copies(storage, prefix, entries, copied, progress, send, opts)
    return Manifest(entries), progress.stats


async def _check_copies(
    storage: Storage,
    prefix: str,
    entries: list[FileEntry],
    copied: dict[str, tuple[LocalFile, CopySource]],
    progress: _Tracker,
    send: Callable[[LocalFile], Awaitable[FileEntry]],
    opts: Options,
) -> list[FileEntry]:
    """One listing of the alias's folder checks every copied object (copy_checks_out); those that
    do not check out are sent from here."""
    listed = {o.key: o for o in await storage.list_objects(prefix)}
    bad = [f for path, (f, source) in copied.items() if not copy_checks_out(storage, listed.get(path), source, f.size)]
    if not bad:
        return entries
    log.warning("%d copied object(s) did not check out (first: %s); sending them from here", len(bad), bad[0].path)
    for f in bad:
        progress.stats.copied_files -= 1
        progress.stats.copied_bytes -= f.size
    resent = {e.path: e for e in await bounded_map(send, bad, opts.concurrency)}
    return [resent.get(e.path, e) for e in entries]


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
    reuse: Reuse | None = None,
    of_files: int | None = None,
    carried: Stats | None = None,
) -> Stats:
    """Bring every manifest file into dest, verified; files already there and equal are kept.

    trusted: paths already verified in dest (not hashed again). done: filled with the paths
    this call wrote. skip_existing: leave any file already in dest alone, and leave the summary
    line to the caller (a speculative pass, which may yet be discarded). reuse: folders whose
    files of the same size and sha256 are taken instead of fetched. of_files: the version's
    file count, when `manifest` is a selection of its files (said in the summary). carried:
    what an earlier pass of this command did (its files are the trusted ones): the summary
    counts on from it.
    """
    progress = _Tracker("downloaded", len(manifest.files), manifest.total_size, opts, summary=not skip_existing)
    progress.stats.of_files = of_files
    if carried is not None:
        progress.stats = dataclasses.replace(carried, ended=None)
    lanes = Lanes(min(RANGES_IN_FLIGHT, opts.concurrency))
    verify = manifest.verified
    present = await asyncio.to_thread(prepare_dest, dest, [f.path for f in manifest.files])

    async def one(f: FileEntry) -> None:
        final = dest / f.path
        if f.path in trusted:
            if carried is None:
                progress.file_done(f.size, skipped=True)
            else:  # counted by the earlier pass
                progress.advance(f.size)
            return
        if f.path in present:
            if skip_existing:
                return
            if await asyncio.to_thread(local_matches, final, f, verify, opts.hashes):
                progress.file_done(f.size, skipped=True)
                return
        src = await reuse.find(f) if reuse is not None and verify else None
        if src is not None and reuse is not None and await _inline_if_small(f.size, reuse.place, src, final, f):
            if done is not None:
                done.add(f.path)
            progress.file_done(f.size, reused=True)
            return
        key = key_under(prefix, f.path)

        async def get() -> None:
            if f.size > SMALL_FILE:
                sha = await get_ranges(storage, key, final, f, _advancer(progress), verify, lanes, opts.attempts)
            else:
                data = await _fetch(storage, key, f)
                sha = await _inline_if_small(f.size, land, final, data, f, verify)
                progress.advance(len(data))
            opts.hashes.remember_now(final, sha)

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


async def _inline_if_small(size: int, fn: Callable[..., R], *args: Any) -> R:
    """fn(*args) on this thread for a small file (a thread hop costs more than linking or writing it)."""
    return fn(*args) if size <= INLINE_WRITE else await asyncio.to_thread(fn, *args)


async def _fetch(storage: Storage, key: str, f: FileEntry) -> Any:
    """The whole object as a buffer (hashed and written without a copy)."""
    try:
        return await storage.get(key, f.size)
    except FileNotFoundError as e:
        raise IntegrityError(f"{f.path}: missing from the bucket") from e


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
