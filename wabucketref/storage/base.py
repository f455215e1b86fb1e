"""One small interface over every bucket kind.

Each backend (local folder, s3://, platform bucket) only builds an obstore store and says how
to name its keys as URIs; listing, reading and writing are the same code for all of them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Awaitable, Callable, Iterator

import obstore as obs
from obstore.exceptions import AlreadyExistsError, NotSupportedError, PreconditionError

from ..errors import NotFoundError, UsageError, WaBucketError
from ..retry import ATTEMPTS, MISSING_BUCKET_CODES, PERMANENT_CODES, env_seconds, s3_error, server_of, with_retries

log = logging.getLogger("wabucketref")

# obstore hands each result back from a tokio thread that may still be returning into Python when a
# script ends right after a request; if Python's teardown catches it there, the process aborts
# (SIGABRT). A pause at exit lets it finish (the CLI, which leaves with os._exit, never gets here).
atexit.register(time.sleep, 0.02)

# Retries for single requests inside obstore (5xx, SlowDown, connection errors); whole-file
# retries for streamed transfers live in transfer.py.
RETRY_CONFIG = {
    "max_retries": 6,
    "retry_timeout": timedelta(seconds=120),
    "backoff": {
        "init_backoff": timedelta(milliseconds=200),
        "max_backoff": timedelta(seconds=8),
        "base": 2,
    },
}


# Each request's time limit leaves room for a 16 MiB part on a slow link.
CLIENT_OPTIONS = {
    "connect_timeout": "10s", "timeout": f"{max(1, int(env_seconds('WABUCKET_REQUEST_TIMEOUT', 300)))}s",
    "pool_idle_timeout": "30s",
}


# What S3-compatible servers without If-None-Match/If-Match support answer a PUT carrying them.
CONDITIONAL_WRITE_REFUSALS = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest", "NotSupported"})


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


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the listed prefix
    size: int
    etag: str | None


def _without_folder_markers(listing: list[ObjectInfo]) -> list[ObjectInfo]:
    """Drop the empty `dir/` objects some tools (apolo_sdk's upload_dir) write for folders.

    obstore lists `dir/` as `dir`, so a marker is an empty object named like a folder of others.
    """
    folders = {key.rsplit("/", i)[0] for key in (o.key for o in listing) for i in range(1, key.count("/") + 1)}
    return [o for o in listing if not (o.size == 0 and o.key in folders)]


class Storage:
    """A bucket (or a prefix of one) as seen by wabucketref.

    `uri` names the root in references written to W&B; keys are relative to it.
    """

    def part_size(self, size: int) -> int:
        """Part size for multipart uploads and ranged downloads of a file of `size` bytes.

        8 MiB, or more for files that would otherwise need over 9,000 parts (S3 allows 10,000);
        deterministic, so a resume can recompute an object's multipart ETag.
        """
        mib = 1 << 20
        smallest = -(-size // 9000)  # ceil(size / 9000)
        return max(8 * mib, -(-smallest // mib) * mib)

    def __init__(
        self, store: Any, uri: str, *, on_close: Callable[[], Awaitable[None]] | None = None, credentials_hint: str = "",
        endpoint: str = "",
    ):
        self.store = store
        self.uri = uri.rstrip("/")
        self._on_close = on_close
        self.credentials_hint = credentials_hint  # where the credentials came from, for a refusal
        self.endpoint = endpoint  # for messages: obstore hides URLs that carry a SAS token
        self.ranged_gets = True  # False once the server answered a ranged GET with the whole object

    def explain(self, e: BaseException) -> WaBucketError | None:
        """A failure of the whole bucket (missing, refused credentials, no connection) as one line
        naming it; None for anything else."""
        code, message = s3_error(e)
        server = server_of(e) or self.endpoint or "the server"
        if code in MISSING_BUCKET_CODES:
            return NotFoundError(f"{self.uri}: no such bucket at {server} ({code})")
        if code in PERMANENT_CODES:
            hint = f" ({self.credentials_hint})" if self.credentials_hint else ""
            return WaBucketError(f"{self.uri}: {server} refused the request: {code}: {message}{hint}")
        if code is None and re.search(r"/latest/(api/token|meta-data/)", str(e)):  # no keys: EC2 instance metadata was asked
            return WaBucketError(f"{self.uri}: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if code is None and re.search(r"\bkind: Timeout\b", str(e)):  # connected, then no answer in time
            took = re.search(r"elapsed: ([\d.]+)s", str(e))
            return WaBucketError(f"{self.uri}: no answer from {server}" + (f" in {float(took.group(1)):.0f} s" if took else ""))
        if code is None and re.search(r"\bkind: Connect\b", str(e)):  # obstore's debug text of a failed connect
            reasons = re.findall(r'message: "([^"]+)"', str(e))
            return WaBucketError(f"{self.uri}: cannot connect to {server}" + (f" ({reasons[-1]})" if reasons else ""))
        return None

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Raise what `explain` makes of an error inside, or the error itself."""
        try:
            yield
        except WaBucketError:
            raise
        except Exception as e:
            plain = self.explain(e)
            if plain is None:
                raise
            raise plain from e

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri})"

    def uri_for(self, key: str) -> str:
        return f"{self.uri}/{key.strip('/')}" if key.strip("/") else self.uri

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix/`, keys relative to it (listing is done once per command)."""
        prefix = prefix.strip("/")
        start = len(prefix) + 1 if prefix else 0
        out = []
        with self.explained():
            stream = obs.list(self.store, prefix + "/" if prefix else None, chunk_size=1000)
            async for batch in stream:
                for meta in batch:
                    key = meta["path"][start:]
                    if key:  # the prefix's own folder marker lists as the prefix itself
                        out.append(ObjectInfo(key, meta["size"], meta.get("e_tag")))
        return _without_folder_markers(out)

    async def without_empty_folders(self, prefix: str, listing: list[ObjectInfo]) -> list[ObjectInfo]:
        """Drop the `dir/` objects of empty folders (S3 consoles' "Create folder", apolo_sdk's
        upload_dir): obstore lists them as `dir`, a key that cannot be read. A real empty object
        `dir` can be: every empty entry is looked up (one HEAD each, a few at a time)."""
        empty = [o for o in listing if o.size == 0]
        if not empty:
            return listing
        turns = asyncio.Semaphore(16)

        async def readable(o: ObjectInfo) -> bool:
            async with turns:
                return await self.exists(key_under(prefix, o.key))

        found = await asyncio.gather(*(readable(o) for o in empty))
        markers = {o.key for o, ok in zip(empty, found) if not ok}
        return [o for o in listing if o.key not in markers]

    async def exists(self, key: str) -> bool:
        with self.explained():
            try:
                await obs.head_async(self.store, key)
                return True
            except FileNotFoundError:  # a HEAD has no body: a missing bucket looks the same
                return False

    async def has_prefix(self, prefix: str) -> bool:
        with self.explained():
            stream = obs.list(self.store, prefix.strip("/") + "/", chunk_size=1)
            async for batch in stream:
                if batch:
                    return True
        return False

    async def get_bytes(self, key: str) -> bytes | None:
        found = await self.read(key)
        return None if found is None else found[0]

    async def read(self, key: str) -> tuple[bytes, str | None] | None:
        """(content, ETag) of a small object, or None if there is none."""
        with self.explained():
            try:
                result = await obs.get_async(self.store, key)
            except FileNotFoundError as e:
                if s3_error(e)[0] in MISSING_BUCKET_CODES:  # the bucket, not the key, is missing
                    raise
                return None
            return bytes(await result.bytes_async()), result.meta.get("e_tag")

    async def put_if_unchanged(self, key: str, data: bytes, etag: str | None) -> bool:
        """Write key only if it is still absent (etag None) or still that version: False if another
        writer came first. Where the store cannot check (a local folder's update, a server that
        refuses conditional writes), it just writes."""
        mode: Any = "create" if etag is None else {"e_tag": etag}
        with self.explained():
            try:
                await obs.put_async(self.store, key, data, mode=mode)
            except (AlreadyExistsError, PreconditionError):
                return False
            except (NotSupportedError, NotImplementedError):
                await self.put_bytes(key, data)
            except Exception as e:
                code = s3_error(e)[0]
                if code not in CONDITIONAL_WRITE_REFUSALS:
                    raise
                log.warning("%s refuses conditional writes (%s): two uploads to one alias that start at the same "
                            "moment cannot be told apart there", self.endpoint or self.uri, code)
                await self.put_bytes(key, data)
        return True

    async def put_bytes(self, key: str, data: bytes) -> None:
        with self.explained():
            await with_retries(lambda: obs.put_async(self.store, key, data), f"writing {key}", ATTEMPTS)

    async def delete(self, keys: list[str]) -> None:
        # A bulk delete is a POST, which obstore does not retry after a connection error.
        if keys:
            with self.explained():
                await with_retries(lambda: obs.delete_async(self.store, keys), f"deleting {keys[0]}", ATTEMPTS)

    def check_names(self, paths: list[str]) -> None:
        """Refuse (UsageError) file paths this kind of bucket cannot hold."""

    async def remove_leftovers(self, prefix: str) -> None:
        """Remove what interrupted writes under prefix left beside the objects (nothing, for S3 and Azure)."""

    def etag_matches(self, info: ObjectInfo, md5_parts: list[bytes]) -> bool | None:
        """Does an S3-style ETag match content whose per-part MD5 digests are given?

        None when the backend's ETags do not describe content (then the caller hashes the object).
        """
        etag = (info.etag or "").strip('"')
        if not etag:
            return None
        if "-" in etag:
            whole = hashlib.md5(b"".join(md5_parts)).hexdigest()
            return etag == f"{whole}-{len(md5_parts)}"
        if len(etag) == 32 and len(md5_parts) == 1:
            return etag == md5_parts[0].hex()
        return None

    async def close(self) -> None:
        if self._on_close is not None:
            await self._on_close()
            self._on_close = None
