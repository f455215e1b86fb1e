"""The transfer engine, shared by upload, download, link and verify on every backend.

A transfer is "what the destination lacks": files are compared with the destination (its
listing, on local disk, or the files already in a download's folder), so rerunning an
interrupted command moves only what is missing or different. Files stream through in path
order, pulled by a bounded number of workers: nothing holds every file. Bytes are hashed while
they stream; every file is retried with backoff; a download lands under a temporary name and is
moved into place only after its size and sha256 matched the manifest.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from .copies import SMALL_FILE, BaseFile, BaseVersion, CopyLog, CopySource, copy_checks_out, hash_part
from .errors import IntegrityError, NotFoundError, TransferError, WaBucketError
from .hashcache import HashCache
from .landing import Destination, Reuse, hash_local, land, local_matches
from .listing import Listing, mismatches
from .localtree import LocalFile, LocalTree, read_ahead
from .manifest import CaseFolds, FileEntry, Hashing, Manifest, ManifestWriter, Selection, hashed, safe_relpath
from .progress import ProgressCallback, Stats
from .ranges import RANGES_IN_FLIGHT, Lanes, Stopped, get_ranges
from .retry import ATTEMPTS, with_retries
from .storage import CopiesRefused, ObjectInfo, Storage, key_under
from .threads import in_thread, in_thread_unless_small, wait_out

log = logging.getLogger("wabucketref")

DEFAULT_CONCURRENCY = 32
LARGE_UPLOADS_IN_FLIGHT = 2  # each buffers up to UPLOAD_PARTS_PER_FILE parts in obstore
UPLOAD_PARTS_PER_FILE = 3
BATCH = 256  # items a worker thread produces at a time (a walk, a manifest being decoded)

EVERYTHING = Selection()
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
    """fn over a short list of items, at most `concurrency` at once; the results in order."""
    results: dict[int, R] = {}

    async def one(item: tuple[int, T]) -> None:
        results[item[0]] = await fn(item[1])

    await for_each(one, enumerate(items), concurrency)
    return [results[i] for i in range(len(results))]


async def for_each(
    fn: Callable[[T], Awaitable[Any]], items: Iterable[T] | AsyncIterable[Sequence[T]], concurrency: int
) -> None:
    """fn over items with at most `concurrency` in flight, pulled as workers free up (a million
    items cost a million calls, never a million pending tasks); after a failure no new one
    starts, and the first failure is raised once the running ones ended. An async iterable
    gives the items in batches (in_batches): a worker waits for the next batch, never for an item."""
    errors: list[BaseException] = []
    if isinstance(items, AsyncIterable):
        batches, turn, ready = aiter(items), asyncio.Lock(), collections.deque[T]()

        async def pull() -> tuple[bool, Any]:
            while not ready:
                async with turn:
                    if not ready:
                        batch = await anext(batches, None)
                        if batch is None:
                            return False, None
                        ready.extend(batch)
            return True, ready.popleft()
    else:
        it = iter(items)

        async def pull() -> tuple[bool, Any]:
            item = next(it, _END)
            return item is not _END, item

    async def worker() -> None:
        while not errors:
            more, item = await pull()
            if not more:
                return
            try:
                await fn(item)
            except Exception as e:
                errors.append(e)
                return

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    if errors:
        raise errors[0]


_END = object()


def batched(items: Iterator[T], size: int = BATCH) -> Iterator[list[T]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


async def in_batches(items: Iterator[T], size: int = BATCH) -> AsyncIterator[list[T]]:
    """The items of a blocking iterator (a folder walk, a manifest being decoded) in batches,
    each made in a worker thread while the one before is consumed."""
    batches = batched(items, size)

    def take() -> list[T]:
        return next(batches, [])

    ahead = asyncio.ensure_future(in_thread(take))
    try:
        while batch := await ahead:
            ahead = asyncio.ensure_future(in_thread(take))
            yield batch
    finally:
        ahead.cancel()  # the thread finishes its batch and is waited for: the iterator is free again
        await wait_out([ahead])


# ---------------------------------------------------------------- hashing helpers


async def _remote_entry(
    storage: Storage, key: str, path: str, size: int, progress: _Tracker | None = None
) -> FileEntry:
    """An object of the bucket as a manifest's entry (its size, sha256 and blake3): a small one
    read whole, a large one streamed in a thread and hashed chunk by chunk while in cache."""
    advance = _advancer(progress)
    if size <= SMALL_FILE:
        data = await storage.get(key, size)
        if len(data) > size:  # it grew since it was listed: what it holds now is hashed
            data = await storage.get(key)
        advance(len(data))
        return hashed(path, data)
    stop = threading.Event()
    h = await in_thread(_hash_stream, storage, key, advance, stop, Hashing(), stop=stop)
    return h.entry(path)


def _hash_stream(
    storage: Storage, key: str, advance: Callable[[int], None], stop: threading.Event, h: Hashing
) -> Hashing:
    for chunk in storage.stream(key):
        if stop.is_set():
            raise Stopped
        h.update(chunk)
        advance(len(chunk))
    return h


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
    storage: Storage,
    prefix: str,
    tree: LocalTree,
    existing: Listing,
    writer: ManifestWriter,
    scratch: Path,
    opts: Options,
    base: BaseVersion | None = None,
) -> Stats:
    """Put the tree's files under `prefix`, skipping those the destination already holds byte
    for byte; those whose content the `base` version has are copied inside the bucket (then
    checked) instead of sent, where the server copies. Each file's entry goes to `writer`."""
    progress = _Tracker("uploaded", tree.files, tree.bytes, opts)
    large = asyncio.Semaphore(LARGE_UPLOADS_IN_FLIGHT)
    copies = CopyLog(scratch)

    async def send(f: LocalFile) -> FileEntry:
        key = key_under(prefix, f.path)

        async def put() -> FileEntry:
            if f.size <= SMALL_FILE:
                data, entry = await in_thread_unless_small(f.size, _read_and_hash, f)
                if entry.size != f.size:
                    raise WaBucketError(f"file changed while uploading: {f.path}")
                await storage.put(key, data)
                progress.advance(len(data))
                return entry
            async with large:
                return await _put_streaming(storage, key, f, progress)

        before, started = os.stat(f.abspath), time.time_ns()
        entry = await with_retries(put, f"upload of {f.path}", opts.attempts)
        opts.hashes.remember(f.abspath, entry.sha256, before, started)
        progress.file_done(f.size)
        return entry

    linking = base is not None and storage.copies_are_links and not existing.count

    def ahead(files: Iterator[LocalFile]) -> Iterator[_Planned]:
        """Each file with its remembered sha256 (looked up a batch at a time) and the base's file at
        its path, the disk asked for those that will be read: in the walk's thread, a batch
        ahead of the workers."""
        for batch in batched(files):
            known: list[str | None] = [None] * len(batch)
            at: list[BaseFile | None] = [None] * len(batch)
            if base is not None:  # the hashes are for finding copies
                known = opts.hashes.known_all([f.stat or os.stat(f.abspath) for f in batch])
                at = [base.at(f.path) for f in batch]
            read_ahead(f.abspath for f, sha in zip(batch, known, strict=True) if sha is None and f.size <= SMALL_FILE)
            for f, sha, here in zip(batch, known, at, strict=True):
                linkable = base.source_at(f, sha, here) if linking and base is not None else None
                yield _Planned(f, sha, here, linkable)

    def link_all(batch: list[_Planned]) -> list[CopySource | None]:
        """The sources of the files hard-linked (a thread's work); None where a file was not."""
        return [
            p.linkable if p.linkable is not None and storage.link(p.linkable.key, key_under(prefix, p.f.path)) else None
            for p in batch
        ]

    async def linked_first(batches: AsyncIterator[list[_Planned]]) -> AsyncIterator[list[_Planned]]:
        """In a folder bucket, the files the base has at their own path are hard-linked a batch at
        a time in a thread (while the walk makes the next batch) and recorded here; the rest go
        on to the workers."""
        async for batch in batches:
            if not linking:
                yield batch
                continue
            rest = []
            for p, source in zip(batch, await in_thread(link_all, batch), strict=True):
                if source is None:
                    rest.append(p)
                    continue
                progress.file_done(p.f.size, copied=True)
                writer.add(FileEntry(p.f.path, p.f.size, source.sha256, source.blake3))
            if rest:
                yield rest

    async def one(item: _Planned) -> None:
        f, known = item.f, item.known
        key = key_under(prefix, f.path)
        info = existing.get(f.path) if existing.count else None
        source = await base.source_for(f, known, item.at, opts.hashes) if base is not None else None
        if info is not None and info.size == f.size:
            b3 = source.blake3 if source is not None else None
            if source is not None:
                sha, md5s = source.sha256, source.md5s
            else:
                both = Hashing()
                sha, md5s = await in_thread(hash_local, Path(f.abspath), hash_part(storage, f.size), both)
                b3 = both.b3.hexdigest()
            same = storage.etag_matches(info, md5s)
            if same is None and source is not None:
                # copied by an earlier, interrupted try (a folder's hard link keeps the ETag); else
                # copying again is cheaper than reading the object back
                same = bool(info.etag) and info.etag == source.etag
            elif same is None:
                same = (await _remote_entry(storage, key, f.path, info.size)).sha256 == sha
            if same:
                progress.file_done(f.size, skipped=True)
                writer.add(FileEntry(f.path, f.size, sha, b3))
                return
        if source is not None and await _copy(storage, source, key, f.path, opts.attempts):
            if not storage.copies_are_links:
                copies.add(f.path, f.abspath, f.size, source)
            progress.file_done(f.size, copied=True)
            writer.add(FileEntry(f.path, f.size, source.sha256, source.blake3))
            return
        writer.add(await send(f))

    try:
        with progress, storage.explained():  # a missing bucket or refused credentials: one line naming the bucket
            await for_each(one, linked_first(in_batches(ahead(tree.walk()))), opts.concurrency)
            if copies.count:
                await _check_copies(storage, prefix, copies, progress, send, scratch, opts)
    finally:
        copies.close()
    return progress.stats


