"""A local folder's files, walked in path order (the order manifests and listings are in), one
folder's entries in memory at a time.

Symlinks are followed when their target stays inside the folder (a file or a folder); a link
that points outside it, or that dangles, is refused: uploading bytes from outside the folder the
user named would be a surprise, and silently skipping would lose data.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .errors import IntegrityError, UsageError
from .manifest import safe_relpath


class LocalFile(NamedTuple):  # a tuple: a walk makes one per file
    path: str  # relative, "/"-separated
    abspath: str
    size: int
    stat: os.stat_result | None = None  # as the walk saw it (the hash cache's key)


@dataclass(frozen=True)
class LocalTree:
    """A folder whose files were checked (names, links) and counted by one walk."""

    root: Path
    files: int
    bytes: int

    @classmethod
    def scan(cls, root: Path) -> LocalTree:
        """Walk root once: refuse what cannot be uploaded (UsageError), count the rest."""
        files = size = 0
        for f in walk(root):
            files += 1
            size += f.size
        return cls(root, files, size)

    def walk(self) -> Iterator[LocalFile]:
        """The files again, for the scan's checks were made: names and permissions are not checked twice."""
        return walk(self.root, check_files=False)

    def paths(self) -> Iterator[str]:
        """Every file's path, cheaply (names only: no stat, no order), for a bucket's own rules
        for names. A file in a linked folder is named by its path in the folder linked to."""
        for folder, _, names in os.walk(self.root):
            rel = os.path.relpath(folder, self.root)
            above = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            yield from (above + name for name in names)


def walk(root: Path, check_files: bool = True) -> Iterator[LocalFile]:
    """Every regular file under root, in path order (sockets, fifos and devices are not data:
    skipped). A folder `a` sorts as `a/`: its files come after a file `a.txt`. check_files:
    refuse a file name no bucket can hold, or a file that cannot be read (UsageError)."""
    root = Path(root)
    if not root.exists():
        raise UsageError(f"source folder does not exist: {root}")
    if not root.is_dir():
        raise UsageError(f"source is not a folder: {root}")
    real_root = os.path.realpath(root)
    yield from _folder(str(root), "", real_root, frozenset({real_root}), check_files)


def _folder(folder: str, rel: str, real_root: str, seen: frozenset[str], check: bool) -> Iterator[LocalFile]:
    # Names are statted and checked relative to the open folder: a lookup of the whole path
    # per file would be most of a big walk's time.
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError as e:
        raise UsageError(f"cannot read folder: {folder}") from e
    try:
        with os.scandir(fd) as it:
            children = sorted(_kinds(it, folder, rel, real_root))
        _refuse_case_collisions(rel, [name for _, name, _, _ in children])
        above = folder.rstrip("/") + "/"
        for _, name, is_dir, st in children:
            relpath, path = rel + name, above + name
            if is_dir:
                real = os.path.realpath(path)
                if real in seen:  # a link loop
                    raise UsageError(f"symlink loop in source folder: {relpath}")
                yield from _folder(path, relpath + "/", real_root, seen | {real}, check)
                continue
            if check:
                _check_name(relpath)
                if not os.access(name, os.R_OK, dir_fd=fd):
                    raise UsageError(f"cannot read file: {relpath}")
            yield LocalFile(relpath, path, st.st_size, st)
    finally:
        os.close(fd)


def _kinds(entries: Iterator[os.DirEntry[str]], folder: str, rel: str, real_root: str) -> Iterator[tuple]:
    """(sort key, name, is a folder, stat) of each folder and regular file; links checked."""
    for entry in entries:
        name = entry.name
        if entry.is_symlink():
            target = os.path.realpath(os.path.join(folder, name))
            if not os.path.exists(target):
                raise UsageError(f"broken symlink in source folder: {rel + name}")
            if target != real_root and not target.startswith(real_root + os.sep):
                raise UsageError(f"symlink points outside the source folder: {rel + name} -> {target}")
        st = entry.stat()
        if stat.S_ISDIR(st.st_mode):
            yield name + "/", name, True, st
        elif stat.S_ISREG(st.st_mode):
            yield name, name, False, st


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _check_name(path: str) -> None:
    try:
        safe_relpath(path)
        path.encode("utf-8")  # names that are not UTF-8 cannot be object keys
    except (IntegrityError, UnicodeEncodeError) as e:
        raise UsageError(f"file name not supported: {path!r}") from e
    if _CONTROL.search(path):  # object stores refuse them; terminals garble them
        raise UsageError(f"file name with a control character not supported: {path!r}")


def _refuse_case_collisions(rel: str, names: list[str]) -> None:
    """Two names of one folder that differ only in case would overwrite each other where case
    is ignored; checked folder by folder, every path is covered."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise UsageError(f"paths collide when case is ignored: {rel + other!r} and {rel + name!r}")


def read_ahead(paths: Iterable[str]) -> None:
    """Ask the disk for these files (the kernel reads them in the background): a walk a batch
    ahead of the readers keeps the disk busy with many reads at once, where reading one small
    file after another waits for each. Where the system has no such call (macOS), nothing."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # its reader will say
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        os.close(fd)
