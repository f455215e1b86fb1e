"""The retry budget: how often, and how long, one request is tried before the command fails.

Each request has one budget. obstore sends it up to REQUEST_TRIES times (server errors,
throttling, refused or reset connections), waiting FIRST_BACKOFF, then a random time up to
BACKOFF_GROWTH times the last wait (at most LONGEST_BACKOFF), retrying for at most RETRY_WINDOW:
a server that restarts within ~10 s is ridden out, and a missing one is reported in ~15 s. Each try is limited to
settings.request_timeout(). What obstore cannot retry itself (a response that breaks off
mid-body, a part of a streamed file) is tried here, up to ATTEMPTS times in all, resuming where it
stopped; a failure that obstore already retried is not tried again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from .errors import TransferError
from .failures import TRANSIENT, classify

log = logging.getLogger("wabucketref")
R = TypeVar("R")

ATTEMPTS = 4
REQUEST_TRIES = 11  # obstore's own tries of one request (storage/objectstore.py passes them on)
RETRY_WINDOW = timedelta(seconds=15)  # also bounds asking for credentials that are not there
FIRST_BACKOFF, LONGEST_BACKOFF, BACKOFF_GROWTH = timedelta(milliseconds=500), timedelta(seconds=8), 4


async def with_retries(fn: Callable[[], Awaitable[R]], what: str, attempts: int = ATTEMPTS) -> R:
    """Try again what failed transiently, with exponential backoff and jitter; then fail with one line."""
    for attempt in range(1, attempts + 1):
        try:
            return await fn()
        except Exception as e:
            failure = classify(e)
            if failure.about == "disk":
                raise TransferError(f"{what} failed: {failure.message}") from e
            if failure.kind != TRANSIENT:
                raise
            if failure.spent or attempt == attempts:  # the request's budget is spent
                tries = failure.tries if failure.spent else attempt
                raise TransferError(f"{what} failed after {tries} tries: {failure.message}") from e
            delay = min(0.5 * 2 ** (attempt - 1), 8.0) * (0.5 + random.random())
            log.warning("%s failed (%s); retrying in %.1f s", what, failure.message, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
