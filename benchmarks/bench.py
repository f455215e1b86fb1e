#!/usr/bin/env python3
"""Benchmark wabucketref against the platform SDK, s5cmd, rclone and `cp -r`, on one real S3 server.

Everything runs on this machine: SeaweedFS (a real object store) on 127.0.0.1, the fake platform
control plane in front of it (the real apolo_sdk talks to it), and the W&B-protocol backend (the
real wandb SDK talks to it). Each contender is run as a subprocess, exactly as a user would run it,
on the same server, alternating runs (every repetition runs every contender once, in a rotated
order), with the page cache dropped before each timed run when that is allowed.

    python benchmarks/bench.py --small            # CI smoke size, about two minutes
    python benchmarks/bench.py                    # A = 10,000 x 100 KiB, B = 4 x 256 MiB, 5 repeats

Prints a markdown report (medians, ratios to wabucketref, partial and reusing downloads of A,
incremental uploads of A and B, W&B bookkeeping, --help time, peak RSS, targets with PASS/FAIL) on stdout; --json FILE also writes every run.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform as pyplatform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KiB = 1 << 10
MiB = 1 << 20

SIZES = {
    # name: {dataset: (file count, file size)}
    "full": {"A": (10_000, 100 * KiB), "B": (4, 256 * MiB)},
    "small": {"A": (1_000, 100 * KiB), "B": (4, 16 * MiB)},
}

REFERENCE = "wabucketref"
CONTENDERS = ["wabucketref", "wabucketref-s3", "wabucketref-nowandb", "sdk", "s5cmd", "rclone", "cp"]
DESCRIPTIONS = {
    "wabucketref": "`python -m wabucketref` CLI, platform bucket (fake control plane + real apolo_sdk), W&B online; "
    "the first platform command of a data set logs in and asks for credentials, later ones reuse "
    "the cached platform session",
    "wabucketref-s3": "`python -m wabucketref` CLI, direct `s3://` bucket, W&B online",
    "wabucketref-nowandb": "as `wabucketref` with `WANDB_MODE=disabled`: no W&B run, wandb never imported (download resolves the alias from the bucket's manifest)",
    "sdk": "apolo_sdk `Buckets.upload_dir` / `download_dir` (what the original tool did)",
    "s5cmd": "`s5cmd cp 'dir/*' s3://b/p/` and back (default 256 workers)",
    "rclone": "`rclone copy --transfers 32 --checkers 32` (S3 remote from RCLONE_CONFIG_* env)",
    "cp": "`cp -r` between local folders (the floor)",
}
PEERS = ("s5cmd", "rclone")
PLATFORM_BUCKET = "bench-plat"
S3_BUCKET = "bench-s3"
WANDB_PROJECT = "bench"
SUMMARY_RE = re.compile(r"(uploaded|downloaded) (\d+) files? \(([^)]*)\) in ([\d.]+) s")
REUSED_RE = re.compile(r"(\d+) files? \([^)]*\) reused from local folders")
COPIED_RE = re.compile(r"(\d+) files? \([^)]*\) copied in the bucket")
# Partial and reusing downloads (dataset A, the reference only): the target is "about their share of
# the work, a few times the time of 1% of a full download": a few = this many times the share.
SHARE = 0.01
SHARE_FACTOR = 5
TIME_BIN = "/usr/bin/time"

SDK_SCRIPT = r"""
import asyncio, sys
from pathlib import Path
from yarl import URL
import apolo_sdk

async def main(op, bucket, prefix, local):
    client = await apolo_sdk.Factory().get()
    try:
        b = await client.buckets.get(bucket)
        remote = b.uri
        for part in prefix.split("/"):
            remote = remote / part
        local_url = URL(Path(local).resolve().as_uri())
        if op == "upload":
            await client.buckets.upload_dir(local_url, remote)
        else:
            await client.buckets.download_dir(remote, local_url)
    finally:
        await client.close()

asyncio.run(main(*sys.argv[1:]))
"""


# ------------------------------------------------------------------ datasets


@dataclass
class Dataset:
    name: str
    count: int
    size: int
    path: Path
    hashes: dict[str, str] = field(default_factory=dict)
    folders: int | None = None

    @property
    def total(self) -> int:
        return self.count * self.size

    def describe(self) -> str:
        folders = (
            self.folders if self.folders is not None else len({p.rsplit("/", 1)[0] for p in self.hashes if "/" in p})
        )
        where = f" in {folders} nested folders" if folders else ""
        return f"{self.count:,} files x {_size(self.size)} = {_size(self.total)}{where}"


def _rel_path(name: str, i: int, count: int) -> str:
    if name == "A":  # part NN / shard NN / sample NNNNN: 100 files per leaf folder
        return f"part{i // 1000:02d}/shard{(i // 100) % 10:02d}/sample{i:05d}.bin"
    return f"model-{i:02d}.bin"


def make_dataset(root: Path, name: str, count: int, size: int) -> Dataset:
    """Deterministic content (a PRNG seeded by dataset and index); reused when already generated."""
    ds = Dataset(name, count, size, root / f"{name}-{count}x{size}")
    marker = ds.path.parent / f".{ds.path.name}.json"
    if marker.exists() and ds.path.is_dir():
        ds.hashes = json.loads(marker.read_text())
        return ds
    shutil.rmtree(ds.path, ignore_errors=True)
    for i in range(count):
        rel = _rel_path(name, i, count)
        p = ds.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        rnd = random.Random(f"wabucketref-bench/{name}/{i}")
        sha = hashlib.sha256()
        with open(p, "wb") as f:
            for start in range(0, size, 16 * MiB):  # randbytes() caps at 256 MiB - 1
                chunk = rnd.randbytes(min(16 * MiB, size - start))
                sha.update(chunk)
                f.write(chunk)
        ds.hashes[rel] = sha.hexdigest()
    marker.write_text(json.dumps(ds.hashes))
    return ds


def make_changed(root: Path, ds: Dataset, share: float) -> Dataset:
    """The next version of `ds`: the same files (hard links) except `share` of them, spread over the
    folders (every 1/share-th file), rewritten with new content of the same size."""
    step = round(1 / share)
    new = Dataset(ds.name, ds.count, ds.size, root / f"{ds.path.name}-changed{step}", dict(ds.hashes))
    changed = {_rel_path(ds.name, i, ds.count) for i in range(0, ds.count, step)}
    marker = new.path.parent / f".{new.path.name}.json"
    if marker.exists() and new.path.is_dir():
        new.hashes = json.loads(marker.read_text())
        return new
    shutil.rmtree(new.path, ignore_errors=True)
    for rel in ds.hashes:
        (new.path / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel not in changed:
            os.link(ds.path / rel, new.path / rel)
    for rel in sorted(changed):
        rnd = random.Random(f"wabucketref-bench/{ds.name}/changed/{rel}")
        sha = hashlib.sha256()
        with open(new.path / rel, "wb") as f:
            for start in range(0, ds.size, 16 * MiB):  # randbytes() caps at 256 MiB - 1 (B's files are 256 MiB)
                chunk = rnd.randbytes(min(16 * MiB, ds.size - start))
                sha.update(chunk)
                f.write(chunk)
        new.hashes[rel] = sha.hexdigest()
    marker.write_text(json.dumps(new.hashes))
    return new


def share_pattern(count: int, share: float) -> tuple[str, int]:
    """An --include glob selecting `share` of A's `count` files (its first ones), and how many:
    one leaf folder of 100 files at full size (`part00/shard00/*`), a run of sample names otherwise."""
    n = max(1, round(count * share))
    digits = len(str(n - 1)) if n > 1 else 0
    if n == 100:
        return "part00/shard00/*", n
    return f"part00/shard00/sample{'0' * (5 - digits)}{'?' * digits}.bin", n


def tree_hashes(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            with open(p, "rb") as fh:
                out[p.relative_to(root).as_posix()] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def tree_stats(root: Path) -> tuple[int, int]:
    n = total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            n += 1
            total += os.stat(os.path.join(dirpath, f)).st_size
    return n, total


# ------------------------------------------------------------------ measuring one run


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


class RssSampler(threading.Thread):
    """Samples the memory of a process tree (10 Hz) and each process's VmHWM (peak).

    The tree's memory is the sum of each process's PSS (shared pages split among the processes
    that map them), not of their RSS: a child caught between fork and exec (wandb starting its
    service) maps all of its parent's pages, and summed RSS counted those twice (spikes of
    +130 MB in some runs)."""

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.peak_tree = 0
        self.hwm: dict[int, tuple[int, int]] = {}  # pid -> (depth in the tree, peak bytes)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.1)

    def sample(self) -> None:
        total = 0
        stack = [(self.pid, 0)]
        while stack:
            p, depth = stack.pop()
            try:
                total += _pss(p)
                status = Path(f"/proc/{p}/status").read_text()
                hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
                if hwm > self.hwm.get(p, (0, 0))[1]:
                    self.hwm[p] = (depth, hwm)
            except (OSError, AttributeError, IndexError, ValueError):
                continue
            stack += [(c, depth + 1) for c in _children(p)]
        self.peak_tree = max(self.peak_tree, total)


def _pss(pid: int) -> int:
    """Proportional set size in bytes (RSS where smaps_rollup is missing)."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        return int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.M).group(1)) * 1024  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * RssSampler.PAGE