class _Planned(NamedTuple):
    """A file an upload walked to, and what it knows of it before any await."""

    f: LocalFile
    known: str | None  # its remembered sha256
    at: BaseFile | None  # the base version's file at its path
    linkable: CopySource | None  # the base's object at its path, to hard-link (a folder bucket)


async def _copy(storage: Storage, source: CopySource, key: str, path: str, attempts: int) -> bool:
    """Copy a base object inside the bucket; False if the file must be sent instead."""
    if not storage.capabilities.copies:
        return False
    try:
        await with_retries(lambda: storage.copy(source.key, key), f"copy of {path}", attempts)
    except CopiesRefused:
        return False  # storage warned once; the bytes are sent
    except TransferError as e:  # a copy is not retried (see ObjectStoreStorage.copy)
        log.warning("copy of %s failed (%s); sending the file", path, e)
        return False
    except FileNotFoundError:
        log.warning("%s: gone from the base version while copying; sending the file", path)
        return False
    return True


async def _check_copies(
    storage: Storage,
    prefix: str,
    copies: CopyLog,
    progress: _Tracker,
    send: Callable[[LocalFile], Awaitable[FileEntry]],
    scratch: Path,
    opts: Options,
) -> None:
    """One listing of the alias's folder checks every copied object (copy_checks_out); those that
    do not check out are sent from here (with the content their entry already says)."""
    listing = await Listing.of(storage, prefix, scratch)
    try:
        bad = [c for c in copies if not copy_checks_out(storage, listing.get(c.path), c)]
    finally:
        listing.close()
    if not bad:
        return
    log.warning("%d copied object(s) did not check out (first: %s); sending them from here", len(bad), bad[0].path)
    for c in bad:
        progress.stats.copied_files -= 1
        progress.stats.copied_bytes -= c.size

    async def resend(c: Any) -> None:
        if (await send(LocalFile(c.path, c.abspath, c.size))).sha256 != c.sha256:
            raise WaBucketError(f"file changed while uploading: {c.path}")

    await for_each(resend, bad, opts.concurrency)


