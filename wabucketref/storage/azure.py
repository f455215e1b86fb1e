"""Azure Blob containers (platform buckets of the azure provider)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from obstore.store import AzureStore

from .objectstore import NO_RETRIES, RETRY_CONFIG, ObjectStoreStorage, client_options

if TYPE_CHECKING:
    from obstore.store import RetryConfig


class AzureStorage(ObjectStoreStorage):
    """A container at `endpoint`, signed by a SAS token (credential_provider) or the account key."""

    def __init__(
        self,
        container: str,
        *,
        uri: str,
        endpoint: str,
        retry_config: RetryConfig = RETRY_CONFIG,
        **credentials: Any,
    ) -> None:
        endpoint = endpoint.rstrip("/")
        stores = [
            AzureStore(
                container,
                account_name=account_of(endpoint),
                endpoint=endpoint,
                retry_config=config,
                client_options=client_options(endpoint),
                **credentials,
            )
            for config in (retry_config, NO_RETRIES)
        ]
        super().__init__(stores[0], uri, copy_store=stores[1], endpoint=endpoint)


def account_of(endpoint: str) -> str:
    """The storage account an endpoint is for, read as the Azure SDK reads it: the host's first
    label (ACCOUNT.blob.core.windows.net) or, on an emulator (http://127.0.0.1:10000/ACCOUNT), the path."""
    url = urlsplit(endpoint)
    path = url.path.strip("/")
    return path.split("/")[0] if path else (url.hostname or "").split(".")[0]
