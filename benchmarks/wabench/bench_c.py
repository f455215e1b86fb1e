"""Data set C's runs at one file count, on a fresh stack: wabucketref on a folder bucket (every
command), `cp -a` and `rclone copy` between local folders, and wabucketref, s5cmd and rclone on S3.

In each repetition three groups take turns in a rotated order; every timed run drops the page
cache first (when root). Trees, bucket copies and downloads are removed as soon as their rows
are done: at 1.28M files each copy is about 5 GB of 4 KiB blocks."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .common import S3_BUCKET, WANDB_PROJECT
from .contenders import Contenders, Remote
from .dataset_c import ManyFiles, check_tree, include_pattern, space_error
from .datasets import tree_stats
from .measure import Run, measure
from .stack import Stack
from .steps import forget_hashes, not_run, progress, rotate
from .synthetic import bench_synthetic

WAB_FOLDER = "wabucketref-folder"
WAB_S3 = "wabucketref-s3"
FOLDER_OPS = [
    "upload",
    "download",
    "verify",
    "upload-unchanged",
    "upload-changed",
    "ls",
    "diff",
    "download-1%",
    "gc",
    "upload-4-parts",
    "commit",
]
FOLDER_PEERS = ["cp", "rclone-local"]
S3_OPS = ["upload", "download", "upload-unchanged"]
S3_PEERS = ["s5cmd", "rclone"]
# Every row of a file count, in the report's order: (bucket, contender, op)
ROWS = (
    [("folder", WAB_FOLDER, op) for op in FOLDER_OPS]
    + [("folder", p, op) for p in FOLDER_PEERS for op in ("upload", "download")]
    + [("S3", WAB_S3, op) for op in S3_OPS]
    + [("S3", p, op) for p in S3_PEERS for op in ("upload", "download")]
)
# --contenders names A/B's contenders; C's are named after them
AS_CONTENDER = {WAB_FOLDER: "wabucketref", "rclone-local": "rclone"}

Check = Callable[[Run, str], str]  # (run, its log) -> '' or what is wrong


@dataclass
class CBench:
    """One file count's tree, stack and work folder, and the runs it adds to."""

    tree: ManyFiles
    cs: Contenders
    work: Path
    args: argparse.Namespace
    runs: list[Run]

    def wanted(self, contender: str) -> bool:
        return self.args.contenders is None or AS_CONTENDER.get(contender, contender) in self.args.contenders

    def run(
        self, contender: str, op: str, rep: int, argv: list[str], check: Check | None = None, dataset: str = ""
    ) -> Run:
        """One timed run (server CPU on S3 only), checked; appended to the runs and printed."""
        run = Run(dataset or self.tree.name, op, contender, rep)
        log = self.work.parent / "logs" / f"{run.dataset}-{contender}-{op}-r{rep}.log"
        server = self.cs.stack.s3.pid if contender in (WAB_S3, *S3_PEERS) else None
        measure(
            argv,
            self.cs.env[contender],
            log,
            run,
            server_pid=server,
            cold=self.args.drop_caches,
            timeout=self.args.timeout,
            cwd=self.cs.work,
        )
        if run.ok and check is not None:
            error = check(run, log.read_text(errors="replace"))
            run.ok, run.error = not error, error
        self.runs.append(run)
        progress(run)
        return run

    def skip(self, contender: str, op: str, rep: int, why: str) -> None:
        not_run(Run(self.tree.name, op, contender, rep), why, self.runs)

    def download(self, contender: str, op: str, rep: int, argv_to: Callable[[Path], list[str]], **expect) -> Run:
        """A download into a fresh folder (absent for `cp -a`, which names its copy so), checked, removed."""
        dest = self.work / "dl" / f"{contender}-{op}-r{rep}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        if contender == "cp":
            dest.rmdir()
        every = rep == 0  # one run per row compares every byte, as A/B's first repetition does
        try:
            return self.run(
                contender, op, rep, argv_to(dest), lambda run, _log: self._check(run, dest, every, **expect)
            )
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    def _check(self, run: Run, dest: Path, every: bool, changed: bool, pattern: str | None = None) -> str:
        run.verified = "content" if every else "names+sizes"
        return check_tree(dest, self.tree.count, changed, pattern, every)

    def stored(self, where: Path | Remote) -> Check:
        """A check of an upload: the copy holds every file and byte of the tree."""

        def check(run: Run, _log: str) -> str:
            got = tree_stats(where) if isinstance(where, Path) else self.cs.stored(where)
            run.verified = "count+bytes"
            expected = (self.tree.count, self.tree.total)
            return (
                ""
                if got == expected
                else f"holds {got[0]} files / {got[1]} bytes, expected {expected[0]} / {expected[1]}"
            )

        return check