def _read_and_hash(f: LocalFile) -> tuple[bytes, FileEntry]:
    with open(f.abspath, "rb") as fh:
        data = fh.read()
    return data, hashed(f.path, data)


async def _put_streaming(storage: Storage, key: str, f: LocalFile, progress: _Tracker) -> FileEntry:
    """A multipart upload whose parts are hashed as they are read (parts of a known size, so a
    resume can compare the object's ETag)."""
    h = Hashing()
    part = storage.part_size(f.size)

    async def chunks() -> AsyncIterator[bytes]:
        with open(f.abspath, "rb") as fh:
            while chunk := await in_thread(_read_hashed, fh, h, part):
                progress.advance(len(chunk))
                yield chunk

    await storage.put_stream(key, chunks(), part, UPLOAD_PARTS_PER_FILE)
    if h.size != f.size:
        raise WaBucketError(f"file changed while uploading: {f.path}")
    return h.entry(f.path)


def _read_hashed(fh: Any, h: Hashing, n: int) -> bytes:
    chunk = fh.read(n)
    h.update(chunk)
    return chunk


# ---------------------------------------------------------------- download


@dataclass(frozen=True)
class Wanted:
    """The files a download brings: a manifest's entries that a selection takes, counted."""

    manifest: Manifest
    selection: Selection
    files: int
    bytes: int

    @classmethod
    def of(cls, manifest: Manifest, selection: Selection = EVERYTHING) -> Wanted:
        """Checked and counted, before anything lands: one pass over the manifest refuses two
        paths that would collide where case is ignored, and counts a selection (UsageError if
        a pattern matches nothing)."""
        folds = CaseFolds()
        for batch in manifest.batches(selection.shards(manifest.index)):
            for e in batch:
                folds.check(e.path)
        if not selection.partial:
            return cls(manifest, selection, manifest.file_count, manifest.total_size)
        return cls(manifest, selection, *selection.check(manifest))

    @property
    def of_files(self) -> int | None:
        """The version's file count, when only some of its files are wanted."""
        return self.manifest.file_count if self.selection.partial else None

    def entries(self) -> Iterator[FileEntry]:
        return self.selection.entries(self.manifest) if self.selection.partial else iter(self.manifest)


