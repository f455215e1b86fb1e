"""verify: check the bucket's copy of a version (or a downloaded folder) against its manifest.

1. resolve the version (W&B, without recording a use; offline, the bucket's records)
2. compare, the manifest and the other side as two sorted streams: a local folder file by file,
   or the bucket's listing, then every object's sha256
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from .. import tracking, transfer
from ..errors import IntegrityError, UsageError
from ..listing import Listing
from ..localtree import LocalFile, walk
from ..manifest import FileEntry, Index, Manifest, merge_join, sha256_file
from ..runtime import Context
from ..storage import ObjectInfo, Storage
from ..threads import in_thread
from .resolve import locate, manifest_of, resolve_offline

log = logging.getLogger("wabucketref")

MAX_NAMED = 10  # absent files named in the error


def verify(ctx: Context, qualified_name: str, name: str, type_: str, alias: str, local: Path | None) -> Index:
    """Raise IntegrityError naming the first file that differs; return the index of the version
    checked against (digest, files, bytes)."""
    if tracking.is_offline():
        resolved, storage, key = resolve_offline(ctx, name, type_, alias)
    else:
        tracking.preflight()
        resolved = tracking.fetch_artifact(
            ctx.project, ctx.entity, name=qualified_name, type=type_, alias=alias, scratch=ctx.scratch("wandb")
        )
    manifest = ctx.run(manifest_of(ctx, resolved))
    if manifest is None or not manifest.verified:
        raise IntegrityError(f"{qualified_name}:{alias} has no content manifest: nothing to verify against")
    stored = resolved.stored_files if resolved.ref is not None else frozenset()
    if stored:
        log.warning(
            "%s:%s also has %d file(s) stored in W&B itself: W&B checks those, not this command",
            qualified_name,
            alias,
            len(stored),
        )
    if local is not None:
        ctx.run(_compare_folder(manifest, local, stored, ctx.options))
        return manifest.index
    if not tracking.is_offline():
        storage, key = locate(ctx, resolved, alias)
    ctx.run(_compare_bucket(storage, key, manifest, ctx.options, ctx.scratch("verify")))
    return manifest.index


async def _compare_folder(manifest: Manifest, root: Path, stored: frozenset[str], options: transfer.Options) -> None:
    if not root.is_dir():
        raise UsageError(f"not a folder: {root}")
    problem, absent, named = await in_thread(_compare_names, manifest, root, stored)
    if absent:  # a partial download (--include) says which
        shown = ", ".join(named) + (f", and {absent - len(named)} more" if absent > len(named) else "")
        raise IntegrityError(f"{absent} of {manifest.file_count} files missing from {root}: {shown}")
    if problem is not None:
        raise IntegrityError(problem)

    async def check(pair: tuple[FileEntry, LocalFile]) -> None:
        f, local = pair
        if await in_thread(sha256_file, Path(local.abspath)) != f.sha256:
            raise IntegrityError(f"{f.path}: content in {root} does not match the manifest")

    await transfer.for_each(check, transfer.in_batches(_pairs(manifest, root, stored)), options.concurrency)


def _pairs(manifest: Manifest, root: Path, stored: frozenset[str]) -> Iterator[tuple[FileEntry, LocalFile]]:
    for f, local in merge_join(manifest, _local(root, stored)):
        if f is not None and local is not None:
            yield f, local


def _local(root: Path, stored: frozenset[str]) -> Iterator[LocalFile]:
    return (f for f in walk(root) if f.path not in stored)


def _compare_names(manifest: Manifest, root: Path, stored: frozenset[str]) -> tuple[str | None, int, list[str]]:
    """(the first file in the folder that is not in the manifest or has another size, the count
    of the manifest's files missing from the folder, the first of them)."""
    problem: str | None = None
    absent, named = 0, list[str]()
    for f, local in merge_join(manifest, _local(root, stored)):
        if local is None:
            assert f is not None
            absent += 1
            if len(named) < MAX_NAMED:
                named.append(f.path)
        elif problem is not None:
            continue
        elif f is None:
            problem = f"{local.path}: in {root} but not in the artifact's manifest"
        elif f.size != local.size:
            problem = f"{f.path}: content in {root} does not match the manifest"
    return problem, absent, named


async def _compare_bucket(
    storage: Storage, key: str, manifest: Manifest, options: transfer.Options, scratch: Path
) -> None:
    listing = await Listing.of(storage, key, scratch)
    try:
        await in_thread(transfer.compare_listing, manifest, listing, storage.uri_for(key))

        def pairs() -> Iterator[tuple[ObjectInfo, FileEntry]]:
            for f, o in merge_join(manifest, listing.sorted()):
                if f is not None and o is not None:
                    yield o, f

        def compare(actual: FileEntry, expected: FileEntry) -> None:
            if actual.sha256 != expected.sha256:
                raise IntegrityError(
                    f"{actual.path}: content in the bucket does not match the manifest (sha256 differs)"
                )

        count = (manifest.file_count, manifest.total_size)
        await transfer.hash_objects(storage, key, pairs(), count, options, "verified", compare)
    finally:
        listing.close()
