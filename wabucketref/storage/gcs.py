"""Google Cloud Storage buckets (platform buckets of the gcp provider)."""

from __future__ import annotations

from typing import Any

from obstore.store import GCSStore

from .. import settings
from ..retry import RETRY_CONFIG
from .objectstore import ObjectStoreStorage, client_options


class GCSStorage(ObjectStoreStorage):
    """A bucket signed by a service-account key or a token (credential_provider)."""

    def __init__(self, bucket: str, *, uri: str, retry_config: dict[str, Any] = RETRY_CONFIG, **credentials: Any) -> None:
        store = GCSStore(
            bucket, client_options=client_options(settings.request_timeout()), retry_config=retry_config,
            **credentials,
        )
        super().__init__(store, uri)
