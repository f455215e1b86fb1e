"""Files landing in a download's destination: never half-written under their final name.

Each file is written to a part file beside it (`.NAME.XXXXXXXX.wabucket-part`), checked (size,
sha256), then renamed into place; part files a killed run left are removed by the next one.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from .errors import IntegrityError, WaBucketError
from .manifest import FileEntry, safe_relpath

STREAM_CHUNK = 8 << 20
PART_SUFFIX = ".wabucket-part"
_PART_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}" + re.escape(PART_SUFFIX))  # see open_part


def hash_local(path: Path, part_size: int) -> tuple[str, list[bytes]]:
    """sha256 of a file, plus the MD5 of each part of `part_size` (to compare S3 ETags)."""
    sha = hashlib.sha256()
    md5s: list[bytes] = []
    with open(path, "rb") as f:
        while True:
            part = hashlib.md5()
            got = 0
            while got < part_size and (chunk := f.read(min(STREAM_CHUNK, part_size - got))):
                sha.update(chunk)
                part.update(chunk)
                got += len(chunk)
            if got == 0 and md5s:
                break
            md5s.append(part.digest())
            if got < part_size:
                break
    return sha.hexdigest(), md5s


def prepare_dest(dest: Path, paths: list[str]) -> set[str]:
    """Make every folder the files need (once each, never through a link that leaves dest) and
    return the paths that already exist there (usually none: then nothing is hashed)."""
    dest.mkdir(parents=True, exist_ok=True)
    fresh = not any(os.scandir(dest))
    real = os.path.realpath(dest)
    for folder in sorted({p.rpartition("/")[0] for p in paths if "/" in safe_relpath(p)}):
        target = dest / folder
        if not os.path.realpath(target).startswith(real + os.sep):  # checked before anything is made
            raise IntegrityError(f"{folder}: leads outside the destination folder")
        try:
            target.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise WaBucketError(
                f"{e.filename}: a file is in the way of the folder {folder}/ that the artifact needs"
            ) from e
    return set() if fresh else _scan_dest(dest, paths)


def _scan_dest(dest: Path, paths: list[str]) -> set[str]:
    """One listing per folder: the paths already there, and the part files a killed run (SIGKILL, a
    preempted job) left beside them deleted (every try writes a part file of its own: none is reused)."""
    names: dict[str, set[str]] = {}
    for p in paths:
        folder, _, name = p.rpartition("/")
        names.setdefault(folder, set()).add(name)
    present = set()
    for folder, wanted in names.items():
        try:
            entries = list(os.scandir(dest / folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name in wanted:
                present.add(f"{folder}/{entry.name}" if folder else entry.name)
            elif (
                (m := _PART_NAME.fullmatch(entry.name))
                and m.group(1) in {part_stem(n) for n in wanted}
                and entry.is_file(follow_symlinks=False)
            ):
                os.unlink(entry.path)
    return present


def local_matches(path: Path, f: FileEntry, verify: bool) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != f.size:
            return False
    except OSError:
        return False
    return not verify or hash_local(path, 1 << 62)[0] == f.sha256


def part_stem(name: str) -> str:
    """A part file's name before its random tag: the file's name, or a digest of a name too long to
    extend (a file name has at most 255 bytes)."""
    raw = os.fsencode(name)
    return name if len(raw) <= 200 else "~" + hashlib.sha256(raw).hexdigest()[:40]


def open_part(final: Path) -> tuple[Path, int]:
    """A new part file beside `final` (`.NAME.XXXXXXXX.wabucket-part`), open for writing."""
    tmp = final.with_name(f".{part_stem(final.name)}.{os.urandom(4).hex()}{PART_SUFFIX}")
    return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)


def check_file(f: FileEntry, size: int, sha: str, verify: bool) -> None:
    if size != f.size:
        raise IntegrityError(f"{f.path}: got {size} bytes from the bucket, manifest says {f.size}")
    if verify and sha != f.sha256:
        raise IntegrityError(f"{f.path}: content in the bucket does not match the manifest (sha256 differs)")


def land(final: Path, data: Any, f: FileEntry, verify: bool) -> None:
    """Check a small file's bytes, then write them under a temporary name and move it into place.

    Plain os calls: this runs once per file, and a buffered file object costs more than the write.
    """
    check_file(f, len(data), hashlib.sha256(data).hexdigest(), verify)
    tmp, fd = open_part(final)
    try:
        try:
            pwrite_all(fd, data, 0)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """pwrite may write less than asked (a disk filling up): write the rest, or raise its error."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
