"""Data sets A and B: deterministic files, the next version of a data set, and tree checks."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .common import KiB, MiB
from .fmt import human_size

SIZES = {
    # name: {dataset: (file count, file size)}
    "full": {"A": (10_000, 100 * KiB), "B": (4, 256 * MiB)},
    "small": {"A": (1_000, 100 * KiB), "B": (4, 16 * MiB)},
}


@dataclass
class Dataset:
    name: str
    count: int
    size: int
    path: Path
    hashes: dict[str, str] = field(default_factory=dict)
    folders: int | None = None

    @property
    def total(self) -> int:
        return self.count * self.size

    def describe(self) -> str:
        folders = (
            self.folders if self.folders is not None else len({p.rsplit("/", 1)[0] for p in self.hashes if "/" in p})
        )
        where = f" in {folders} nested folders" if folders else ""
        return f"{self.count:,} files x {human_size(self.size)} = {human_size(self.total)}{where}"


def rel_path(name: str, i: int, count: int) -> str:
    if name == "A":  # part NN / shard NN / sample NNNNN: 100 files per leaf folder
        return f"part{i // 1000:02d}/shard{(i // 100) % 10:02d}/sample{i:05d}.bin"
    return f"model-{i:02d}.bin"


def _write_random(path: Path, seed: str, size: int) -> str:
    """Write `size` bytes of a PRNG seeded by `seed`; return their sha256."""
    rnd = random.Random(seed)
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        for start in range(0, size, 16 * MiB):  # randbytes() caps at 256 MiB - 1 (B's files are 256 MiB)
            chunk = rnd.randbytes(min(16 * MiB, size - start))
            sha.update(chunk)
            f.write(chunk)
    return sha.hexdigest()


def _load(ds: Dataset) -> bool:
    """An earlier run's tree (kept with --workdir/--keep): its hashes, read from the marker beside it."""
    marker = ds.path.parent / f".{ds.path.name}.json"
    if marker.exists() and ds.path.is_dir():
        ds.hashes = json.loads(marker.read_text())
        return True
    shutil.rmtree(ds.path, ignore_errors=True)
    return False


def _save(ds: Dataset) -> None:
    (ds.path.parent / f".{ds.path.name}.json").write_text(json.dumps(ds.hashes))


def make_dataset(root: Path, name: str, count: int, size: int) -> Dataset:
    """Deterministic content (a PRNG seeded by dataset and index); reused when already generated."""
    ds = Dataset(name, count, size, root / f"{name}-{count}x{size}")
    if _load(ds):
        return ds
    for i in range(count):
        rel = rel_path(name, i, count)
        p = ds.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.hashes[rel] = _write_random(p, f"wabucketref-bench/{name}/{i}", size)
    _save(ds)
    return ds


def make_changed(root: Path, ds: Dataset, share: float) -> Dataset:
    """The next version of `ds`: the same files (hard links) except `share` of them, spread over the
    folders (every 1/share-th file), rewritten with new content of the same size."""
    step = round(1 / share)
    new = Dataset(ds.name, ds.count, ds.size, root / f"{ds.path.name}-changed{step}", dict(ds.hashes))
    changed = {rel_path(ds.name, i, ds.count) for i in range(0, ds.count, step)}
    if _load(new):
        return new
    for rel in ds.hashes:
        (new.path / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel not in changed:
            os.link(ds.path / rel, new.path / rel)
    for rel in sorted(changed):
        new.hashes[rel] = _write_random(new.path / rel, f"wabucketref-bench/{ds.name}/changed/{rel}", ds.size)
    _save(new)
    return new


def share_pattern(count: int, share: float) -> tuple[str, int]:
    """An --include glob selecting `share` of A's `count` files (its first ones), and how many:
    one leaf folder of 100 files at full size (`part00/shard00/*`), a run of sample names otherwise."""
    n = max(1, round(count * share))
    digits = len(str(n - 1)) if n > 1 else 0
    if n == 100:
        return "part00/shard00/*", n
    return f"part00/shard00/sample{'0' * (5 - digits)}{'?' * digits}.bin", n


def tree_hashes(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            with open(p, "rb") as fh:
                out[p.relative_to(root).as_posix()] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def tree_stats(root: Path) -> tuple[int, int]:
    n = total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            n += 1
            total += os.stat(os.path.join(dirpath, f)).st_size
    return n, total
