"""A version's manifest as this machine holds it: the index (digest, counts, shards) and the
shard files fetched so far, read as one stream of entries in path order."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import IntegrityError
from .entry import FileEntry
from .shards import ShardInfo, read_lines, read_shard


@dataclass(frozen=True)
class Index:
    """What a version holds, without its file list: the digest of its content (the sha256 of its
    canonical format-1 serialisation, whatever the shards), its counts, and its shards in order."""

    digest: str
    files: int
    bytes: int
    shards: tuple[ShardInfo, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "files": self.files,
            "bytes": self.bytes,
            "shards": [s.to_json() for s in self.shards],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], source: str) -> Index:
        try:
            shards = tuple(ShardInfo.from_json(s, source) for s in obj["shards"])
            index = cls(str(obj["digest"]), int(obj["files"]), int(obj["bytes"]), shards)
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"{source}: its manifest index is malformed") from e
        if (
            len(index.digest) != 64
            or index.files != sum(s.files for s in shards)
            or index.bytes != sum(s.bytes for s in shards)
            or any(a.last >= b.first for a, b in itertools.pairwise(shards))
        ):
            raise IntegrityError(f"{source}: its manifest index does not add up")
        return index


class Manifest:
    """The files of a version, sorted by path, streamed from shard files on local disk.

    `paths[i]` is shard i's local file, or None if it was not fetched (a partial download needs
    only the shards that cover its patterns). `verified`: False for a manifest made from a
    listing or from W&B's own references, whose files have no sha256 (NO_HASH)."""

    def __init__(self, index: Index, paths: Sequence[Path | None], *, verified: bool = True, source: str = "manifest"):
        self.index = index
        self.paths = list(paths)
        self.verified = verified
        self.source = source

    @property
    def digest(self) -> str:
        return self.index.digest

    @property
    def file_count(self) -> int:
        return self.index.files

    @property
    def total_size(self) -> int:
        return self.index.bytes

    def batches(self, shards: Iterable[int] | None = None) -> Iterator[list[FileEntry]]:
        """The entries of these shards (all, if None), a batch of a few thousand at a time."""
        for i in range(len(self.paths)) if shards is None else shards:
            path = self.paths[i]
            if path is None:
                raise IntegrityError(f"{self.source}: shard {i} was not fetched")
            yield from read_shard(path, f"{self.source} (shard {i})")

    def lines(self) -> Iterator[bytes]:
        """Every entry's line as stored, in path order (blank ones included): equal lines are equal
        entries, so a comparison decodes only the lines that differ."""
        return itertools.chain.from_iterable(self._line_batches())

    def _line_batches(self) -> Iterator[list[bytes]]:
        for i, path in enumerate(self.paths):
            if path is None:
                raise IntegrityError(f"{self.source}: shard {i} was not fetched")
            yield from read_lines(path)

    def __iter__(self) -> Iterator[FileEntry]:
        for batch in self.batches():
            yield from batch
