"""download: resolve NAME:ALIAS and bring its files into a folder, each verified.

1. prepare the destination: made if missing, one download at a time, cleaned up on failure
2. resolve the version: W&B (recorded as the run's input) or, offline, the bucket's records;
   online, the copy the bucket's record names is fetched meanwhile (the prefetch), and kept
   only if W&B's manifest has the same content
3. plan: the manifest's shards that the selection (--include/--exclude) needs, fetched and
   checked; the files selected, counted
4. fetch what the destination lacks (or --reuse folders hold) from where the version's data is,
   verified (transfer.py), while one listing of the bucket checks it holds the version
5. files W&B itself stores for the version
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .. import tracking, transfer
from ..errors import IntegrityError, NotFoundError, UsageError
from ..landing import Reuse
from ..layout import ArtifactKeys
from ..listing import Listing
from ..manifest import NO_HASH, FileEntry, Manifest, Selection, merge_join, safe_relpath, write_manifest
from ..records import fetch_manifest, read_record
from ..runtime import Context
from ..storage import ObjectInfo, Storage
from ..threads import in_thread, together
from .resolve import locate, manifest_of, resolve_offline

log = logging.getLogger("wabucketref")
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """Which of the version's files come, and where else they may be found."""

    selection: Selection = transfer.EVERYTHING
    reuse: Reuse | None = None

    @property
    def partial(self) -> bool:
        return self.selection.partial


