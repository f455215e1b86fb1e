"""Where a version's bytes are: from W&B's answer, or, offline, from the records in the bucket."""

from __future__ import annotations

import logging

from .. import tracking
from ..errors import IntegrityError, NotFoundError
from ..layout import MANAGED_ALIAS, RECORD_SUFFIX, ArtifactKeys, BucketRecord, join
from ..manifest import Manifest
from ..runtime import Context
from ..storage import Storage

log = logging.getLogger("wabucketref")


def resolve_offline(ctx: Context, name: str, type_: str, alias: str) -> tuple[tracking.Resolved, Storage, str]:
    """Without W&B, the bucket's own records say which folder an alias is."""
    storage, base = ctx.home()
    artifact = ArtifactKeys(base, type_, name)
    found = ctx.run(bucket_record(storage, artifact, alias))
    folder = storage.uri_for(artifact.records)
    if found is None:
        if alias == "latest":
            raise NotFoundError(f"{tracking.mode()}: no versions of {type_}/{name} in {folder}")
        hint = " (version aliases like v3, and artifacts stored in W&B with --no-reff, need W&B online)"
        raise NotFoundError(f"{tracking.mode()}: no manifest for {type_}/{name}:{alias} in {folder}{hint}")
    manifest, record = found
    if record is None:
        raise IntegrityError(f"bucket manifest of {name}:{alias} does not say where the data is")
    resolved = tracking.Resolved(
        name=name, type=type_, version=None, aliases=[record.alias or alias], manifest=manifest
    )
    log.info("W&B %s: %s:%s resolved from the bucket to %s", tracking.mode(), name, alias, storage.uri_for(record.root))
    return resolved, storage, record.root


async def bucket_record(
    storage: Storage, artifact: ArtifactKeys, alias: str
) -> tuple[Manifest, BucketRecord | None] | None:
    """The manifest kept in the bucket for an alias (`latest`: the newest one) and its record."""
    if alias != "latest":
        data = await storage.get_bytes(artifact.alias(alias).record)
        if data is None:
            return None
        manifest = Manifest.loads(data, source=f"{artifact.name}:{alias}")
        return manifest, BucketRecord.of(manifest)
    newest: tuple[Manifest, BucketRecord | None] | None = None
    for info in await storage.list_objects(artifact.records):
        if info.key.endswith(RECORD_SUFFIX):
            data = await storage.get_bytes(join(artifact.records, info.key)) or b""
            manifest = Manifest.loads(data, source=info.key)
            record = BucketRecord.of(manifest)
            created = record.created_at if record else ""
            if newest is None or created > (newest[1].created_at if newest[1] else ""):
                newest = manifest, record
    return newest


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
    if resolved.manifest is None or not resolved.manifest.verified:
        return None
    digest = resolved.manifest.digest()
    try:
        storage, base = await ctx.buckets.open(ctx.bucket)
        artifact = ArtifactKeys(base, resolved.type, resolved.name)
        for candidate in dict.fromkeys([alias, *resolved.aliases]):
            if MANAGED_ALIAS.fullmatch(candidate):
                continue
            found = await bucket_record(storage, artifact, candidate)
            if found is not None and found[1] is not None and found[0].digest() == digest:
                return storage, found[1].root
    except Exception as e:  # the reference is still there to try
        log.debug("no copy found by the bucket's records: %s", e)
    return None
