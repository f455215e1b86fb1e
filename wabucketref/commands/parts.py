"""One version written by many jobs: `upload --part INDEX/COUNT`, then one `commit`.

upload --part (no coordination with the other parts, each may run anywhere, at the same time):
    1. walk the folder; claim this part's marker (the other parts hold their own)
    2. send what the alias's folder lacks of it, as upload does (never deleting: the folder is
       shared with the other parts)
    3. write the part's manifest beside the alias's records; remove the marker
commit:
    1. every part of COUNT is there, they agree on COUNT, and none is still being written
    2. merge the parts' manifests as sorted streams: a path in two parts must have the same
       content in both (then it is one file); different content fails, naming the paths
    3. the bucket holds every file with its size; objects that no part lists (left behind by a
       part that was run again with other files) are removed
    4. log ONE W&B version, as an upload does (the committing run is its producer; the parts
       are named in its metadata), then the record; remove the parts
A failure at any step registers nothing; commit can be run again.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import operator
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import jobs, tracking
from ..errors import IntegrityError, NotFoundError, WaBucketError
from ..layout import PART_NAME, AliasKeys, ArtifactKeys, BucketRecord, join
from ..listing import Listing, mismatches
from ..localtree import LocalTree
from ..manifest import FileEntry, Manifest, ManifestWriter, read_stored
from ..marker import Marker, claim
from ..records import fetch_manifest, put_shards, stored_bytes, write_record
from ..runtime import Context
from ..storage import Storage
from ..threads import in_thread, together
from .upload import base_version, logged_in, scan, send_tree

log = logging.getLogger("wabucketref")

MAX_NAMED = 10  # conflicting paths named in the error


def upload_part(
    ctx: Context,
    src: Path,
    name: str,
    type_: str,
    alias: str,
    part: tuple[int, int],
    overwrite: bool,
    base: str | None,
) -> Manifest:
    """Send a folder as part `part` (index, count) of NAME:ALIAS; registers nothing in W&B."""
    tree = scan(src)
    viewer = tracking.preflight()
    owner = {"entity": ctx.entity or viewer, "project": ctx.project}
    storage, prefix = ctx.home()
    storage.check_names(tree.paths())
    keys = ArtifactKeys(prefix, type_, name).alias(alias)
    manifest = ctx.run(_upload_part(ctx, storage, keys, tree, part, overwrite, base, owner))
    log.info(
        "part %d of %d of %s:%s is in %s (%d files); `wabucket commit -n %s -t %s -a %s` registers the version "
        "once every part is",
        *part,
        name,
        alias,
        storage.uri_for(keys.data),
        manifest.file_count,
        name,
        type_,
        alias,
    )
    return manifest


async def _upload_part(
    ctx: Context,
    storage: Storage,
    keys: AliasKeys,
    tree: LocalTree,
    part: tuple[int, int],
    overwrite: bool,
    base: str | None,
    owner: dict[str, Any],
) -> Manifest:
    index, count = part
    where = f"part {index} of {count} of {storage.uri_for(keys.data)}"
    if not overwrite and await storage.exists(keys.record):
        raise WaBucketError(
            f"{storage.uri_for(keys.data)} is a version already; upload the parts to a new alias, or pass --overwrite"
        )
    marker_key = keys.part_marker(index, count)
    marker = await claim(storage, marker_key, await storage.read(marker_key), where, owner)
    scratch = ctx.scratch("part")
    listing = await Listing.of(storage, keys.data, scratch)
    base_files = await base_version(storage, keys, base, scratch) if base else None

    async def move() -> Manifest:
        manifest = await send_tree(storage, keys, tree, listing, base_files, scratch, ctx.options, alone=False)
        await put_shards(storage, keys.artifact, manifest)
        await storage.put_bytes(keys.part(index, count), stored_bytes(manifest, _part_header(part, owner)))
        return manifest

    try:
        manifest = await marker.hold_during(move(), where)
    finally:
        listing.close()
    await marker.check_still_ours(where)
    await storage.delete([marker_key])
    return manifest


def _part_header(part: tuple[int, int], owner: dict[str, Any]) -> dict[str, Any]:
    """Who wrote a part: commit names them in the version's metadata; gc reads the owner."""
    run = tracking.live_run()
    return {
        "part": part[0],
        "count": part[1],
        **owner,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "host": socket.gethostname(),
        "job": jobs.current_job_id(),
        "run": getattr(run, "path", None) if run is not None else None,
    }


# ---------------------------------------------------------------- commit


