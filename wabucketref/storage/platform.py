"""Neu.ro/Apolo platform buckets.

apolo_sdk answers what only the platform knows: which bucket a name, id or blob:// URI means,
its provider, and temporary credentials (refreshed before they expire). The bytes then move
through obstore's client for that provider, which is far faster than the SDK's own transfers.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from ..errors import NotFoundError, UsageError, WaBucketError
from ..failures import classify
from ..threads import in_thread
from . import session_cache
from .azure import AzureStorage
from .base import Storage, check_prefix
from .gcs import GCSStorage
from .objectstore import NO_RETRIES, RETRY_CONFIG
from .s3 import S3Storage

if TYPE_CHECKING:
    from obstore.store import RetryConfig

try:
    import fcntl
except ImportError:  # Windows: commands do not take turns logging in
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("wabucketref")

S3_PROVIDERS = {"aws", "minio", "seaweedfs", "open_stack"}
REFRESH_MARGIN = timedelta(seconds=60)
PROBE_PREFIX = ".wabucketref-probe/"
EXPIRY_KEYS = ("expiration", "expiry", "expire_time")  # s3, azure, gcp
SESSION_KEYS = {"uri", "prefix", "provider", "bucket_id", "cluster", "credentials"}
PASSED_CONFIG_VARS = {"APOLO_PASSED_CONFIG", "NEURO_PASSED_CONFIG"}
Fetch = Callable[[], Awaitable[dict]]  # new credentials from the platform


async def open_client() -> Any:
    """A platform client from ~/.apolo, or from APOLO_PASSED_CONFIG in a job started with pass_config."""
    import apolo_sdk

    try:
        if PASSED_CONFIG_VARS & os.environ.keys():
            # The first command logs in from the passed config and writes the config folder;
            # commands started together in one job would race there (one was seen to pick another
            # project): they take turns.
            async with _turn(apolo_sdk.Factory().path):
                return await apolo_sdk.Factory().get()
        return await apolo_sdk.Factory().get()
    except Exception as e:
        failure = classify(e)
        if failure.about != "platform":
            raise
        raise failure.error() from e


@contextlib.asynccontextmanager
async def _turn(config: Path) -> AsyncIterator[None]:
    """Hold an exclusive lock beside the platform config folder (none where locks cannot be had)."""
    fd = None
    try:
        config.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(config.parent / f".{config.name}.wabucket-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        await in_thread(fcntl.flock, fd, fcntl.LOCK_EX)
    except (OSError, AttributeError) as e:  # AttributeError: no fcntl (Windows)
        log.debug("platform config not locked: %s", e)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


class _Session:
    """What a command needs of the platform for one bucket: where it is and how to sign requests.

    The platform client is opened only when needed (apolo_sdk costs ~0.5 s to import), and a
    session is kept in the user's cache while its credentials are fresh, so that the next command
    starts moving bytes at once.
    """

    def __init__(self, spec: str, entry: dict, client: Any = None) -> None:
        self.spec = spec
        self.entry = entry
        self._client = client

    async def client(self) -> Any:
        if self._client is None:
            self._client = await open_client()
        return self._client

    async def fetch_credentials(self) -> dict:
        client = await self.client()
        creds = await client.buckets.request_tmp_credentials(self.entry["bucket_id"], self.entry["cluster"])
        self.entry["credentials"] = creds.credentials
        expires = _expiry(next((creds.credentials[k] for k in EXPIRY_KEYS if creds.credentials.get(k)), None))
        session_cache.save(self.spec, self.entry, expires.timestamp() if expires else None)
        return creds.credentials

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def storage(self, retry_config: RetryConfig = RETRY_CONFIG) -> Storage:
        e = self.entry
        storage = _make_storage(e["provider"], e["uri"], e["credentials"], self.fetch_credentials, retry_config)
        storage.close_with(self.close)
        return storage

    async def answers(self) -> bool:
        """Do the cached credentials still open the bucket? One listing of an empty prefix (a HEAD
        could not tell a missing bucket from a missing key), without retries: any failure
        (refused, gone, unreachable) means asking the platform afresh."""
        try:
            await self.storage(NO_RETRIES).has_prefix(PROBE_PREFIX)
        except Exception as e:
            log.debug("cached platform session not usable: %s", e)
            return False
        return True


def check_blob_uri(spec: str) -> None:
    """A blob URI names a cluster and at least a project and a bucket, and nothing else."""
    parts = urlsplit(spec)
    segments = [p for p in parts.path.split("/") if p]
    if not spec.startswith("blob://") or not parts.netloc or len(segments) < 2 or parts.query or parts.fragment:
        raise UsageError(f"invalid platform bucket URI {spec!r}: use blob://CLUSTER/[ORG/]PROJECT/BUCKET[/PREFIX]")
    check_prefix(parts.path, spec)


async def open_platform(spec: str) -> tuple[Storage, str]:
    """`spec` is a bucket name or id, or blob://cluster/org/project/bucket[/prefix]."""
    if spec.startswith("blob:"):
        check_blob_uri(spec)
    entry = session_cache.load(spec)
    if entry is not None and entry.keys() >= SESSION_KEYS:
        cached = _Session(spec, entry)
        if await cached.answers():
            return cached.storage(), entry["prefix"]
        session_cache.forget(spec)
    session = _Session(spec, {}, await open_client())
    try:
        session.entry = await _lookup(await session.client(), spec)
        await session.fetch_credentials()
        return session.storage(), session.entry["prefix"]
    except BaseException:
        await session.close()
        raise


