"""Content manifests: every file of an artifact with its size and sha256.

The manifest is the unit of truth for a version: its digest decides the W&B version, it drives
the transfer plan (what the destination lacks), resume and verification, and the copy kept in
the bucket lets downloads work offline.

Format (JSON Lines, so 100k-file manifests are written and read as streams):
    {"format": "wabucketref-manifest/1", ...header fields...}
    {"path": "dir/file.bin", "size": 123, "sha256": "..."}
    ...
Entries are sorted by path. The copy logged to W&B has a content-only header, so that equal
content gives an equal digest whatever the alias or the time.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import IntegrityError, UsageError

FORMAT = "wabucketref-manifest/1"
NO_HASH = "0" * 64  # the sha256 of a file listed without one (artifacts of older tools: not verified)
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, "/"-separated, checked by safe_relpath
    size: int
    sha256: str


@dataclass
class Manifest:
    files: list[FileEntry]
    header: dict[str, Any] = field(default_factory=dict)  # the first line's fields besides "format"
    verified: bool = True  # False: made from a listing or from W&B's references, hashes unknown

    def __post_init__(self) -> None:
        self.files.sort(key=lambda f: f.path)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def select(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> Manifest:
        """The files whose path matches an `include` pattern (all, if none) and no `exclude`
        pattern: huggingface_hub's rules (fnmatch, where `*` also matches `/`; a pattern ending
        in `/` matches what is under that folder). A pattern that matches no file is a UsageError."""
        include, exclude = [_pattern(p) for p in include], [_pattern(p) for p in exclude]
        for option, patterns in (("--include", include), ("--exclude", exclude)):
            for p in patterns:
                if not any(fnmatch.fnmatchcase(f.path, p) for f in self.files):
                    raise UsageError(f"{option} {p!r} matches no file of the artifact ({len(self.files)} files)")
        files = [f for f in self.files if selected(f.path, include, exclude)]
        if not files:
            raise UsageError("--include and --exclude together leave no file of the artifact")
        return Manifest(files, dict(self.header), self.verified)

    def lines(self, header: dict[str, Any] | None = None) -> Iterator[bytes]:
        yield _dump({"format": FORMAT, **(self.header if header is None else header)})
        for f in self.files:
            yield _dump({"path": f.path, "size": f.size, "sha256": f.sha256})

    def dumps(self, header: dict[str, Any] | None = None) -> bytes:
        return b"".join(self.lines(header))

    def content_bytes(self) -> bytes:
        """The content-only serialisation: what W&B stores and what the digest is over."""
        return self.dumps(header={})

    def digest(self) -> str:
        return hashlib.sha256(self.content_bytes()).hexdigest()

    @classmethod
    def loads(cls, data: bytes | Iterable[bytes], source: str = "manifest") -> Manifest:
        lines = data.splitlines() if isinstance(data, (bytes, bytearray)) else data
        it = iter(lines)
        try:
            header = json.loads(next(it))
        except (StopIteration, ValueError) as e:
            raise IntegrityError(f"{source} is not a wabucketref manifest") from e
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise IntegrityError(f"{source} has an unknown format: {header.get('format')!r}")
        files = []
        for n, line in enumerate(it, start=2):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                entry = FileEntry(str(obj["path"]), int(obj["size"]), str(obj["sha256"]))
            except (ValueError, KeyError, TypeError) as e:
                raise IntegrityError(f"{source} line {n} is malformed") from e
            if entry.size < 0 or len(entry.sha256) != 64:
                raise IntegrityError(f"{source} line {n} is malformed")
            safe_relpath(entry.path)
            files.append(entry)
        check_unique(f.path for f in files)
        header.pop("format")
        return cls(files, header)


@dataclass(frozen=True)
class Change:
    path: str
    size_a: int | None  # None: not in A (added)
    size_b: int | None  # None: not in B (removed)


@dataclass
class ManifestDiff:
    """What differs from manifest A to manifest B, each list sorted by path."""

    added: list[Change]
    removed: list[Change]
    changed: list[Change]
    unchanged: int

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff(a: Manifest, b: Manifest) -> ManifestDiff:
    """Files added, removed and changed (size, else sha256) from a to b. An entry without a hash
    (NO_HASH) on either side is compared by size only: a folder's files of another size than
    their counterpart are not hashed."""
    in_a, in_b = a.by_path(), b.by_path()
    added = [Change(p, None, in_b[p].size) for p in sorted(in_b.keys() - in_a.keys())]
    removed = [Change(p, in_a[p].size, None) for p in sorted(in_a.keys() - in_b.keys())]
    changed, unchanged = [], 0
    for p in sorted(in_a.keys() & in_b.keys()):
        fa, fb = in_a[p], in_b[p]
        if fa.size != fb.size or (NO_HASH not in (fa.sha256, fb.sha256) and fa.sha256 != fb.sha256):
            changed.append(Change(p, fa.size, fb.size))
        else:
            unchanged += 1
    return ManifestDiff(added, removed, changed, unchanged)


def selected(path: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """Does `path` match an include pattern (or are there none) and no exclude pattern?"""
    include, exclude = [_pattern(p) for p in include], [_pattern(p) for p in exclude]
    return (not include or any(fnmatch.fnmatchcase(path, p) for p in include)) and not any(
        fnmatch.fnmatchcase(path, p) for p in exclude
    )


def _pattern(p: str) -> str:
    if not isinstance(p, str) or not p:
        raise UsageError(f"invalid pattern {p!r}: a glob on the path in the artifact, as in '*.bin' or 'images/'")
    return p + "*" if p.endswith("/") else p


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def safe_relpath(path: str) -> str:
    """Refuse a path that could write outside the destination folder."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(p in ("", ".", "..") for p in parts)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")  # a Windows drive
    ):
        raise IntegrityError(f"unsafe path in artifact: {path!r}")
    return path


