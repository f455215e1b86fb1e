"""Two versions compared as two sorted streams: files added, removed and changed."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypeVar

from .entry import NO_HASH, FileEntry, decode_lines
from .reader import Manifest

PATH = attrgetter("path")  # entries, local files and listed objects (ObjectInfo.path) all have one
A = TypeVar("A")
B = TypeVar("B")


def merge_join(a: Iterable[A], b: Iterable[B], key: Callable[[Any], str] = PATH) -> Iterator[tuple[A | None, B | None]]:
    """Pairs of items with equal keys (their path, by default) from two streams sorted by key,
    each key once; an item without a partner comes paired with None."""
    ita, itb = iter(a), iter(b)
    x, y = next(ita, None), next(itb, None)
    while x is not None or y is not None:
        if y is None or (x is not None and key(x) < key(y)):
            yield x, None
            x = next(ita, None)
        elif x is None or key(y) < key(x):
            yield None, y
            y = next(itb, None)
        else:
            yield x, y
            x, y = next(ita, None), next(itb, None)


@dataclass(frozen=True)
class Change:
    path: str
    size_a: int | None  # None: not in A (added)
    size_b: int | None  # None: not in B (removed)


@dataclass
class ManifestDiff:
    """What differs from manifest A to manifest B, each list sorted by path (as long as the
    changes: the unchanged files are only counted)."""

    added: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)
    unchanged: int = 0

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff(a: Manifest, b: Manifest) -> ManifestDiff:
    """Files added, removed and changed (size, else sha256) from a to b. Stored lines are
    canonical, so an equal line is an unchanged file; only lines that differ are decoded. An
    entry without a hash (NO_HASH) on either side is compared by size only: a folder's files of
    another size than their counterpart are not hashed."""
    d = ManifestDiff()
    ita, itb = a.lines(), b.lines()
    la, lb = next(ita, None), next(itb, None)
    while la is not None and lb is not None:
        if la == lb:
            d.unchanged += 1
            la, lb = next(ita, None), next(itb, None)
            continue
        fa, fb = _entry(la, a.source), _entry(lb, b.source)
        if fa is None or (fb is not None and fa.path < fb.path):
            if fa is not None:
                d.removed.append(Change(fa.path, fa.size, None))
            la = next(ita, None)
        elif fb is None or fb.path < fa.path:
            if fb is not None:
                d.added.append(Change(fb.path, None, fb.size))
            lb = next(itb, None)
        else:
            if fa.size != fb.size or (NO_HASH not in (fa.sha256, fb.sha256) and fa.sha256 != fb.sha256):
                d.changed.append(Change(fa.path, fa.size, fb.size))
            else:
                d.unchanged += 1
            la, lb = next(ita, None), next(itb, None)
    for line in itertools.chain([la] if la is not None else [], ita):
        if fa := _entry(line, a.source):
            d.removed.append(Change(fa.path, fa.size, None))
    for line in itertools.chain([lb] if lb is not None else [], itb):
        if fb := _entry(line, b.source):
            d.added.append(Change(fb.path, None, fb.size))
    return d


def _entry(line: bytes, source: str) -> FileEntry | None:
    """A stored line's entry (None for a blank line)."""
    entries = decode_lines(line, source)
    return entries[0] if entries else None
