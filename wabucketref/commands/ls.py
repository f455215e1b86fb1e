"""ls: what a project holds, without moving a byte.

1. online: W&B lists the project's artifacts (or one artifact's versions, each with its manifest)
2. offline (or W&B disabled): the records kept in the bucket beside the data say the same, as
   they were when each alias was uploaded
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from .. import tracking
from ..checks import NAME_RE
from ..errors import IntegrityError, NotFoundError
from ..layout import META_DIR, ArtifactKeys, BucketRecord, join
from ..records import read_record, record_headers
from ..runtime import Context
from ..storage import Storage
from ..transfer import bounded_map

log = logging.getLogger("wabucketref")


def ls(ctx: Context, qualified_name: str | None, name: str | None, type_: str | None) -> dict[str, Any]:
    """{"source", "project", "artifacts": [...]} or, for one artifact, {..., "versions": [...]}."""
    if tracking.is_offline():
        return _from_bucket(ctx, name, type_)
    tracking.preflight()
    doc: dict[str, Any] = {"source": "wandb", "project": tracking.project_path(ctx.project, ctx.entity)}
    if qualified_name is not None and type_ is not None:
        versions = tracking.list_versions(ctx.project, ctx.entity, type=type_, name=qualified_name)
        return {**doc, "type": type_, "name": name, "versions": versions}
    return {**doc, "artifacts": tracking.list_artifacts(ctx.project, ctx.entity, type_)}


def _from_bucket(ctx: Context, name: str | None, type_: str | None) -> dict[str, Any]:
    storage, base = ctx.home()
    where = storage.uri_for(base)
    doc: dict[str, Any] = {"source": "bucket", "bucket": where}
    log.info("W&B %s: listed from the records in %s (as each alias was uploaded)", tracking.mode(), where)
    if name is not None and type_ is not None:
        artifact = ArtifactKeys(base, type_, name)
        versions = ctx.run(versions_in_bucket(storage, artifact, ctx.scratch("ls")))
        if not versions:
            raise NotFoundError(
                f"{tracking.mode()}: no records of {type_}/{name} in {storage.uri_for(artifact.records)}"
            )
        return {**doc, "type": type_, "name": name, "versions": versions}
    return {**doc, "artifacts": ctx.run(_artifacts_in_bucket(storage, base, type_, ctx.scratch("ls")))}


async def _artifacts_in_bucket(storage: Storage, base: str, type_: str | None, scratch: Path) -> list[dict[str, Any]]:
    types = [type_] if type_ is not None else [t for t in await storage.list_folders(base) if _is_name(t)]
    found = []
    for t in types:
        for n in await storage.list_folders(join(base, t)):
            if _is_name(n) and META_DIR in await storage.list_folders(join(base, t, n)):
                found.append(ArtifactKeys(base, t, n))

    async def one(artifact: ArtifactKeys) -> dict[str, Any] | None:
        versions = await versions_in_bucket(storage, artifact, scratch)
        return {"type": artifact.type, "name": artifact.name, "versions": len(versions)} if versions else None

    rows = await bounded_map(one, found, 4)
    return [r for r in rows if r is not None]


def _is_name(part: str) -> bool:
    return bool(NAME_RE.match(part)) and part not in (".", "..", META_DIR)


async def versions_in_bucket(storage: Storage, artifact: ArtifactKeys, scratch: Path) -> list[dict[str, Any]]:
    """An artifact's versions as its records in the bucket tell, newest first: the aliases whose
    content is the same make one version, as in W&B; the newest is `latest`. Read from the
    records' headers; only a record written before headers held counts is read whole."""
    records: list[BucketRecord] = []
    for alias, header in (await record_headers(storage, artifact)).items():
        if header is None:
            raise IntegrityError(f"{storage.uri_for(artifact.alias(alias).record)} is not a wabucketref manifest")
        record = BucketRecord.of(header)
        if record is None:
            continue
        if record.files is None or record.bytes is None or not record.digest:
            found = await read_record(storage, artifact, alias, scratch)
            if found is None:  # removed meanwhile
                continue
            index = found.stored.index
            record = dataclasses.replace(record, files=index.files, bytes=index.bytes, digest=index.digest)
        records.append(record)
    groups: dict[str, list[BucketRecord]] = {}
    for record in sorted(records, key=lambda r: r.created_at):
        groups.setdefault(record.digest, []).append(record)
    newest_first = sorted(groups.values(), key=lambda members: members[-1].created_at, reverse=True)
    rows: list[dict[str, Any]] = []
    for n, members in enumerate(newest_first):
        first = members[0]
        recorded = [r.wandb_version for r in members if r.wandb_version]
        rows.append(
            {
                "version": recorded[-1] if recorded else None,
                "aliases": (["latest"] if n == 0 else [])
                + sorted({r.alias for r in members}),  # the newest: `latest` offline
                "files": first.files,
                "bytes": first.bytes,
                "created": first.created_at,
                "location": storage.uri_for(first.root),
            }
        )
    return rows
