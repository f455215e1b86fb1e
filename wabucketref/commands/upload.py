"""upload: a folder into <bucket>/<TYPE>/<NAME>/<ALIAS>/, then a W&B artifact that refers to it.
link: data already in a bucket, registered the same way.

    1. walk the folder once (or list the bucket folder): check the names, count the files
    2. claim the alias: its .partial marker says an upload runs there (marker.py)
    3. find the base version (--base ALIAS, else the artifact's newest record in the bucket):
       local files whose size and sha256 equal one of its files are copied inside the bucket
    4. move what the bucket lacks, walking the folder again and hashing as it goes
       (transfer.py) -> the manifest, written as a stream; a big one's shards go to the bucket
    5. log the artifact in W&B (tracking.py): the manifest decides its version
    6. write the record beside the data, remove the marker
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from pathlib import Path
from typing import Any

from .. import tracking, transfer
from ..checks import RUN_CONFIG_HASH
from ..copies import BaseVersion
from ..errors import IntegrityError, NotFoundError, UsageError, WaBucketError
from ..layout import META_DIR, AliasKeys, ArtifactKeys, BucketRecord, join
from ..listing import Listing
from ..localtree import LocalTree
from ..manifest import CaseFolds, FileEntry, Manifest, ManifestWriter, merge_join, sha256_file, write_manifest
from ..marker import claim
from ..records import Record, fetch_manifest, put_shards, read_record, write_record
from ..runtime import Context
from ..storage import Storage
from ..threads import in_thread

log = logging.getLogger("wabucketref")


LATEST = "latest"


def upload(
    ctx: Context,
    src: Path,
    name: str,
    type_: str,
    alias: str | None,
    metadata: dict[str, Any],
    overwrite: bool,
    base: str | None = LATEST,
) -> str:
    """Returns the alias the artifact got. base: the alias whose files are copied inside the bucket
    where the local files equal them (`latest`: the artifact's newest record; None: send everything)."""
    tree = scan(src)
    alias = choose_alias(alias, metadata)
    viewer = tracking.preflight()  # W&B must answer before any byte moves
    entity = ctx.entity or viewer
    owner = {"entity": entity, "project": ctx.project}
    storage, prefix = ctx.home()
    storage.check_names(tree.paths())
    keys = ArtifactKeys(prefix, type_, name).alias(alias)
    (manifest, shards), run = ctx.while_run_starts(
        _upload_bytes(ctx, storage, keys, tree, overwrite, base, owner), "upload", metadata
    )
    ref = storage.uri_for(keys.data)
    version = tracking.log_artifact(
        run, name=name, type=type_, alias=alias, ref=ref, manifest=manifest, metadata=metadata, shards=shards
    )
    record = BucketRecord.new(keys, ref, keys.data, manifest, version, *logged_in(run, entity, ctx.project))
    ctx.run(_commit(storage, keys, record, manifest))
    log.info("artifact %s:%s (%s) -> %s", name, alias, version or tracking.mode(), ref)
    return alias


def upload_to_wandb(ctx: Context, src: Path, name: str, type_: str, alias: str | None, metadata: dict[str, Any]) -> str:
    """--no-reff: the files themselves go to W&B, with the manifest."""
    tree = scan(src)
    alias = choose_alias(alias, metadata)
    run = ctx.start_run("upload", metadata)
    if run is None:
        raise UsageError("--no-reff stores the files in W&B, and WANDB_MODE=disabled: unset it or drop --no-reff")
    entries = (FileEntry(f.path, f.size, sha256_file(Path(f.abspath))) for f in tree.walk())
    manifest = write_manifest(ctx.scratch("manifest"), entries)
    tracking.log_files_artifact(run, name=name, type=type_, alias=alias, src=src, manifest=manifest, metadata=metadata)
    return alias


def link(
    ctx: Context, bucket_path: str, name: str, type_: str, alias: str | None, metadata: dict[str, Any], overwrite: bool
) -> str:
    """Register a folder already in a bucket; its files are hashed once. Returns the alias."""
    viewer = tracking.preflight()  # W&B must answer before every byte is read
    entity = ctx.entity or viewer
    storage, base = ctx.home()
    data_storage, key = ctx.storage(bucket_path) if "://" in bucket_path else (storage, join(base, bucket_path))
    alias = choose_alias(alias, metadata)
    keys = ArtifactKeys(base, type_, name).alias(alias)
    if not overwrite:
        ctx.run(_refuse_existing(storage, keys))
    manifest = ctx.run(_hash_folder(data_storage, key, ctx.options, ctx.scratch("link")))
    shards = ctx.run(put_shards(storage, keys.artifact, manifest))
    run = ctx.start_run("link", metadata)
    ref = data_storage.uri_for(key)
    version = tracking.log_artifact(
        run,
        name=name,
        type=type_,
        alias=alias,
        ref=ref,
        manifest=manifest,
        metadata=metadata,
        shards=storage.uri_for(shards) if shards is not None else None,
    )
    if data_storage is storage:
        record = BucketRecord.new(keys, ref, key, manifest, version, *logged_in(run, entity, ctx.project))
        try:
            ctx.run(write_record(storage, keys, record, manifest))
        except Exception as e:  # a read-only bucket can still be linked
            log.warning("could not write the manifest beside the data (%s); offline download will not find it", e)
    else:
        log.warning(
            "%s is outside --bucket: only W&B records it, so offline downloads cannot resolve %s:%s", ref, name, alias
        )
    log.info("artifact %s:%s (%s) -> %s", name, alias, version or tracking.mode(), ref)
    return alias


def logged_in(run: Any, entity: str | None, project: str | None) -> tuple[str | None, str | None]:
    """The W&B entity and project a version was logged in (the run's, online)."""
    if run is None or tracking.is_offline():  # not in W&B (yet): gc never deletes what this record names
        return None, None
    return getattr(run, "entity", None) or entity, getattr(run, "project", None) or project


def choose_alias(alias: str | None, config: dict[str, Any]) -> str:
    """The alias to use: a new UUID4 by default; `!run-config-hash` hashes the live run's config,
    else `config` (the config the run will start with)."""
    if alias is None:
        return str(uuid.uuid4())
    if alias == RUN_CONFIG_HASH:
        run = tracking.live_run()
        return config_hash(dict(run.config) if run is not None else config)
    return alias


def config_hash(config: dict[str, Any]) -> str:
    """sha256 over the run config's sorted key=value pairs, space-separated: the original tool's
    !run-config-hash, so that the same config finds the same folder with either tool."""
    text = " ".join(f"{k}={config[k]}" for k in sorted(config))
    return hashlib.sha256(text.encode()).hexdigest()


def scan(src: Path) -> LocalTree:
    tree = LocalTree.scan(src)
    if not tree.files:
        raise UsageError(f"source folder has no files: {src}")
    return tree


async def _upload_bytes(
    ctx: Context,
    storage: Storage,
    keys: AliasKeys,
    tree: LocalTree,
    overwrite: bool,
    base: str | None,
    owner: dict | None = None,
) -> tuple[Manifest, str | None]:
    """Steps 2-4: the manifest, and where its shards went (for a big version)."""
    where = storage.uri_for(keys.data)
    scratch = ctx.scratch("upload")
    listing = await Listing.of(storage, keys.data, scratch)
    complete = await storage.exists(keys.record)
    found = await storage.read(keys.marker)
    base_files = await base_version(storage, keys, base, scratch) if base else None
    # A marker says the upload there is unfinished (even beside a record, if it was stopped just
    # before removing the marker): the same command resumes it.
    if (complete or listing.count) and found is None and not overwrite:
        raise WaBucketError(f"{where} already exists; pass --overwrite to replace it")
    # The marker says "bytes here are an unfinished upload, by us": a rerun may resume over them
    # once we are gone, and no other upload writes here meanwhile.
    marker = await claim(storage, keys.marker, found, where, owner)
    if found is not None and listing.count:
        log.info("resuming an interrupted upload to %s", where)
    if complete:
        await storage.delete([keys.record])

    async def move() -> tuple[Manifest, str | None]:
        if listing.count:
            await _delete_stale(storage, keys.data, listing, tree)
        manifest = await send_tree(storage, keys, tree, listing, base_files, scratch, ctx.options)
        shards = await put_shards(storage, keys.artifact, manifest)
        return manifest, storage.uri_for(shards) if shards is not None else None

    try:
        result = await marker.hold_during(move(), where)
    finally:
        listing.close()
    await marker.check_still_ours(where)
    return result


async def send_tree(
    storage: Storage,
    keys: AliasKeys,
    tree: LocalTree,
    listing: Listing,
    base: tuple[Manifest, str] | None,
    scratch: Path,
    options: transfer.Options,
    alone: bool = True,
) -> Manifest:
    """Step 4: what the alias's folder lacks of the tree (copied from the base where it has
    the content) -> the manifest, on local disk. alone: no other upload writes there (then what
    interrupted writes left is removed; a part leaves that to the commit)."""
    base_files = None
    if base is not None:
        objects = storage.objects_in(base[1]) or await Listing.of(storage, base[1], scratch)
        base_files = BaseVersion(storage, base[1], base[0], objects, scratch)
    writer = ManifestWriter(scratch / "manifest")
    try:
        await transfer.upload(storage, keys.data, tree, listing, writer, scratch, options, base_files)
    finally:
        if base_files is not None:
            base_files.close()
    if alone:
        await storage.remove_leftovers(keys.data)  # of earlier, interrupted tries
    return await in_thread(writer.close)


async def _delete_stale(storage: Storage, prefix: str, listing: Listing, tree: LocalTree) -> None:
    """Objects under the alias that the folder no longer has go first: where keys are paths on a
    disk (rclone, a local folder), an old file `a` is in the way of a new `a/b`."""

    def stale() -> list[str]:
        return [o.key for f, o in merge_join(tree.walk(), listing.sorted()) if f is None and o is not None]

    keys = await in_thread(stale)
    for i in range(0, len(keys), 1000):
        await storage.delete([join(prefix, k) for k in keys[i : i + 1000]])


async def base_version(storage: Storage, keys: AliasKeys, base: str, scratch: Path) -> tuple[Manifest, str] | None:
    """Step 3: the version whose files may be copied, by its record in the bucket: its manifest
    and the key of its data.

    An explicit base that cannot be used is an error; the default one (`latest`), only a note:
    the upload then sends every file, as without a base."""
    artifact = keys.artifact
    explicit = base != LATEST
    what = f"{artifact.type}/{artifact.name}:{base}"
    try:
        found = await read_record(storage, artifact, base, scratch)
        record = found.record if found is not None else None
        if (
            found is None
            or record is None
            or (found.stored.manifest is not None and not found.stored.manifest.verified)
        ):
            if explicit:
                raise NotFoundError(
                    f"--base {base}: no record of {what} in {storage.uri_for(artifact.records)} "
                    "(a base is an alias uploaded or linked into this bucket)"
                )
            return None
        if record.root == keys.data or record.root.startswith(keys.data + "/"):
            return None  # the alias being written: what it holds already is kept by the transfer plan
        manifest = await _fetched(storage, artifact, found, scratch)
    except IntegrityError as e:
        if explicit:
            raise WaBucketError(f"--base {base}: the record of {what} is unreadable: {e}") from e
        log.warning("sending every file: the newest record of %s is unreadable (%s)", artifact.folder, e)
        return None
    log.info(
        "incremental upload: files equal to a file of %s (%s) are copied in the bucket, not sent",
        found.alias,
        storage.uri_for(record.root),
    )
    return manifest, record.root


async def _fetched(storage: Storage, artifact: ArtifactKeys, found: Record, scratch: Path) -> Manifest:
    return await fetch_manifest(storage, artifact.shards(found.stored.index.digest), found.stored, scratch)


async def _commit(storage: Storage, keys: AliasKeys, record: BucketRecord, manifest: Manifest) -> None:
    await write_record(storage, keys, record, manifest)
    await storage.delete([keys.marker])


async def _refuse_existing(storage: Storage, keys: AliasKeys) -> None:
    if await storage.exists(keys.record) or await storage.has_prefix(keys.data):
        raise WaBucketError(f"{storage.uri_for(keys.data)} already exists; pass --overwrite to replace it")


async def _hash_folder(storage: Storage, key: str, options: transfer.Options, scratch: Path) -> Manifest:
    listing = await Listing.of(storage, key, scratch)
    try:
        if not listing.count:
            if key and await storage.exists(key):
                raise UsageError(f"{storage.uri_for(key)} is a file, not a folder")
            raise NotFoundError(f"{storage.uri_for(key)} does not exist or is empty")
        if own := listing.key_with_segment(META_DIR):
            raise UsageError(
                f"{storage.uri_for(key)} holds wabucketref's own records ({own}): "
                "link a folder of data, not one that holds artifacts"
            )
        await in_thread(_check_case, listing)
        listing.delete([o.key for o in await storage.folder_markers(key, listing.empty())])
        writer = ManifestWriter(scratch / "manifest")
        count = (listing.count, listing.total_size())
        objects = ((o, None) for o in listing.sorted())
        await transfer.hash_objects(storage, key, objects, count, options, "hashed", lambda e, _: writer.add(e))
        return await in_thread(writer.close)
    finally:
        listing.close()


def _check_case(listing: Listing) -> None:
    folds = CaseFolds()
    for o in listing.sorted():
        folds.check(o.key)
