"""What a command runs on: one event loop for the API's life, the buckets it opened, and the
Context handed to each command (where bytes go, how they move, how the W&B run starts)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .storage import Storage, open_bucket
from .transfer import Options

log = logging.getLogger("wabucketref")
T = TypeVar("T")


class LoopThread:
    """One event loop, in a background thread, for the API's whole life.

    Platform clients are bound to the loop that made them; a thread also keeps the SDK usable
    from code that already runs a loop (notebooks).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="wabucketref-io", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def wait(self, fut: concurrent.futures.Future[T]) -> T:
        try:
            return fut.result()
        except KeyboardInterrupt:
            self.cancel_all()
            raise

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.wait(self.submit(coro))

    def cancel_all(self) -> None:
        """Cancel what runs on the loop and give it 10 s to remove its temporary files."""

        async def cancel() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=10)

        try:
            asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(timeout=15)
        except BaseException as e:  # already failing: the original error is the one to report
            log.debug("cancelling: %s", e)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


class Buckets:
    """The buckets a command opened, each once (by the spec the user gave, and by root URI)."""

    def __init__(self) -> None:
        self._by_uri: dict[str, Storage] = {}
        self._by_spec: dict[str, tuple[Storage, str]] = {}

    async def open(self, spec: str) -> tuple[Storage, str]:
        """(bucket root, key inside it) for a bucket spec or a data URI."""
        if spec not in self._by_spec:
            storage, key = await open_bucket(spec)
            if storage.uri in self._by_uri or spec in self._by_spec:  # opened meanwhile
                await storage.close()
            else:
                self._by_uri[storage.uri] = storage
            self._by_spec.setdefault(spec, (self._by_uri[storage.uri], key))
        return self._by_spec[spec]

    async def close(self) -> None:
        for storage in self._by_uri.values():
            try:
                await storage.close()
            except Exception as e:  # closing is best effort: the command's outcome is decided
                log.debug("closing %s: %s", storage, e)
        self._by_uri.clear()
        self._by_spec.clear()


@dataclass
class Context:
    """What a command gets from the API."""

    io: LoopThread
    buckets: Buckets
    bucket: str  # the spec of the bucket artifacts are uploaded to
    options: Options
    project: str | None  # the W&B project (None: W&B is disabled)
    lookup_project: str | None  # where download looks artifacts up, if the user named a project
    entity: str | None
    start_run: Callable[[str, Any], Any]  # (job type, config) -> the W&B run (None if disabled)
    _scratch: Path | None = field(default=None, init=False)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *_: object) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def scratch(self, name: str) -> Path:
        """A new empty folder for what the command keeps on local disk (manifests, indexes),
        removed when the command ends."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="wabucket-"))
        return Path(tempfile.mkdtemp(prefix=name + "-", dir=self._scratch))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.io.run(coro)

    def storage(self, spec: str) -> tuple[Storage, str]:
        return self.io.run(self.buckets.open(spec))

    def home(self) -> tuple[Storage, str]:
        """The bucket artifacts are uploaded to, and the base prefix inside it."""
        return self.storage(self.bucket)

    def while_run_starts(self, moving: Coroutine[Any, Any, T], job_type: str, config: Any) -> tuple[T, Any]:
        """Move bytes in the I/O thread while this one starts the W&B run (wandb's import alone is
        ~0.5 s): bookkeeping overlaps the transfer. Returns (the transfer's result, the run)."""
        fut = self.io.submit(moving)
        try:
            run = self.start_run(job_type, config)
        except BaseException:
            self.io.cancel_all()
            raise
        return self.io.wait(fut), run
