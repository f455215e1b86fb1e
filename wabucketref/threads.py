"""Work handed to threads, and tasks run side by side, ended cleanly.

A thread cannot be cancelled. When the task waiting on one is, the thread is waited for before
the cancellation goes on: it may still be using what the caller is about to close or remove (a
listing on local disk, a part file). Tasks run side by side end together: the first failure
cancels the others and is raised once they are over, so no thread outlives the command.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

R = TypeVar("R")


async def in_thread(fn: Callable[..., R], *args: Any, executor: Any = None, stop: threading.Event | None = None) -> R:
    """fn(*args) in a thread of `executor` (the loop's default one if None). If the caller is
    cancelled, `stop` is set (fn may check it between steps) and the thread is waited for."""
    thread = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        if stop is not None:
            stop.set()
        await wait_out([thread])
        raise


SMALL = 256 << 10  # bytes


async def in_thread_unless_small(size: int, fn: Callable[..., R], *args: Any) -> R:
    """fn(*args) on this thread for a small file (a thread hop costs more than reading, linking or
    writing it), else in a thread."""
    return fn(*args) if size <= SMALL else await in_thread(fn, *args)


async def wait_out(aws: list[Any]) -> None:
    """Wait until every future or task is done, even if this task is cancelled again meanwhile
    (a second cancel must not let the caller close a file that a thread still writes)."""
    while pending := [a for a in aws if not a.done()]:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            continue
    for a in aws:  # retrieved, so that asyncio does not log them as never retrieved
        if not a.cancelled():
            a.exception()


async def together(*aws: Awaitable[Any]) -> list[Any]:
    """Run side by side; the first failure cancels the others, waits them out and is raised."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await wait_out(tasks)
        raise
