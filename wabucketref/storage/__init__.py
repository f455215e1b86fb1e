"""Buckets: open_bucket(spec) -> (Storage, prefix), whatever kind of bucket the spec names."""

from __future__ import annotations

import atexit
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import UsageError
from .base import Capabilities, CopiesRefused, ObjectInfo, Objects, RangesIgnored, Storage, check_prefix, key_under

__all__ = [
    "Capabilities",
    "CopiesRefused",
    "ObjectInfo",
    "Objects",
    "RangesIgnored",
    "Storage",
    "bucket_kind",
    "check_prefix",
    "key_under",
    "open_bucket",
]


def bucket_kind(spec: str) -> str:
    """'local', 's3' or 'platform'.

    A bare word is a platform bucket name or id (the original tool's only kind); a local folder
    is written as a path (/abs, ./rel, ~/dir) or file:///abs.
    """
    if spec.startswith("file://"):
        return "local"
    if spec.startswith("s3://"):
        return "s3"
    if spec.startswith("blob:"):
        return "platform"
    if "://" in spec:
        raise UsageError(f"unsupported bucket URI scheme: {spec} (use blob://, s3://, file:// or a folder path)")
    if spec.startswith(("/", ".", "~")) or "/" in spec:
        return "local"
    return "platform"


async def open_bucket(spec: str) -> tuple[Storage, str]:
    """(bucket root, key of the spec inside it).

    s3://b/p -> (s3://b, "p"); blob://c/o/p/b/k -> (blob://c/o/p/b, "k"); a folder -> (file:///folder, "").
    """
    kind = bucket_kind(spec)
    _pause_at_exit()
    if kind == "local":
        from .local import open_local

        if spec.startswith("file://") and urlsplit(spec).netloc not in ("", "localhost"):
            raise UsageError(f"a file:// bucket needs an absolute path, as in file:///dir: {spec}")
        path = unquote(urlsplit(spec).path) if spec.startswith("file://") else spec
        return open_local(Path(path)), ""
    if kind == "s3":
        from .s3 import open_s3

        return open_s3(spec)
    from .platform import open_platform

    return await open_platform(spec)


_paused: list[bool] = []


def _pause_at_exit() -> None:
    """obstore hands each result back from a tokio thread that may still be returning into Python
    when a script ends right after a request; if Python's teardown catches it there, the process
    aborts (SIGABRT). A pause at exit lets it finish (the CLI leaves with os._exit instead)."""
    if not _paused:
        _paused.append(True)
        atexit.register(time.sleep, 0.02)
