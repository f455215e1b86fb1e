"""Local folder buckets (file:///abs/dir or a path): the embedded default, and volumes mounted into jobs."""

from __future__ import annotations

from pathlib import Path

from obstore.store import LocalStore

from ..errors import WaBucketError
from .base import ObjectInfo, Storage


class LocalStorage(Storage):
    def etag_matches(self, info: ObjectInfo, md5_parts: list[bytes]) -> bool | None:
        return None  # local ETags describe inode and mtime, not content: hash the file instead


def open_local(path: str | Path) -> LocalStorage:
    root = Path(path).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only or missing mount
        raise WaBucketError(f"cannot use {root} as a bucket folder: {e.strerror or e}") from e
    # LocalStore writes through a staging file and renames, so a reader never sees half a file.
    return LocalStorage(LocalStore(root), root.as_uri())
