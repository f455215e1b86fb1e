"""The door implemented with obstore, for every kind of bucket: each kind only builds the store."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import obstore as obs
from obstore.exceptions import AlreadyExistsError, NotFoundError, NotSupportedError, PreconditionError

from .. import settings
from ..failures import MISSING_BUCKET_CODES, ignores_ranges, refuses_conditional_writes, refuses_copies, s3_error
from ..retry import BACKOFF_GROWTH, FIRST_BACKOFF, LONGEST_BACKOFF, REQUEST_TRIES, RETRY_WINDOW, with_retries
from .base import CopiesRefused, ObjectInfo, RangesIgnored, Storage

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

log = logging.getLogger("wabucketref")

CHUNK = 256 << 10  # streamed chunks: written and hashed while still in cache

# The request budget of retry.py, as obstore takes it (every store is built with it).
RETRY_CONFIG: RetryConfig = {
    "max_retries": REQUEST_TRIES - 1,
    "retry_timeout": RETRY_WINDOW,
    "backoff": {"init_backoff": FIRST_BACKOFF, "max_backoff": LONGEST_BACKOFF, "base": BACKOFF_GROWTH},
}
NO_RETRIES: RetryConfig = {**RETRY_CONFIG, "max_retries": 0}


def client_options(endpoint: str | None = None) -> ClientConfig:
    """Each request's limits: 10 s to connect, settings.request_timeout() in all."""
    timeout = f"{max(1, int(settings.request_timeout()))}s"
    options: ClientConfig = {"connect_timeout": "10s", "timeout": timeout, "pool_idle_timeout": "30s"}
    if endpoint and endpoint.startswith("http:"):
        options["allow_http"] = True
    if (roots := settings.ca_bundle()) is not None:
        options["root_certificate"] = roots
    return options


