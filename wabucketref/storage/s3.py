"""Direct s3:// buckets, on AWS or any S3-compatible endpoint."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from obstore.store import S3Store

from ..errors import UsageError
from .base import CLIENT_OPTIONS, RETRY_CONFIG, Storage, check_prefix

# AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL are the standard names; AWS_S3_ENDPOINT_URL is what
# W&B's own s3 handler reads, so users of W&B references may already have it set.
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT_URL")


def s3_endpoint() -> str | None:
    return next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)


def make_s3_store(
    bucket: str, *, endpoint: str | None, region: str | None = None, retry_config: dict = RETRY_CONFIG, **config
) -> S3Store:
    kwargs = dict(config)
    if endpoint:
        kwargs["endpoint"] = endpoint
        kwargs["virtual_hosted_style_request"] = False  # custom endpoints are path-style
    if region:
        kwargs["region"] = region
    options = dict(CLIENT_OPTIONS)
    if endpoint and endpoint.startswith("http://"):
        options["allow_http"] = True
    return S3Store(bucket, client_options=options, retry_config=retry_config, **kwargs)


def open_s3(url: str) -> tuple[Storage, str]:
    parts = urlsplit(url)
    if not parts.netloc:
        raise UsageError(f"s3 bucket URI needs a bucket name: {url}")
    prefix = check_prefix(parts.path, url)
    endpoint = s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ("us-east-1" if endpoint else None)
    store = make_s3_store(parts.netloc, endpoint=endpoint, region=region)
    hint = "credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    return Storage(store, f"s3://{parts.netloc}", credentials_hint=hint), prefix
