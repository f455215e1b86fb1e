"""upload: a folder into <bucket>/<TYPE>/<NAME>/<ALIAS>/, then a W&B artifact that refers to it.
link: data already in a bucket, registered the same way.

    1. scan the folder (or list the bucket folder) and check the names
    2. claim the alias: its .partial marker says an upload runs there (marker.py)
    3. find the base version (--base ALIAS, else the artifact's newest record in the bucket):
       local files whose size and sha256 equal one of its files are copied inside the bucket
    4. move what the bucket lacks, hashing as it goes (transfer.py) -> the manifest
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
from ..errors import IntegrityError, NotFoundError, UsageError, WaBucketError
from ..layout import META_DIR, AliasKeys, ArtifactKeys, BucketRecord, join
from ..manifest import FileEntry, LocalFile, Manifest, check_unique, scan_folder, sha256_file
from ..marker import claim
from ..runtime import Context
from ..storage import Storage
from .resolve import bucket_record

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
    files = _scan(src)
    alias = choose_alias(alias, metadata)
    viewer = tracking.preflight()  # W&B must answer before any byte moves
    entity = ctx.entity or viewer
    owner = {"entity": entity, "project": ctx.project}
    storage, prefix = ctx.home()
    storage.check_names([f.path for f in files])
    keys = ArtifactKeys(prefix, type_, name).alias(alias)
    manifest, run = ctx.while_run_starts(
        _upload_bytes(storage, keys, files, overwrite, ctx.options, base, owner), "upload", metadata
    )
    ref = storage.uri_for(keys.data)
    version = tracking.log_artifact(
        run, name=name, type=type_, alias=alias, ref=ref, manifest=manifest, metadata=metadata
    )
    record = BucketRecord.new(keys, ref, keys.data, manifest, version, *_logged_in(run, entity, ctx.project))
    ctx.run(_commit(storage, keys, record, manifest))
    log.info("artifact %s:%s (%s) -> %s", name, alias, version or tracking.mode(), ref)
    return alias


def upload_to_wandb(ctx: Context, src: Path, name: str, type_: str, alias: str | None, metadata: dict[str, Any]) -> str:
    """--no-reff: the files themselves go to W&B, with the manifest."""
    files = _scan(src)
    alias = choose_alias(alias, metadata)
    run = ctx.start_run("upload", metadata)
    if run is None:
        raise UsageError("--no-reff stores the files in W&B, and WANDB_MODE=disabled: unset it or drop --no-reff")
    manifest = Manifest([FileEntry(f.path, f.size, sha256_file(f.abspath)) for f in files])
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
    manifest = ctx.run(_hash_folder(data_storage, key, ctx.options))
    run = ctx.start_run("link", metadata)
    ref = data_storage.uri_for(key)
    version = tracking.log_artifact(
        run, name=name, type=type_, alias=alias, ref=ref, manifest=manifest, metadata=metadata
    )
    if data_storage is storage:
        record = BucketRecord.new(keys, ref, key, manifest, version, *_logged_in(run, entity, ctx.project))
        try:
            ctx.run(storage.put_bytes(keys.record, record.dumps(manifest)))
        except Exception as e:  # a read-only bucket can still be linked
            log.warning("could not write the manifest beside the data (%s); offline download will not find it", e)
    else:
        log.warning(
            "%s is outside --bucket: only W&B records it, so offline downloads cannot resolve %s:%s", ref, name, alias
        )
    log.info("artifact %s:%s (%s) -> %s", name, alias, version or tracking.mode(), ref)
    return alias


def _logged_in(run: Any, entity: str | None, project: str | None) -> tuple[str | None, str | None]:
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


def _scan(src: Path) -> list[LocalFile]:
    files = scan_folder(src)
    if not files:
        raise UsageError(f"source folder has no files: {src}")
    try:
        check_unique(f.path for f in files)
    except IntegrityError as e:  # the user's own folder: bad input
        raise UsageError(str(e)) from e
    return files


async def _upload_bytes(
    storage: Storage,
    keys: AliasKeys,
    files: list[LocalFile],
    overwrite: bool,
    options: transfer.Options,
    base: str | None = None,
    owner: dict | None = None,
) -> Manifest:
    where = storage.uri_for(keys.data)
    listing = await storage.list_objects(keys.data)
    complete = await storage.exists(keys.record)
    found = await storage.read(keys.marker)
    base_version = await _base_version(storage, keys, base) if base else None
    # A marker says the upload there is unfinished (even beside a record, if it was stopped just
    # before removing the marker): the same command resumes it.
    if (complete or listing) and found is None and not overwrite:
        raise WaBucketError(f"{where} already exists; pass --overwrite to replace it")
    # The marker says "bytes here are an unfinished upload, by us": a rerun may resume over them
    # once we are gone, and no other upload writes here meanwhile.
    marker = await claim(storage, keys.marker, found, where, owner)
    if found is not None and listing:
        log.info("resuming an interrupted upload to %s", where)
    if complete:
        await storage.delete([keys.record])

    async def move() -> Manifest:
        # Stale files go first: where keys are paths on a disk (rclone, a local folder), an old
        # file `a` is in the way of a new `a/b`.
        stale = sorted({o.key for o in listing} - {f.path for f in files})
        await storage.delete([join(keys.data, k) for k in stale])
        base_files = await _base_files(storage, base_version) if base_version else None
        manifest, _ = await transfer.upload(storage, keys.data, files, {o.key: o for o in listing}, options, base_files)
        await storage.remove_leftovers(keys.data)  # of earlier, interrupted tries
        return manifest

    manifest = await marker.hold_during(move(), where)
    await marker.check_still_ours(where)
    return manifest


async def _base_version(storage: Storage, keys: AliasKeys, base: str) -> tuple[Manifest, BucketRecord] | None:
    """Step 3: the version whose files may be copied, by its record in the bucket.

    An explicit base that cannot be used is an error; the default one (`latest`), only a note:
    the upload then sends every file, as without a base."""
    artifact = keys.artifact
    explicit = base != LATEST
    what = f"{artifact.type}/{artifact.name}:{base}"
    try:
        found = await bucket_record(storage, artifact, base)
    except IntegrityError as e:
        if explicit:
            raise WaBucketError(f"--base {base}: the record of {what} is unreadable: {e}") from e
        log.warning("sending every file: the newest record of %s is unreadable (%s)", artifact.folder, e)
        return None
    manifest, record = found if found is not None else (None, None)
    if manifest is None or record is None or not manifest.verified:
        if explicit:
            raise NotFoundError(
                f"--base {base}: no record of {what} in {storage.uri_for(artifact.records)} "
                "(a base is an alias uploaded or linked into this bucket)"
            )
        return None
    if record.root == keys.data or record.root.startswith(keys.data + "/"):
        return None  # the alias being written: what it holds already is kept by the transfer plan
    return manifest, record


async def _base_files(storage: Storage, base: tuple[Manifest, BucketRecord]) -> transfer.BaseVersion:
    """The base version's files (its manifest, and its data as the bucket lists it)."""
    manifest, record = base
    listing = await storage.list_objects(record.root)
    log.info(
        "incremental upload: files equal to a file of %s (%s) are copied in the bucket, not sent",
        record.alias,
        storage.uri_for(record.root),
    )
    return transfer.BaseVersion(storage, manifest, record.root, listing)


async def _commit(storage: Storage, keys: AliasKeys, record: BucketRecord, manifest: Manifest) -> None:
    await storage.put_bytes(keys.record, record.dumps(manifest))
    await storage.delete([keys.marker])


async def _refuse_existing(storage: Storage, keys: AliasKeys) -> None:
    if await storage.exists(keys.record) or await storage.has_prefix(keys.data):
        raise WaBucketError(f"{storage.uri_for(keys.data)} already exists; pass --overwrite to replace it")


async def _hash_folder(storage: Storage, key: str, options: transfer.Options) -> Manifest:
    listing = await storage.list_objects(key)
    if not listing:
        if key and await storage.exists(key):
            raise UsageError(f"{storage.uri_for(key)} is a file, not a folder")
        raise NotFoundError(f"{storage.uri_for(key)} does not exist or is empty")
    if own := next((o.key for o in listing if META_DIR in o.key.split("/")), None):
        raise UsageError(
            f"{storage.uri_for(key)} holds wabucketref's own records ({own}): "
            "link a folder of data, not one that holds artifacts"
        )
    check_unique(o.key for o in listing)
    listing = await storage.without_empty_folders(key, listing)
    manifest, _ = await transfer.hash_remote(storage, key, listing, options, "hashed")
    return manifest
