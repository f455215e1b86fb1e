"""Retries with exponential backoff and jitter, for every request or file that may fail transiently."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from typing import Awaitable, Callable, TypeVar

from obstore.exceptions import NotFoundError as ObjNotFound
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

from .errors import TransferError, WaBucketError

log = logging.getLogger("wabucketref")
R = TypeVar("R")

ATTEMPTS = 4


def env_seconds(name: str, default: float) -> float:
    """A time limit a user may set in the environment (positive seconds), else `default`."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default
_PERMANENT = (ObjNotFound, PermissionDeniedError, UnauthenticatedError, WaBucketError, FileNotFoundError, PermissionError)
# S3 and Azure error codes that another try cannot fix (whatever exception type the client wrapped them in)
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "InvalidBucketName", "ContainerNotFound"})  # S3, Azure
PERMANENT_CODES = MISSING_BUCKET_CODES | {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "AllAccessDisabled", "AccountProblem",  # S3
    "AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",  # Azure
}


async def with_retries(fn: Callable[[], Awaitable[R]], what: str, attempts: int) -> R:
    """Retry transient failures with exponential backoff and jitter; after the last try, fail."""
    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except _PERMANENT:
            raise
        except Exception as e:  # noqa: BLE001 - network and server errors of any client
            if s3_error(e)[0] in PERMANENT_CODES:
                raise
            if isinstance(e, OSError) and not isinstance(e, (ConnectionError, TimeoutError)):
                # the local disk (full, read-only, a folder in the way): another try cannot fix it
                path = e.filename2 or e.filename
                raise TransferError(f"{what} failed: {e.strerror or e}" + (f": {path}" if path else "")) from e
            if attempt == attempts:
                raise TransferError(f"{what} failed after {attempts} tries: {one_line(e)}") from e
            delay = min(0.5 * 2 ** (attempt - 1), 8.0) * (0.5 + random.random())
            log.warning("%s failed (%s); retrying in %.1f s", what, one_line(e), delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def s3_error(e: BaseException) -> tuple[str | None, str]:
    """The code and message of the S3 (or Azure) XML error body carried in an exception's text, if any."""
    raw = str(e)
    code, message = re.search(r"<Code>([^<]*)</Code>", raw), re.search(r"<Message>([^<]*)</Message>", raw)
    # Azure appends RequestId and Time lines to the message
    return (code.group(1) if code else None), (message.group(1).strip().split("\n")[0] if message else "")


def failed_request(e: BaseException) -> tuple[str, str] | None:
    """(method, URL without its query) of the request an obstore error names."""
    found = re.search(r"Error performing (\w+) (https?://[^\s?]+)", str(e))
    return (found.group(1), found.group(2)) if found else None


def server_of(e: BaseException) -> str | None:
    """scheme://host[:port] of the request an obstore error names."""
    request = failed_request(e)
    return re.match(r"https?://[^/]+", request[1]).group(0) if request else None


def one_line(e: BaseException) -> str:
    raw = str(e)
    code, message = s3_error(e)
    if code:
        # An S3 refusal: its code and message and the request, not the client's wrapping or the XML.
        request = failed_request(e)
        where = f" ({request[0]} {request[1]})" if request else ""
        return ((f"{code}: {message}" if message else code) + where)[:300]
    text = raw.strip().splitlines()
    return re.sub(r"\s*<\?xml[^>]*\?>", "", text[0] if text else type(e).__name__)[:300]
