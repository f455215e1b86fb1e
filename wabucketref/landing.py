"""Files landing in a download's destination: never half-written under their final name.

Each file is written to a part file beside it (`.NAME.XXXXXXXX.wabucket-part`), checked (size,
sha256), then renamed into place; part files a killed run left are removed by the next one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

from .errors import IntegrityError, WaBucketError
from .hashcache import HashCache, settle
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


def local_matches(path: Path, f: FileEntry, verify: bool, hashes: HashCache) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != f.size:
            return False
        return not verify or hashes.sha256(path) == f.sha256
    except OSError:
        return False


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


def land(final: Path, data: Any, f: FileEntry, verify: bool) -> str:
    """Check a small file's bytes, then write them under a temporary name and move it into place.
    Returns their sha256.

    Plain os calls: this runs once per file, and a buffered file object costs more than the write.
    """
    sha = hashlib.sha256(data).hexdigest()
    check_file(f, len(data), sha, verify)
    tmp, fd = open_part(final)
    try:
        try:
            pwrite_all(fd, data, 0)
            settle(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sha


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """pwrite may write less than asked (a disk filling up): write the rest, or raise its error."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class Reuse:
    """Files of other folders (`--reuse`, typically an earlier version's) that stand in for a
    download: same size and sha256. Only files of a wanted size are ever hashed, each once; the
    file at the same path is tried first. A reused file is hard-linked into place where the file
    system allows (a later download replaces files, never writes into them), else copied and
    checked."""

    def __init__(self, folders: list[Path], cache: HashCache | None = None) -> None:
        self.folders = folders
        self.cache = cache or HashCache(None)
        self._scan: asyncio.Future[None] | None = None
        self._by_size: dict[int, list[Path]] = {}
        self._by_path: dict[str, list[Path]] = {}
        self._size: dict[Path, int] = {}
        self._known: dict[Path, str] = {}  # hashes the cache remembered, looked up while indexing
        self._hashes: dict[Path, asyncio.Future[str | None]] = {}
        self._by_sha: dict[str, Path] = {}
        self._of_size: dict[int, asyncio.Future[None]] = {}

    async def find(self, f: FileEntry) -> Path | None:
        """A file with f's size and sha256, if one of the folders has it."""
        if self._scan is None or self._scan.cancelled():
            self._scan = asyncio.ensure_future(asyncio.to_thread(self._index))
        await asyncio.shield(self._scan)
        if f.size not in self._by_size:
            return None
        for candidate in self._by_path.get(f.path, []):  # usually the one: an earlier version's file
            if self._size[candidate] == f.size and await self._sha256(candidate) == f.sha256:
                return candidate
        every = self._of_size.get(f.size)
        if every is None or every.cancelled():  # every file of that size, side by side, each once
            every = self._of_size[f.size] = asyncio.ensure_future(self._hash_all(self._by_size[f.size]))
        await asyncio.shield(every)
        return self._by_sha.get(f.sha256)

    async def _hash_all(self, paths: list[Path]) -> None:
        hashes = await asyncio.gather(*map(self._hashing, paths))  # futures: no task per file
        for path, sha in zip(paths, hashes, strict=True):
            if sha is not None:
                self._by_sha.setdefault(sha, path)

    def _index(self) -> None:
        for folder in self.folders:
            for top, dirs, names in os.walk(folder):
                dirs.sort()
                for name in sorted(names):
                    path = Path(top, name)
                    try:
                        st = path.lstat()
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode) or name.endswith(PART_SUFFIX):  # links are not followed
                        continue
                    self._size[path] = st.st_size
                    self._by_size.setdefault(st.st_size, []).append(path)
                    self._by_path.setdefault(path.relative_to(folder).as_posix(), []).append(path)
                    if (sha := self.cache.known(path, st)) is not None:
                        self._known[path] = sha

    def _hashing(self, path: Path) -> asyncio.Future[str | None]:
        """The one hashing of path (started on first use; done at once if the cache knew it)."""
        fut = self._hashes.get(path)
        if fut is None or fut.cancelled():
            if path in self._known:
                fut = asyncio.get_running_loop().create_future()
                fut.set_result(self._known[path])
            else:
                fut = asyncio.ensure_future(asyncio.to_thread(self._sha256_or_none, path))
            self._hashes[path] = fut
        return fut

    async def _sha256(self, path: Path) -> str | None:
        sha = await asyncio.shield(self._hashing(path))
        if sha is not None:
            self._by_sha.setdefault(sha, path)
        return sha

    def place(self, src: Path, final: Path, f: FileEntry) -> bool:
        """Put src's content at final (under a part file first); False if a copy did not match f."""
        tmp = final.with_name(f".{part_stem(final.name)}.{os.urandom(4).hex()}{PART_SUFFIX}")
        try:
            try:
                os.link(src, tmp)
            except OSError:  # another file system, no hard links there, or too many links
                if not _copy_checked(src, tmp, f):
                    tmp.unlink(missing_ok=True)
                    return False
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.cache.remember_now(final, f.sha256)  # a link changed the file's ctime: src's entry too
        return True

    def _sha256_or_none(self, path: Path) -> str | None:
        try:
            return self.cache.sha256(path)
        except OSError:  # vanished or unreadable: not a candidate
            return None


def _copy_checked(src: Path, tmp: Path, f: FileEntry) -> bool:
    sha = hashlib.sha256()
    size = 0
    with open(src, "rb") as r, open(tmp, "xb") as w:
        while chunk := r.read(STREAM_CHUNK):
            sha.update(chunk)
            w.write(chunk)
            size += len(chunk)
        w.flush()
        settle(w.fileno())
    return size == f.size and sha.hexdigest() == f.sha256
