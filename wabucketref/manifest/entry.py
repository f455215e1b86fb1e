"""One file of a version (path, size, sha256), the JSON line it is stored as, and path safety."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO

import blake3
import msgspec

from ..errors import IntegrityError

NO_HASH = "0" * 64  # the sha256 of a file listed without one (artifacts of older tools: not verified)
HASH_CHUNK = 1 << 20


Digest = Annotated[str, msgspec.Meta(min_length=64, max_length=64)]


class FileEntry(msgspec.Struct, frozen=True, gc=False):
    path: str  # relative, "/"-separated, checked by safe_relpath
    size: Annotated[int, msgspec.Meta(ge=0)]
    sha256: Digest  # the content's identity: the version's digest is over these
    blake3: Digest | None = None  # a cheaper digest a download checks instead, where an upload computed it


_json_str = msgspec.json.encode
DECODER = msgspec.json.Decoder(FileEntry)


def entry_line(e: FileEntry) -> bytes:
    """The canonical line of an entry's content: keys sorted, no spaces, UTF-8 (what the digest
    covers, so equal content gives an equal digest with or without a blake3). msgspec escapes a
    string exactly as json.dumps(ensure_ascii=False) does (tests check it)."""
    return b'{"path":%s,"sha256":"%s","size":%d}\n' % (_json_str(e.path), e.sha256.encode(), e.size)


def stored_line(e: FileEntry) -> bytes:
    """The line an entry is stored as: its content line, with its blake3 where it has one."""
    if e.blake3 is None:
        return entry_line(e)
    return b'{"blake3":"%s","path":%s,"sha256":"%s","size":%d}\n' % (
        e.blake3.encode(),
        _json_str(e.path),
        e.sha256.encode(),
        e.size,
    )


class Hashing:
    """The two digests of bytes fed in order: an upload computes blake3 beside sha256, for the
    downloads that check it instead (blake3 releases the GIL as hashlib does)."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.b3 = blake3.blake3()
        self.size = 0

    def update(self, data: Any) -> None:
        self.sha.update(data)
        self.b3.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        """The sha256 (as hashlib's objects give theirs)."""
        return self.sha.hexdigest()

    def entry(self, path: str) -> FileEntry:
        return FileEntry(path, self.size, self.sha.hexdigest(), self.b3.hexdigest())


def hashed(path: str, data: Any) -> FileEntry:
    """The entry of a file of these bytes."""
    h = Hashing()
    h.update(data)
    return h.entry(path)


def checker(e: FileEntry) -> tuple[Any, str]:
    """(a new hasher, the digest it must give) to check a file's bytes: blake3 where the entry has
    it (about 2.5x less CPU than sha256), else sha256."""
    if e.blake3 is not None:
        return blake3.blake3(), e.blake3
    return hashlib.sha256(), e.sha256


def decode_lines(data: bytes, source: str) -> list[FileEntry]:
    """Entries of JSON lines (blank lines allowed); IntegrityError naming `source` if one is malformed."""
    try:
        return DECODER.decode_lines(data)
    except msgspec.MsgspecError as e:
        raise IntegrityError(f"{source} is malformed: {e}") from e


def safe_relpath(path: str) -> str:
    """Refuse a path that could write outside the destination folder: absolute, with an empty,
    `.` or `..` segment, a backslash, a NUL, or a Windows drive."""
    wrapped = f"/{path}/"
    if (
        not path
        or path[0] == "/"
        or path[-1] == "/"
        or "//" in path
        or "/./" in wrapped
        or "/../" in wrapped
        or "\\" in path
        or "\0" in path
        or path[1:2] == ":"
    ):
        raise IntegrityError(f"unsafe path in artifact: {path!r}")
    return path


def check_safe_relpaths(paths: list[str]) -> None:
    """safe_relpath for many paths at once: a few substring searches over them all, joined by
    NUL, then path by path only if one finds what might break a rule (or a path holds a NUL)."""
    joined = "\0".join(paths)
    wrapped = f"/{joined}/".replace("\0", "/")
    if (
        joined.count("\0") != len(paths) - 1
        or "//" in wrapped  # an empty path, a leading or trailing "/", or "//"
        or "/./" in wrapped
        or "/../" in wrapped
        or "\\" in joined
        or ":" in joined
    ):
        for path in paths:
            safe_relpath(path)


class CaseFolds:
    """Finds, among paths given in sorted order, two that collide on a case-insensitive file
    system (one would overwrite the other). Sorted paths visit each folder's subtree in one
    stretch, so only the folders above the current path are remembered, each with the names of
    its children seen so far: memory grows with the widest folder, not with the file count."""

    def __init__(self) -> None:
        self._open: list[tuple[str, dict[str, str]]] = [("", {})]  # (folder, folded child -> child)

    def check(self, path: str) -> None:
        parts = path.split("/")
        depth = 1  # folders of self._open that are ancestors of path
        while depth < len(self._open) and depth <= len(parts) - 1 and self._open[depth][0] == "/".join(parts[:depth]):
            depth += 1
        del self._open[depth:]
        for level in range(depth - 1, len(parts)):
            children = self._open[level][1]
            name = parts[level]
            folded = name.casefold()
            seen = children.setdefault(folded, name)
            if seen != name:
                folder = self._open[level][0]
                first, second = (f"{folder}/{seen}", f"{folder}/{name}") if folder else (seen, name)
                raise IntegrityError(f"paths collide when case is ignored: {first!r} and {second!r}")
            if level < len(parts) - 1 and level + 1 >= len(self._open):
                self._open.append(("/".join(parts[: level + 1]), {}))


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def line_blocks(f: BinaryIO, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A stream's bytes in blocks that end at a line's end (a last line without one, too)."""
    rest = b""
    while data := f.read(chunk):
        data = rest + data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield data[:cut]
    if rest.strip():
        yield rest