@dataclass
class Run:
    dataset: str
    op: str
    contender: str
    rep: int
    wall: float = float("nan")
    ok: bool = False
    error: str = ""
    verified: str = ""  # "sha256" (every file hashed) or "count+bytes"
    user_cpu: float = float("nan")
    sys_cpu: float = float("nan")
    max_rss_single: int = 0  # GNU time: the largest single process (ru_maxrss of the tree)
    peak_rss_tree: int = 0  # sampled sum over the process tree
    peak_rss_main: int = 0  # VmHWM of the command's main process (python for the wabucketref rows)
    server_cpu: float = float("nan")  # SeaweedFS CPU seconds during the run
    transfer_s: float | None = None  # from wabucketref's summary line
    files_moved: int | None = None  # files fetched or sent, from wabucketref's summary line
    files_reused: int | None = None  # files taken from --reuse folders, from the summary line
    files_copied: int | None = None  # files copied inside the bucket (incremental upload), from the summary line
    cold_cache: bool = False


def measure(
    argv: list[str],
    env: dict[str, str],
    log: Path,
    run: Run,
    *,
    server_pid: int | None,
    cold: bool,
    timeout: float,
    cwd: Path,
) -> Run:
    """Run argv once, timed: wall, CPU, RSS, server CPU; stdout+stderr go to `log`."""
    run.cold_cache = drop_caches() if cold else False
    tfile = log.with_suffix(".time")
    wrapped = ([TIME_BIN, "-f", "%U %S %M", "-o", str(tfile)] if os.path.exists(TIME_BIN) else []) + argv
    server0 = _cpu_seconds(server_pid) if server_pid else float("nan")
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            wrapped,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        sampler = RssSampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = -9
        run.wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
    run.server_cpu = (_cpu_seconds(server_pid) - server0) if server_pid else float("nan")
    run.peak_rss_tree = sampler.peak_tree
    # the command's own process: the child of GNU time (or the process itself when not wrapped)
    main_depth = 1 if wrapped[0] == TIME_BIN else 0
    run.peak_rss_main = max((h for d, h in sampler.hwm.values() if d == main_depth), default=0)
    try:
        u, s, m = tfile.read_text().strip().splitlines()[-1].split()
        run.user_cpu, run.sys_cpu, run.max_rss_single = float(u), float(s), int(m) * 1024
    except (OSError, ValueError, IndexError):
        pass
    text = log.read_text(errors="replace")
    if rc != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        run.error = f"exit {rc}: {tail[-400:]}"
        return run
    found = SUMMARY_RE.findall(text)
    if found:
        run.transfer_s = float(found[-1][3])
        run.files_moved = int(found[-1][1])
        reused = REUSED_RE.findall(text)
        run.files_reused = int(reused[-1]) if reused else 0
        copied = COPIED_RE.findall(text)
        run.files_copied = int(copied[-1]) if copied else 0
    run.ok = True
    return run


# ------------------------------------------------------------------ servers and contenders


class Stack:
    """SeaweedFS + fake platform control plane + W&B backend, all on loopback, for one dataset."""

    def __init__(self, workdir: Path) -> None:
        from tests.servers.platform import FakePlatform
        from tests.servers.s3 import SeaweedS3
        from tests.servers.wandb_backend import WandbBackend

        self.workdir = workdir
        self.s3 = SeaweedS3(workdir / "seaweed").start()
        try:
            self.platform = FakePlatform(self.s3).start()
            self.platform.add_bucket(PLATFORM_BUCKET)
            self.s3.create_bucket(S3_BUCKET)
            self.wandb = WandbBackend(workdir / "wandb").start()
        except BaseException:
            self.s3.stop()
            raise
        self.client = self.s3.client(read_timeout=120)

    def stop(self) -> None:
        for what in (getattr(self, "wandb", None), getattr(self, "platform", None), self.s3):
            if what is not None:
                try:
                    what.stop()
                except Exception as e:
                    print(f"warning: stopping {type(what).__name__}: {e}", file=sys.stderr)

    def listing(self, bucket: str, prefix: str) -> tuple[int, int]:
        n = total = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix.rstrip("/") + "/"
        ):
            for o in page.get("Contents", []):
                if o["Key"].endswith("/") and o["Size"] == 0:
                    continue  # a folder marker (apolo_sdk's upload_dir writes one), not a file
                n += 1
                total += o["Size"]
        return n, total