def commit(ctx: Context, name: str, type_: str, alias: str, metadata: dict[str, Any], overwrite: bool) -> str | None:
    """Register the parts of NAME:ALIAS as one version; returns its W&B version (None offline,
    or when it was committed already)."""
    viewer = tracking.preflight()
    entity = ctx.entity or viewer
    storage, prefix = ctx.home()
    keys = ArtifactKeys(prefix, type_, name).alias(alias)
    owner = {"entity": entity, "project": ctx.project}
    count = ctx.run(_complete_parts(storage, keys, f"{name}:{alias}"))
    if count is None:
        log.info("%s:%s is committed already (no parts are left to commit)", name, alias)
        return None
    ref = storage.uri_for(keys.data)
    marker = ctx.run(_claim(storage, keys, ref, owner))
    try:
        (manifest, parts, shards), run = ctx.while_run_starts(
            _gather(ctx, storage, keys, count, overwrite), "commit", metadata
        )
        version = tracking.log_artifact(
            run,
            name=name,
            type=type_,
            alias=alias,
            ref=ref,
            manifest=manifest,
            metadata={**metadata, "wabucketref_parts": parts},
            shards=shards,
        )
    except BaseException:
        ctx.run(storage.delete([marker.key]))
        raise
    record = BucketRecord.new(keys, ref, keys.data, manifest, version, *logged_in(run, entity, ctx.project))
    ctx.run(_finish(storage, keys, record, manifest, marker))
    log.info("artifact %s:%s (%s) -> %s, from %d parts", name, alias, version or tracking.mode(), ref, len(parts))
    return version


async def _claim(storage: Storage, keys: AliasKeys, where: str, owner: dict[str, Any]) -> Marker:
    return await claim(storage, keys.marker, await storage.read(keys.marker), where, owner)


async def _gather(
    ctx: Context, storage: Storage, keys: AliasKeys, count: int, overwrite: bool
) -> tuple[Manifest, list[dict[str, Any]], str | None]:
    """Steps 1-3, under the alias's marker: the merged manifest, the parts' descriptions, where
    its shards went. The bucket is listed while the parts are merged."""
    what = f"{keys.artifact.name}:{keys.alias}"
    scratch = ctx.scratch("commit")
    (parts, manifest), listing = await together(
        _read_and_merge(storage, keys, count, scratch, what), _list_folder(storage, keys, scratch)
    )
    try:
        await _check_bucket(storage, keys, manifest, listing)
    finally:
        listing.close()
    await _refuse_other_content(storage, keys, manifest, overwrite)
    shards = await put_shards(storage, keys.artifact, manifest)
    described = [_describe(i, m, header) for i, (m, header) in enumerate(parts)]
    return manifest, described, storage.uri_for(shards) if shards is not None else None


async def _complete_parts(storage: Storage, keys: AliasKeys, what: str) -> int | None:
    """COUNT, once every part is in and agrees on it; None: no parts, and the alias is a version."""
    found = [
        (m.group(1), m.group(2), m.group(3))
        for o in await storage.list_objects(keys.parts)
        if (m := PART_NAME.fullmatch(o.key))
    ]
    if not found:
        if await storage.exists(keys.record):
            return None
        raise NotFoundError(
            f"no parts of {what} in {storage.uri_for(keys.parts)}: send them with `upload --part INDEX/COUNT`"
        )
    counts = sorted({int(n) for _, n, _ in found})
    if len(counts) > 1:
        seen = ", ".join(sorted({f"{i}-of-{n}" for i, n, _ in found}))
        raise WaBucketError(f"the parts of {what} disagree on COUNT ({seen}): upload them again with one COUNT")
    count = counts[0]
    if running := sorted({int(i) for i, _, kind in found if kind == ".partial"}):
        raise WaBucketError(
            f"part {_numbers(running)} of {count} of {what} is still being uploaded, or was interrupted (run it again)"
        )
    missing = sorted(set(range(count)) - {int(i) for i, _, _ in found})
    if missing:
        raise WaBucketError(
            f"part {_numbers(missing)} of {count} of {what} is missing: upload it with --part INDEX/{count}, "
            "then commit"
        )
    return count


def _numbers(ns: list[int]) -> str:
    return ", ".join(map(str, ns))


