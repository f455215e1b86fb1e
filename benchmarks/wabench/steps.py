"""What every section does between runs: rotating turns, progress lines, and the reference's
untimed set-up, timed and not-run steps."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import REFERENCE
from .contenders import Contenders
from .measure import Run, measure


def rotate(items: list[str], k: int) -> list[str]:
    k %= max(1, len(items))
    return items[k:] + items[:k]


def progress(run: Run) -> None:
    state = f"{run.wall:7.2f} s" if run.ok else f"FAILED: {run.error}"
    extra = f" (transfer {run.transfer_s:.1f} s)" if run.transfer_s is not None else ""
    print(f"  {run.dataset} {run.op:8s} {run.contender:20s} r{run.rep}: {state}{extra}", file=sys.stderr, flush=True)


def forget_hashes(env: dict[str, str]) -> None:
    """Empty wabucketref's local hash cache (hashcache.py) of the contenders' HOME: a cold run."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(env["HOME"], ".cache")
    Path(base, "wabucketref", "hashes.sqlite").unlink(missing_ok=True)


def set_up(
    cs: Contenders, argv: list[str], dataset: str, what: str, rep: int, logs: Path, args: argparse.Namespace
) -> Run:
    """An untimed step of the reference that a section's timed runs start from (printed, not reported)."""
    setup = Run(dataset, what, REFERENCE, rep)
    measure(
        argv,
        cs.env[REFERENCE],
        logs / f"{dataset}-setup-{what}-r{rep}.log",
        setup,
        server_pid=None,
        cold=False,
        timeout=args.timeout,
        cwd=cs.work,
    )
    print(
        f"  {dataset} set-up {what} r{rep}: {setup.wall:.2f} s (not timed) {setup.error}", file=sys.stderr, flush=True
    )
    return setup


def timed(
    cs: Contenders, argv: list[str], run: Run, logs: Path, args: argparse.Namespace, env: dict[str, str] | None = None
) -> Run:
    """One timed run of the reference (as its main rows are: server CPU, page cache dropped)."""
    return measure(
        argv,
        env or cs.env[REFERENCE],
        logs / f"{run.dataset}-{run.op}-r{run.rep}.log",
        run,
        server_pid=cs.stack.s3.pid,
        cold=args.drop_caches,
        timeout=args.timeout,
        cwd=cs.work,
    )


def not_run(run: Run, error: str, runs: list[Run]) -> None:
    """A run its set-up made impossible: reported as failed, with the set-up's error."""
    run.error = error
    runs.append(run)
    progress(run)
