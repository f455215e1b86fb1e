"""One timed run of a command: wall, CPU, memory of its process tree, and wabucketref's summary line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .common import TIME_BIN
from .stack import clean_environ

SUMMARY_RE = re.compile(r"(uploaded|downloaded) (\d+) files? \(([^)]*)\) in ([\d.]+) s")
REUSED_RE = re.compile(r"(\d+) files? \([^)]*\) reused from local folders")
COPIED_RE = re.compile(r"(\d+) files? \([^)]*\) copied in the bucket")


def drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
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
    server0 = cpu_seconds(server_pid) if server_pid else float("nan")
    rc, sampler = _sampled(wrapped, env, cwd, log, timeout, run)
    run.server_cpu = (cpu_seconds(server_pid) - server0) if server_pid else float("nan")
    run.peak_rss_tree = sampler.peak_tree
    # the command's own process: the child of GNU time (or the process itself when not wrapped)
    main_depth = 1 if wrapped[0] == TIME_BIN else 0
    run.peak_rss_main = max((h for d, h in sampler.hwm.values() if d == main_depth), default=0)
    _read_time(tfile, run)
    text = log.read_text(errors="replace")
    if rc != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        run.error = f"exit {rc}: {tail[-400:]}"
        return run
    _read_summary(text, run)
    run.ok = True
    return run


def _sampled(
    wrapped: list[str], env: dict[str, str], cwd: Path, log: Path, timeout: float, run: Run
) -> tuple[int, RssSampler]:
    """Run the command in its own session (killed as a group on timeout), its tree sampled meanwhile."""
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
    return rc, sampler


def _read_time(tfile: Path, run: Run) -> None:
    """GNU time's user and system CPU and the largest process's max RSS."""
    try:
        u, s, m = tfile.read_text().strip().splitlines()[-1].split()
        run.user_cpu, run.sys_cpu, run.max_rss_single = float(u), float(s), int(m) * 1024
    except (OSError, ValueError, IndexError):
        pass


def _read_summary(text: str, run: Run) -> None:
    """Files moved, reused and copied, and the transfer's seconds, from wabucketref's summary line."""
    found = SUMMARY_RE.findall(text)
    if found:
        run.transfer_s = float(found[-1][3])
        run.files_moved = int(found[-1][1])
        reused = REUSED_RE.findall(text)
        run.files_reused = int(reused[-1]) if reused else 0
        copied = COPIED_RE.findall(text)
        run.files_copied = int(copied[-1]) if copied else 0


def measure_help(n: int, work: Path) -> list[float]:
    """Wall seconds of `wabucket --help`, n times."""
    exe = Path(sys.executable).parent / "wabucket"
    argv = [str(exe) if exe.exists() else "wabucket", "--help"]
    env = clean_environ(work / "home")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times
