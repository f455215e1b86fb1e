"""What a transfer reports while it runs (a callback handed in) and what it did (Stats)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any


class ProgressCallback:
    """Told what a transfer does as it goes. The SDK's default: nothing is shown.

    Subclass it and pass it as `progress=` to WaBucketRefAPI; the CLI passes a bar (TqdmProgress).
    Every method runs in the transfer's event-loop thread, one transfer at a time.
    """

    def start(self, verb: str, files: int, total_bytes: int) -> None:
        """A transfer of `files` files, `total_bytes` in all, begins."""

    def advance(self, nbytes: int) -> None:
        """`nbytes` more were moved (or found already in place)."""

    def file_done(self, done: int, files: int) -> None:
        """`done` of `files` files are complete."""

    def close(self) -> None:
        """The transfer ended (completed or not)."""


class TqdmProgress(ProgressCallback):
    """A files+bytes bar on stderr (shown only when stderr is a terminal)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def start(self, verb: str, files: int, total_bytes: int) -> None:
        if not files or not sys.stderr.isatty():
            return
        import shutil

        from tqdm import tqdm

        size = shutil.get_terminal_size((100, 24))
        self.bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=verb,
            file=sys.stderr,
            leave=False,
            disable=False,
            # tqdm hides the bar on a terminal that reports no size; assume a usual one then
            ncols=size.columns,
            nrows=size.lines,
        )

    def advance(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def file_done(self, done: int, files: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{done}/{files} files", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class Stats:
    verb: str
    files: int = 0
    bytes: int = 0
    skipped_files: int = 0
    skipped_bytes: int = 0
    reused_files: int = 0  # taken from --reuse folders
    reused_bytes: int = 0
    of_files: int | None = None  # the version's file count, when only some were selected
    copied_files: int = 0  # copied inside the bucket instead of sent (incremental uploads)
    copied_bytes: int = 0
    left: int = 0  # files already in the folder that differ, left alone by a speculative pass
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    def summary(self) -> str:
        seconds = max((self.ended or time.monotonic()) - self.started, 1e-6)
        text = (
            f"{self.verb} {_files(self.files)} ({_human(self.bytes)}) in {seconds:.1f} s, "
            f"{self.bytes / seconds / 1e6:.1f} MB/s"
        )
        if self.copied_files:
            text += f"; {_files(self.copied_files)} ({_human(self.copied_bytes)}) copied in the bucket"
        if self.skipped_files:
            were = "was" if self.skipped_files == 1 else "were"
            text += f"; {_files(self.skipped_files)} ({_human(self.skipped_bytes)}) {were} already there"
        if self.reused_files:
            text += f"; {_files(self.reused_files)} ({_human(self.reused_bytes)}) reused from local folders"
        if self.of_files is not None:
            selected = self.files + self.skipped_files + self.reused_files
            text += f"; {selected} of {_files(self.of_files)} selected"
        return text


def _files(n: int) -> str:
    return "1 file" if n == 1 else f"{n} files"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
