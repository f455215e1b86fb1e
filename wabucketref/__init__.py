"""wabucketref: artifact bytes in your bucket, versions and lineage in Weights & Biases."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wabucketref")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["WaBucketRefAPI", "__version__"]


def __getattr__(name: str):
    # Lazy: `wabucket --help` must not pay for importing wandb and apolo_sdk.
    if name == "WaBucketRefAPI":
        from .api import WaBucketRefAPI

        return WaBucketRefAPI
    raise AttributeError(name)
