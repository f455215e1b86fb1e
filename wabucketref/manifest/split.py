"""A version's files split among COUNT workers (training nodes): a pure function of the sorted
entries and COUNT, so every machine computes the same split from the manifest alone.

Files are dealt in path order, each to the share with the fewest bytes so far (then the fewest
files, then the lowest index): every file lands in exactly one share, the shares' bytes differ
by at most the largest file, and each share draws from the whole version rather than from one
end of it (a node does not get only the first classes of a dataset)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from .entry import FileEntry


def split(entries: Iterable[FileEntry], count: int) -> Iterator[tuple[int, FileEntry]]:
    """Each entry with the index of the share it falls in."""
    shares = [(0, 0, i) for i in range(count)]  # (bytes, files, index): a heap, the lightest first
    for e in entries:
        size, files, i = shares[0]
        yield i, e
        heapq.heapreplace(shares, (size + e.size, files + 1, i))


def share(entries: Iterable[FileEntry], index: int, count: int) -> Iterator[FileEntry]:
    """The entries of share `index` of `count`."""
    return (e for i, e in split(entries, count) if i == index)
