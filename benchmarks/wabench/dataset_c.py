"""Data set C: many small files, N x 1 KiB in folders of 1,000 (ImageNet-1k's train set has 1,281,167).

A file's content is a pure function of its index (and of whether it is in its changed state), so
the tree needs no stored hashes: a million sha256 hex strings would cost the benchmark process
hundreds of MB, and any copy can be checked against the function instead."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .common import KiB
from .datasets import Dataset

FILE_SIZE = KiB
PER_FOLDER = 1_000
COUNTS = (10_000, 1_281_167)
SMALL_COUNTS = (2_000, 5_000)
# The next version changes 1% of the files in place (same size, new content): every 100th, from the 50th.
CHANGE_EVERY, CHANGE_AT = 100, 50
_NAME = re.compile(r"d(\d{5})/f(\d{8})\.bin")


def rel_path(i: int) -> str:
    """Eight digits: the same names serve the 10,000,000-entry synthetic version."""
    return f"d{i // PER_FOLDER:05d}/f{i:08d}.bin"


def index_of(rel: str) -> int | None:
    m = _NAME.fullmatch(rel)
    return int(m.group(2)) if m and int(m.group(1)) == int(m.group(2)) // PER_FOLDER else None


def content(i: int, changed: bool = False) -> bytes:
    # SHAKE-128 as the PRNG: deterministic like A/B's random.Random, and several times faster per
    # small file (a million of them are generated and checked)
    seed = f"wabucketref-bench/C/{i}" + ("/changed" if changed else "")
    return hashlib.shake_128(seed.encode()).digest(FILE_SIZE)


def is_changed(i: int) -> bool:
    return i % CHANGE_EVERY == CHANGE_AT


@dataclass
class ManyFiles:
    """C at one file count, on disk; `changed` says which content its 1% of changed files hold."""

    count: int
    path: Path
    changed: bool = False

    @property
    def name(self) -> str:
        return f"C-{self.count}"

    @property
    def total(self) -> int:
        return self.count * FILE_SIZE

    @property
    def changed_count(self) -> int:
        return len(range(CHANGE_AT, self.count, CHANGE_EVERY))

    @property
    def folders(self) -> int:
        return -(-self.count // PER_FOLDER)

    def as_dataset(self) -> Dataset:
        """For the A/B contenders' command lines (s5cmd, rclone, wabucketref-s3): name, path, size."""
        return Dataset(self.name, self.count, FILE_SIZE, self.path, folders=self.folders)

    def generate(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        for f in range(self.folders):
            (self.path / f"d{f:05d}").mkdir(parents=True)
        for i in range(self.count):
            with open(self.path / rel_path(i), "wb") as fh:
                fh.write(content(i))
        self.changed = False

    def set_changed(self, changed: bool) -> None:
        """Rewrite the 1% in place (same inode, same size) with their changed or original content."""
        for i in range(CHANGE_AT, self.count, CHANGE_EVERY):
            with open(self.path / rel_path(i), "r+b") as fh:
                fh.write(content(i, changed))
        self.changed = changed


def include_pattern(count: int) -> tuple[str, int]:
    """An --include glob selecting about 1% of C's files, and how many it selects: one folder in 100
    (`d???00/*`) once there are 100 folders; below that, one file in 100 (`*00.bin`)."""
    folders = -(-count // PER_FOLDER)
    if folders >= 100:
        n = sum(min(PER_FOLDER, count - f * PER_FOLDER) for f in range(0, folders, 100))
        return "d???00/*", n
    return "*00.bin", len(range(0, count, 100))


def check_tree(root: Path, count: int, changed: bool, pattern: str | None, every_file: bool) -> str:
    """'' if `root` holds exactly C's files (those `pattern` selects) of the given version, else what
    is wrong. every_file compares each file's bytes; otherwise only names and sizes."""
    seen = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            i = index_of(rel)
            if i is None or i >= count or (pattern is not None and not fnmatch.fnmatchcase(rel, pattern)):
                return f"unexpected file {rel}"
            if every_file:
                with open(path, "rb") as fh:
                    if fh.read() != content(i, changed and is_changed(i)):
                        return f"{rel}: content differs from the version's"
            elif os.stat(path).st_size != FILE_SIZE:
                return f"{rel}: {os.stat(path).st_size} bytes, expected {FILE_SIZE}"
            seen += 1
    expected = include_pattern(count)[1] if pattern is not None else count
    return "" if seen == expected else f"{seen} files, expected {expected}"


def space_needed(count: int, block: int) -> tuple[int, int]:
    """Bytes and inodes one file count needs at its peak: three local copies at once (the tree, a
    bucket copy, a download; 1 KiB files take a whole block each) and four uploads in SeaweedFS
    (about 2 KiB each with its metadata), plus 2 GiB of margin."""
    per_file = 3 * max(block, FILE_SIZE) + 4 * 2 * KiB
    return count * per_file + (2 << 30), 3 * count + 10 * (count // PER_FOLDER) + 10_000


def space_error(work: Path, count: int) -> str:
    """'' if the work folder's file system has room for `count` files, else a message that says so."""
    st = os.statvfs(work)
    need, inodes = space_needed(count, st.f_frsize)
    free, free_inodes = st.f_bavail * st.f_frsize, st.f_favail
    if st.f_files == 0:  # a file system without an inode table (btrfs) reports none
        free_inodes = inodes
    if free >= need and free_inodes >= inodes:
        return ""
    return (
        f"data set C at {count:,} files needs about {need / (1 << 30):.1f} GiB and {inodes:,} inodes free in {work}; "
        f"it has {free / (1 << 30):.1f} GiB and {free_inodes:,} inodes (df {work}): free some, or choose --workdir "
        "elsewhere or smaller --c-files"
    )