async def check_listing(storage: Storage, prefix: str, manifest: Manifest, scratch: Path) -> None:
    """The bucket must hold exactly the manifest's files with the manifest's sizes (and may hold
    empty objects besides, such as dir markers): one listing, on local disk, merged with the
    manifest in path order."""
    where = storage.uri_for(prefix)
    listing = await Listing.of(storage, prefix, scratch)
    try:
        await in_thread(compare_listing, manifest, listing, where)
    finally:
        listing.close()


def compare_listing(manifest: Manifest, listing: Listing, where: str) -> None:
    """IntegrityError naming the first file missing, of another size, or not in the manifest."""
    for f, o in mismatches(manifest, listing):
        if o is None:
            raise IntegrityError(f"{f.path if f else '?'}: missing from {where}")
        if f is None:
            raise IntegrityError(f"{o.key}: in {where} but not in the artifact's manifest")
        raise IntegrityError(f"{f.path}: size in {where} is {o.size}, manifest says {f.size}")


async def download(
    storage: Storage,
    prefix: str,
    wanted: Wanted,
    dest: Path,
    opts: Options,
    *,
    speculative: bool = False,
    reuse: Reuse | None = None,
    landed: Callable[[str], None] | None = None,
) -> Stats:
    """Bring the wanted files into dest, verified; files already there and equal are kept.

    speculative: a pass that may yet be discarded (the bucket's record, before W&B confirmed the
    version): a file already in dest that differs is left alone (counted in Stats.left) rather
    than replaced, and the summary line is left to the caller. reuse: folders whose files of the
    same size and sha256 are taken instead of fetched. landed: told the path of each file
    written.
    """
    progress = _Tracker("downloaded", wanted.files, wanted.bytes, opts, summary=not speculative)
    progress.stats.of_files = wanted.of_files
    lanes = Lanes(min(RANGES_IN_FLIGHT, opts.concurrency))
    verify = wanted.manifest.verified
    place = await in_thread(Destination, dest)

    def ahead(entries: Iterator[tuple[FileEntry, bool]]) -> Iterator[tuple[FileEntry, bool]]:
        """The entries, the bucket told which small objects come next (a batch ahead, in the walk's thread)."""
        for batch in batched(entries):
            storage.read_ahead(
                key_under(prefix, f.path) for f, present in batch if not present and f.size <= SMALL_FILE
            )
            yield from batch

    async def one(item: tuple[FileEntry, bool]) -> None:
        f, present = item
        final = dest / f.path
        if present:  # a file of that name is there already
            if await in_thread(local_matches, final, f, verify, opts.hashes):
                progress.file_done(f.size, skipped=True)
                return
            if speculative:
                progress.stats.left += 1
                return
        src = await reuse.find(f) if reuse is not None and verify else None
        if src is not None and reuse is not None and await in_thread_unless_small(f.size, reuse.place, src, final, f):
            if landed is not None:
                landed(f.path)
            progress.file_done(f.size, reused=True)
            return
        key = key_under(prefix, f.path)

        async def get() -> None:
            if f.size > SMALL_FILE:
                sha = await get_ranges(storage, key, final, f, _advancer(progress), verify, lanes, opts.attempts)
            else:
                data = await _fetch(storage, key, f)
                sha = await in_thread_unless_small(f.size, land, final, data, f, verify)
                progress.advance(len(data))
            opts.hashes.remember_now(final, sha)

        await with_retries(get, f"download of {f.path}", opts.attempts)
        if landed is not None:
            landed(f.path)
        progress.file_done(f.size)

    try:
        with progress, storage.explained():  # a missing bucket or refused credentials: one line naming the bucket
            await for_each(one, in_batches(ahead(place.checked(wanted.entries()))), opts.concurrency)
    finally:
        lanes.close()
    return progress.stats