def download(
    ctx: Context,
    qualified_name: str,
    name: str,
    type_: str,
    alias: str,
    dest: Path | None,
    run_config: Any,
    plan: Plan = Plan(),
) -> Path:
    """Returns the folder the files are in (a new temporary folder if `dest` is None)."""
    folder = dest if dest is not None else Path(tempfile.mkdtemp(prefix=f"wabucket-{name}-"))
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"destination is not a folder: {folder}")
    created = _first_missing(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission
        raise UsageError(f"cannot create the destination folder {folder}: {e.strerror or e}") from e
    with _one_download_into(folder):
        try:
            if tracking.is_offline():
                resolved, storage, key = resolve_offline(ctx, name, type_, alias)
                ctx.while_run_starts(_fetch(ctx, storage, key, resolved, folder, plan), "download", run_config)
            else:
                _download_online(ctx, qualified_name, name, type_, alias, folder, run_config, plan)
        except BaseException:
            if dest is None:  # its name was never given out: nothing could resume into it
                shutil.rmtree(folder, ignore_errors=True)
            else:
                _remove_empty_folders(folder, created)
            raise
        finally:
            if plan.reuse is not None:
                plan.reuse.close()
    return folder


def plan(ctx: Context, qualified_name: str, name: str, type_: str, alias: str, plan: Plan) -> dict[str, Any]:
    """What a download would bring (--dry-run): the version resolved without recording a use,
    its selection counted from the manifest's shards it needs; nothing moves."""
    if tracking.is_offline():
        resolved = resolve_offline(ctx, name, type_, alias)[0]
    else:
        tracking.preflight()
        resolved = tracking.fetch_artifact(
            ctx.project, ctx.entity, name=qualified_name, type=type_, alias=alias, scratch=ctx.scratch("wandb")
        )
    manifest = ctx.run(manifest_of(ctx, resolved, plan.selection))
    if manifest is None:
        raise UsageError(f"{qualified_name}:{alias} has no content manifest: a dry run cannot say what it holds")
    wanted = ctx.run(in_thread(transfer.Wanted.of, manifest, plan.selection))
    return {
        "version": resolved.version,
        "files": wanted.files,
        "bytes": wanted.bytes,
        "of_files": manifest.file_count,
        "of_bytes": manifest.total_size,
    }


class Landed:
    """The paths a pass wrote into the destination, in a file on local disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def add(self, path: str) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by remove_from
        self._file.write(path + "\n")

    def remove_from(self, root: Path) -> None:
        """Remove those files from root, and the folders they leave empty (up to root)."""
        if self._file is None:
            return
        self._file.close()
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                _remove_file(root, line.rstrip("\n"))


@dataclass
class _Prefetch:
    """A download started from the bucket's record before W&B has answered."""

    landed: Landed
    digest: str | None = None  # of the manifest it follows, once known
    manifest: Manifest | None = None
    task: asyncio.Task[Any] | None = None
    stats: transfer.Stats | None = None  # once it completed
    notes: list[str] = field(default_factory=list)


def _download_online(
    ctx: Context, qualified_name: str, name: str, type_: str, alias: str, dest: Path, run_config: Any, plan: Plan
) -> None:
    tracking.preflight()  # W&B must answer before anything lands in dest
    pre = _Prefetch(Landed(ctx.scratch("landed") / "paths"))
    prefetch = ctx.io.submit(_prefetch(ctx, name, type_, alias, dest, pre, plan))
    try:
        run = ctx.start_run("download", run_config)
        resolved = tracking.use_artifact(
            run,
            name=qualified_name,
            type=type_,
            alias=alias,
            scratch=ctx.scratch("wandb"),
            project=ctx.lookup_project,
            entity=ctx.entity,
        )
    except BaseException:
        _stop_prefetch(ctx, prefetch, pre)
        pre.landed.remove_from(dest)  # W&B did not confirm what the prefetch brought
        raise
    stored = resolved.stored
    manifest: Manifest | None = None
    if stored is not None and pre.digest == stored.index.digest:
        ctx.io.wait(prefetch)
        manifest = pre.manifest
        complete = pre.stats is not None and not pre.stats.left
        if complete and pre.stats is not None and not ctx.options.quiet:  # its summary waited for W&B's word
            log.info(pre.stats.summary())
    else:
        _stop_prefetch(ctx, prefetch, pre)
        pre.landed.remove_from(dest)  # another version's files, or unchecked ones
        complete = False
    if resolved.ref is None and resolved.has_files:
        if plan.partial or plan.reuse is not None:
            raise UsageError(
                f"{qualified_name}:{alias} is stored in W&B itself (--no-reff): "
                "--include, --exclude and --reuse apply to versions kept in a bucket"
            )
        tracking.download_files(resolved, dest)
        return
    if not complete:
        storage, key = locate(ctx, resolved, alias)
        manifest = ctx.run(_fetch(ctx, storage, key, resolved, dest, plan))
    if resolved.has_files:  # files added to this version in W&B itself (a draft of it, `add_file`)
        tracking.download_stored_files(resolved, dest, manifest, plan.selection.matches)


async def _prefetch(ctx: Context, name: str, type_: str, alias: str, dest: Path, pre: _Prefetch, plan: Plan) -> None:
    pre.task = asyncio.current_task()
    try:
        storage, base = await ctx.buckets.open(ctx.bucket)
        artifact = ArtifactKeys(base, type_, name)
        found = await read_record(storage, artifact, alias, ctx.scratch("record"))
        if found is None or found.record is None:
            return
        pre.digest = found.stored.index.digest
        shards = plan.selection.shards(found.stored.index)
        manifest = await fetch_manifest(
            storage, artifact.shards(pre.digest), found.stored, ctx.scratch("shards"), shards
        )
        pre.manifest = manifest
        wanted = await in_thread(transfer.Wanted.of, manifest, plan.selection)
        # The listing of a big folder takes as long as fetching much of it: both at once. Every
        # file is checked against the manifest as it lands.
        root = found.record.root
        pre.stats = await _checked_download(
            ctx, storage, root, wanted, dest, plan, speculative=True, landed=pre.landed.add
        )
    except asyncio.CancelledError:
        raise
    except Exception as e:  # the confirmed pass reports real problems
        log.debug("prefetch from the bucket's record stopped: %s", e)


def _stop_prefetch(ctx: Context, prefetch: concurrent.futures.Future[None], pre: _Prefetch) -> None:
    async def cancel() -> None:
        if pre.task is not None:
            pre.task.cancel()
            await asyncio.gather(pre.task, return_exceptions=True)

    prefetch.cancel()
    ctx.run(cancel())


async def _fetch(
    ctx: Context, storage: Storage, key: str, resolved: tracking.Resolved, dest: Path, plan: Plan
) -> Manifest:
    """Bring the version's files into dest, verified, while one listing checks the bucket holds
    them; returns the manifest followed."""
    if not await storage.has_prefix(key):
        encoded = _sdk_encoded(key)
        if encoded != key and await storage.has_prefix(encoded):
            key = encoded
    manifest = await manifest_of(ctx, resolved, plan.selection)
    if manifest is None:
        manifest = await _unverified(ctx, storage, key)
    elif resolved.s3_etags is not None:  # W&B's own s3:// references: the objects they name
        manifest = await _named_objects(ctx, storage, key, manifest, resolved.s3_etags)
    elif not manifest.file_count:
        pass
    elif not await storage.has_prefix(key):
        raise NotFoundError(f"no data at {storage.uri_for(key)}")
    wanted = await in_thread(transfer.Wanted.of, manifest, plan.selection)
    await _checked_download(ctx, storage, key, wanted, dest, plan)
    return manifest


async def _checked_download(
    ctx: Context,
    storage: Storage,
    key: str,
    wanted: transfer.Wanted,
    dest: Path,
    plan: Plan,
    *,
    speculative: bool = False,
    landed: Any = None,
) -> transfer.Stats:
    """The transfer, and beside it, for a whole verified version, one listing of its folder."""
    fetch = transfer.download(
        storage, key, wanted, dest, ctx.options, speculative=speculative, reuse=plan.reuse, landed=landed
    )
    if plan.partial or not wanted.manifest.verified:
        return await fetch
    check = transfer.check_listing(storage, key, wanted.manifest, ctx.scratch("listing"))
    return (await together(fetch, check))[0]


async def _unverified(ctx: Context, storage: Storage, key: str) -> Manifest:
    """An older tool's version without a manifest: its files as the bucket lists them (sizes,
    no sha256), with a warning."""
    scratch = ctx.scratch("unverified")
    listing = await Listing.of(storage, key, scratch)
    try:
        where = storage.uri_for(key)
        if not listing.count:
            raise NotFoundError(f"no data at {where}")
        log.warning("%s has no content manifest (written by an older tool): files are not verified", where)
        listing.delete([o.key for o in await storage.folder_markers(key, listing.empty())])
        entries = (FileEntry(safe_relpath(o.key), o.size, NO_HASH) for o in listing.sorted())
        unverified = functools.partial(write_manifest, verified=False, source=where)
        return await in_thread(unverified, scratch / "manifest", entries)
    finally:
        listing.close()


async def _named_objects(
    ctx: Context, storage: Storage, key: str, manifest: Manifest, recorded: dict[str, str]
) -> Manifest:
    """W&B's s3:// references leave out empty objects: the ones in the folder are added; objects
    added since are not the version's. The objects W&B recorded by ETag must still have it (the
    content of such a version has no sha256)."""
    scratch = ctx.scratch("named")
    listing = await Listing.of(storage, key, scratch)
    try:
        where = storage.uri_for(key)
        pairs = await in_thread(lambda: list(_unknown_empty(manifest, listing.sorted(), recorded, where)))
        markers = {o.key for o in await storage.folder_markers(key, pairs)} if pairs else set()
        added = (FileEntry(safe_relpath(o.key), 0, NO_HASH) for o in pairs if o.key not in markers)
        entries = _chain(iter(manifest), added)
        unverified = functools.partial(write_manifest, verified=False, source=where)
        return await in_thread(unverified, scratch / "manifest", entries)
    finally:
        listing.close()


def _unknown_empty(
    manifest: Manifest, listed: Iterator[ObjectInfo], recorded: dict[str, str], where: str
) -> Iterator[ObjectInfo]:
    """The empty objects of the folder the manifest does not name; an object named whose ETag
    differs from what W&B recorded is refused."""
    for f, o in merge_join(manifest, listed):
        if f is None and o is not None and o.size == 0:
            yield o
        elif f is not None and o is not None:
            want = recorded.get(o.key)
            if want and o.etag and o.etag.strip('"') != want:
                raise IntegrityError(f"{o.key}: changed in {where} since W&B recorded it (its ETag differs)")


def _chain(*its: Iterator[FileEntry]) -> Iterator[FileEntry]:
    for it in its:
        yield from it


def _sdk_encoded(key: str) -> str:
    """The key that apolo_sdk stored for a prefix built as `bucket.uri / key` (percent-encoded)."""
    from yarl import URL

    return URL.build(path="/" + key).raw_path.lstrip("/")


# ---------------------------------------------------------------- the destination folder


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what mkdir(parents=True) creates)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


@contextlib.contextmanager
def _one_download_into(dest: Path) -> Iterator[None]:
    """Downloads into one folder take turns (a lock on the folder itself, none where locks cannot be
    had): each removes the part files it finds there as a killed run's leftovers."""
    try:
        import fcntl

        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another download into %s to end", dest)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks
            pass
        yield
    finally:
        os.close(fd)


def _remove_file(root: Path, rel: str) -> None:
    """Remove a file under root, and the folders it leaves empty (up to root)."""
    (root / rel).unlink(missing_ok=True)
    for parent in (root / rel).parents:
        if parent == root or not _remove_empty(parent):
            break


def _remove_empty_folders(dest: Path, created: Path | None) -> None:
    """dest was made by this call (`created`: the outermost folder made for it): remove the folders
    in it left empty, then dest and its new parents while empty. Verified files stay, for a resume."""
    if created is None:
        return
    for folder, _, _ in os.walk(dest, topdown=False):
        _remove_empty(Path(folder))
    for p in [dest, *dest.parents]:
        if (p.exists() and not _remove_empty(p)) or p == created:
            break


def _remove_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
        return True
    except OSError:  # not empty, or already gone
        return False
