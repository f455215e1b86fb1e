"""The manifests a bucket keeps beside the data: each alias's record, and the shards of big
versions (layout.py says where). Reading one never reads a file list it does not need."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .errors import IntegrityError
from .layout import RECORD_SUFFIX, AliasKeys, ArtifactKeys, BucketRecord, shard_key
from .manifest import Manifest, Stored, accept_shard, format1_bytes, index_bytes, peek_header, read_stored
from .storage import Storage
from .threads import in_thread, together

SHARDS_IN_FLIGHT = 4


@dataclass
class Record:
    """An alias's record as read from the bucket."""

    alias: str
    record: BucketRecord | None  # None: its header does not say where the data is
    stored: Stored


async def read_record(storage: Storage, artifact: ArtifactKeys, alias: str, scratch: Path) -> Record | None:
    """The record of an alias (`latest`: the newest one), or None."""
    if alias == "latest":
        newest = await newest_alias(storage, artifact)
        if newest is None:
            return None
        alias = newest
    key = artifact.alias(alias).record
    data = await storage.get_bytes(key)
    if data is None:
        return None
    stored = read_stored(data, scratch, source=storage.uri_for(key))
    return Record(alias, BucketRecord.of(stored.header), stored)


async def record_headers(storage: Storage, artifact: ArtifactKeys) -> dict[str, dict | None]:
    """Each alias's record header (None: unreadable), without parsing file lists."""
    aliases = [
        o.key[: -len(RECORD_SUFFIX)]
        for o in await storage.list_objects(artifact.records)
        if o.key.endswith(RECORD_SUFFIX) and "/" not in o.key
    ]
    turns = asyncio.Semaphore(16)

    async def header(alias: str) -> dict | None:
        async with turns:
            return await record_header(storage, artifact, alias)

    return dict(zip(aliases, await asyncio.gather(*map(header, aliases)), strict=True))


async def record_header(storage: Storage, artifact: ArtifactKeys, alias: str) -> dict | None:
    """The header fields of an alias's record (None if it has none, or an unreadable one)."""
    data = await storage.get_bytes(artifact.alias(alias).record)
    return peek_header(data) if data is not None else None


async def newest_alias(storage: Storage, artifact: ArtifactKeys) -> str | None:
    """The alias whose record is the newest (by its creation time)."""
    best: tuple[str, str] | None = None
    for alias, header in (await record_headers(storage, artifact)).items():
        record = BucketRecord.of(header) if header is not None else None
        if header is None:
            raise IntegrityError(f"{storage.uri_for(artifact.alias(alias).record)} is not a wabucketref manifest")
        created = record.created_at if record is not None else ""
        if best is None or created > best[0]:
            best = created, alias
    return best[1] if best is not None else None


async def fetch_manifest(
    storage: Storage, shards: str, stored: Stored, folder: Path, wanted: list[int] | None = None
) -> Manifest:
    """A stored manifest on local disk: format 1 is already; format 2's shards (`wanted`, or
    all) are fetched from `shards` in the bucket, each checked against the index."""
    if stored.manifest is not None:
        return stored.manifest
    folder.mkdir(parents=True, exist_ok=True)
    index = stored.index
    paths: list[Path | None] = [None] * len(index.shards)
    turns = asyncio.Semaphore(SHARDS_IN_FLIGHT)

    async def one(i: int) -> None:
        key, path = shard_key(shards, i), folder / f"{i:05d}.jsonl.zst"
        async with turns:  # held until the shard is on disk: at most this many in memory
            data = await storage.get_bytes(key)
            if data is None:
                raise IntegrityError(f"shard {i} of the manifest is missing from {storage.uri_for(shards)}")
            await in_thread(accept_shard, data, index.shards[i], path, storage.uri_for(key))
        paths[i] = path

    await together(*map(one, range(len(index.shards)) if wanted is None else wanted))
    return Manifest(index, paths, source=storage.uri_for(shards))


def sharded(manifest: Manifest) -> bool:
    """Is the manifest kept as shards (format 2), or as one document (format 1)?"""
    return manifest.file_count > settings.shard_files()


async def put_shards(storage: Storage, artifact: ArtifactKeys, manifest: Manifest) -> str | None:
    """Put a big version's shards in the bucket (before W&B names the version); returns their
    folder (None for a version kept as one document)."""
    if not sharded(manifest):
        return None
    folder = artifact.shards(manifest.digest)
    turns = asyncio.Semaphore(SHARDS_IN_FLIGHT)

    async def one(i: int, path: Path | None) -> None:
        assert path is not None  # a manifest this command wrote has every shard
        async with turns:  # at most this many shards in memory
            data = await in_thread(path.read_bytes)
            await storage.put_bytes(shard_key(folder, i), data)

    await together(*(one(i, p) for i, p in enumerate(manifest.paths)))
    return folder


def stored_bytes(manifest: Manifest, fields: dict) -> bytes:
    """The stored form: the whole list (format 1) or the index (format 2), with header fields."""
    return index_bytes(manifest.index, fields) if sharded(manifest) else format1_bytes(manifest, fields)


async def write_record(storage: Storage, keys: AliasKeys, record: BucketRecord, manifest: Manifest) -> None:
    await storage.put_bytes(keys.record, stored_bytes(manifest, record.fields()))