def check_unique(paths: Iterable[str]) -> None:
    """Refuse names that collide on a case-insensitive file system (one would overwrite the other)."""
    seen: dict[str, str] = {}
    for p in paths:
        folded = p.casefold()
        if folded in seen:
            raise IntegrityError(f"paths collide when case is ignored: {seen[folded]!r} and {p!r}")
        seen[folded] = p


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class LocalFile:
    path: str  # relative, "/"-separated
    abspath: Path
    size: int


def scan_folder(root: Path) -> list[LocalFile]:
    """All regular files under root, sorted by relative path.

    Symlinks are followed when their target stays inside root (a file or a folder); a link
    that points outside root, or that dangles, is refused: uploading bytes from outside the
    folder the user named would be a surprise, and silently skipping would lose data.
    """
    root = Path(root)
    if not root.exists():
        raise UsageError(f"source folder does not exist: {root}")
    if not root.is_dir():
        raise UsageError(f"source is not a folder: {root}")
    real_root = root.resolve()
    files: list[LocalFile] = []

    def walk(folder: Path, rel: str, seen: frozenset) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except PermissionError as e:
            raise UsageError(f"cannot read folder: {folder}") from e
        for entry in entries:
            relpath = f"{rel}{entry.name}"
            p = Path(entry.path)
            if entry.is_symlink():
                target = p.resolve()
                if not target.exists():
                    raise UsageError(f"broken symlink in source folder: {relpath}")
                if target != real_root and real_root not in target.parents:
                    raise UsageError(f"symlink points outside the source folder: {relpath} -> {target}")
            st = p.stat()
            if stat.S_ISDIR(st.st_mode):
                real = p.resolve()
                if real in seen:  # a link loop
                    raise UsageError(f"symlink loop in source folder: {relpath}")
                walk(p, relpath + "/", seen | {real})
            elif stat.S_ISREG(st.st_mode):
                if not os.access(p, os.R_OK):
                    raise UsageError(f"cannot read file: {relpath}")
                files.append(LocalFile(relpath, p, st.st_size))
            # sockets, fifos and devices are not data: skip them

    walk(root, "", frozenset({real_root}))
    for f in files:
        try:
            safe_relpath(f.path)
            f.path.encode("utf-8")  # names that are not UTF-8 cannot be object keys
        except (IntegrityError, UnicodeEncodeError) as e:
            raise UsageError(f"file name not supported: {f.path!r}") from e
        if any(ord(c) < 32 or ord(c) == 127 for c in f.path):  # object stores refuse them; terminals garble them
            raise UsageError(f"file name with a control character not supported: {f.path!r}")
    return files
