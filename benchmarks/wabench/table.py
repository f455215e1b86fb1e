"""The A/B table: in every repetition each contender uploads the data set, then each downloads it back."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .common import REFERENCE
from .contenders import Contenders, Remote
from .datasets import Dataset, tree_hashes, tree_stats
from .measure import Run, measure
from .scaleout import bench_scaleout
from .stack import Stack
from .steps import progress, rotate
from .versions import bench_incremental, bench_partial


def turn(contenders: list[str], rep: int, args: argparse.Namespace) -> list[str]:
    """Who runs in repetition `rep`: everyone, in a rotated order; the slow platform SDK only in its first few."""
    return [c for c in rotate(contenders, rep) if c != "sdk" or rep < args.sdk_repeat]


def bench_dataset(
    ds: Dataset, contenders: list[str], repeat: int, work: Path, args: argparse.Namespace, runs: list[Run]
) -> None:
    """One data set on a fresh stack: the table's uploads and downloads, then the versions sections."""
    stack_dir = work / f"stack-{ds.name}"
    shutil.rmtree(stack_dir, ignore_errors=True)  # a --keep run's stack: its platform config names a dead port
    stack = Stack(stack_dir)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    try:
        cs = Contenders(stack, stack_dir)
        if args.no_session_cache:
            for c in ("wabucketref", "wabucketref-nowandb"):
                cs.env[c]["WABUCKET_CACHE"] = "0"
        uploads: dict[str, dict[int, Remote]] = {c: {} for c in contenders}
        for rep in range(repeat):
            for c in turn(contenders, rep, args):
                runs.append(_upload(cs, c, ds, rep, logs, args, uploads[c]))
                progress(runs[-1])
        for rep in range(repeat):
            for c in turn(contenders, rep, args):
                runs.append(_download(cs, c, ds, rep, work, args, uploads[c]))
                progress(runs[-1])
        if ds.name == "A" and REFERENCE in contenders:
            bench_partial(ds, cs, uploads[REFERENCE].get(0), work, args, runs)
        if REFERENCE in contenders:
            bench_incremental(ds, cs, work, args, runs)
        if ds.name == "A" and REFERENCE in contenders:
            bench_scaleout(ds, cs, work, args, runs)
    finally:
        stack.stop()
        if not args.keep:
            shutil.rmtree(stack_dir, ignore_errors=True)


def _upload(
    cs: Contenders, c: str, ds: Dataset, rep: int, logs: Path, args: argparse.Namespace, done: dict[int, Remote]
) -> Run:
    """One upload to a fresh prefix, checked by listing it (file count and bytes)."""
    argv, remote = cs.upload(c, ds, rep)
    run = _measure(cs, argv, c, logs / f"{ds.name}-up-{c}-r{rep}.log", Run(ds.name, "upload", c, rep), args)
    if run.ok:
        got = cs.stored(remote)
        if got != (ds.count, ds.total):
            run.ok = False
            run.error = f"bucket holds {got[0]} files / {got[1]} bytes, expected {ds.count} / {ds.total}"
        else:
            run.verified = "count+bytes"
            done[rep] = remote
    return run


def _download(
    cs: Contenders, c: str, ds: Dataset, rep: int, work: Path, args: argparse.Namespace, uploads: dict[int, Remote]
) -> Run:
    """One download of the contender's own first upload into a fresh folder, checked, then removed."""
    source = uploads.get(0) or next(iter(uploads.values()), None)
    run = Run(ds.name, "download", c, rep)
    if source is None:
        run.error = "no successful upload to download"
        return run
    dest = work / "dl" / f"{ds.name}-{c}-r{rep}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    argv = cs.download(c, ds, source, dest)
    run = _measure(cs, argv, c, work / "logs" / f"{ds.name}-down-{c}-r{rep}.log", run, args)
    if run.ok:
        _check_download(run, dest, ds, every_file=rep == 0)
    shutil.rmtree(dest, ignore_errors=True)
    return run


def _measure(cs: Contenders, argv: list[str], c: str, log: Path, run: Run, args: argparse.Namespace) -> Run:
    return measure(
        argv,
        cs.env[c],
        log,
        run,
        server_pid=cs.stack.s3.pid,
        cold=args.drop_caches,
        timeout=args.timeout,
        cwd=cs.work,
    )


def _check_download(run: Run, dest: Path, ds: Dataset, every_file: bool) -> None:
    """Every file's sha256 (one download per contender), else the file count and bytes."""
    if every_file:
        got_h = tree_hashes(dest)
        if got_h != ds.hashes:
            bad = sorted(set(got_h.items()) ^ set(ds.hashes.items()))[:1]
            run.ok, run.error = False, f"downloaded tree differs from the source (e.g. {bad})"
        else:
            run.verified = "sha256"
        return
    got = tree_stats(dest)
    if got != (ds.count, ds.total):
        run.ok, run.error = False, f"downloaded {got[0]} files / {got[1]} bytes, expected {ds.count} / {ds.total}"
    else:
        run.verified = "count+bytes"
