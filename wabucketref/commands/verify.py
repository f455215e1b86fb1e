"""verify: check the bucket's copy of a version (or a downloaded folder) against its manifest.

1. resolve the version (W&B, without recording a use; offline, the bucket's records)
2. compare: a local folder file by file, or the bucket's listing, then every object's sha256
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import tracking, transfer
from ..errors import IntegrityError, UsageError
from ..manifest import Manifest, scan_folder, sha256_file
from ..runtime import Context
from ..storage import Storage
from .resolve import locate, resolve_offline

log = logging.getLogger("wabucketref")

MAX_NAMED = 10  # absent files named in the error


def verify(ctx: Context, qualified_name: str, name: str, type_: str, alias: str, local: Path | None) -> Manifest:
    """Raise IntegrityError naming the first file that differs; return the manifest checked against."""
    if tracking.is_offline():
        resolved, storage, key = resolve_offline(ctx, name, type_, alias)
    else:
        tracking.preflight()
        resolved = tracking.fetch_artifact(ctx.project, ctx.entity, name=qualified_name, type=type_, alias=alias)
    manifest = resolved.manifest
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
        _compare_folder(manifest, local, stored)
        return manifest
    if not tracking.is_offline():
        storage, key = locate(ctx, resolved, alias)
    ctx.run(_compare_bucket(storage, key, manifest, ctx.options))
    return manifest


def _compare_folder(manifest: Manifest, root: Path, stored: frozenset[str]) -> None:
    if not root.is_dir():
        raise UsageError(f"not a folder: {root}")
    actual = {f.path: f for f in scan_folder(root) if f.path not in stored}
    expected = manifest.by_path()
    if absent := sorted(set(expected) - set(actual)):  # a partial download (--include) says which
        shown = ", ".join(absent[:MAX_NAMED]) + (
            f", and {len(absent) - MAX_NAMED} more" if len(absent) > MAX_NAMED else ""
        )
        raise IntegrityError(f"{len(absent)} of {len(expected)} files missing from {root}: {shown}")
    for path in sorted(set(actual) | set(expected)):
        if path not in expected:
            raise IntegrityError(f"{path}: in {root} but not in the artifact's manifest")
        f = actual[path]
        if f.size != expected[path].size or sha256_file(f.abspath) != expected[path].sha256:
            raise IntegrityError(f"{path}: content in {root} does not match the manifest")


async def _compare_bucket(storage: Storage, key: str, manifest: Manifest, options: transfer.Options) -> None:
    listing = await storage.list_objects(key)
    transfer.check_listing(manifest, listing, storage.uri_for(key))
    actual, _ = await transfer.hash_remote(storage, key, listing, options, "verified")
    expected = manifest.by_path()
    for f in actual.files:
        if f.sha256 != expected[f.path].sha256:
            raise IntegrityError(f"{f.path}: content in the bucket does not match the manifest (sha256 differs)")
