"""diff: files added, removed and changed between two versions (or a version and a folder).

1. resolve each side's manifest: W&B without recording a use, or offline the bucket's records
2. a local folder: walked, and only its files of the same size as their counterpart hashed
3. compare the two manifests as two sorted streams (manifest.diff): not a byte of data moves
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import tracking, transfer
from ..errors import IntegrityError, NotFoundError, UsageError
from ..layout import ArtifactKeys
from ..localtree import LocalFile, walk
from ..manifest import NO_HASH, Change, FileEntry, Manifest, ManifestWriter, merge_join
from ..manifest import diff as diff_manifests
from ..records import record_header
from ..runtime import Context
from ..threads import in_thread
from .resolve import manifest_of, resolve_offline

log = logging.getLogger("wabucketref")

HASHING_THREADS = 4


@dataclass(frozen=True)
class Side:
    """One side of a diff: an artifact version (qualified name as given, its last part, alias)."""

    qualified: str
    name: str
    alias: str

    def __str__(self) -> str:
        return f"{self.qualified}:{self.alias}"


def diff(ctx: Context, type_: str, a: Side, b: Side | None, local: Path | None) -> dict[str, Any]:
    """The difference as plain data (what `wabucket diff --json` prints)."""
    if not tracking.is_offline():
        tracking.preflight()
    ra = _resolve(ctx, type_, a)
    rb = _resolve(ctx, type_, b) if b is not None else None
    for side, r in ((a, ra), (b, rb)):
        if r is not None and r.type != type_:
            raise UsageError(f"cannot diff artifacts of different types: {side} is a {r.type}, not a {type_}")
    manifest_a = _checked(a, ctx.run(manifest_of(ctx, ra)))
    if b is not None and rb is not None:
        manifest_b = _checked(b, ctx.run(manifest_of(ctx, rb)))
        side_b = _describe(b, rb, manifest_b)
    else:
        assert local is not None
        manifest_b = ctx.run(_folder_manifest(local, manifest_a, ctx.options, ctx.scratch("local")))
        side_b = {"local": str(local), "files": manifest_b.file_count, "bytes": manifest_b.total_size}
    d = diff_manifests(manifest_a, manifest_b)
    return {
        "type": type_,
        "a": _describe(a, ra, manifest_a),
        "b": side_b,
        "added": [_row(c) for c in d.added],
        "removed": [_row(c) for c in d.removed],
        "changed": [_row(c) for c in d.changed],
        "unchanged": d.unchanged,
        "same": d.same,
    }


def _resolve(ctx: Context, type_: str, side: Side) -> tracking.Resolved:
    """The version (of whatever type it has: the caller compares)."""
    if not tracking.is_offline():
        return tracking.fetch_artifact(
            ctx.project, ctx.entity, name=side.qualified, type=None, alias=side.alias, scratch=ctx.scratch("wandb")
        )
    try:
        return resolve_offline(ctx, side.name, type_, side.alias)[0]
    except NotFoundError:
        if other := _other_type(ctx, type_, side):
            return tracking.Resolved(name=side.name, type=other, version=None)
        raise


def _checked(side: Side, manifest: Manifest | None) -> Manifest:
    if manifest is None or not manifest.verified:
        raise IntegrityError(f"{side} has no content manifest (files with sha256): nothing to compare")
    return manifest


def _other_type(ctx: Context, type_: str, side: Side) -> str | None:
    """Offline: the type of another artifact of that name whose record the bucket holds."""
    storage, base = ctx.home()
    for other in ctx.run(storage.list_folders(base)):
        if other != type_ and ctx.run(record_header(storage, ArtifactKeys(base, other, side.name), side.alias)):
            return other
    return None


async def _folder_manifest(root: Path, like: Manifest, options: transfer.Options, scratch: Path) -> Manifest:
    """The folder's files; hashed only where a file of the same path and size is in `like`, and
    its hash is not remembered."""
    if not root.is_dir():
        raise UsageError(f"not a folder: {root}")
    writer = ManifestWriter(scratch / "manifest")

    async def one(pair: tuple[LocalFile, FileEntry | None]) -> None:
        f, twin = pair
        sha = NO_HASH
        if twin is not None and twin.size == f.size:
            sha = await in_thread(options.hashes.sha256, Path(f.abspath))
        writer.add(FileEntry(f.path, f.size, sha))

    await transfer.for_each(one, transfer.in_batches(_with_twins(root, like)), HASHING_THREADS)
    return await in_thread(writer.close)


def _with_twins(root: Path, like: Manifest) -> Iterator[tuple[LocalFile, FileEntry | None]]:
    for f, twin in merge_join(walk(root), like):
        if f is not None:
            yield f, twin


def _describe(side: Side, resolved: tracking.Resolved, manifest: Manifest) -> dict[str, Any]:
    return {
        "name": side.qualified,
        "alias": side.alias,
        "version": resolved.version,
        "files": manifest.file_count,
        "bytes": manifest.total_size,
    }


def _row(c: Change) -> dict[str, Any]:
    if c.size_a is None:
        return {"path": c.path, "size": c.size_b}
    if c.size_b is None:
        return {"path": c.path, "size": c.size_a}
    return {"path": c.path, "size_a": c.size_a, "size_b": c.size_b}
