"""Where a version's bytes and manifest are: from W&B's answer, or, offline, from the records in
the bucket."""

from __future__ import annotations

import logging

from .. import tracking
from ..errors import IntegrityError, NotFoundError
from ..layout import MANAGED_ALIAS, ArtifactKeys, shard_key
from ..manifest import Manifest, Selection
from ..records import fetch_manifest, read_record, record_header
from ..runtime import Context
from ..storage import Storage

log = logging.getLogger("wabucketref")


def resolve_offline(ctx: Context, name: str, type_: str, alias: str) -> tuple[tracking.Resolved, Storage, str]:
    """Without W&B, the bucket's own records say which folder an alias is."""
    storage, base = ctx.home()
    artifact = ArtifactKeys(base, type_, name)
    found = ctx.run(read_record(storage, artifact, alias, ctx.scratch("record")))
    folder = storage.uri_for(artifact.records)
    if found is None:
        if alias == "latest":
            raise NotFoundError(f"{tracking.mode()}: no versions of {type_}/{name} in {folder}")
        hint = " (version aliases like v3, and artifacts stored in W&B with --no-reff, need W&B online)"
        raise NotFoundError(f"{tracking.mode()}: no manifest for {type_}/{name}:{alias} in {folder}{hint}")
    if found.record is None:
        raise IntegrityError(f"bucket manifest of {name}:{alias} does not say where the data is")
    resolved = tracking.Resolved(
        name=name,
        type=type_,
        version=None,
        aliases=[found.record.alias or alias],
        stored=found.stored,
        shards_at=storage.uri_for(artifact.shards(found.stored.index.digest)),
    )
    log.info(
        "W&B %s: %s:%s resolved from the bucket to %s", tracking.mode(), name, alias, storage.uri_for(found.record.root)
    )
    return resolved, storage, found.record.root


async def manifest_of(ctx: Context, resolved: tracking.Resolved, selection: Selection | None = None) -> Manifest | None:
    """The version's manifest on local disk, with the shards `selection` needs (all if None)."""
    stored = resolved.stored
    if stored is None or stored.manifest is not None:
        return None if stored is None else stored.manifest
    wanted = selection.shards(stored.index) if selection is not None else None
    storage, key = await _shards_folder(ctx, resolved)
    return await fetch_manifest(storage, key, stored, ctx.scratch("shards"), wanted)


async def _shards_folder(ctx: Context, resolved: tracking.Resolved) -> tuple[Storage, str]:
    """Where a big version's shards are: where its upload said, else beside the home bucket's
    records of the artifact (a copy of the same content under another alias shares them)."""
    assert resolved.stored is not None
    storage, base = await ctx.buckets.open(ctx.bucket)
    fallback = storage, ArtifactKeys(base, resolved.type, resolved.name).shards(resolved.stored.index.digest)
    if resolved.shards_at is None or not resolved.stored.index.shards:
        return fallback
    said = await ctx.buckets.open(resolved.shards_at)
    if await said[0].exists(shard_key(said[1], 0)):
        return said
    return fallback


def locate(ctx: Context, resolved: tracking.Resolved, alias: str) -> tuple[Storage, str]:
    """The bucket and key of a version's data, as W&B resolved it."""
    if resolved.ref is not None:
        return ctx.run(_copy_of(ctx, resolved, alias)) or ctx.storage(resolved.ref)
    # The oldest artifacts of the original tool have no reference: the data sits at
    # <bucket>/<TYPE>/<NAME>/<ALIAS>, under one of the version's aliases.
    storage, base = ctx.home()
    artifact = ArtifactKeys(base, resolved.type, resolved.name)
    candidates = [alias] + [a for a in resolved.aliases if a not in (alias, "latest")]
    for candidate in candidates:
        key = artifact.alias(candidate).data
        if ctx.run(storage.has_prefix(key)):
            return storage, key
    where = storage.uri_for(artifact.alias(alias).data)
    raise NotFoundError(f"artifact {resolved.name}:{alias} has no bucket reference and no data at {where}")


async def _copy_of(ctx: Context, resolved: tracking.Resolved, alias: str) -> tuple[Storage, str] | None:
    """The folder of one of the version's aliases whose bucket record has exactly its content.

    Logging the same content under a new alias adds the alias to the existing version, whose
    reference keeps naming the first alias's folder; that folder may since have been
    overwritten with other content. Each alias's own copy stays findable by its record.
    """
    stored = resolved.stored
    if stored is None or (stored.manifest is not None and not stored.manifest.verified):
        return None
    try:
        storage, base = await ctx.buckets.open(ctx.bucket)
        artifact = ArtifactKeys(base, resolved.type, resolved.name)
        for candidate in dict.fromkeys([alias, *resolved.aliases]):
            if MANAGED_ALIAS.fullmatch(candidate):
                continue
            header = await record_header(storage, artifact, candidate)
            if (
                header is not None
                and header.get("digest") == stored.index.digest
                and isinstance(header.get("root"), str)
            ):
                return storage, header["root"]
    except Exception as e:  # the reference is still there to try
        log.debug("no copy found by the bucket's records: %s", e)
    return None
