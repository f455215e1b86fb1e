"""Scale (slow): 100,000 small files and one 5 GiB file, round trip, with the CLI's peak memory bounded."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Env, use_backend

pytestmark = pytest.mark.slow

MB = 1 << 20


def measured(env: Env, *args: str, timeout: float) -> tuple[int, str, float, float]:
    """Run the CLI; return (exit code, stderr, seconds, peak RSS in MB of the CLI process and what it waited for)."""
    out, err = env.cwd.parent / "out.txt", env.cwd.parent / "err.txt"
    cmd = [sys.executable, "-m", "wabucketref", "--bucket", env.bucket, "--project-name", env.vars["WANDB_PROJECT"], *args]
    t0 = time.monotonic()
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(cmd, env=env.vars, cwd=env.cwd, stdin=subprocess.DEVNULL, stdout=o, stderr=e)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise AssertionError(f"wabucket {args[0]} still running after {timeout} s\n{err.read_text()}")
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err.read_text(), time.monotonic() - t0, usage.ru_maxrss / 1024


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def test_100k_small_files(env, tmp_path):
    """100,000 small files up and down (local folder bucket, W&B offline): complete, verified, < 500 MB peak."""
    n = 100_000
    src = tmp_path / "src"
    for d in range(500):
        folder = src / f"shard{d:03d}"
        folder.mkdir(parents=True)
        for i in range(n // 500):
            (folder / f"f{i:04d}.txt").write_bytes(b"%d/%d\n" % (d, i))
    rc, err, secs, peak = measured(env, "upload", str(src), "-n", "many", "-t", "dataset", "-a", "k100", timeout=240)
    assert rc == 0, err
    assert re.search(rf"uploaded {n} files", err), err
    print(f"\n100k upload: {secs:.1f} s, peak {peak:.0f} MB")
    assert peak < 500, f"upload peak RSS {peak:.0f} MB"
    assert count_files(Path(env.bucket) / "dataset" / "many" / "k100") == n

    dest = tmp_path / "dl"
    rc, err, secs, peak = measured(env, "download", "dataset", "many", "k100", "-d", str(dest), timeout=240)
    assert rc == 0, err
    assert re.search(rf"downloaded {n} files", err), err
    print(f"100k download: {secs:.1f} s, peak {peak:.0f} MB")
    assert peak < 500, f"download peak RSS {peak:.0f} MB"
    assert count_files(dest) == n
    assert (dest / "shard499" / "f0199.txt").read_bytes() == b"499/199\n"
    assert not list(dest.rglob("*.wabucket-part"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MB):
            h.update(chunk)
    return h.hexdigest()


def test_5gib_file_on_s3(env, request, tmp_path):
    """One 5 GiB file up to S3 (SeaweedFS) and back: streamed in parts, verified, < 300 MB peak."""
    size = 5 << 30
    free = shutil.disk_usage(tmp_path).free
    assert free > 3 * size, f"needs {3 * size >> 30} GiB free in {tmp_path}, has {free >> 30} GiB"
    env = use_backend(env, "s3", request, tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    with open(big, "wb") as f:  # sparse, with real bytes at both ends and in the middle
        f.truncate(size)
        for offset in (0, size // 2 + 12345, size - 4096):
            f.seek(offset)
            f.write(os.urandom(4096))
    (src / "small.txt").write_text("beside the big one")
    rc, err, secs, peak = measured(env, "upload", str(src), "-n", "huge", "-t", "model", "-a", "g5", timeout=200)
    assert rc == 0, err
    print(f"\n5 GiB upload: {secs:.1f} s, peak {peak:.0f} MB")
    assert peak < 300, f"upload peak RSS {peak:.0f} MB"
    seaweed = request.getfixturevalue("seaweed")
    head = seaweed.client().head_object(Bucket=env.extra["s3_bucket"], Key="some/prefix/model/huge/g5/big.bin")
    assert head["ContentLength"] == size and "-" in head["ETag"]  # a multipart upload

    dest = tmp_path / "dl"
    rc, err, secs, peak = measured(env, "download", "model", "huge", "g5", "-d", str(dest), timeout=200)
    assert rc == 0, err
    print(f"5 GiB download: {secs:.1f} s, peak {peak:.0f} MB")
    assert peak < 300, f"download peak RSS {peak:.0f} MB"
    assert (dest / "big.bin").stat().st_size == size
    assert _sha256(dest / "big.bin") == _sha256(big)
    assert (dest / "small.txt").read_text() == "beside the big one"
