"""The one writer of manifests: entries in (in any order), sorted shards and the digest out.

Entries are kept sorted in runs of RUN_FILES. A run that follows what was written goes straight
into the shards; one that does not (a large file that finished after thousands of small ones) is
spilled to disk, and everything is merged once at the end. Memory holds one run, whatever the
file count.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import operator
from collections.abc import Iterable, Iterator
from pathlib import Path

from .. import settings
from ..errors import IntegrityError
from .entry import FileEntry, entry_line, stored_line
from .reader import Index, Manifest
from .shards import ShardInfo, ShardWriter, read_shard

FORMAT_1 = "wabucketref-manifest/1"
CONTENT_HEADER = b'{"format":"' + FORMAT_1.encode() + b'"}\n'  # the digest's first line, as format 1 has it
RUN_FILES = 20_000

_path = operator.attrgetter("path")


class _Shards:
    """Sorted entries into shard files of `per_shard` entries, and the digest over all of them."""

    def __init__(self, folder: Path, name: str, per_shard: int) -> None:
        self.folder, self.name, self.per_shard = folder, name, per_shard
        self.digest = hashlib.sha256(CONTENT_HEADER)
        self.infos: list[ShardInfo] = []
        self.paths: list[Path] = []
        self.current: ShardWriter | None = None
        self.last: str | None = None

    def add(self, e: FileEntry) -> None:
        if self.last is not None and e.path <= self.last:
            what = "twice" if e.path == self.last else "out of order"
            raise IntegrityError(f"path {e.path!r} appears {what} in the manifest")
        self.last = e.path
        if self.current is None:
            path = self.folder / f"{self.name}-{len(self.paths):05d}.jsonl.zst"
            self.current = ShardWriter(path)
            self.paths.append(path)
        line = stored_line(e)
        self.digest.update(line if e.blake3 is None else entry_line(e))
        self.current.add(e, line)
        if self.current.files >= self.per_shard:
            self.infos.append(self.current.close())
            self.current = None

    def close(self) -> Index:
        if self.current is not None:
            self.infos.append(self.current.close())
            self.current = None
        files, size = sum(s.files for s in self.infos), sum(s.bytes for s in self.infos)
        return Index(self.digest.hexdigest(), files, size, tuple(self.infos))


class ManifestWriter:
    """Collects a version's entries (any order) into sorted shards in `folder`."""

    def __init__(
        self, folder: Path, *, verified: bool = True, source: str = "manifest", run_files: int = RUN_FILES
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.verified = verified
        self.source = source
        self._run_files = run_files
        self._per_shard = settings.shard_files()
        self._out = _Shards(folder, "out0", self._per_shard)
        self._runs: list[Path] = []
        self._buffer: list[FileEntry] = []

    def add(self, e: FileEntry) -> None:
        self._buffer.append(e)
        if len(self._buffer) >= self._run_files:
            self._flush()

    def extend(self, entries: Iterable[FileEntry]) -> None:
        for e in entries:
            self.add(e)

    def _flush(self) -> None:
        if not self._buffer:
            return
        run = sorted(self._buffer, key=_path)
        self._buffer = []
        if not self._runs and (self._out.last is None or run[0].path > self._out.last):
            for e in run:
                self._out.add(e)
            return
        spilled = _Shards(self.folder, f"run{len(self._runs) + 1}", len(run))
        for e in run:
            spilled.add(e)
        spilled.close()
        self._runs.extend(spilled.paths)

    def close(self) -> Manifest:
        self._flush()
        index = self._out.close()
        paths = self._out.paths
        if self._runs:  # merge the shards written so far with the spilled runs
            merged = _Shards(self.folder, "out1", self._per_shard)
            for e in heapq.merge(*(self._entries(p) for p in [*paths, *self._runs]), key=_path):
                merged.add(e)
            index = merged.close()
            for p in [*paths, *self._runs]:
                p.unlink()
            paths = merged.paths
        return Manifest(index, paths, verified=self.verified, source=self.source)

    def _entries(self, path: Path) -> Iterator[FileEntry]:
        return itertools.chain.from_iterable(read_shard(path, self.source))


def write_manifest(
    folder: Path, entries: Iterable[FileEntry], *, verified: bool = True, source: str = "manifest"
) -> Manifest:
    """A manifest of `entries` (any order) in `folder`."""
    writer = ManifestWriter(folder, verified=verified, source=source)
    writer.extend(entries)
    return writer.close()
