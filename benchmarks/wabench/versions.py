"""Versions of a data set, the reference only: partial and reusing downloads of A, incremental
uploads of A and B. Each section sets up (untimed) what its timed runs start from."""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
from pathlib import Path

from .common import REFERENCE
from .contenders import Contenders, Remote
from .datasets import Dataset, make_changed, share_pattern, tree_hashes, tree_stats
from .measure import Run
from .steps import forget_hashes, not_run, progress, rotate, set_up, timed

# Partial and reusing downloads (dataset A, the reference only): the target is "about their share of
# the work, a few times the time of 1% of a full download": a few = this many times the share.
SHARE = 0.01
SHARE_FACTOR = 5

PARTIAL_OPS = {
    # op: what the row measures
    "download-1%": "the version, `--include PATTERN` selecting 1% of its files",
    "download-1%-nowandb": "the same with `WANDB_MODE=disabled`: no W&B run (the alias resolved from the bucket)",
    "download-next": "the next version (1% of the files changed) into an empty folder",
    "download-next-reuse": "the next version with `--reuse DIR`, DIR = a full download of the previous version",
    "download-next-reuse-cold": "the same, the local hash cache emptied first: every file of DIR is read and hashed",
}
REUSE_OPS = ("download-next-reuse", "download-next-reuse-cold")

INCREMENTAL_OPS = {
    # op: what the row measures
    "upload-next-incremental": "the default `wabucket upload`: unchanged files copied in the bucket from the latest version",
    "upload-next-incremental-cold": "the same, the local hash cache emptied first: every file is read and hashed",
    "upload-unchanged-incremental": "the base's own folder again: every file copied in the bucket, none sent (the copies' cost)",
    "upload-next-full": "`wabucket upload --no-base`: every file sent",
}
# The next version uploaded incrementally: A with 1% of its files changed, B with one of its four.
INCREMENTAL_SHARE = {"A": SHARE, "B": 0.25}
# Target on B: an incremental upload takes at most this share of a full upload's time.
INCREMENTAL_TIME_SHARE = 0.5


def bench_partial(
    ds: Dataset, cs: Contenders, source: Remote | None, work: Path, args: argparse.Namespace, runs: list[Run]
) -> None:
    """The reference's partial and reusing downloads of A, each run alternating with the others.

    Not timed: the next version (A with 1% of its files changed) is uploaded as a new version of the
    reference's first upload, and that first version is downloaded once in full (the local copy).
    The reusing downloads' folders are kept to the end: removing a hard link to a file changes its
    ctime, which makes wabucketref read it again (as it would for a user who deleted them)."""
    pattern, n = share_pattern(ds.count, SHARE)
    subset = {p: h for p, h in ds.hashes.items() if fnmatch.fnmatchcase(p, pattern)}
    new = make_changed(work / "data", ds, SHARE)
    prev = work / "dl" / f"{ds.name}-previous"
    shutil.rmtree(prev, ignore_errors=True)
    if len(subset) != n:
        error = f"{pattern!r} selects {len(subset)} of {ds.name}'s files, not {n}"
    elif source is None:
        error = "no successful upload of the reference to start from"
    else:
        error = _partial_setup(ds, cs, source, new, prev, work, args)
    for rep in range(args.repeat):
        for op in rotate(list(PARTIAL_OPS), rep):
            run = Run(ds.name, op, REFERENCE, rep)
            if error:
                not_run(run, error, runs)
                continue
            expected = subset if op.startswith("download-1%") else new.hashes
            runs.append(_partial_run(cs, run, source, pattern, prev, expected, work, args))  # type: ignore[arg-type]
            progress(runs[-1])
    for op in REUSE_OPS:
        for rep in range(args.repeat):
            shutil.rmtree(work / "dl" / f"{ds.name}-{op}-r{rep}", ignore_errors=True)
    shutil.rmtree(prev, ignore_errors=True)


def _partial_setup(
    ds: Dataset, cs: Contenders, source: Remote, new: Dataset, prev: Path, work: Path, args: argparse.Namespace
) -> str:
    """Upload the next version, download the first one in full (untimed); the error that stops the section."""
    wab = cs.wab(REFERENCE)
    setups = {
        "upload-next": [*wab, "upload", str(new.path), "-n", source.artifact, "-t", "dataset", "-a", "next"],
        "download-previous": [*wab, "download", "dataset", source.artifact, source.alias, "-d", str(prev)],
    }
    for what, argv in setups.items():
        setup = set_up(cs, argv, ds.name, what, 0, work / "logs", args)
        if not setup.ok:
            return f"set-up {what} failed: {setup.error}"
    if tree_stats(prev) != (ds.count, ds.total):
        return f"set-up: the previous version's download holds {tree_stats(prev)}, expected {(ds.count, ds.total)}"
    return ""


