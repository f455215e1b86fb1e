"""--include / --exclude: which files of a version a command takes, and which shards hold them.

huggingface_hub's rules: fnmatch on the path in the artifact, where `*` also matches `/`; a
pattern ending in `/` matches what is under that folder.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import UsageError
from .entry import FileEntry
from .reader import Index, Manifest
from .split import share

GLOB_CHARS = re.compile(r"[*?\[]")


def _pattern(p: str) -> str:
    if not isinstance(p, str) or not p:
        raise UsageError(f"invalid pattern {p!r}: a glob on the path in the artifact, as in '*.bin' or 'images/'")
    return p + "*" if p.endswith("/") else p


def literal_prefix(pattern: str) -> str:
    """What every path the pattern matches starts with."""
    m = GLOB_CHARS.search(pattern)
    return pattern if m is None else pattern[: m.start()]


def may_hold(first: str, last: str, prefix: str) -> bool:
    """May a sorted run of paths from `first` to `last` hold a path that starts with `prefix`?"""
    return last >= prefix and first[: len(prefix)] <= prefix


@dataclass(frozen=True)
class Selection:
    """The files matching an include pattern (all, if none) and no exclude pattern; of those,
    with `shard` (index, count), only that share of a split among count workers (split.py)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None
    _compiled: tuple[list[re.Pattern[str]], list[re.Pattern[str]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = tuple(
            [re.compile(fnmatch.translate(_pattern(p))) for p in ps] for ps in (self.include, self.exclude)
        )
        object.__setattr__(self, "_compiled", compiled)

    @property
    def partial(self) -> bool:
        return bool(self.include or self.exclude or self.shard)

    def matches(self, path: str) -> bool:
        include, exclude = self._compiled
        return (not include or any(p.match(path) for p in include)) and not any(p.match(path) for p in exclude)

    def shards(self, index: Index) -> list[int]:
        """The shards that may hold a file an include or exclude pattern matches (every shard
        without include patterns): a partial download fetches only these."""
        if not self.include:
            return list(range(len(index.shards)))
        prefixes = [literal_prefix(_pattern(p)) for p in (*self.include, *self.exclude)]
        return [i for i, s in enumerate(index.shards) if any(may_hold(s.first, s.last, p) for p in prefixes)]

    def entries(self, manifest: Manifest) -> Iterator[FileEntry]:
        """The selected entries, in path order."""
        matching = self._matching(manifest)
        return matching if self.shard is None else share(matching, *self.shard)

    def _matching(self, manifest: Manifest) -> Iterator[FileEntry]:
        for batch in manifest.batches(self.shards(manifest.index)):
            for e in batch:
                if self.matches(e.path):
                    yield e

    def check(self, manifest: Manifest) -> tuple[int, int]:
        """(files, bytes) selected. A pattern that matches no file of the version, or patterns
        that together select nothing, are a UsageError (a share may be empty: more workers than
        files)."""
        include, exclude = self._compiled
        patterns = (*include, *exclude)
        hits = [False] * len(patterns)
        matched = 0

        def matching() -> Iterator[FileEntry]:
            nonlocal matched
            for batch in manifest.batches(self.shards(manifest.index)):
                for e in batch:
                    for n, p in enumerate(patterns):
                        if not hits[n] and p.match(e.path):
                            hits[n] = True
                    if self.matches(e.path):
                        matched += 1
                        yield e

        files = size = 0
        for e in share(matching(), *(self.shard or (0, 1))):
            files += 1
            size += e.size
        for n, (option, pattern) in enumerate(_options(self.include, self.exclude)):
            if not hits[n]:
                raise UsageError(
                    f"{option} {_pattern(pattern)!r} matches no file of the artifact ({manifest.file_count} files)"
                )
        if not matched:
            raise UsageError("--include and --exclude together leave no file of the artifact")
        return files, size


def _options(include: Iterable[str], exclude: Iterable[str]) -> Iterator[tuple[str, str]]:
    yield from (("--include", p) for p in include)
    yield from (("--exclude", p) for p in exclude)
