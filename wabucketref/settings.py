"""The tool's own settings from the environment, read when a command runs (never at import).

Variables that belong to a client (WANDB_* for wandb, APOLO_* for apolo_sdk) are read by the
module that drives that client; the ones wabucketref defines, or chooses between, are read here.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_REQUEST_TIMEOUT = 300.0  # leaves room for a 16 MiB part on a slow link
DEFAULT_WANDB_TIMEOUT = 300.0
DEFAULT_SHARD_FILES = 50_000  # entries per manifest shard (lakeFS keeps ranges of ~50k entries too)

# AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL are the standard names; AWS_S3_ENDPOINT_URL is what
# W&B's own s3 handler reads, so users of W&B references may already have it set.
S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT_URL")


def _seconds(name: str, default: float) -> float:
    """A time limit a user may set (positive seconds), else `default`."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default


def request_timeout() -> float:
    """Each storage request's time limit (WABUCKET_REQUEST_TIMEOUT)."""
    return _seconds("WABUCKET_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT)


def wandb_timeout() -> float:
    """How long to wait for W&B to register an artifact or finish a run (WABUCKET_WANDB_TIMEOUT)."""
    return _seconds("WABUCKET_WANDB_TIMEOUT", DEFAULT_WANDB_TIMEOUT)


def shard_files() -> int:
    """Entries per manifest shard (WABUCKET_SHARD_FILES); versions with no more files keep their
    whole file list in one document (format 1), as before shards existed."""
    try:
        value = int(os.environ.get("WABUCKET_SHARD_FILES", ""))
    except ValueError:
        return DEFAULT_SHARD_FILES
    return value if value > 0 else DEFAULT_SHARD_FILES


def cache_enabled() -> bool:
    """Keep platform sessions and file hashes between commands (WABUCKET_CACHE=0 turns it off)."""
    return os.environ.get("WABUCKET_CACHE", "1").lower() not in ("0", "false", "no", "off")


def cache_folder() -> Path | None:
    """Where what is kept between commands lives: $XDG_CACHE_HOME/wabucketref, else
    ~/.cache/wabucketref; None without a home folder (HOME unset, no passwd entry)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wabucketref" if os.path.isabs(base) else None


def debug() -> bool:
    """Show tracebacks instead of one-line errors (WABUCKET_DEBUG)."""
    return bool(os.environ.get("WABUCKET_DEBUG"))


def s3_endpoint() -> str | None:
    return next((os.environ[v] for v in S3_ENDPOINT_VARS if os.environ.get(v)), None)


def s3_region(endpoint: str | None) -> str | None:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return region or ("us-east-1" if endpoint else None)


CA_BUNDLE_VARS = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


def ca_bundle() -> bytes | None:
    """The CA certificates a user named for TLS (a private CA in front of S3 or W&B), as one PEM
    blob: trusted besides the system's roots."""
    paths = dict.fromkeys(os.environ[v] for v in CA_BUNDLE_VARS if os.environ.get(v))
    pems = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                pems.append(f.read())
        except OSError:  # a wrong path: the TLS error that follows says what is not trusted
            continue
    return b"\n".join(pems) or None


def platform_job_env(suffix: str) -> str | None:
    """JOB_ID, JOB_NAME or JOB_OWNER of the platform job this process runs in: the original tool
    read NEURO_*; newer platforms set APOLO_* as well."""
    return os.environ.get(f"APOLO_{suffix}") or os.environ.get(f"NEURO_{suffix}")