def clean_environ(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WANDB_", "AWS_", "APOLO_", "NEURO_", "WABUCKET_", "RCLONE_", "S3_"))
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    return env


@dataclass
class Remote:
    """Where one upload went: what a download needs, and where to list it."""

    bucket: str  # the S3 bucket holding the bytes (the backing bucket for platform buckets)
    prefix: str
    alias: str = ""
    artifact: str = ""
    local: Path | None = None  # for cp


class Contenders:
    def __init__(self, stack: Stack, work: Path) -> None:
        self.stack = stack
        self.work = work
        bindir = Path(sys.executable).parent
        self.s5cmd = shutil.which("s5cmd", path=f"{bindir}:{os.environ.get('PATH', '')}") or "s5cmd"
        self.rclone = shutil.which("rclone", path=f"{bindir}:{os.environ.get('PATH', '')}") or "rclone"
        base = clean_environ(work / "home")
        plat = stack.platform.env(config_dir=work / "apolo-config")
        s3 = stack.s3.env()
        wb = {**stack.wandb.env(), "WANDB_PROJECT": WANDB_PROJECT}
        self.env = {
            "wabucketref": {**base, **plat, **wb},
            "wabucketref-s3": {**base, **s3, **wb},
            "wabucketref-nowandb": {
                **base,
                **plat,
                "WANDB_MODE": "disabled",
                "WANDB_SILENT": "true",
                "WANDB_PROJECT": WANDB_PROJECT,
                "WANDB_DIR": str(work / "wandb-off"),
            },
            "sdk": {**base, **plat},
            "s5cmd": {**base, **s3},
            "rclone": {
                **base,
                "RCLONE_CONFIG": str(work / "rclone.conf"),
                "RCLONE_CONFIG_BENCH_TYPE": "s3",
                "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
                "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": stack.s3.access_key_id,
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": stack.s3.secret_access_key,
                "RCLONE_CONFIG_BENCH_ENDPOINT": stack.s3.endpoint_url,
                "RCLONE_CONFIG_BENCH_REGION": stack.s3.region,
            },
            "cp": base,
        }
        (work / "rclone.conf").touch()
        (work / "wandb-off").mkdir(exist_ok=True)
        self.sdk_script = work / "sdk_transfer.py"
        self.sdk_script.write_text(SDK_SCRIPT)
        self.backing = stack.platform.backing_bucket(PLATFORM_BUCKET)

    def _wab(self, name: str) -> list[str]:
        bucket = f"s3://{S3_BUCKET}/wab" if name == "wabucketref-s3" else PLATFORM_BUCKET
        return [sys.executable, "-m", "wabucketref", "--bucket", bucket, "--project-name", WANDB_PROJECT]

    def upload(self, name: str, ds: Dataset, rep: int) -> tuple[list[str], Remote]:
        src = str(ds.path)
        tag = f"{name}-r{rep}"
        if name.startswith("wabucketref"):
            # One artifact per upload: W&B versions follow the content, so the same bytes uploaded again
            # under the same name would only add an alias to the first version (whose reference is the
            # first upload's folder) instead of recording a new version.
            art = f"bench-{ds.name}-{tag}"
            key = f"dataset/{art}/{tag}"
            if name == "wabucketref-s3":
                remote = Remote(S3_BUCKET, f"wab/{key}", tag, art)
            else:
                remote = Remote(self.backing, key, tag, art)
            return [*self._wab(name), "upload", src, "-n", art, "-t", "dataset", "-a", tag], remote
        prefix = f"{name}/{ds.name}/r{rep}"
        if name == "sdk":
            return [sys.executable, str(self.sdk_script), "upload", PLATFORM_BUCKET, prefix, src], Remote(
                self.backing, prefix
            )
        if name == "s5cmd":
            return [
                self.s5cmd,
                "--endpoint-url",
                self.stack.s3.endpoint_url,
                "cp",
                f"{src}/*",
                f"s3://{S3_BUCKET}/{prefix}/",
            ], Remote(S3_BUCKET, prefix)
        if name == "rclone":
            return [
                self.rclone,
                "copy",
                src,
                f"bench:{S3_BUCKET}/{prefix}",
                "--transfers",
                "32",
                "--checkers",
                "32",
            ], Remote(S3_BUCKET, prefix)
        if name == "cp":
            target = self.work / "cp-bucket" / prefix
            target.parent.mkdir(parents=True, exist_ok=True)
            return ["cp", "-r", src, str(target)], Remote("", prefix, local=target)
        raise ValueError(name)

    def download(self, name: str, ds: Dataset, remote: Remote, dest: Path) -> list[str]:
        if name.startswith("wabucketref"):
            return [*self._wab(name), "download", "dataset", remote.artifact, remote.alias, "-d", str(dest)]
        if name == "sdk":
            return [sys.executable, str(self.sdk_script), "download", PLATFORM_BUCKET, remote.prefix, str(dest)]
        if name == "s5cmd":
            return [
                self.s5cmd,
                "--endpoint-url",
                self.stack.s3.endpoint_url,
                "cp",
                f"s3://{S3_BUCKET}/{remote.prefix}/*",
                f"{dest}/",
            ]
        if name == "rclone":
            return [
                self.rclone,
                "copy",
                f"bench:{S3_BUCKET}/{remote.prefix}",
                str(dest),
                "--transfers",
                "32",
                "--checkers",
                "32",
            ]
        if name == "cp":
            return ["cp", "-r", f"{remote.local}/.", str(dest)]
        raise ValueError(name)

    def stored(self, remote: Remote) -> tuple[int, int]:
        if remote.local is not None:
            return tree_stats(remote.local)
        return self.stack.listing(remote.bucket, remote.prefix)


# ------------------------------------------------------------------ the benchmark


def rotate(items: list[str], k: int) -> list[str]:
    k %= max(1, len(items))
    return items[k:] + items[:k]


def turn(contenders: list[str], rep: int, args: argparse.Namespace) -> list[str]:
    """Who runs in repetition `rep`: everyone, in a rotated order; the slow platform SDK only in its first few."""
    return [c for c in rotate(contenders, rep) if c != "sdk" or rep < args.sdk_repeat]


def bench_dataset(
    ds: Dataset, contenders: list[str], repeat: int, work: Path, args: argparse.Namespace, runs: list[Run]
) -> None:
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
        server_pid = stack.s3.pid
        uploads: dict[str, dict[int, Remote]] = {c: {} for c in contenders}
        for rep in range(repeat):
            for c in turn(contenders, rep, args):
                argv, remote = cs.upload(c, ds, rep)
                run = measure(
                    argv,
                    cs.env[c],
                    logs / f"{ds.name}-up-{c}-r{rep}.log",
                    Run(ds.name, "upload", c, rep),
                    server_pid=server_pid,
                    cold=args.drop_caches,
                    timeout=args.timeout,
                    cwd=stack_dir,
                )
                if run.ok:
                    got = cs.stored(remote)
                    if got != (ds.count, ds.total):
                        run.ok = False
                        run.error = f"bucket holds {got[0]} files / {got[1]} bytes, expected {ds.count} / {ds.total}"
                    else:
                        run.verified = "count+bytes"
                        uploads[c][rep] = remote
                runs.append(run)
                _progress(run)
        for rep in range(repeat):
            for c in turn(contenders, rep, args):
                source = uploads[c].get(0) or next(iter(uploads[c].values()), None)
                run = Run(ds.name, "download", c, rep)
                if source is None:
                    run.error = "no successful upload to download"
                    runs.append(run)
                    _progress(run)
                    continue
                dest = work / "dl" / f"{ds.name}-{c}-r{rep}"
                shutil.rmtree(dest, ignore_errors=True)
                dest.mkdir(parents=True)
                argv = cs.download(c, ds, source, dest)
                run = measure(
                    argv,
                    cs.env[c],
                    logs / f"{ds.name}-down-{c}-r{rep}.log",
                    run,
                    server_pid=server_pid,
                    cold=args.drop_caches,
                    timeout=args.timeout,
                    cwd=stack_dir,
                )
                if run.ok:
                    if rep == 0:  # one download per contender: every file hashed
                        got_h = tree_hashes(dest)
                        if got_h != ds.hashes:
                            bad = sorted(set(got_h.items()) ^ set(ds.hashes.items()))[:1]
                            run.ok, run.error = False, f"downloaded tree differs from the source (e.g. {bad})"
                        else:
                            run.verified = "sha256"
                    else:
                        got = tree_stats(dest)
                        if got != (ds.count, ds.total):
                            run.ok, run.error = (
                                False,
                                f"downloaded {got[0]} files / {got[1]} bytes, expected {ds.count} / {ds.total}",
                            )
                        else:
                            run.verified = "count+bytes"
                shutil.rmtree(dest, ignore_errors=True)
                runs.append(run)
                _progress(run)
        if ds.name == "A" and REFERENCE in contenders:
            bench_partial(ds, cs, uploads[REFERENCE].get(0), work, args, runs)
        if REFERENCE in contenders:
            bench_incremental(ds, cs, work, args, runs)
    finally:
        stack.stop()
        if not args.keep:
            shutil.rmtree(stack_dir, ignore_errors=True)


PARTIAL_OPS = {
    # op: what the row measures
    "download-1%": "the version, `--include PATTERN` selecting 1% of its files",
    "download-1%-nowandb": "the same with `WANDB_MODE=disabled`: no W&B run (the alias resolved from the bucket)",
    "download-next": "the next version (1% of the files changed) into an empty folder",
    "download-next-reuse": "the next version with `--reuse DIR`, DIR = a full download of the previous version",
    "download-next-reuse-cold": "the same, the local hash cache emptied first: every file of DIR is read and hashed",
}
REUSE_OPS = ("download-next-reuse", "download-next-reuse-cold")


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
    _progress(run)


def bench_partial(
    ds: Dataset, cs: Contenders, source: Remote | None, work: Path, args: argparse.Namespace, runs: list[Run]
) -> None:
    """The reference's partial and reusing downloads of A, each run alternating with the others.

    Not timed: the next version (A with 1% of its files changed) is uploaded as a new version of the
    reference's first upload, and that first version is downloaded once in full (the local copy).
    The reusing downloads' folders are kept to the end: removing a hard link to a file changes its
    ctime, which makes wabucketref read it again (as it would for a user who deleted them)."""
    env, logs = cs.env[REFERENCE], work / "logs"
    wab = cs._wab(REFERENCE)
    pattern, n = share_pattern(ds.count, SHARE)
    subset = {p: h for p, h in ds.hashes.items() if fnmatch.fnmatchcase(p, pattern)}
    new = make_changed(work / "data", ds, SHARE)
    prev = work / "dl" / f"{ds.name}-previous"
    shutil.rmtree(prev, ignore_errors=True)
    error = ""
    if len(subset) != n:
        error = f"{pattern!r} selects {len(subset)} of {ds.name}'s files, not {n}"
    elif source is None:
        error = "no successful upload of the reference to start from"
    else:
        setups = {
            "upload-next": [*wab, "upload", str(new.path), "-n", source.artifact, "-t", "dataset", "-a", "next"],
            "download-previous": [*wab, "download", "dataset", source.artifact, source.alias, "-d", str(prev)],
        }
        for what, argv in setups.items():
            setup = set_up(cs, argv, ds.name, what, 0, logs, args)
            if not setup.ok:
                error = f"set-up {what} failed: {setup.error}"
                break
        else:
            if tree_stats(prev) != (ds.count, ds.total):
                error = (
                    f"set-up: the previous version's download holds {tree_stats(prev)}, expected {(ds.count, ds.total)}"
                )
    for rep in range(args.repeat):
        for op in rotate(list(PARTIAL_OPS), rep):
            run = Run(ds.name, op, REFERENCE, rep)
            if error:
                not_run(run, error, runs)
                continue
            dest = work / "dl" / f"{ds.name}-{op}-r{rep}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            argv = [*wab, "download", "dataset", source.artifact]  # type: ignore[union-attr]
            if op.startswith("download-1%"):
                argv += [source.alias, "--include", pattern]  # type: ignore[union-attr]
                expected = subset
            else:
                argv += ["next"] + (["--reuse", str(prev)] if op in REUSE_OPS else [])
                expected = new.hashes
            if op.endswith("-cold"):
                forget_hashes(env)
            run = timed(
                cs,
                [*argv, "-d", str(dest)],
                run,
                logs,
                args,
                cs.env["wabucketref-nowandb"] if op.endswith("-nowandb") else None,
            )
            if run.ok:  # every file hashed, every time: a wrongly reused file must not pass
                got_h = tree_hashes(dest)
                if got_h != expected:
                    bad = sorted(set(got_h.items()) ^ set(expected.items()))[:1]
                    run.ok, run.error = False, f"downloaded tree differs from the version (e.g. {bad})"
                else:
                    run.verified = "sha256"
            if op not in REUSE_OPS:
                shutil.rmtree(dest, ignore_errors=True)
            runs.append(run)
            _progress(run)
    for op in REUSE_OPS:
        for rep in range(args.repeat):
            shutil.rmtree(work / "dl" / f"{ds.name}-{op}-r{rep}", ignore_errors=True)
    shutil.rmtree(prev, ignore_errors=True)


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


def bench_incremental(ds: Dataset, cs: Contenders, work: Path, args: argparse.Namespace, runs: list[Run]) -> None:
    """The reference's incremental upload of the next version of `ds` against a full upload of it,
    each run alternating with the other.

    Not timed: in every repetition, `ds` is uploaded (`--no-base`) as alias `base` of a fresh artifact;
    the incremental uploads then send the next version to aliases `next` and `next-cold` of that
    artifact with `--base base`. The next version's unchanged files are hard links to `ds`'s, so the
    base upload has read them (as when a dataset folder is uploaded, edited, and uploaded again); the
    cold run empties the hash cache first. The full upload sends the same next version with
    `--no-base` to alias `next` of another fresh artifact."""
    env, logs = cs.env[REFERENCE], work / "logs"
    wab = cs._wab(REFERENCE)
    new = make_changed(work / "data", ds, INCREMENTAL_SHARE[ds.name])
    changed = sum(1 for p, h in new.hashes.items() if ds.hashes.get(p) != h)
    for rep in range(args.repeat):
        art = f"bench-{ds.name}-incremental-r{rep}"
        base = [*wab, "upload", str(ds.path), "-n", art, "-t", "dataset", "-a", "base", "--no-base"]
        setup = set_up(cs, base, ds.name, "upload-base", rep, logs, args)
        error = "" if setup.ok else f"set-up upload of the base version failed: {setup.error}"
        for op in rotate(list(INCREMENTAL_OPS), rep):
            run = Run(ds.name, op, REFERENCE, rep)
            if error:
                not_run(run, error, runs)
                continue
            incremental = op != "upload-next-full"
            unchanged = op == "upload-unchanged-incremental"
            name = art if incremental else f"bench-{ds.name}-full-next-r{rep}"
            alias = "same" if unchanged else "next-cold" if op.endswith("-cold") else "next"
            folder = ds.path if unchanged else new.path
            argv = [*wab, "upload", str(folder), "-n", name, "-t", "dataset", "-a", alias]
            argv += ["--base", "base"] if incremental else ["--no-base"]
            if op.endswith("-cold"):
                forget_hashes(env)
            run = timed(cs, argv, run, logs, args)
            if run.ok:
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
                        print(
                            f"  note: {ds.name} {op} sent {sent} files, {expected_sent} expected",
                            file=sys.stderr,
                            flush=True,
                        )
            runs.append(run)
            _progress(run)


def _progress(run: Run) -> None:
    state = f"{run.wall:7.2f} s" if run.ok else f"FAILED: {run.error}"
    extra = f" (transfer {run.transfer_s:.1f} s)" if run.transfer_s is not None else ""
    print(f"  {run.dataset} {run.op:8s} {run.contender:20s} r{run.rep}: {state}{extra}", file=sys.stderr, flush=True)


def measure_help(n: int, work: Path) -> list[float]:
    exe = Path(sys.executable).parent / "wabucket"
    argv = [str(exe) if exe.exists() else "wabucket", "--help"]
    env = clean_environ(work / "home")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------ report


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f}" if n else "-"


