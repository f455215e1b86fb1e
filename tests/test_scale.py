"""Scale (slow): every command at 10,000 and 100,000 files, its peak memory flat; one 5 GiB file round trip."""

from __future__ import annotations

import hashlib
import os
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


def tiny_tree(root: Path, n: int, changed: int = 0) -> Path:
    """n files of a few bytes in folders of 1,000; the first `changed` of every 100 get new content."""
    for i in range(n):
        folder = root / f"f{i // 1000:05d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        body = b"%d" % i if i % 100 >= changed else b"new %d" % i
        (folder / f"{i:07d}.bin").write_bytes(body)
    return root


FLAT = (10_000, 100_000)


def flat_memory_commands(env: Env, tmp: Path, n: int, local: bool) -> list[tuple[str, tuple[str, ...]]]:
    """Every command, on a version of n files (and the next one, 1% changed)."""
    src, src2 = tiny_tree(tmp / "src", n), tiny_tree(tmp / "src2", n, changed=1)
    cmds = [
        ("upload", ("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "one", "--no-base")),
        ("ls", ("ls", "dataset", "ds")),
        ("download", ("download", "dataset", "ds", "one", "-d", str(tmp / "dl"))),
        ("verify", ("verify", "dataset", "ds", "one")),
        ("upload-incremental", ("upload", str(src2), "-n", "ds", "-t", "dataset", "-a", "two")),
        ("diff", ("diff", "dataset", "ds", "one", "two")),
        ("download-include", ("download", "dataset", "ds", "two", "-d", str(tmp / "inc"), "--include", "f00001/*")),
    ]
    if local:
        cmds += [
            ("verify-local", ("verify", "dataset", "ds", "one", "--local", str(tmp / "dl"))),
            ("diff-local", ("diff", "dataset", "ds", "two", "--local", str(tmp / "dl"))),
            ("download-reuse", ("download", "dataset", "ds", "two", "-d", str(tmp / "re"), "--reuse", str(tmp / "dl"))),
            ("download-shard", ("download", "dataset", "ds", "two", "-d", str(tmp / "sh"), "--shard", "1/3")),
            ("link", ("link", "dataset/ds/one", "-n", "linked", "-t", "dataset", "-a", "l1")),
            ("upload-part", ("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "parts", "--part", "0/1")),
            ("commit", ("commit", "-n", "ds", "-t", "dataset", "-a", "parts")),
        ]
    return cmds


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_memory_does_not_grow_with_the_file_count(env, request, tmp_path, kind):
    """Every command at 10,000 and at 100,000 files: the peak RSS of its process tree at 100,000 is at
    most 1.3x + 30 MB of its peak at 10,000 (W&B disabled: its own process does not see file lists)."""
    env.vars["WANDB_MODE"] = "disabled"
    peaks: dict[str, dict[int, float]] = {}
    for n in FLAT:
        env = use_backend(env, kind, request, tmp_path)
        work = tmp_path / f"n{n}"
        for name, args in flat_memory_commands(env, work, n, kind == "local"):
            rc, err, secs, peak = measured(env, *args, timeout=900)
            assert rc == 0, f"{name} at {n} files: {err}"
            peaks.setdefault(name, {})[n] = peak
            print(f"\n{kind} {name} {n}: {secs:.1f} s, peak {peak:.0f} MB")
        assert count_files(work / "dl") == n
        shutil.rmtree(work)
    grown = {name: p for name, p in peaks.items() if p[FLAT[1]] > 1.3 * p[FLAT[0]] + 30}
    assert not grown, f"peak RSS (MB) grew with the file count: {grown}"
    assert max(p[FLAT[1]] for p in peaks.values()) < 512


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
