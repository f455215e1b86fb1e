"""Neu.ro/Apolo platform buckets.

apolo_sdk answers what only the platform knows: which bucket a name, id or blob:// URI means,
its provider, and temporary credentials (refreshed before they expire). The bytes then move
through obstore's client for that provider, which is far faster than the SDK's own transfers.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from typing import Any

from ..errors import NotFoundError, WaBucketError
from .base import CLIENT_OPTIONS, RETRY_CONFIG, Storage
from .s3 import make_s3_store

S3_PROVIDERS = {"aws", "minio", "seaweedfs", "open_stack"}
REFRESH_MARGIN = timedelta(seconds=60)


async def open_client() -> Any:
    """A platform client from ~/.apolo, or from APOLO_PASSED_CONFIG in a job started with pass_config."""
    import apolo_sdk

    try:
        return await apolo_sdk.Factory().get()
    except apolo_sdk.ConfigError as e:
        raise WaBucketError(
            f"no platform login ({e}): run `apolo login`, or start the job with pass_config: true"
        ) from e


async def open_platform(spec: str) -> tuple[Storage, str]:
    """`spec` is a bucket name or id, or blob://cluster/org/project/bucket[/prefix]."""
    import apolo_sdk
    from yarl import URL

    client = await open_client()
    try:
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

        async def fetch_credentials() -> dict:
            creds = await client.buckets.request_tmp_credentials(bucket.id, bucket.cluster_name)
            return creds.credentials

        provider = bucket.provider.value
        store = _make_store(provider, await fetch_credentials(), fetch_credentials)
    except BaseException:
        await client.close()
        raise
    return Storage(store, str(bucket.uri), on_close=client.close), prefix


def _key_after_bucket(url: Any, bucket: Any) -> str:
    parts = [p for p in url.path.split("/") if p]
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

    def __init__(self, initial: dict, fetch, convert) -> None:
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


def _make_store(provider: str, creds: dict, fetch) -> Any:
    if provider in S3_PROVIDERS:

        def convert(c: dict) -> dict:
            return {
                "access_key_id": c["access_key_id"],
                "secret_access_key": c["secret_access_key"],
                "token": c.get("session_token") or None,  # some providers send "" for none
                "expires_at": _expiry(c.get("expiration")),
            }

        return make_s3_store(
            creds["bucket_name"],
            endpoint=creds.get("endpoint_url"),
            region=creds.get("region_name") or "us-east-1",
            credential_provider=_Refreshing(creds, fetch, convert),
        )
    if provider == "azure":
        from obstore.store import AzureStore

        if "sas_token" not in creds:
            raise WaBucketError("azure platform bucket without a SAS token is not supported yet")

        def convert(c: dict) -> dict:
            from urllib.parse import parse_qsl

            return {"sas_token": parse_qsl(c["sas_token"].lstrip("?")), "expires_at": _expiry(c.get("expiry"))}

        return AzureStore(
            creds["bucket_name"],
            endpoint=creds["storage_endpoint"],
            credential_provider=_Refreshing(creds, fetch, convert),
            client_options=CLIENT_OPTIONS,
            retry_config=RETRY_CONFIG,
        )
    if provider == "gcp":
        from obstore.store import GCSStore

        if "key_data" in creds:
            key = base64.b64decode(creds["key_data"]).decode()
            return GCSStore(
                creds["bucket_name"], service_account_key=key, client_options=CLIENT_OPTIONS,
                retry_config=RETRY_CONFIG
            )

        def convert(c: dict) -> dict:
            return {"token": c["access_token"], "expires_at": _expiry(c.get("expire_time"))}

        return GCSStore(
            creds["bucket_name"], credential_provider=_Refreshing(creds, fetch, convert),
            client_options=CLIENT_OPTIONS, retry_config=RETRY_CONFIG
        )
    raise WaBucketError(f"platform bucket provider {provider!r} is not supported")

