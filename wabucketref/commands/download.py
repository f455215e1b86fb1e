"""download: resolve NAME:ALIAS and bring its files into a folder, each verified.

1. prepare the destination: made if missing, one download at a time, cleaned up on failure
2. resolve the version: W&B (recorded as the run's input) or, offline, the bucket's records;
   online, the copy the bucket's record names is fetched meanwhile (the prefetch), and kept
   only if W&B's manifest has the same content
3. plan: the files selected (--include/--exclude), those --reuse folders hold already
4. fetch what the destination lacks from where the version's data is, verified (transfer.py)
5. files W&B itself stores for the version
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import tracking, transfer
from ..errors import IntegrityError, NotFoundError, UsageError
from ..landing import Reuse
from ..layout import ArtifactKeys
from ..manifest import NO_HASH, FileEntry, Manifest, check_unique, selected, sha256_file
from ..runtime import Context
from ..storage import ObjectInfo, Storage
from .resolve import bucket_record, locate, resolve_offline

log = logging.getLogger("wabucketref")


@dataclass(frozen=True)
class Plan:
    """Which of the version's files come, and where else they may be found."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    reuse: Reuse | None = None

    @property
    def partial(self) -> bool:
        return bool(self.include or self.exclude)

    def select(self, manifest: Manifest) -> Manifest:
        return manifest.select(self.include, self.exclude) if self.partial else manifest

    def of_files(self, manifest: Manifest) -> int | None:
        return len(manifest.files) if self.partial else None


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
                ctx.while_run_starts(_fetch(storage, key, resolved, folder, ctx.options, plan), "download", run_config)
            else:
                _download_online(ctx, qualified_name, name, type_, alias, folder, run_config, plan)
        except BaseException:
            if dest is None:  # its name was never given out: nothing could resume into it
                shutil.rmtree(folder, ignore_errors=True)
            else:
                _remove_empty_folders(folder, created)
            raise
    return folder


@dataclass
class _Prefetch:
    """A download started from the bucket's record before W&B has answered."""

    digest: str | None = None  # of the manifest it follows, once known
    done: set[str] = field(default_factory=set)  # paths written (verified) so far
    task: asyncio.Task[Any] | None = None
    stats: transfer.Stats | None = None  # once it completed


def _download_online(
    ctx: Context, qualified_name: str, name: str, type_: str, alias: str, dest: Path, run_config: Any, plan: Plan
) -> None:
    tracking.preflight()  # W&B must answer before anything lands in dest
    pre = _Prefetch()
    prefetch = ctx.io.submit(_prefetch(ctx, name, type_, alias, dest, pre, plan))
    try:
        run = ctx.start_run("download", run_config)
        resolved = tracking.use_artifact(
            run, name=qualified_name, type=type_, alias=alias, project=ctx.lookup_project, entity=ctx.entity
        )
    except BaseException:
        _stop_prefetch(ctx, prefetch, pre)
        _remove_files(dest, pre.done)  # W&B did not confirm what the prefetch brought
        raise
    manifest = resolved.manifest
    if manifest is not None and pre.digest == manifest.digest():
        ctx.io.wait(prefetch)
        complete = pre.done == {f.path for f in plan.select(manifest).files}
        if complete and pre.stats is not None and not ctx.options.quiet:  # its summary waited for W&B's word
            log.info(pre.stats.summary())
        trusted, carried = set(pre.done), pre.stats
    else:
        _stop_prefetch(ctx, prefetch, pre)
        complete, trusted, carried = False, _keep_matching(dest, pre.done, manifest), None
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
        ctx.run(_fetch(storage, key, resolved, dest, ctx.options, plan, trusted, carried))
    if resolved.has_files:  # files added to this version in W&B itself (a draft of it, `add_file`)
        tracking.download_stored_files(resolved, dest, lambda p: selected(p, plan.include, plan.exclude))


