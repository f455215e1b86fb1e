"""The `<ALIAS>.partial` marker beside an alias's data: an upload is unfinished there, and who runs it.

A rerun resumes an upload whose writer is gone, and refuses one whose writer still runs, so two
uploads never write one folder at once. Still runs means: on this host, its process exists and
it refreshed the marker lately; on another host, it refreshed the marker within STALE seconds
(a running upload does so every BEAT seconds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import WaBucketError
from .storage import Storage

log = logging.getLogger("wabucketref")
T = TypeVar("T")

BEAT = 15.0
STALE = 60.0


@dataclass
class Marker:
    storage: Storage
    key: str
    token: str
    started: float
    owner: dict | None = None  # the W&B entity and project the upload logs in (gc reads them)

    def body(self) -> bytes:
        return json.dumps(
            {
                **(self.owner or {}),
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": self.started,
                "beat": time.time(),
            }
        ).encode()

    async def hold_during(self, work: Coroutine[Any, Any, T], where: str) -> T:
        """Run `work` while the marker is refreshed. An upload that was stopped for a while (a
        suspended machine, a frozen job) may find on waking that another upload took the alias
        over: it then stops writing at once, and says so."""
        task = asyncio.ensure_future(work)
        beat = asyncio.ensure_future(self._keep_alive())
        try:
            await asyncio.wait([task, beat], return_when=asyncio.FIRST_COMPLETED)
            if not task.done():  # the beat ended: the marker is no longer ours
                raise self._taken_over(where, beat.result())
            return task.result()
        finally:
            for t in (task, beat):
                t.cancel()
            await asyncio.gather(task, beat, return_exceptions=True)

    async def _keep_alive(self) -> dict[str, Any] | None:
        """Refresh the marker while it is ours; return its holder once it is not (a failed
        refresh is tried again at the next beat)."""
        while True:
            await asyncio.sleep(BEAT)
            try:
                found = await self.storage.read(self.key)
                holder = _holder(found[0]) if found is not None else None
                if found is None or holder is None or holder.get("token") != self.token:
                    return holder
                if not await self.storage.put_if_unchanged(self.key, self.body(), found[1]):
                    return _holder(await self.storage.get_bytes(self.key))
            except Exception as e:
                log.debug("could not refresh %s: %s", self.key, e)

    async def check_still_ours(self, where: str) -> None:
        holder = _holder(await self.storage.get_bytes(self.key))
        if holder is None or holder.get("token") != self.token:
            raise self._taken_over(where, holder)

    def _taken_over(self, where: str, holder: dict[str, Any] | None) -> WaBucketError:
        return WaBucketError(
            f"another upload to {where} took over while this one ran ({_describe(holder)}); nothing was registered"
        )


async def claim(
    storage: Storage, key: str, found: tuple[bytes, str | None] | None, where: str, owner: dict | None = None
) -> Marker:
    """Mark the upload to `where` as ours; refuse if another upload is running there now."""
    etag = None
    if found is not None:
        data, etag = found
        holder = _holder(data)
        if holder is not None and _running(holder):
            wait = max(0, int(STALE - (time.time() - holder["beat"])))
            raise WaBucketError(
                f"another upload to {where} is running ({_describe(holder)}); if it was stopped, rerun in {wait} s"
            )
    marker = Marker(storage, key, uuid.uuid4().hex, time.time(), owner)
    if not await storage.put_if_unchanged(key, marker.body(), etag):
        raise WaBucketError(f"another upload to {where} started at the same moment; rerun when it ends")
    return marker


def holder(data: bytes | None) -> dict | None:
    """What a marker says of its writer (token, host, pid, started, beat, entity, project); None
    for an empty or unreadable marker."""
    return _holder(data)


def _holder(data: bytes | None) -> dict | None:
    """What a marker says of its writer; None for an empty marker (written before markers said)."""
    try:
        info = json.loads(data or b"")
    except ValueError:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("beat"), (int, float)):
        return None
    return info


def _running(holder: dict) -> bool:
    if time.time() - holder["beat"] > STALE:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():  # an earlier, interrupted call in this process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "by an unknown writer"
    seen = int(time.time() - holder.get("beat", 0))
    return f"host {holder.get('host')}, pid {holder.get('pid')}, last seen {seen} s ago"
