"""The stored forms of a manifest, in W&B and in the bucket's records.

Format 1 (every version up to settings.shard_files() files, and all versions written before
shards existed): one JSON Lines document, a header line then one line per file, sorted by path:

    {"format": "wabucketref-manifest/1", ...header fields...}
    {"path": "dir/file.bin", "sha256": "...", "size": 123}

Format 2 (bigger versions): one JSON line, the index, whose shards are kept in the bucket:

    {"format": "wabucketref-manifest/2", ...header fields..., "digest": "...", "files": N,
     "bytes": B, "shards": [{"first": PATH, "last": PATH, "files": n, "bytes": b, "sha256": ...}]}

The copy logged to W&B has no header fields (content only), so equal content gives an equal
document whatever the alias or the time; the bucket's record adds where the data is (layout.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import IntegrityError
from .entry import decode_lines, line_blocks, safe_relpath, stored_line
from .reader import Index, Manifest
from .writer import FORMAT_1, ManifestWriter

FORMAT_2 = "wabucketref-manifest/2"
READ_CHUNK = 1 << 20


@dataclass
class Stored:
    """A stored manifest as read: its header fields, its index and, for format 1, its entries
    already on local disk (format 2's shards are fetched by whoever knows the bucket)."""

    header: dict[str, Any]
    index: Index
    manifest: Manifest | None


def is_sharded(manifest: Manifest, shard_files: int) -> bool:
    return manifest.file_count > shard_files


def format1_lines(manifest: Manifest, header: dict[str, Any]) -> Iterator[bytes]:
    yield _dump({"format": FORMAT_1, **header})
    for batch in manifest.batches():
        for e in batch:
            yield stored_line(e)


def format1_bytes(manifest: Manifest, header: dict[str, Any]) -> bytes:
    return b"".join(format1_lines(manifest, header))


def index_bytes(index: Index, header: dict[str, Any]) -> bytes:
    return _dump({"format": FORMAT_2, **header, **index.to_json()})


def read_stored(data: bytes | BinaryIO, folder: Path, source: str) -> Stored:
    """Parse a stored manifest (either format); format 1's entries are written into `folder`."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        header = json.loads(f.readline())
    except ValueError as e:
        raise IntegrityError(f"{source} is not a wabucketref manifest") from e
    if not isinstance(header, dict):
        raise IntegrityError(f"{source} is not a wabucketref manifest")
    form = header.pop("format", None)
    if form == FORMAT_2:
        index = Index.from_json(header, source)
        del header["shards"]
        return Stored(header, index, None)
    if form != FORMAT_1:
        raise IntegrityError(f"{source} has an unknown format: {form!r}")
    writer = ManifestWriter(folder, source=source)
    for block in line_blocks(f, READ_CHUNK):
        for entry in decode_lines(block, source):
            safe_relpath(entry.path)
            writer.add(entry)
    manifest = writer.close()
    return Stored(header, manifest.index, manifest)


def peek_header(data: bytes) -> dict[str, Any] | None:
    """The header fields of a stored manifest from its first bytes (None if they hold no whole
    first line, or not a manifest): enough to list versions without reading file lists."""
    first, newline, _ = data.partition(b"\n")
    if not newline:
        return None
    try:
        header = json.loads(first)
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("format") not in (FORMAT_1, FORMAT_2):
        return None
    return header


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode() + b"\n"
