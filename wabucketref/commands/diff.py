"""diff: files added, removed and changed between two versions (or a version and a folder).

1. resolve each side's manifest: W&B without recording a use, or offline the bucket's records
2. a local folder: scanned, and only its files of the same size as their counterpart hashed
3. compare the two manifests (manifest.diff): not a byte of data moves
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import tracking
from ..errors import IntegrityError, NotFoundError, UsageError
from ..hashcache import HashCache
from ..layout import ArtifactKeys
from ..manifest import NO_HASH, Change, FileEntry, Manifest, scan_folder
from ..manifest import diff as diff_manifests
from ..runtime import Context
from .resolve import bucket_record, resolve_offline

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
    manifest_a = _checked(a, ra.manifest)
    if b is not None and rb is not None:
        manifest_b = _checked(b, rb.manifest)
        side_b = _describe(b, rb, manifest_b)
    else:
        assert local is not None
        manifest_b = _folder_manifest(local, manifest_a, ctx.options.hashes)
        side_b = {"local": str(local), "files": len(manifest_b.files), "bytes": manifest_b.total_size}
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
        return tracking.fetch_artifact(ctx.project, ctx.entity, name=side.qualified, type=None, alias=side.alias)
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
        if other != type_ and ctx.run(bucket_record(storage, ArtifactKeys(base, other, side.name), side.alias)):
            return other
    return None


def _folder_manifest(root: Path, like: Manifest, known: HashCache) -> Manifest:
    """The folder's files; hashed only where a file of the same path and size is in `like`, and
    its hash is not remembered."""
    if not root.is_dir():
        raise UsageError(f"not a folder: {root}")
    files = scan_folder(root)
    expected = like.by_path()
    to_hash = [f for f in files if (e := expected.get(f.path)) is not None and e.size == f.size]
    with concurrent.futures.ThreadPoolExecutor(HASHING_THREADS) as pool:
        hashes = dict(zip((f.path for f in to_hash), pool.map(lambda f: known.sha256(f.abspath), to_hash), strict=True))
    return Manifest([FileEntry(f.path, f.size, hashes.get(f.path, NO_HASH)) for f in files])


def _describe(side: Side, resolved: tracking.Resolved, manifest: Manifest) -> dict[str, Any]:
    return {
        "name": side.qualified,
        "alias": side.alias,
        "version": resolved.version,
        "files": len(manifest.files),
        "bytes": manifest.total_size,
    }


def _row(c: Change) -> dict[str, Any]:
    if c.size_a is None:
        return {"path": c.path, "size": c.size_b}
    if c.size_b is None:
        return {"path": c.path, "size": c.size_a}
    return {"path": c.path, "size_a": c.size_a, "size_b": c.size_b}