async def _lookup(client: Any, spec: str) -> dict:
    import aiohttp
    import apolo_sdk
    from yarl import URL

    try:
        if spec.startswith("blob:"):
            url = URL(spec)
            bucket = await client.buckets._get_bucket_for_uri(url)  # find/by_path: the SDK's own resolver
            prefix = _key_after_bucket(url, bucket)
        else:
            bucket = await client.buckets.get(spec)
            prefix = ""
    except apolo_sdk.ResourceNotFound as e:
        raise NotFoundError(f"platform bucket not found: {spec}") from e
    except apolo_sdk.AuthError as e:
        raise WaBucketError(f"platform refused access to bucket {spec}: {e}") from e
    except aiohttp.ClientConnectionError as e:
        raise WaBucketError(f"cannot reach the platform at {client.config.api_url} ({e})") from e
    return {
        "uri": str(bucket.uri),
        "prefix": prefix,
        "provider": bucket.provider.value,
        "bucket_id": bucket.id,
        "cluster": bucket.cluster_name,
    }


def _key_after_bucket(url: Any, bucket: Any) -> str:
    """The key a blob:// URI names inside `bucket` (the one the platform resolved it to)."""
    parts = [p for p in url.path.split("/") if p]
    own = bucket.uri
    for root in (own, own.parent / bucket.id):  # by name or by id
        head = [p for p in root.path.split("/") if p]
        if url.host == root.host and parts[: len(head)] == head:
            return "/".join(parts[len(head) :])
    # Another spelling of the bucket's place (an older URI form): the key follows its name or id.
    # Only here can a folder named like the bucket be mistaken for it.
    for i, part in enumerate(parts):
        if part in (bucket.name, bucket.id):
            return "/".join(parts[i + 1 :])
    return ""


def _expiry(value: str | None) -> datetime | None:
    if not value:
        return None
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class _Refreshing:
    """Credentials cached until shortly before they expire, then fetched again from the platform.

    obstore calls this from the event loop that awaits the transfer, which is the loop the
    platform client belongs to.
    """

    def __init__(self, initial: dict, fetch: Fetch, convert: Callable[[dict], dict]) -> None:
        self._creds = initial
        self._fetch = fetch
        self._convert = convert

    async def __call__(self) -> dict:
        converted = self._convert(self._creds)
        expires = converted.get("expires_at")
        if expires is not None and expires - REFRESH_MARGIN <= datetime.now(timezone.utc):
            self._creds = await self._fetch()
            converted = self._convert(self._creds)
        return converted


def _make_storage(provider: str, uri: str, creds: dict, fetch: Fetch, retry_config: RetryConfig) -> Storage:
    if provider in S3_PROVIDERS:

        def s3_keys(c: dict) -> dict:
            return {
                "access_key_id": c["access_key_id"],
                "secret_access_key": c["secret_access_key"],
                "token": c.get("session_token") or None,  # some providers send "" for none
                "expires_at": _expiry(c.get("expiration")),
            }

        return S3Storage(
            creds["bucket_name"],
            uri=uri,
            endpoint=creds.get("endpoint_url"),
            region=creds.get("region_name") or "us-east-1",
            credential_provider=_Refreshing(creds, fetch, s3_keys),
            retry_config=retry_config,
        )
    if provider == "azure":
        return _azure_storage(uri, creds, fetch, retry_config)
    if provider == "gcp":
        if "key_data" in creds:
            key = base64.b64decode(creds["key_data"]).decode()
            return GCSStorage(creds["bucket_name"], uri=uri, service_account_key=key, retry_config=retry_config)

        def gcp_token(c: dict) -> dict:
            return {"token": c["access_token"], "expires_at": _expiry(c.get("expire_time"))}

        provider_ = _Refreshing(creds, fetch, gcp_token)
        return GCSStorage(creds["bucket_name"], uri=uri, credential_provider=provider_, retry_config=retry_config)
    raise WaBucketError(f"platform bucket provider {provider!r} is not supported")


def _azure_storage(uri: str, creds: dict, fetch: Fetch, retry_config: RetryConfig) -> Storage:
    """A container SAS token (refreshed like S3 keys), or the account key as `credential`."""
    common: dict[str, Any] = {"uri": uri, "endpoint": creds["storage_endpoint"], "retry_config": retry_config}
    if "sas_token" in creds:

        def sas(c: dict) -> dict:
            return {"sas_token": parse_qsl(c["sas_token"].lstrip("?")), "expires_at": _expiry(c.get("expiry"))}

        return AzureStorage(creds["bucket_name"], credential_provider=_Refreshing(creds, fetch, sas), **common)
    if "credential" in creds:
        return AzureStorage(creds["bucket_name"], account_key=creds["credential"], **common)
    raise WaBucketError("the platform gave no usable azure credentials (neither sas_token nor credential)")
