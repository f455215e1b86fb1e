"""Google Cloud Storage buckets (platform buckets of the gcp provider)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from obstore.store import GCSStore

from .objectstore import RETRY_CONFIG, ObjectStoreStorage, client_options

if TYPE_CHECKING:
    from obstore.store import RetryConfig


class GCSStorage(ObjectStoreStorage):
    """A bucket signed by a service-account key or a token (credential_provider)."""

    def __init__(self, bucket: str, *, uri: str, retry_config: RetryConfig = RETRY_CONFIG, **credentials: Any) -> None:
        store = GCSStore(
            bucket,
            client_options=client_options(),
            retry_config=retry_config,
            **credentials,
        )
        super().__init__(store, uri)
