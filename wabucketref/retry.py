"""Retries with exponential backoff and jitter, for every request or file that may fail transiently."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from typing import Awaitable, Callable, TypeVar

from obstore.exceptions import NotFoundError as ObjNotFound
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

from .errors import TransferError, WaBucketError

log = logging.getLogger("wabucketref")
R = TypeVar("R")

ATTEMPTS = 4
_PERMANENT = (ObjNotFound, PermissionDeniedError, UnauthenticatedError, WaBucketError, FileNotFoundError, PermissionError)


async def with_retries(fn: Callable[[], Awaitable[R]], what: str, attempts: int) -> R:
    """Retry transient failures with exponential backoff and jitter; after the last try, fail."""
    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except _PERMANENT:
            raise
        except Exception as e:  # noqa: BLE001 - network and server errors of any client
            if attempt == attempts:
                raise TransferError(f"{what} failed after {attempts} tries: {one_line(e)}") from e
            delay = min(0.5 * 2 ** (attempt - 1), 8.0) * (0.5 + random.random())
            log.warning("%s failed (%s); retrying in %.1f s", what, one_line(e), delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def one_line(e: BaseException) -> str:
    raw = str(e)
    text = raw.strip().splitlines()
    line = re.sub(r"\s*<\?xml[^>]*\?>", "", text[0] if text else type(e).__name__)
    # An S3 error's first line ends where its XML body starts: keep the body's code and message.
    code, message = re.search(r"<Code>([^<]*)</Code>", raw), re.search(r"<Message>([^<]*)</Message>", raw)
    if code and code.group(1) not in line:
        line = f"{line.rstrip(': ')}: {code.group(1)}" + (f": {message.group(1)}" if message else "")
    return line[:300]
