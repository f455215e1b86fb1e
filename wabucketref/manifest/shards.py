"""Shards: sorted runs of entries, each a zstd-compressed file of canonical JSON lines.

A shard's identity is the sha256 of its uncompressed lines, so it does not depend on how it was
compressed; the lines are exactly those the version digest covers.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zstandard

from ..errors import IntegrityError
from .entry import FileEntry, check_safe_relpaths, decode_lines, line_blocks

DECODE_CHUNK = 1 << 18  # uncompressed bytes decoded at a time: about a thousand entries
WRITE_BATCH = 512  # lines joined per write into the compressor
LEVEL = 1  # as small as 3 on these lines (hex digests), twice as fast


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest's index says of one shard."""

    first: str  # its first and last paths
    last: str
    files: int
    bytes: int
    sha256: str  # of its uncompressed lines

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any, source: str) -> ShardInfo:
        try:
            info = cls(str(obj["first"]), str(obj["last"]), int(obj["files"]), int(obj["bytes"]), str(obj["sha256"]))
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"{source}: a shard of its index is malformed") from e
        if info.files < 1 or info.bytes < 0 or len(info.sha256) != 64 or info.first > info.last:
            raise IntegrityError(f"{source}: a shard of its index is malformed")
        return info


class ShardWriter:
    """Writes one shard file from entries given in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close() or abort()
        self._z = zstandard.ZstdCompressor(level=LEVEL).stream_writer(self._file, closefd=False)
        self._sha = hashlib.sha256()
        self._lines: list[bytes] = []
        self.first: str | None = None
        self.last = ""
        self.files = 0
        self.bytes = 0

    def add(self, e: FileEntry, line: bytes) -> None:
        if self.first is None:
            self.first = e.path
        self.last = e.path
        self.files += 1
        self.bytes += e.size
        self._lines.append(line)
        if len(self._lines) >= WRITE_BATCH:
            self._write()

    def _write(self) -> None:
        block = b"".join(self._lines)
        self._lines = []
        self._sha.update(block)
        self._z.write(block)

    def close(self) -> ShardInfo:
        self._write()
        self._z.close()
        self._file.close()
        return ShardInfo(self.first or "", self.last, self.files, self.bytes, self._sha.hexdigest())

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def read_shard(path: Path, source: str) -> Iterator[list[FileEntry]]:
    """A shard file's entries, a batch at a time (a few thousand: memory stays flat)."""
    for raw in _raw_lines(path):
        yield decode_lines(raw, source)


def read_lines(path: Path) -> Iterator[list[bytes]]:
    """A shard file's lines as stored (without their newline; blank ones included), a batch at a time."""
    for raw in _raw_lines(path):
        yield raw.split(b"\n")[:-1]


def _raw_lines(path: Path) -> Iterator[bytes]:
    """A shard file's uncompressed bytes, in blocks that end at a line's end."""
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as reader:
        yield from line_blocks(reader, DECODE_CHUNK)


def accept_shard(data: bytes, info: ShardInfo, path: Path, source: str) -> None:
    """Keep a shard fetched from elsewhere at `path`, once checked against its index entry: the
    sha256 of its lines, and every entry (order, safe paths, first, last, count, bytes), in one
    pass over its lines."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    differs = IntegrityError(f"{source} does not match the manifest's index (sha256 differs)")
    try:
        sha = hashlib.sha256()
        blocks = _hashing(_raw_lines(tmp), sha)
        try:
            try:
                extent = _extent(blocks, source)
            except IntegrityError:
                for _ in blocks:  # the whole hash: a shard that is not the indexed one says so
                    pass
                if sha.hexdigest() != info.sha256:
                    raise differs from None
                raise
        except zstandard.ZstdError as e:
            raise IntegrityError(f"{source} is not a zstd-compressed shard: {e}") from e
        if sha.hexdigest() != info.sha256:
            raise differs
        if extent != (info.first, info.last, info.files, info.bytes):
            raise IntegrityError(f"{source} does not hold what the manifest's index says")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _hashing(blocks: Iterator[bytes], sha: Any) -> Iterator[bytes]:
    for block in blocks:
        sha.update(block)
        yield block


def _extent(blocks: Iterator[bytes], source: str) -> tuple[str | None, str | None, int, int]:
    """The first and last paths, count and bytes of a shard's entries, each checked: a safe path,
    after the one before it (a block at a time: the checks run in C, not per entry in Python)."""
    first, last, files, size = None, None, 0, 0
    for raw in blocks:
        entries = decode_lines(raw, source)
        if not entries:
            continue
        paths = [e.path for e in entries]
        check_safe_relpaths(paths)
        before = paths[:-1] if last is None else [last, *paths[:-1]]
        after = paths[1:] if last is None else paths
        if not all(map(operator.lt, before, after)):
            bad = next(y for x, y in zip(before, after, strict=True) if not x < y)
            raise IntegrityError(f"{source}: {bad!r} is out of order or repeated")
        first = paths[0] if first is None else first
        last = paths[-1]
        files += len(paths)
        size += sum(e.size for e in entries)
    return first, last, files, size
