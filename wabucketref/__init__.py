"""wabucketref: artifact bytes in your bucket, versions and lineage in Weights & Biases."""

from .errors import IntegrityError, NotFoundError, TransferError, UsageError, WaBucketError

__all__ = [
    "IntegrityError",
    "NotFoundError",
    "TransferError",
    "UsageError",
    "WaBucketError",
    "WaBucketRefAPI",
    "__version__",
    "parse_meta",
]


def __getattr__(name: str):
    # Lazy: `wabucket --help` must not pay for importing wandb, apolo_sdk or importlib.metadata.
    if name == "WaBucketRefAPI":
        from .api import WaBucketRefAPI

        return WaBucketRefAPI
    if name == "parse_meta":  # the original tool's name for KEY=VALUE parsing
        from .cli import parse_pairs

        return parse_pairs
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("wabucketref")
        except PackageNotFoundError:  # a source tree that is not installed
            return "0+unknown"
    raise AttributeError(name)
