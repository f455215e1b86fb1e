"""S3 buckets: direct s3:// URIs on AWS or any S3-compatible endpoint, and platform buckets of S3 providers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from obstore.store import S3Store

from .. import settings
from ..errors import UsageError
from .base import check_prefix
from .objectstore import NO_RETRIES, RETRY_CONFIG, ObjectStoreStorage, client_options

if TYPE_CHECKING:
    from obstore.store import RetryConfig


class S3Storage(ObjectStoreStorage):
    def __init__(
        self,
        bucket: str,
        *,
        uri: str,
        endpoint: str | None,
        region: str | None = None,
        retry_config: RetryConfig = RETRY_CONFIG,
        credentials_hint: str = "",
        **config: Any,
    ) -> None:
        kwargs = dict(config)
        if endpoint:
            kwargs["endpoint"] = endpoint
            kwargs["virtual_hosted_style_request"] = False  # custom endpoints are path-style
        if region:
            kwargs["region"] = region
        options = client_options(endpoint)
        store = S3Store(bucket, client_options=options, retry_config=retry_config, **kwargs)
        copy_store = S3Store(bucket, client_options=options, retry_config=NO_RETRIES, **kwargs)
        super().__init__(store, uri, copy_store=copy_store, credentials_hint=credentials_hint, endpoint=endpoint or "")


def open_s3(url: str) -> tuple[S3Storage, str]:
    """(the bucket, the prefix inside it) of s3://BUCKET[/PREFIX], with the AWS_* environment's keys."""
    parts = urlsplit(url)
    if not parts.netloc:
        raise UsageError(f"s3 bucket URI needs a bucket name: {url}")
    prefix = check_prefix(parts.path, url)
    endpoint = settings.s3_endpoint()
    storage = S3Storage(
        parts.netloc,
        uri=f"s3://{parts.netloc}",
        endpoint=endpoint,
        region=settings.s3_region(endpoint),
        credentials_hint="credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    )
    return storage, prefix