def bench_c(count: int, work: Path, args: argparse.Namespace, runs: list[Run], synthetic: bool) -> None:
    """Every row of C at `count` files (not run, with the reason, when the disk is too small)."""
    tree = ManyFiles(count, work / "data" / f"C-{count}")
    if error := space_error(work, count):
        for _bucket, contender, op in ROWS:
            not_run(Run(tree.name, op, contender, 0), error, runs)
        return
    t0 = time.perf_counter()
    tree.generate()
    print(
        f"dataset {tree.name}: {count:,} files x 1 KiB in {tree.folders:,} folders "
        f"({time.perf_counter() - t0:.1f} s to prepare)",
        file=sys.stderr,
        flush=True,
    )
    cwork = work / tree.name
    shutil.rmtree(cwork, ignore_errors=True)
    (work / "logs").mkdir(exist_ok=True)
    stack = Stack(cwork / "stack")
    try:
        b = CBench(tree, Contenders(stack, cwork / "stack"), cwork, args, runs)
        on_s3 = args.c_s3_up_to is None or count <= args.c_s3_up_to
        for rep in range(args.repeat):
            for group in rotate(["folder", "peers", "s3"] if on_s3 else ["folder", "peers"], rep):
                {"folder": folder_rows, "peers": peer_rows, "s3": s3_rows}[group](b, rep)
        if synthetic:
            bench_synthetic(b)
    finally:
        stack.stop()
        if not args.keep:
            shutil.rmtree(cwork, ignore_errors=True)
            shutil.rmtree(tree.path, ignore_errors=True)


def wab_folder(bucket: Path) -> list[str]:
    return [sys.executable, "-m", "wabucketref", "--bucket", str(bucket), "--project-name", WANDB_PROJECT]


def folder_rows(b: CBench, rep: int) -> None:
    """Every wabucketref command on a folder bucket, W&B online, in the order a user would run them."""
    if not b.wanted(WAB_FOLDER):
        return
    bucket, art = b.work / f"bucket-r{rep}", f"bench-{b.tree.name}-r{rep}"
    wab, tree = wab_folder(bucket), str(b.tree.path)
    alias_dir = bucket / "dataset" / art
    forget_hashes(b.cs.env[WAB_FOLDER])  # a first upload: a folder this machine has not hashed
    first = b.run(
        WAB_FOLDER,
        "upload",
        rep,
        [*wab, "upload", tree, "-n", art, "-t", "dataset", "-a", "first"],
        b.stored(alias_dir / "first"),
    )
    if not first.ok:
        for op in FOLDER_OPS[1:]:
            b.skip(WAB_FOLDER, op, rep, "the first upload failed")
        return
    try:
        _folder_versions(b, rep, wab, art, alias_dir)
    finally:
        b.tree.set_changed(False)
        shutil.rmtree(bucket, ignore_errors=True)


def _folder_versions(b: CBench, rep: int, wab: list[str], art: str, alias_dir: Path) -> None:
    """After the first upload: download, verify, the two incremental uploads, ls, diff, 1%, gc."""
    tree = str(b.tree.path)
    b.download(
        WAB_FOLDER, "download", rep, lambda d: [*wab, "download", "dataset", art, "first", "-d", str(d)], changed=False
    )
    b.run(WAB_FOLDER, "verify", rep, [*wab, "verify", "dataset", art, "first"])
    up = [*wab, "upload", tree, "-n", art, "-t", "dataset", "-a"]
    b.run(WAB_FOLDER, "upload-unchanged", rep, [*up, "same"], _all_of(b, b.stored(alias_dir / "same")))
    b.tree.set_changed(True)  # the next version, edited in place (untimed)
    changed = b.run(WAB_FOLDER, "upload-changed", rep, [*up, "changed"], _all_of(b, b.stored(alias_dir / "changed")))
    b.run(WAB_FOLDER, "ls", rep, [*wab, "ls", "dataset", art], _names("first", "changed"))
    if changed.ok:
        b.run(WAB_FOLDER, "diff", rep, [*wab, "diff", "dataset", art, "first", "changed"], _changed_lines(b))
    else:
        b.skip(WAB_FOLDER, "diff", rep, "the upload of the changed version failed")
    pattern = include_pattern(b.tree.count)[0]
    b.download(
        WAB_FOLDER,
        "download-1%",
        rep,
        lambda d: [*wab, "download", "dataset", art, "first", "--include", pattern, "-d", str(d)],
        changed=False,
        pattern=pattern,
    )
    b.run(WAB_FOLDER, "gc", rep, [*wab, "gc"])  # a dry run: it reports, deletes nothing
    _parts(b, rep, wab, art)