class ObjectStoreStorage(Storage):
    """A bucket behind an obstore store (local folder, S3, Azure or GCS)."""

    def __init__(
        self, store: Any, uri: str, *, copy_store: Any = None, credentials_hint: str = "", endpoint: str = ""
    ) -> None:
        super().__init__(uri, credentials_hint=credentials_hint, endpoint=endpoint)
        self._store = store
        # Copies go through a twin of the store that does not retry: obstore retries a 501 (a
        # server without copies) for minutes, and a copy that fails is better sent instead.
        self._copy_store = copy_store if copy_store is not None else store

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        prefix = prefix.strip("/")
        start = len(prefix) + 1 if prefix else 0
        out = []
        with self.explained():
            stream = obs.list(self._store, prefix + "/" if prefix else None, chunk_size=1000)
            async for batch in stream:
                for meta in batch:
                    key = meta["path"][start:]
                    if key:  # the prefix's own folder marker lists as the prefix itself
                        out.append(ObjectInfo(key, meta["size"], meta.get("e_tag")))
        return _without_folder_markers(out)

    async def iter_objects(self, prefix: str, batch: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        prefix = prefix.strip("/")
        start = len(prefix) + 1 if prefix else 0
        with self.explained():
            async for page in obs.list(self._store, prefix + "/" if prefix else None, chunk_size=batch):
                yield [ObjectInfo(m["path"][start:], m["size"], m.get("e_tag")) for m in page if m["path"][start:]]

    async def list_folders(self, prefix: str) -> list[str]:
        prefix = prefix.strip("/")
        with self.explained():
            found = await obs.list_with_delimiter_async(self._store, prefix + "/" if prefix else None)
        start = len(prefix) + 1 if prefix else 0
        return sorted({p[start:].strip("/") for p in found["common_prefixes"]} - {""})

    async def exists(self, key: str) -> bool:
        with self.explained():
            try:
                await obs.head_async(self._store, key)
                return True
            except FileNotFoundError:  # a HEAD has no body: a missing bucket looks the same
                return False

    async def has_prefix(self, prefix: str) -> bool:
        with self.explained():
            stream = obs.list(self._store, prefix.strip("/") + "/", chunk_size=1)
            async for batch in stream:
                if batch:
                    return True
        return False

    async def read(self, key: str) -> tuple[bytes, str | None] | None:
        with self.explained():
            try:
                result = await obs.get_async(self._store, key)
            except FileNotFoundError as e:
                if s3_error(e)[0] in MISSING_BUCKET_CODES:  # the bucket, not the key, is missing
                    raise
                return None
            return bytes(await result.bytes_async()), result.meta.get("e_tag")

    async def get(self, key: str, size: int | None = None) -> Any:
        with _missing_as_file_not_found():
            if size and self.capabilities.ranged_gets:
                # One round trip into obstore instead of two; a longer object fails the size check.
                try:
                    return await obs.get_range_async(self._store, key, start=0, end=size + 1)
                except Exception as e:
                    if not ignores_ranges(e):
                        raise
                    self._no_ranges()
            return await (await obs.get_async(self._store, key)).bytes_async()

    def stream(self, key: str, start: int | None = None, end: int | None = None) -> Iterator[Any]:
        with _missing_as_file_not_found():
            if start is None or end is None:
                return iter(obs.get(self._store, key).stream(min_chunk_size=CHUNK))
            try:
                result = obs.get(self._store, key, options={"range": (start, end)})
            except Exception as e:
                if ignores_ranges(e):
                    self._no_ranges()
                    raise RangesIgnored(str(e)) from e
                raise
            return iter(result.stream(min_chunk_size=CHUNK))

    def _no_ranges(self) -> None:
        if self.capabilities.ranged_gets:
            self.capabilities.ranged_gets = False
            log.warning(
                "%s answers ranged requests with whole objects: files are fetched whole, one request each", self.uri
            )

    async def put(self, key: str, data: Any) -> None:
        await obs.put_async(self._store, key, data)

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], part_size: int, parts_in_flight: int) -> None:
        await obs.put_async(self._store, key, chunks, chunk_size=part_size, max_concurrency=parts_in_flight)

    async def put_if_unchanged(self, key: str, data: bytes, etag: str | None) -> bool:
        if not self.capabilities.conditional_writes:
            await self.put_bytes(key, data)
            return True
        mode: Any = "create" if etag is None else {"e_tag": etag}
        with self.explained():
            try:
                await obs.put_async(self._store, key, data, mode=mode)
            except (AlreadyExistsError, PreconditionError):
                return False
            except (NotSupportedError, NotImplementedError):  # a local folder's update
                await self.put_bytes(key, data)
            except Exception as e:
                if not refuses_conditional_writes(e):
                    raise
                self.capabilities.conditional_writes = False
                log.warning(
                    "%s refuses conditional writes (%s): two uploads to one alias that start at the same "
                    "moment cannot be told apart there",
                    self.failures.endpoint or self.uri,
                    s3_error(e)[0],
                )
                await self.put_bytes(key, data)
        return True

    async def copy(self, src_key: str, dst_key: str) -> None:
        if not self.capabilities.copies:
            raise CopiesRefused(f"{self.uri} does not copy objects")
        try:
            with _missing_as_file_not_found():
                await obs.copy_async(self._copy_store, src_key, dst_key)
        except FileNotFoundError:
            raise
        except Exception as e:
            if not refuses_copies(e):
                raise
            if self.capabilities.copies:
                self.capabilities.copies = False
                log.warning(
                    "%s refuses copies inside the bucket (%s): files are sent from here instead",
                    self.failures.endpoint or self.uri,
                    s3_error(e)[0] or type(e).__name__,
                )
            raise CopiesRefused(f"{self.uri} does not copy objects") from e

    async def delete(self, keys: list[str]) -> None:
        # A bulk delete is a POST, which obstore does not retry after a connection error.
        if keys:
            with self.explained():
                await with_retries(lambda: obs.delete_async(self._store, keys), f"deleting {keys[0]}")


@contextlib.contextmanager
def _missing_as_file_not_found() -> Iterator[None]:
    """A missing object is a FileNotFoundError whichever way obstore reports it."""
    try:
        yield
    except NotFoundError as e:
        raise FileNotFoundError(str(e)) from e


def _without_folder_markers(listing: list[ObjectInfo]) -> list[ObjectInfo]:
    """Drop the empty `dir/` objects some tools (apolo_sdk's upload_dir) write for folders.

    obstore lists `dir/` as `dir`, so a marker is an empty object named like a folder of others.
    """
    folders = {key.rsplit("/", i)[0] for key in (o.key for o in listing) for i in range(1, key.count("/") + 1)}
    return [o for o in listing if not (o.size == 0 and o.key in folders)]