def _partial_run(
    cs: Contenders,
    run: Run,
    source: Remote,
    pattern: str,
    prev: Path,
    expected: dict[str, str],
    work: Path,
    args: argparse.Namespace,
) -> Run:
    """One partial or reusing download into a fresh folder; every file checked by sha256."""
    op = run.op
    dest = work / "dl" / f"{run.dataset}-{op}-r{run.rep}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    argv = [*cs.wab(REFERENCE), "download", "dataset", source.artifact]
    if op.startswith("download-1%"):
        argv += [source.alias, "--include", pattern]
    else:
        argv += ["next"] + (["--reuse", str(prev)] if op in REUSE_OPS else [])
    if op.endswith("-cold"):
        forget_hashes(cs.env[REFERENCE])
    env = cs.env["wabucketref-nowandb"] if op.endswith("-nowandb") else None
    run = timed(cs, [*argv, "-d", str(dest)], run, work / "logs", args, env)
    if run.ok:  # every file hashed, every time: a wrongly reused file must not pass
        got_h = tree_hashes(dest)
        if got_h != expected:
            bad = sorted(set(got_h.items()) ^ set(expected.items()))[:1]
            run.ok, run.error = False, f"downloaded tree differs from the version (e.g. {bad})"
        else:
            run.verified = "sha256"
    if op not in REUSE_OPS:
        shutil.rmtree(dest, ignore_errors=True)
    return run


def bench_incremental(ds: Dataset, cs: Contenders, work: Path, args: argparse.Namespace, runs: list[Run]) -> None:
    """The reference's incremental upload of the next version of `ds` against a full upload of it,
    each run alternating with the other.

    Not timed: in every repetition, `ds` is uploaded (`--no-base`) as alias `base` of a fresh artifact;
    the incremental uploads then send the next version to aliases `next` and `next-cold` of that
    artifact with `--base base`. The next version's unchanged files are hard links to `ds`'s, so the
    base upload has read them (as when a dataset folder is uploaded, edited, and uploaded again); the
    cold run empties the hash cache first. The full upload sends the same next version with
    `--no-base` to alias `next` of another fresh artifact."""
    new = make_changed(work / "data", ds, INCREMENTAL_SHARE[ds.name])
    changed = sum(1 for p, h in new.hashes.items() if ds.hashes.get(p) != h)
    for rep in range(args.repeat):
        art = f"bench-{ds.name}-incremental-r{rep}"
        base = [*cs.wab(REFERENCE), "upload", str(ds.path), "-n", art, "-t", "dataset", "-a", "base", "--no-base"]
        setup = set_up(cs, base, ds.name, "upload-base", rep, work / "logs", args)
        error = "" if setup.ok else f"set-up upload of the base version failed: {setup.error}"
        for op in rotate(list(INCREMENTAL_OPS), rep):
            run = Run(ds.name, op, REFERENCE, rep)
            if error:
                not_run(run, error, runs)
                continue
            runs.append(_incremental_run(cs, run, ds, new, art, changed, work, args))
            progress(runs[-1])


def _incremental_run(
    cs: Contenders, run: Run, ds: Dataset, new: Dataset, art: str, changed: int, work: Path, args: argparse.Namespace
) -> Run:
    """One upload of the next version (or the base's folder again), checked by listing its folder."""
    op, rep = run.op, run.rep
    incremental = op != "upload-next-full"
    unchanged = op == "upload-unchanged-incremental"
    name = art if incremental else f"bench-{ds.name}-full-next-r{rep}"
    alias = "same" if unchanged else "next-cold" if op.endswith("-cold") else "next"
    folder = ds.path if unchanged else new.path
    argv = [*cs.wab(REFERENCE), "upload", str(folder), "-n", name, "-t", "dataset", "-a", alias]
    argv += ["--base", "base"] if incremental else ["--no-base"]
    if op.endswith("-cold"):
        forget_hashes(cs.env[REFERENCE])
    run = timed(cs, argv, run, work / "logs", args)
    if not run.ok:
        return run
    got = cs.stored(Remote(cs.backing, f"dataset/{name}/{alias}"))
    sent = run.files_moved if run.files_moved is not None else -1
    copied = run.files_copied or 0
    expected_sent = 0 if unchanged else changed if incremental else new.count
    if got != (new.count, new.total):
        run.ok = False
        run.error = f"bucket holds {got[0]} files / {got[1]} bytes, expected {new.count} / {new.total}"
    elif sent + copied != new.count:
        run.ok = False
        run.error = f"summary line: {sent} files sent + {copied} copied, expected {new.count} in all"
    else:
        run.verified = "count+bytes"
        if sent != expected_sent:  # kept as a measurement; the report's target judges it
            print(f"  note: {ds.name} {op} sent {sent} files, {expected_sent} expected", file=sys.stderr, flush=True)
    return run
