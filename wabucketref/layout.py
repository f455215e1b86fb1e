"""Where an alias lives in a bucket, and the record kept beside it.

<base>/<TYPE>/<NAME>/<ALIAS>/...                    the files (the original tool's layout)
<base>/<TYPE>/<NAME>/.wabucketref/<ALIAS>.jsonl     the record: the manifest (format 1) or its
                                                    index (format 2), with a header saying where
                                                    the data is (offline downloads)
<base>/<TYPE>/<NAME>/.wabucketref/<ALIAS>.partial   an upload is unfinished there (marker.py)
<base>/<TYPE>/<NAME>/.wabucketref/shards/<DIGEST>/  the shards of a big version's manifest, by the
                                                    version's digest (aliases with equal content
                                                    share them)
<base>/<TYPE>/<NAME>/.wabucketref/<ALIAS>.parts/    an upload made of parts, until it is committed:
    <INDEX>-of-<COUNT>.jsonl                        each part's manifest (as a record's, with a
                                                    header naming the part)
    <INDEX>-of-<COUNT>.partial                      a part being uploaded (or interrupted)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from .manifest import Manifest

META_DIR = ".wabucketref"
SHARDS_DIR = "shards"
RECORD_SUFFIX = ".jsonl"
MARKER_SUFFIX = ".partial"
PARTS_SUFFIX = ".parts"
PART_NAME = re.compile(r"(\d+)-of-(\d+)(\.jsonl|\.partial)")
MANAGED_ALIAS = re.compile(r"latest|v\d+")  # aliases W&B gives versions itself


def join(*parts: str) -> str:
    """Keys joined with one "/" each, empty parts left out."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


@dataclass(frozen=True)
class ArtifactKeys:
    """The keys of one artifact (TYPE/NAME) under a bucket's base prefix."""

    base: str
    type: str
    name: str

    @property
    def folder(self) -> str:
        return join(self.base, self.type, self.name)

    @property
    def records(self) -> str:
        return join(self.folder, META_DIR)

    def alias(self, alias: str) -> AliasKeys:
        return AliasKeys(self, alias)

    def shards(self, digest: str) -> str:
        """The folder of the shards of the version with this digest."""
        return join(self.records, SHARDS_DIR, digest)


def shard_key(folder: str, index: int) -> str:
    return join(folder, f"{index:05d}.jsonl.zst")


@dataclass(frozen=True)
class AliasKeys:
    """The keys of one alias: its data prefix, its record and its upload marker."""

    artifact: ArtifactKeys
    alias: str

    @property
    def data(self) -> str:
        return join(self.artifact.folder, self.alias)

    @property
    def record(self) -> str:
        return join(self.artifact.records, self.alias + RECORD_SUFFIX)

    @property
    def marker(self) -> str:
        return join(self.artifact.records, self.alias + MARKER_SUFFIX)

    @property
    def parts(self) -> str:
        """The folder of the parts of an upload in parts (`upload --part`), until committed."""
        return join(self.artifact.records, self.alias + PARTS_SUFFIX)

    def part(self, index: int, count: int) -> str:
        return join(self.parts, f"{index}-of-{count}{RECORD_SUFFIX}")

    def part_marker(self, index: int, count: int) -> str:
        return join(self.parts, f"{index}-of-{count}{MARKER_SUFFIX}")


@dataclass(frozen=True)
class BucketRecord:
    """The header of the manifest kept in the bucket for an alias."""

    name: str
    type: str
    alias: str
    ref: str  # the URI logged to W&B
    root: str  # the data's key in the bucket
    created_at: str
    digest: str  # of the manifest's content
    wandb_version: str | None
    # the W&B entity and project the version was logged in (gc considers only its own); None in
    # records written before they were kept, or with W&B disabled
    entity: str | None = None
    project: str | None = None
    files: int | None = None  # None in records written before they were counted
    bytes: int | None = None

    @classmethod
    def new(
        cls,
        keys: AliasKeys,
        ref: str,
        root: str,
        manifest: Manifest,
        version: str | None,
        entity: str | None = None,
        project: str | None = None,
    ) -> BucketRecord:
        return cls(
            name=keys.artifact.name,
            type=keys.artifact.type,
            alias=keys.alias,
            ref=ref,
            root=root,
            created_at=datetime.now(timezone.utc).isoformat(),
            digest=manifest.digest,
            wandb_version=version,
            entity=entity,
            project=project,
            files=manifest.file_count,
            bytes=manifest.total_size,
        )

    @classmethod
    def of(cls, h: dict[str, Any]) -> BucketRecord | None:
        """The record a stored manifest's header fields hold; None if they do not say where the
        data is."""
        if not isinstance(h.get("root"), str):
            return None
        return cls(
            name=str(h.get("name", "")),
            type=str(h.get("type", "")),
            alias=str(h.get("alias", "")),
            ref=str(h.get("ref", "")),
            root=h["root"],
            created_at=str(h.get("created_at", "")),
            digest=str(h.get("digest", "")),
            wandb_version=h.get("wandb_version"),
            entity=h["entity"] if isinstance(h.get("entity"), str) else None,
            project=h["project"] if isinstance(h.get("project"), str) else None,
            files=h["files"] if isinstance(h.get("files"), int) else None,
            bytes=h["bytes"] if isinstance(h.get("bytes"), int) else None,
        )

    def fields(self) -> dict[str, Any]:
        return asdict(self)
