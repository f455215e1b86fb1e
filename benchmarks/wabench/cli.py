"""Benchmark wabucketref against the platform SDK, s5cmd, rclone and `cp -r`, on one real S3 server.

Everything runs on this machine: SeaweedFS (a real object store) on 127.0.0.1, the fake platform
control plane in front of it (the real apolo_sdk talks to it), and the W&B-protocol backend (the
real wandb SDK talks to it). Each contender is run as a subprocess, exactly as a user would run it,
on the same server, alternating runs (every repetition runs every contender once, in a rotated
order), with the page cache dropped before each timed run when that is allowed.

    python benchmarks/bench.py --small            # CI smoke size, about two minutes
    python benchmarks/bench.py                    # A = 10,000 x 100 KiB, B = 4 x 256 MiB, 5 repeats
    python benchmarks/bench.py --only C --c-files 10000,100000 --repeat 1   # many small files, on demand

Prints a markdown report (medians, ratios to wabucketref, partial and reusing downloads of A,
incremental uploads of A and B, W&B bookkeeping, --help time, peak RSS, targets with PASS/FAIL) on stdout; --json FILE also writes every run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .bench_c import bench_c
from .common import REFERENCE
from .contenders import CONTENDERS
from .dataset_c import COUNTS, SMALL_COUNTS, space_error
from .datasets import SIZES, Dataset, make_dataset
from .fmt import human_size
from .machine import machine_info
from .measure import Run, drop_caches, measure_help
from .report import report
from .table import bench_dataset


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(c.replace("_", "")) for c in text.split(",") if c.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: file counts separated by commas, e.g. 10000,1281167") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one file count, each at least 1")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--small",
        action="store_true",
        help="A = 1000 x 100 KiB, B = 4 x 16 MiB, 1 repeat (CI smoke, ~2 min); C = 2,000 and 5,000 files",
    )
    p.add_argument("--repeat", type=int, help="repetitions per contender (default 5; 1 with --small)")
    p.add_argument(
        "--sdk-repeat",
        type=int,
        default=1,
        help="repetitions of the platform SDK contender (default 1: it takes minutes, 4-20x the others)",
    )
    p.add_argument("--only", choices=["A", "B", "C"], help="run one data set only (C runs only when named here)")
    p.add_argument(
        "--c-files",
        type=_counts,
        metavar="N,N",
        help=f"data set C's file counts (default {','.join(map(str, COUNTS))}; "
        f"{','.join(map(str, SMALL_COUNTS))} with --small); needs --only C",
    )
    p.add_argument(
        "--c-s3-up-to",
        type=int,
        metavar="N",
        default=None,
        help="run C's S3 rows only at file counts up to N (they take 3-4x the folder rows' time; default: every count)",
    )
    p.add_argument(
        "--synthetic-entries",
        type=int,
        metavar="N",
        help="entries of C's synthetic version (manifest only, no bytes; default 10,000,000, 20,000 with --small)",
    )
    p.add_argument(
        "--contenders",
        nargs="+",
        metavar="NAME",
        choices=CONTENDERS,
        default=None,
        help=f"subset of: {' '.join(CONTENDERS)} (default: all)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every run and the summary as JSON")
    p.add_argument(
        "--workdir",
        type=Path,
        help="where data, servers and downloads live (default: a new folder in $TMPDIR, removed at the end)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the work folder (generated data is reused by a later --workdir run)"
    )
    p.add_argument(
        "--no-session-cache",
        action="store_true",
        help="WABUCKET_CACHE=0 for wabucketref: every platform command logs in afresh (the cold path)",
    )
    p.add_argument(
        "--no-drop-caches", dest="drop_caches", action="store_false", help="do not drop the page cache before each run"
    )
    p.add_argument("--help-runs", type=int, default=10, help="runs of `wabucket --help` to time (default 10)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before one run is killed (default 3600)")
    p.add_argument(
        "--report-from", type=Path, metavar="JSON", help="only print the report of an earlier --json file (no runs)"
    )
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.small else 5
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.c_files is not None and args.only != "C":
        p.error("--c-files needs --only C")
    if args.only == "C" and args.c_files is None:
        args.c_files = list(SMALL_COUNTS if args.small else COUNTS)
    if args.synthetic_entries is None:
        args.synthetic_entries = 20_000 if args.small else 10_000_000
    return args


def report_from(args: argparse.Namespace) -> int:
    """Render the report of saved runs again (e.g. after changing the report)."""
    data = json.loads(args.report_from.read_text())
    runs = [Run(**r) for r in data["runs"]]
    datasets = [
        Dataset(n, d["count"], d["size"], Path(), folders=d.get("folders")) for n, d in data["datasets"].items()
    ]
    seen = {r.contender for r in runs}
    contenders = [c for c in CONTENDERS if c in seen]
    args.repeat = data["repeat"]
    args.sdk_repeat = data.get("sdk_repeat", args.repeat)
    args.small = data.get("small", False)
    text, _ = report(runs, datasets, contenders, data["machine"], data["help_seconds"], args, data["command"])
    print(text)
    return 0


def _warn_disk(work: Path, names: list[str], contenders: list[str], args: argparse.Namespace) -> None:
    """A/B: a warning (not an error) when the work folder looks too small."""
    if not names:
        return
    sizes = SIZES["small" if args.small else "full"]
    need = sum(sizes[n][0] * sizes[n][1] for n in names)
    free = shutil.disk_usage(work).free
    per_ds = max(sizes[n][0] * sizes[n][1] for n in names) * (len(contenders) * args.repeat + 2)
    if free < need + per_ds:
        print(
            f"warning: {human_size(free)} free in {work}; this run may need about {human_size(need + per_ds)}",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_from:
        return report_from(args)
    contenders = [c for c in CONTENDERS if c in (args.contenders or CONTENDERS)]
    names = [args.only] if args.only in ("A", "B") else [] if args.only == "C" else ["A", "B"]
    command = "python benchmarks/bench.py" + (" " + shlex.join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wabucket-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    c_counts = args.c_files or []
    if c_counts and (error := space_error(work, c_counts[-1])):
        print(f"error: {error}", file=sys.stderr)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        return 2
    _warn_disk(work, names, contenders, args)
    if args.drop_caches and not drop_caches():
        print("note: cannot drop the page cache (needs root); runs alternate instead", file=sys.stderr)
        args.drop_caches = False
    runs: list[Run] = []
    try:
        info = machine_info()
        print(f"work folder: {work}", file=sys.stderr)
        help_times = measure_help(args.help_runs, work) if args.help_runs > 0 and REFERENCE in contenders else []
        datasets = []
        for n in names:
            t0 = time.perf_counter()
            ds = make_dataset(work / "data", n, *SIZES["small" if args.small else "full"][n])
            datasets.append(ds)
            print(f"dataset {n}: {ds.describe()} ({time.perf_counter() - t0:.1f} s to prepare)", file=sys.stderr)
        for ds in datasets:
            bench_dataset(ds, contenders, args.repeat, work, args, runs)
        for count in c_counts:
            bench_c(count, work, args, runs, synthetic=count == c_counts[-1])
        text, data = report(runs, datasets, contenders, info, help_times, args, command)
        print(text)
        if args.json:
            args.json.write_text(json.dumps(data, indent=2, default=str))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.ok for r in runs) else 1