async def _read_part(
    storage: Storage, keys: AliasKeys, index: int, count: int, scratch: Path
) -> tuple[Manifest, dict[str, Any]]:
    key = keys.part(index, count)
    data = await storage.get_bytes(key)
    if data is None:
        raise NotFoundError(f"part {index} of {count} vanished from {storage.uri_for(key)}")
    folder = scratch / f"part{index}"
    stored = read_stored(data, folder, storage.uri_for(key))
    manifest = await fetch_manifest(storage, keys.artifact.shards(stored.index.digest), stored, folder)
    return manifest, stored.header


async def _read_and_merge(
    storage: Storage, keys: AliasKeys, count: int, scratch: Path, what: str
) -> tuple[list[tuple[Manifest, dict[str, Any]]], Manifest]:
    parts = [await _read_part(storage, keys, i, count, scratch) for i in range(count)]
    return parts, await in_thread(_merge, [m for m, _ in parts], scratch, what)


def _merge(parts: list[Manifest], scratch: Path, what: str) -> Manifest:
    """The parts' entries as one sorted stream; a path in several parts is one file if its
    content is the same in each, else a conflict (all of them are counted, the first named)."""
    writer = ManifestWriter(scratch / "merged")
    tagged = [_tagged(i, m) for i, m in enumerate(parts)]
    conflicts: list[str] = []
    count = 0
    for path, group in itertools.groupby(heapq.merge(*tagged, key=operator.itemgetter(0)), key=operator.itemgetter(0)):
        copies = list(group)
        first = copies[0][2]
        if any((e.size, e.sha256) != (first.size, first.sha256) for _, _, e in copies[1:]):
            count += 1
            if len(conflicts) < MAX_NAMED:
                conflicts.append(f"{path} (parts {_numbers(sorted({i for _, i, _ in copies}))})")
            continue
        writer.add(first)
    manifest = writer.close()
    if count:
        more = f", and {count - len(conflicts)} more" if count > len(conflicts) else ""
        raise IntegrityError(
            f"{count} path(s) of {what} have different content in different parts: {', '.join(conflicts)}{more}"
        )
    return manifest


def _tagged(index: int, manifest: Manifest) -> Iterator[tuple[str, int, FileEntry]]:
    return ((e.path, index, e) for e in manifest)


async def _list_folder(storage: Storage, keys: AliasKeys, scratch: Path) -> Listing:
    """The alias's folder, without what interrupted writes left there."""
    await storage.remove_leftovers(keys.data)
    return await Listing.of(storage, keys.data, scratch)


async def _check_bucket(storage: Storage, keys: AliasKeys, manifest: Manifest, listing: Listing) -> None:
    """Every file is in the alias's folder with its size; objects no part lists are removed."""
    where = storage.uri_for(keys.data)
    stale = await in_thread(lambda: list(_stale(manifest, listing, where)))
    if stale:
        log.warning("removing %d object(s) of %s that no part lists (first: %s)", len(stale), where, stale[0])
        for i in range(0, len(stale), 1000):
            await storage.delete([join(keys.data, k) for k in stale[i : i + 1000]])


def _stale(manifest: Manifest, listing: Listing, where: str) -> Iterator[str]:
    for f, o in mismatches(manifest, listing):
        if o is None:
            raise IntegrityError(f"{f.path if f else '?'}: missing from {where}: run the part that has it again")
        if f is None:
            yield o.key
        else:
            raise IntegrityError(f"{f.path}: size in {where} is {o.size}, its part says {f.size}: run that part again")


async def _refuse_other_content(storage: Storage, keys: AliasKeys, manifest: Manifest, overwrite: bool) -> None:
    """A version the alias already is, with other content, is replaced only with --overwrite."""
    from ..records import record_header

    header = await record_header(storage, keys.artifact, keys.alias)
    if header is not None and header.get("digest") != manifest.digest and not overwrite:
        raise WaBucketError(
            f"{storage.uri_for(keys.data)} is a version with other content already; pass --overwrite to replace it"
        )


def _describe(index: int, manifest: Manifest, header: dict[str, Any]) -> dict[str, Any]:
    """A part as the version's metadata names it."""
    return {
        "part": index,
        "files": manifest.file_count,
        "bytes": manifest.total_size,
        **{k: header[k] for k in ("host", "job", "run", "created_at") if header.get(k)},
    }


async def _finish(storage: Storage, keys: AliasKeys, record: BucketRecord, manifest: Manifest, marker: Marker) -> None:
    """The record, then the parts' manifests go (the shards of big parts, once nothing refers to
    them, are gc's), then the marker."""
    await write_record(storage, keys, record, manifest)
    await storage.delete([join(keys.parts, o.key) for o in await storage.list_objects(keys.parts)])
    await storage.delete([marker.key])