def _med(values: list[float]) -> float | None:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else None


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            return out[0] if out else "?"
        except (OSError, subprocess.SubprocessError):
            return "not found"

    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    pkgs = {}
    for p in ("wabucketref", "obstore", "apolo-sdk", "aiobotocore", "wandb"):
        try:
            pkgs[p] = pkg_version(p)
        except PackageNotFoundError:
            pkgs[p] = "-"
    bindir = Path(sys.executable).parent
    from tests.servers.s3 import weed_binary

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(ram / (1 << 30), 1),
        "kernel": pyplatform.release(),
        "python": pyplatform.python_version(),
        "packages": pkgs,
        "s5cmd": version([str(bindir / "s5cmd") if (bindir / "s5cmd").exists() else "s5cmd", "version"]),
        "rclone": version([str(bindir / "rclone") if (bindir / "rclone").exists() else "rclone", "version"]),
        "seaweedfs": version([weed_binary(), "version"]),
    }


def report(
    runs: list[Run],
    datasets: list[Dataset],
    contenders: list[str],
    info: dict[str, Any],
    help_times: list[float],
    args: argparse.Namespace,
    command: str,
) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    out = lines.append
    by: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        by.setdefault((r.dataset, r.op, r.contender), []).append(r)

    def ok_runs(d: str, op: str, c: str) -> list[Run]:
        return [r for r in by.get((d, op, c), []) if r.ok]

    def med(d: str, op: str, c: str, attr: str = "wall") -> float | None:
        rs = ok_runs(d, op, c)
        if len(rs) != len(by.get((d, op, c), [])):
            return None  # a failed or invalid run: no median
        return _med([getattr(r, attr) if getattr(r, attr) is not None else float("nan") for r in rs])

    cold = any(r.cold_cache for r in runs)
    out("# wabucketref benchmark")
    out("")
    out(
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, Linux {info['kernel']}, Python {info['python']}"
    )
    out(
        "- versions: "
        + ", ".join(f"{k} {v}" for k, v in info["packages"].items())
        + f"; s5cmd {info['s5cmd']}; {info['rclone']}; SeaweedFS `{info['seaweedfs']}`"
    )
    out(
        "- server: SeaweedFS `weed mini` on 127.0.0.1 (one server per dataset, shared by all contenders); "
        "fake platform control plane and W&B backend on 127.0.0.1 (in the benchmark process)"
    )
    for ds in datasets:
        out(f"- dataset {ds.name}: {ds.describe()}")
    sdk_runs = (
        f"; the platform SDK (x4-x20 slower) runs in the first {min(args.sdk_repeat, args.repeat)} only"
        if args.sdk_repeat < args.repeat
        else ""
    )
    out(
        f"- {args.repeat} repetition(s){sdk_runs}; each repetition runs every contender once, in a rotated order; "
        f"page cache dropped before each timed run: {'yes' if cold else 'no (not permitted, or --no-drop-caches)'}"
    )
    out(
        "- every upload goes to a fresh prefix/alias and is checked by listing (file count and bytes); every download "
        "goes into a fresh empty folder and is checked (file count and bytes; the first repetition of each contender: sha256 of every file)"
    )
    out(
        "- platform session: "
        + (
            "not kept (`--no-session-cache`): every platform command logs in"
            if getattr(args, "no_session_cache", False)
            else "kept between commands; the first platform command of each data set logs in"
        )
    )
    out("")
    out("## Wall time (median seconds; `x ref` = contender / wabucketref, above 1 is slower)")
    out("")
    out(
        "| dataset | op | contender | median s | min | max | MB/s | x ref | client CPU s | SeaweedFS CPU s | peak memory MB (tree PSS) |"
    )
    out("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    table: dict[str, Any] = {}
    for ds in datasets:
        for op in ("upload", "download"):
            ref = med(ds.name, op, REFERENCE)
            for c in contenders:
                rs = by.get((ds.name, op, c), [])
                if not rs:
                    continue
                good = [r for r in rs if r.ok]
                m = med(ds.name, op, c)
                if m is None:
                    err = next((r.error for r in rs if not r.ok), "")
                    out(f"| {ds.name} | {op} | {c} | FAILED | | | | | | | {err[:120].replace('|', '/')} |")
                    table[f"{ds.name}/{op}/{c}"] = {"error": err}
                    continue
                walls = [r.wall for r in good]
                cpu = _med([r.user_cpu + r.sys_cpu for r in good])
                scpu = _med([r.server_cpu for r in good])
                rss = max(r.peak_rss_tree for r in good)
                ratio = (m / ref) if ref else None
                out(
                    f"| {ds.name} | {op} | {c} | {m:.2f} | {min(walls):.2f} | {max(walls):.2f} | {ds.total / m / 1e6:.0f} | "
                    f"{_fmt(ratio)} | {_fmt(cpu, 1)} | {_fmt(scpu, 1)} | {_mb(rss)} |"
                )
                table[f"{ds.name}/{op}/{c}"] = {
                    "median": m,
                    "min": min(walls),
                    "max": max(walls),
                    "ratio_to_ref": ratio,
                    "client_cpu": cpu,
                    "server_cpu": scpu,
                    "peak_rss_tree": rss,
                }
    out("")
    out("Contenders: " + "; ".join(f"**{c}**: {DESCRIPTIONS[c]}" for c in contenders))
    out("")

    # ---- partial and reusing downloads (dataset A, the reference)
    partial: dict[str, Any] = {}
    partial_targets: list[tuple[str, float | None, float | None, str]] = []
    a = next((d for d in datasets if d.name == "A"), None)
    if a is not None and any(("A", op, REFERENCE) in by for op in PARTIAL_OPS):
        pattern, n = share_pattern(a.count, SHARE)
        full, nxt = med("A", "download", REFERENCE), med("A", "download-next", REFERENCE)
        out(f"## Partial and reusing downloads (dataset A, `{REFERENCE}`)")
        out("")
        out(
            f"`download-1%` = `wabucket download ... --include '{pattern}'` ({n:,} of the {a.count:,} files); "
            "`download-1%-nowandb` = the same with `WANDB_MODE=disabled` (no W&B run: what W&B's fixed cost is); "
            f"`download-next` = the next version (A with {n:,} files, one in every {round(1 / SHARE)}, rewritten; "
            "uploaded beforehand as a new version of the same artifact, not timed) into an empty folder; "
            "`download-next-reuse` = the same with `--reuse DIR`, DIR = a full download of the previous version made "
            "beforehand (not timed), whose files' hashes the download remembered (the local hash cache); "
            "`download-next-reuse-cold` = the same with the hash cache emptied first, so every file of DIR is read back "
            "from disk (the page cache is dropped before each run) and hashed. "
            "Files fetched and reused are from the summary line; every file of every run is checked by sha256. "
            "`x full` = against the full download of A (the table above), and for the reusing downloads against "
            "`download-next`. `outside` = wall - transfer: start-up, session, W&B run, manifest, (re)use of local files."
        )
        out("")
        out(
            "| op | files fetched | files reused | MiB fetched | median s | min | max | transfer s | outside s | x full | client CPU s |"
        )
        out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for op in ("download", *PARTIAL_OPS):
            rs = by.get(("A", op, REFERENCE), [])
            m = med("A", op, REFERENCE)
            if not rs:
                continue
            if m is None:
                err = next((r.error for r in rs if not r.ok), "")
                out(f"| {op} | FAILED | | | | | | | | | {err[:120].replace('|', '/')} |")
                partial[op] = {"error": err}
                continue
            good = [r for r in rs if r.ok]
            fetched, reused = med("A", op, REFERENCE, "files_moved"), med("A", op, REFERENCE, "files_reused")
            tr = med("A", op, REFERENCE, "transfer_s")
            base = nxt if op in REUSE_OPS else full
            row = {
                "median": m,
                "min": min(r.wall for r in good),
                "max": max(r.wall for r in good),
                "files_fetched": fetched,
                "files_reused": reused,
                "bytes_fetched": fetched * a.size if fetched is not None else None,
                "transfer": tr,
                "ratio": m / base if base else None,
                "client_cpu": _med([r.user_cpu + r.sys_cpu for r in good]),
            }
            partial[op] = row
            mib = _fmt(row["bytes_fetched"] / MiB, 1) if row["bytes_fetched"] is not None else "-"
            out(
                f"| {op} | {_fmt(fetched, 0)} | {_fmt(reused, 0)} | {mib} | {m:.2f} | {row['min']:.2f} | {row['max']:.2f} | "
                f"{_fmt(tr)} | {_fmt(m - tr if tr is not None else None)} | {_fmt(row['ratio'], 3)} | {_fmt(row['client_cpu'], 1)} |"
            )
        out("")
        few = f"{SHARE_FACTOR} x {100 * SHARE:.0f}%"
        lim1 = SHARE_FACTOR * SHARE * full if full is not None else None
        for op in ("download-1%", "download-1%-nowandb"):
            p1 = partial.get(op, {}).get("median")
            shown1 = (
                f"{_fmt(p1)} s = {_fmt(100 * p1 / full if p1 and full else None, 1)}% of the full download's "
                f"{_fmt(full)} s (limit {few} = {_fmt(lim1)} s); {n:,} of {a.count:,} files"
            )
            nowandb = " with `WANDB_MODE=disabled` (no W&B run)" if op.endswith("-nowandb") else ""
            partial_targets.append(
                (
                    f"A download of {100 * SHARE:.0f}% of the files (`--include`){nowandb} <= {few} of the full download",
                    p1,
                    lim1,
                    shown1,
                )
            )
        for op in REUSE_OPS:
            r = partial.get(op, {})
            pr, fetched = r.get("median"), r.get("files_fetched")
            lim2 = SHARE_FACTOR * SHARE * nxt if nxt is not None else None
            # Its share of the work: fetching no more than the changed files, and a few times their share of the time.
            ok_bytes = fetched is not None and fetched <= n
            shown2 = (
                f"{_fmt(pr)} s = {_fmt(100 * pr / nxt if pr and nxt else None, 1)}% of the plain download's {_fmt(nxt)} s "
                f"(limit {few} = {_fmt(lim2)} s); fetched {_fmt(fetched, 0)} files "
                f"({_fmt(fetched * a.size / MiB if fetched is not None else None, 1)} MiB, limit {n:,} changed), "
                f"reused {_fmt(r.get('files_reused'), 0)}"
            )
            cold = ", hash cache emptied first" if op.endswith("-cold") else ""
            partial_targets.append(
                (
                    f"A download of the next version ({100 * SHARE:.0f}% changed) with `--reuse`{cold} <= {few} of a "
                    "plain download, fetching only the changed files",
                    pr if ok_bytes or pr is None else float("inf"),
                    lim2,
                    shown2,
                )
            )
        for name, value, limit, shown in partial_targets:
            verdict = "n/a" if value is None or limit is None else ("met" if value <= limit else "missed")
            out(f"- {name}: **{verdict}**: {shown}")
        out("")

    # ---- incremental uploads (datasets A and B, the reference)
    incremental: dict[str, Any] = {}
    incremental_targets: list[tuple[str, float | None, float | None, str]] = []
    inc_sets = [d for d in datasets if any((d.name, op, REFERENCE) in by for op in INCREMENTAL_OPS)]
    if inc_sets:
        out(f"## Incremental uploads (datasets A and B, `{REFERENCE}`)")
        out("")
        out(
            "The next version of each data set (A with 1% of its files rewritten, one in every 100; B with one of "
            "its four files rewritten; same sizes) uploaded three ways (and the base once more), alternating: `upload-next-incremental` = "
            "`wabucket upload DIR -n NAME -t dataset -a next --base base` (files equal to a file of the base by size "
            "and sha256 are copied inside the bucket instead of sent; the default without --base takes the latest "
            "version), where the base is the previous version uploaded beforehand as alias `base` of a fresh artifact "
            "(not timed) from the folder whose unchanged files DIR shares (hard links: as when a dataset folder is "
            "uploaded, edited and uploaded again, so their hashes are remembered); `upload-next-incremental-cold` = "
            "the same to alias `next-cold` with the local hash cache emptied first (every file of DIR is read and "
            "hashed: a folder this machine has not seen); `upload-unchanged-incremental` = the base's own folder "
            "to alias `same` with `--base base` (every file copied, none sent: what the copies alone cost the "
            "server); `upload-next-full` = the same folder with `--no-base` (every file sent) to alias `next` of "
            "another fresh artifact. Files sent and copied are from the upload's summary line (bytes sent = files "
            "sent x the file size); every upload is checked by listing its folder (file count and bytes). "
            "`x full` = incremental / full wall time. A copy is a server-side S3 CopyObject: SeaweedFS's S3 gateway "
            "reads every chunk of the source object from its volume server and writes it as a new chunk (a new file "
            "id; the copy shares no chunk with its source), four chunks at a time, so a copy costs server CPU and "
            "disk I/O (the SeaweedFS CPU column: CPU seconds of the one `weed mini` process during the run) and no "
            "client bytes."
        )
        out("")
        out(
            "| dataset | op | files changed | files sent | MiB sent | files copied | MiB copied | median s | min | max "
            "| transfer s | x full | client CPU s | SeaweedFS CPU s |"
        )
        out("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for d in inc_sets:
            changed_next = len(range(0, d.count, round(1 / INCREMENTAL_SHARE[d.name])))
            full = med(d.name, "upload-next-full", REFERENCE)
            for op in INCREMENTAL_OPS:
                changed = 0 if op == "upload-unchanged-incremental" else changed_next
                rs = by.get((d.name, op, REFERENCE), [])
                if not rs:
                    continue
                m = med(d.name, op, REFERENCE)
                if m is None:
                    err = next((r.error for r in rs if not r.ok), "")
                    out(f"| {d.name} | {op} | {changed:,} | FAILED | | | | | | | | | | {err[:120].replace('|', '/')} |")
                    incremental[f"{d.name}/{op}"] = {"error": err}
                    continue
                good = [r for r in rs if r.ok]
                sent, copied = med(d.name, op, REFERENCE, "files_moved"), med(d.name, op, REFERENCE, "files_copied")
                tr = med(d.name, op, REFERENCE, "transfer_s")
                row = {
                    "median": m,
                    "min": min(r.wall for r in good),
                    "max": max(r.wall for r in good),
                    "files_changed": changed,
                    "bytes_changed": changed * d.size,
                    "files_sent": sent,
                    "bytes_sent": sent * d.size if sent is not None else None,
                    "files_copied": copied,
                    "bytes_copied": copied * d.size if copied is not None else None,
                    "transfer": tr,
                    "ratio_to_full": m / full if full else None,
                    "client_cpu": _med([r.user_cpu + r.sys_cpu for r in good]),
                    "server_cpu": _med([r.server_cpu for r in good]),
                }
                incremental[f"{d.name}/{op}"] = row

                def mib(v: float | None) -> str:
                    return _fmt(v / MiB, 1) if v is not None else "-"

                out(
                    f"| {d.name} | {op} | {changed:,} | {_fmt(sent, 0)} | {mib(row['bytes_sent'])} | {_fmt(copied, 0)} | "
                    f"{mib(row['bytes_copied'])} | {m:.2f} | {row['min']:.2f} | {row['max']:.2f} | {_fmt(tr)} | "
                    f"{_fmt(row['ratio_to_full'], 3)} | {_fmt(row['client_cpu'], 1)} | {_fmt(row['server_cpu'], 1)} |"
                )
        out("")
        for d, op in ((d, op) for d in inc_sets for op in INCREMENTAL_OPS if op.startswith("upload-next-inc")):
            inc = incremental.get(f"{d.name}/{op}", {})
            full_row = incremental.get(f"{d.name}/upload-next-full", {})
            changed = len(range(0, d.count, round(1 / INCREMENTAL_SHARE[d.name])))
            sent_b = inc.get("bytes_sent")
            what = f"{changed:,} of {d.count:,} files" if d.name == "A" else f"{changed} of its {d.count} files"
            cold = " (hash cache emptied first)" if op.endswith("-cold") else ""
            incremental_targets.append(
                (
                    f"{d.name} incremental upload{cold} ({what} changed) sends only the changed bytes",
                    None if sent_b is None else (0.0 if sent_b == changed * d.size else float("inf")),
                    0.0,
                    f"sent {_fmt(inc.get('files_sent'), 0)} file(s) = {_fmt(sent_b / MiB if sent_b is not None else None, 1)} MiB "
                    f"(changed: {changed:,} file(s) = {changed * d.size / MiB:.1f} MiB); "
                    f"copied {_fmt(inc.get('files_copied'), 0)} in the bucket",
                )
            )
            if d.name == "B":
                im, fm = inc.get("median"), full_row.get("median")
                lim = INCREMENTAL_TIME_SHARE * fm if fm is not None else None
                incremental_targets.append(
                    (
                        f"B incremental upload{cold} <= {INCREMENTAL_TIME_SHARE:g} x a full upload (`--no-base`) of the "
                        "same version",
                        im,
                        lim,
                        f"{_fmt(im)} s = {_fmt(100 * im / fm if im and fm else None, 1)}% of the full upload's "
                        f"{_fmt(fm)} s (limit {_fmt(lim)} s)",
                    )
                )
        for name, value, limit, shown in incremental_targets:
            verdict = "n/a" if value is None or limit is None else ("met" if value <= limit else "missed")
            out(f"- {name}: **{verdict}**: {shown}")
        out("")

    # ---- W&B bookkeeping
    book: dict[str, Any] = {}
    wab = [c for c in ("wabucketref", "wabucketref-s3", "wabucketref-nowandb") if c in contenders]

    def outside(d: str, op: str, c: str) -> float | None:
        rs = ok_runs(d, op, c)
        if not rs or len(rs) != len(by.get((d, op, c), [])) or any(r.transfer_s is None for r in rs):
            return None
        return _med([r.wall - r.transfer_s for r in rs])  # type: ignore[operator]

    if wab:
        out("## Where wabucketref's time goes (W&B bookkeeping)")
        out("")
        out(
            "`transfer` = the seconds in wabucketref's own summary line (`uploaded N files (...) in S s`: from the start of "
            "the byte transfer to the last file done, 0.1 s resolution); `outside` = wall - transfer (interpreter start, "
            "imports, platform login, listing, manifest, W&B), median over runs. **W&B cost** = outside(`wabucketref`, W&B "
            "online) - outside(`wabucketref-nowandb`, same platform bucket with `WANDB_MODE=disabled`): what W&B adds, with "
            "the run-to-run noise of the transfer itself removed. `wall diff` = the plain difference of median walls "
            "(noisier; it also catches W&B work that overlaps the transfer)."
        )
        out("")
        out(
            "| dataset | op | contender | wall s | transfer s | outside s | W&B cost s | W&B cost / wall | wall diff s |"
        )
        out("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for ds in datasets:
            for op in ("upload", "download"):
                off_out = outside(ds.name, op, "wabucketref-nowandb")
                off_wall = med(ds.name, op, "wabucketref-nowandb")
                for c in wab:
                    m = med(ds.name, op, c)
                    if m is None:
                        continue
                    tr = med(ds.name, op, c, "transfer_s")
                    o = outside(ds.name, op, c)
                    is_ref = c == REFERENCE
                    cost = (o - off_out) if (is_ref and o is not None and off_out is not None) else None
                    wdiff = (m - off_wall) if (is_ref and off_wall is not None) else None
                    share = f"{100 * cost / m:.0f}%" if cost is not None else "-"
                    out(
                        f"| {ds.name} | {op} | {c} | {m:.2f} | {_fmt(tr)} | {_fmt(o)} | {_fmt(cost)} | {share} | {_fmt(wdiff)} |"
                    )
                    book[f"{ds.name}/{op}/{c}"] = {
                        "wall": m,
                        "transfer": tr,
                        "outside": o,
                        "wandb_cost": cost,
                        "wall_diff_to_disabled": wdiff,
                    }
        out("")

    # ---- help and RSS
    help_med = statistics.median(help_times) if help_times else None
    rss_runs = [r for r in runs if r.contender == REFERENCE and r.dataset == "B" and r.op == "upload" and r.ok]
    rss_tree = max((r.peak_rss_tree for r in rss_runs), default=0)
    rss_single = max((r.max_rss_single for r in rss_runs), default=0)
    rss_main = max((r.peak_rss_main for r in rss_runs), default=0)
    out("## Start-up and memory")
    out("")
    if help_times:
        out(
            f"- `wabucket --help`: median {help_med:.3f} s of {len(help_times)} runs (min {min(help_times):.3f}, max {max(help_times):.3f})"
        )
    if rss_runs:
        out(
            f"- peak memory of `wabucket upload` of dataset B (platform bucket, W&B online): whole process tree {_mb(rss_tree)} MB "
            f"(sum of PSS sampled at 10 Hz: python + wandb-core service); the python process alone (VmHWM) {_mb(rss_main)} MB; "
            f"largest single process (GNU time) {_mb(rss_single)} MB"
        )
    out("")

    # ---- targets
    targets: list[dict[str, Any]] = []

    def target(name: str, value: float | None, limit: float | None, shown: str, is_max: bool = True) -> None:
        if value is None or limit is None:
            verdict = "n/a"
        else:
            verdict = "PASS" if (value <= limit if is_max else value < limit) else "FAIL"
        targets.append({"target": name, "measured": shown, "verdict": verdict})

    for ds in datasets:
        for op in ("upload", "download"):
            ref = med(ds.name, op, REFERENCE)
            peers = [p for p in (med(ds.name, op, q) for q in PEERS if q in contenders) if p is not None]
            best = min(peers) if peers else None
            if best is not None:
                target(
                    f"{ds.name} {op} <= 1.1x the faster of s5cmd/rclone",
                    ref,
                    1.1 * best,
                    # 3 decimals: a ratio of 1.1007 must not read as "x1.10, limit = measured" next to FAIL
                    f"{_fmt(ref)} s vs {_fmt(best)} s (x{_fmt(ref / best if ref else None, 3)}; limit {1.1 * best:.3f} s)",
                )
            if ds.name == "A":
                sdk = med(ds.name, op, "sdk") if "sdk" in contenders else None
                if sdk is not None:
                    target(
                        f"A {op} <= 1/5 of SDK {op}_dir",
                        ref,
                        sdk / 5,
                        f"{_fmt(ref)} s vs SDK {_fmt(sdk)} s (SDK is x{_fmt(sdk / ref if ref else None, 1)} slower; limit {sdk / 5:.2f} s)",
                    )
    a_up, a_down = book.get("A/upload/wabucketref", {}), book.get("A/download/wabucketref", {})
    if a_up.get("wandb_cost") is not None and a_down.get("wandb_cost") is not None:
        cost = a_up["wandb_cost"] + a_down["wandb_cost"]
        wdiff = a_up["wall_diff_to_disabled"] + a_down["wall_diff_to_disabled"]
        total = a_up["wall"] + a_down["wall"]
        # Judged by the larger: W&B work beside the transfer slows the transfer itself, which only
        # the plain wall difference sees (it also carries the transfer's run-to-run noise).
        target(
            "W&B bookkeeping <= 10% of A's total (upload + download)",
            max(cost, wdiff),
            0.10 * total,
            f"{cost:.2f} s of {total:.2f} s = {100 * cost / total:.0f}% outside the transfer; "
            f"{wdiff:.2f} s = {100 * wdiff / total:.1f}% by plain wall difference (online vs `WANDB_MODE=disabled`)",
        )
    for name, value, limit, shown in partial_targets + incremental_targets:
        target(name, value, limit, shown)
    if help_med is not None:
        target("`wabucket --help` < 0.3 s", help_med, 0.3, f"{help_med:.3f} s", is_max=False)
    if rss_runs:
        target(
            "peak memory uploading B < 300 MB (whole process tree, PSS)",
            rss_tree / 1e6,
            300,
            f"{_mb(rss_tree)} MB",
            is_max=False,
        )
    out("## Targets")
    out("")
    out("| target | measured | verdict |")
    out("|---|---|---|")
    for t in targets:
        out(f"| {t['target']} | {t['measured']} | **{t['verdict']}** |")
    out("")
    if args.small:
        out(
            "(`--small`: the data sets are scaled down for a smoke run; start-up costs weigh far more than at full size.)"
        )
        out("")
    out("## Reproduce")
    out("")
    out("```")
    out(command)
    out("```")
    data = {
        "machine": info,
        "small": args.small,
        "datasets": {
            d.name: {
                "count": d.count,
                "size": d.size,
                "folders": int(d.describe().split(" in ")[-1].split()[0]) if " in " in d.describe() else 0,
            }
            for d in datasets
        },
        "repeat": args.repeat,
        "sdk_repeat": args.sdk_repeat,
        "cold_cache": cold,
        "table": table,
        "bookkeeping": book,
        "partial": partial,
        "incremental": incremental,
        "help_seconds": help_times,
        "targets": targets,
        "runs": [asdict(r) for r in runs],
        "command": command,
    }
    return "\n".join(lines), data


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--small", action="store_true", help="A = 1000 x 100 KiB, B = 4 x 16 MiB, 1 repeat (CI smoke, ~2 min)"
    )
    p.add_argument("--repeat", type=int, help="repetitions per contender (default 5; 1 with --small)")
    p.add_argument(
        "--sdk-repeat",
        type=int,
        default=1,
        help="repetitions of the platform SDK contender (default 1: it takes minutes, 4-20x the others)",
    )
    p.add_argument("--only", choices=["A", "B"], help="run one data set only")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_from:
        return report_from(args)
    contenders = [c for c in CONTENDERS if c in (args.contenders or CONTENDERS)]
    sizes = SIZES["small" if args.small else "full"]
    names = [args.only] if args.only else ["A", "B"]
    command = "python benchmarks/bench.py" + (" " + shlex.join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wabucket-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    need = sum(sizes[n][0] * sizes[n][1] for n in names)
    free = shutil.disk_usage(work).free
    per_ds = max(sizes[n][0] * sizes[n][1] for n in names) * (len(contenders) * args.repeat + 2)
    if free < need + per_ds:
        print(f"warning: {_size(free)} free in {work}; this run may need about {_size(need + per_ds)}", file=sys.stderr)
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
            ds = make_dataset(work / "data", n, *sizes[n])
            datasets.append(ds)
            print(f"dataset {n}: {ds.describe()} ({time.perf_counter() - t0:.1f} s to prepare)", file=sys.stderr)
        for ds in datasets:
            bench_dataset(ds, contenders, args.repeat, work, args, runs)
        text, data = report(runs, datasets, contenders, info, help_times, args, command)
        print(text)
        if args.json:
            args.json.write_text(json.dumps(data, indent=2, default=str))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
