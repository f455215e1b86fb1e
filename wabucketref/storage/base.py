"""The one door to the bytes: the interface every kind of bucket implements.

The transfer engine and the commands read and write only through these methods. Keys are
relative to the bucket's root (`uri`). What a server cannot do is learned once, by the storage
object itself, and shown in `capabilities`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..errors import UsageError, WaBucketError
from ..failures import Bucket, classify
from ..retry import with_retries


def check_prefix(prefix: str, where: str) -> str:
    """A key prefix, without its outer slashes; no empty, `.` or `..` segment (S3 would take
    `a/../b` literally, and a folder-backed store refuses such keys)."""
    prefix = prefix.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise UsageError(f"invalid path in {where!r}: empty, '.' and '..' segments are not allowed")
    return prefix


def key_under(prefix: str, path: str) -> str:
    """The key of `path` under `prefix` (either may be empty)."""
    return f"{prefix.strip('/')}/{path}" if prefix.strip("/") else path


class ObjectInfo(NamedTuple):  # a tuple: listings of millions are made and stored fast
    key: str  # relative to the listed prefix
    size: int
    etag: str | None

    @property
    def path(self) -> str:
        """The key, as the path of a file under the listed prefix (what manifests are sorted by)."""
        return self.key


class Objects(Protocol):
    """A prefix's objects, keys relative to it: in key order, and by key (listing.Listing, or a
    folder read in place)."""

    def sorted(self) -> Iterator[ObjectInfo]: ...

    def get(self, key: str) -> ObjectInfo | None: ...

    def close(self) -> None: ...


@dataclass
class Capabilities:
    """What the server behind a bucket does; each starts True and turns False once refused."""

    ranged_gets: bool = True  # answers a ranged GET with that range (else with the whole object)
    conditional_writes: bool = True  # honours If-None-Match / If-Match on PUT
    copies: bool = True  # copies an object inside the bucket (S3 CopyObject, Azure Copy Blob, a hard link)


class RangesIgnored(WaBucketError):
    """The server sent a whole object for a ranged GET: fetch it whole (not retried)."""


class CopiesRefused(WaBucketError):
    """The server does not copy objects inside the bucket: send the bytes instead (not retried)."""


class Storage(ABC):
    """A bucket (or a prefix of one) as seen by wabucketref; `uri` names its root in references."""

    # A copy that returned is the source object itself (a hard link): nothing to check after it.
    # A server's copy is checked by listing (an S3 gateway may copy a changing or partial source).
    copies_are_links = False

    def __init__(self, uri: str, *, credentials_hint: str = "", endpoint: str = "") -> None:
        self.uri = uri.rstrip("/")
        self.capabilities = Capabilities()
        self.failures = Bucket(self.uri, endpoint, credentials_hint)  # how bucket-wide failures are named
        self._on_close: Callable[[], Awaitable[None]] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri})"

    def uri_for(self, key: str) -> str:
        return f"{self.uri}/{key.strip('/')}" if key.strip("/") else self.uri

    # ---------------------------------------------------------------- the door

    @abstractmethod
    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix/`, keys relative to it."""

    async def iter_objects(self, prefix: str, batch: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        """Every object under `prefix/` (keys relative to it), a batch at a time."""
        listing = await self.list_objects(prefix)
        for i in range(0, len(listing), batch):
            yield listing[i : i + batch]

    @abstractmethod
    async def list_folders(self, prefix: str) -> list[str]:
        """The names of the folders directly under `prefix/` (one delimited listing)."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def has_prefix(self, prefix: str) -> bool:
        """Is there any object under `prefix/`?"""

    @abstractmethod
    async def read(self, key: str) -> tuple[bytes, str | None] | None:
        """(content, ETag) of a small object, or None if there is none."""

    @abstractmethod
    async def get(self, key: str, size: int | None = None) -> Any:
        """A whole object as a buffer; `size`, if known, lets it be fetched in one round trip
        (a longer object then comes back longer than `size`)."""

    @abstractmethod
    def stream(self, key: str, start: int | None = None, end: int | None = None) -> Iterator[Any]:
        """The object's bytes (or bytes start..end) in chunks of about 256 KiB; blocking, for
        a worker thread. Raises RangesIgnored if the server answers a range with the whole object."""

    @abstractmethod
    async def put(self, key: str, data: Any) -> None:
        """Write a small object in one request."""

    @abstractmethod
    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], part_size: int, parts_in_flight: int) -> None:
        """Write a large object in parts of `part_size` bytes (a multipart upload)."""

    @abstractmethod
    async def put_if_unchanged(self, key: str, data: bytes, etag: str | None) -> bool:
        """Write key only if it is still absent (etag None) or still that version: False if
        another writer came first. Where the store cannot check, it just writes."""

    @abstractmethod
    async def copy(self, src_key: str, dst_key: str) -> None:
        """Copy an object to another key of the same bucket without its bytes passing through here
        (S3 CopyObject, Azure Copy Blob, a hard link in a folder); an existing `dst_key` is replaced.
        Raises FileNotFoundError if `src_key` is missing, CopiesRefused if the server cannot copy
        (then `capabilities.copies` turns False, with one warning)."""

    @abstractmethod
    async def delete(self, keys: list[str]) -> None: ...

    # ---------------------------------------------------------------- built on the door

    async def get_bytes(self, key: str) -> bytes | None:
        found = await self.read(key)
        return None if found is None else found[0]

    async def put_bytes(self, key: str, data: bytes) -> None:
        with self.explained():
            await with_retries(lambda: self.put(key, data), f"writing {key}")

    async def folder_markers(self, prefix: str, empty: list[ObjectInfo]) -> list[ObjectInfo]:
        """Of these empty objects, the `dir/` objects of empty folders (S3 consoles' "Create
        folder", apolo_sdk's upload_dir), which are listed as `dir`, a key that cannot be read. A
        real empty object `dir` can be: every one is looked up (a few at a time)."""
        turns = asyncio.Semaphore(16)

        async def readable(o: ObjectInfo) -> bool:
            async with turns:
                return await self.exists(key_under(prefix, o.key))

        found = await asyncio.gather(*(readable(o) for o in empty))
        return [o for o, ok in zip(empty, found, strict=True) if not ok]

    def part_size(self, size: int) -> int:
        """Part size for multipart uploads and ranged downloads of a file of `size` bytes.

        8 MiB, or more for files that would otherwise need over 9,000 parts (S3 allows 10,000);
        deterministic, so a resume can recompute an object's multipart ETag.
        """
        mib = 1 << 20
        smallest = -(-size // 9000)  # ceil(size / 9000)
        return max(8 * mib, -(-smallest // mib) * mib)

    def etag_matches(self, info: ObjectInfo, md5_parts: Sequence[bytes] | None) -> bool | None:
        """Does an S3-style ETag match content whose per-part MD5 digests are given?

        None when the backend's ETags do not describe content (then the caller hashes the object),
        or the digests are not known.
        """
        etag = (info.etag or "").strip('"')
        if not etag or md5_parts is None:
            return None
        if "-" in etag:
            whole = hashlib.md5(b"".join(md5_parts)).hexdigest()
            return etag == f"{whole}-{len(md5_parts)}"
        if len(etag) == 32 and len(md5_parts) == 1:
            return etag == md5_parts[0].hex()
        return None

    def objects_in(self, prefix: str) -> Objects | None:
        """The objects under `prefix`, read in place where that costs only system calls (a
        folder); None: list them (listing.Listing)."""
        return None

    def link(self, src_key: str, dst_key: str) -> bool:
        """copy() in the calling thread where a copy is a hard link (a folder bucket), for a
        `dst_key` that does not exist yet; False: not made (then copy() says why)."""
        return False

    def read_ahead(self, keys: Iterable[str]) -> None:
        """These objects will be read soon (called from a worker thread): a folder asks its disk
        for them; a server needs no hint."""

    def check_names(self, paths: Iterable[str]) -> None:
        """Refuse (UsageError) file paths this kind of bucket cannot hold."""

    async def remove_leftovers(self, prefix: str) -> None:
        """Remove what interrupted writes under prefix left beside the objects."""

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """A failure of the whole bucket (missing, refused, unreachable) becomes one line naming it."""
        try:
            yield
        except WaBucketError:
            raise
        except Exception as e:
            failure = classify(e, self.failures)
            if failure.about != "bucket":
                raise
            raise failure.error() from e

    def close_with(self, on_close: Callable[[], Awaitable[None]]) -> None:
        """Have close() also end what the bucket was opened with (a platform client)."""
        self._on_close = on_close

    async def close(self) -> None:
        if self._on_close is not None:
            await self._on_close()
            self._on_close = None
