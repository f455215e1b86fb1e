"""wabucketref: artifact bytes in your bucket, versions and lineage in Weights & Biases."""

__all__ = ["WaBucketRefAPI", "__version__"]


def __getattr__(name: str):
    # Lazy: `wabucket --help` must not pay for importing wandb, apolo_sdk or importlib.metadata.
    if name == "WaBucketRefAPI":
        from .api import WaBucketRefAPI

        return WaBucketRefAPI
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("wabucketref")
        except PackageNotFoundError:  # a source tree that is not installed
            return "0+unknown"
    raise AttributeError(name)