async def _prefetch(ctx: Context, name: str, type_: str, alias: str, dest: Path, pre: _Prefetch, plan: Plan) -> None:
    pre.task = asyncio.current_task()
    try:
        storage, base = await ctx.buckets.open(ctx.bucket)
        found = await bucket_record(storage, ArtifactKeys(base, type_, name), alias)
        manifest, record = found if found is not None else (None, None)
        if manifest is None or record is None:
            return
        pre.digest = manifest.digest()
        # Listing 10k objects takes as long as fetching hundreds of them: do both at once. Every
        # file is checked against the manifest as it lands, and the confirmed pass lists again.
        wanted = plan.select(manifest)
        copy = asyncio.ensure_future(
            transfer.download(
                storage,
                record.root,
                wanted,
                dest,
                ctx.options,
                done=pre.done,
                skip_existing=True,
                reuse=plan.reuse,
                of_files=plan.of_files(manifest),
            )
        )
        try:
            transfer.check_listing(manifest, await storage.list_objects(record.root), storage.uri_for(record.root))
            pre.stats = await copy
        finally:
            if not copy.done():
                copy.cancel()
                await asyncio.gather(copy, return_exceptions=True)
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


def _keep_matching(dest: Path, written: set[str], manifest: Manifest | None) -> set[str]:
    """After a prefetch of the wrong version: keep the files this version has too, delete the rest."""
    wanted = manifest.by_path() if manifest is not None else {}
    keep = set()
    for path in written:
        f = wanted.get(path)
        if f is not None and (dest / path).stat().st_size == f.size and sha256_file(dest / path) == f.sha256:
            keep.add(path)
        else:
            (dest / path).unlink(missing_ok=True)
    return keep


async def _fetch(
    storage: Storage,
    key: str,
    resolved: tracking.Resolved,
    dest: Path,
    options: transfer.Options,
    plan: Plan,
    trusted: Set[str] = frozenset(),
    carried: transfer.Stats | None = None,
) -> None:
    """Check the bucket holds the version's files, then bring them into dest, verified."""
    listing = await storage.list_objects(key)
    if not listing:
        encoded = _sdk_encoded(key)
        if encoded != key:
            listing = await storage.list_objects(encoded)
            key = encoded if listing else key
    where = storage.uri_for(key)
    if not listing and (resolved.manifest is None or resolved.manifest.files):
        raise NotFoundError(f"no data at {where}")
    manifest = resolved.manifest
    if manifest is None:
        log.warning("%s has no content manifest (written by an older tool): files are not verified", where)
        check_unique(o.key for o in listing)
        listing = await storage.without_empty_folders(key, listing)
        manifest = Manifest([FileEntry(o.key, o.size, NO_HASH) for o in listing], verified=False)
    else:
        if resolved.s3_etags is not None:  # W&B's own s3:// references: the objects they name
            manifest, listing = await _named_objects(storage, key, manifest, listing)
            _check_etags(resolved.s3_etags, listing, where)
        transfer.check_listing(manifest, listing, where)
    await transfer.download(
        storage,
        key,
        plan.select(manifest),
        dest,
        options,
        trusted=trusted,
        reuse=plan.reuse,
        of_files=plan.of_files(manifest),
        carried=carried,
    )


async def _named_objects(
    storage: Storage, key: str, manifest: Manifest, listing: list[ObjectInfo]
) -> tuple[Manifest, list[ObjectInfo]]:
    """W&B's s3:// references leave out empty objects: the ones in the folder are added; objects
    added since are not the version's."""
    known = manifest.by_path()
    unlisted = [o for o in listing if o.size == 0 and o.key not in known]
    empty = await storage.without_empty_folders(key, unlisted)
    files = manifest.files + [FileEntry(o.key, 0, NO_HASH) for o in empty]
    return Manifest(files, verified=manifest.verified), [o for o in listing if o.key in known] + empty


def _check_etags(recorded: dict[str, str], listing: list[ObjectInfo], where: str) -> None:
    """Objects W&B recorded by ETag must still have it (the content of such a version has no sha256)."""
    for o in listing:
        want = recorded.get(o.key)
        if want and o.etag and o.etag.strip('"') != want:
            raise IntegrityError(f"{o.key}: changed in {where} since W&B recorded it (its ETag differs)")


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


def _remove_files(root: Path, paths: set[str]) -> None:
    """Remove these files under root, and the folders they leave empty (up to root)."""
    for rel in paths:
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