async def _fetch(storage: Storage, key: str, f: FileEntry) -> Any:
    """The whole object as a buffer (hashed and written without a copy)."""
    try:
        return await storage.get(key, f.size)
    except FileNotFoundError as e:
        raise IntegrityError(f"{f.path}: missing from the bucket") from e


# ---------------------------------------------------------------- hashing what is in a bucket


async def hash_objects(
    storage: Storage,
    prefix: str,
    objects: Iterator[tuple[ObjectInfo, T]],
    count: tuple[int, int],
    opts: Options,
    verb: str,
    found: Callable[[FileEntry, T], None],
) -> Stats:
    """The digests of objects already in the bucket (for link and verify), each told to `found`
    with what came beside the object: every byte is read once. count: (objects, bytes)."""
    progress = _Tracker(verb, count[0], count[1], opts)

    def ahead(objects: Iterator[tuple[ObjectInfo, T]]) -> Iterator[tuple[ObjectInfo, T]]:
        for batch in batched(objects):
            storage.read_ahead(key_under(prefix, o.key) for o, _ in batch if o.size <= SMALL_FILE)
            yield from batch

    async def one(item: tuple[ObjectInfo, T]) -> None:
        o, beside = item
        safe_relpath(o.key)

        async def read() -> FileEntry:
            return await _remote_entry(storage, key_under(prefix, o.key), o.key, o.size, progress)

        try:
            entry = await with_retries(read, f"reading {o.key}", opts.attempts)
        except FileNotFoundError as e:
            raise NotFoundError(f"{o.key}: vanished from the bucket while reading it") from e
        progress.file_done(entry.size)
        found(entry, beside)

    with progress, storage.explained():  # a missing bucket or refused credentials: one line naming the bucket
        await for_each(one, in_batches(ahead(objects)), opts.concurrency)
    return progress.stats