def _parts(b: CBench, rep: int, wab: list[str], art: str) -> None:
    """The version sent again as 4 parts by 4 processes at once (a quarter of C's files each, hard
    links of them), then their commit."""
    from .scaleout import N, split_tree, together

    parts = split_tree(b.tree.path, [b.work / f"part{i}" for i in range(N)])
    try:
        sends = [
            [*wab, "upload", str(p), "-n", f"{art}-parts", "-t", "dataset", "-a", "whole", "--part", f"{i}/{N}"]
            for i, p in enumerate(parts)
        ]
        sent = b.run(WAB_FOLDER, "upload-4-parts", rep, together(sends))
        commit = [*wab, "commit", "-n", f"{art}-parts", "-t", "dataset", "-a", "whole"]
        if sent.ok:
            b.run(WAB_FOLDER, "commit", rep, commit)
        else:
            b.skip(WAB_FOLDER, "commit", rep, "the parts failed")
    finally:
        for p in parts:
            shutil.rmtree(p, ignore_errors=True)


def _all_of(b: CBench, stored: Check) -> Check:
    """An incremental upload's check: the copy is whole, and sent + copied files make up the version."""

    def check(run: Run, log: str) -> str:
        if error := stored(run, log):
            return error
        sent, copied = run.files_moved if run.files_moved is not None else -1, run.files_copied or 0
        return (
            ""
            if sent + copied == b.tree.count
            else f"summary line: {sent} sent + {copied} copied, expected {b.tree.count}"
        )

    return check


def _names(*words: str) -> Check:
    def check(run: Run, log: str) -> str:
        run.verified = "output"
        missing = [w for w in words if w not in log]
        return f"output lacks {missing}" if missing else ""

    return check


def _changed_lines(b: CBench) -> Check:
    def check(run: Run, log: str) -> str:
        run.verified = "output"
        lines = log.splitlines()
        changed = sum(1 for line in lines if line.startswith("~ "))
        other = sum(1 for line in lines if line.startswith(("+ ", "- ")))
        want = b.tree.changed_count
        return (
            ""
            if (changed, other) == (want, 0)
            else f"{changed} changed and {other} other files listed, expected {want} and 0"
        )

    return check


def peer_rows(b: CBench, rep: int) -> None:
    """`cp -a` and `rclone copy` of the tree into a folder (the upload), then back (the download)."""
    for peer in rotate(FOLDER_PEERS, rep):
        if not b.wanted(peer):
            continue
        copy = b.work / f"{peer}-bucket-r{rep}"  # absent: `cp -a SRC DST` then makes DST the copy
        shutil.rmtree(copy, ignore_errors=True)
        up = b.run(peer, "upload", rep, _local_copy(b, peer, b.tree.path, copy), b.stored(copy))
        if up.ok:
            changed = b.tree.changed
            b.download(peer, "download", rep, lambda d, src=copy, p=peer: _local_copy(b, p, src, d), changed=changed)
        else:
            b.skip(peer, "download", rep, "its upload failed")
        shutil.rmtree(copy, ignore_errors=True)


def _local_copy(b: CBench, peer: str, src: Path, dst: Path) -> list[str]:
    if peer == "cp":
        return ["cp", "-a", str(src), str(dst)]
    return [b.cs.rclone, "copy", "--transfers", "32", str(src), str(dst)]


def s3_rows(b: CBench, rep: int) -> None:
    """wabucketref (W&B online), s5cmd and rclone on S3 (SeaweedFS): uploads, downloads, and
    wabucketref's upload of the unchanged tree to a new alias (what the in-bucket copies cost)."""
    ds = b.tree.as_dataset()
    who = [c for c in rotate([WAB_S3, *S3_PEERS], rep) if b.wanted(c)]
    remotes: dict[str, Remote] = {}
    for c in who:
        argv, remote = b.cs.upload(c, ds, rep)
        if c == WAB_S3:
            forget_hashes(b.cs.env[c])
        if b.run(c, "upload", rep, argv, b.stored(remote)).ok:
            remotes[c] = remote
    for c in who:
        if c not in remotes:
            b.skip(c, "download", rep, "its upload failed")
            continue
        b.download(c, "download", rep, lambda d, c=c: b.cs.download(c, ds, remotes[c], d), changed=b.tree.changed)
    if WAB_S3 in remotes:
        art = remotes[WAB_S3].artifact
        argv = [*b.cs.wab(WAB_S3), "upload", str(b.tree.path), "-n", art, "-t", "dataset", "-a", "same"]
        b.run(WAB_S3, "upload-unchanged", rep, argv, _all_of(b, b.stored(Remote(S3_BUCKET, f"wab/dataset/{art}/same"))))
    elif WAB_S3 in who:
        b.skip(WAB_S3, "upload-unchanged", rep, "its first upload failed")
