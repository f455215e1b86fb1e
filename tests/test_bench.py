"""The benchmark runs end to end at smoke size: every contender moves and verifies the data.

Speed is not asserted here (targets are ratios read from the report, see README); this catches a
benchmark that no longer runs or a contender whose transfer is wrong."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, clean_environ


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--small", "--no-drop-caches", "--help-runs", "3",
         "--workdir", str(tmp_path / "bench"), "--json", str(tmp_path / "bench.json")],
        env=clean_environ(tmp_path / "home"), cwd=tmp_path, capture_output=True, text=True, timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for contender in ("wabucketref", "wabucketref-s3", "sdk", "s5cmd", "rclone", "cp"):
        for dataset in ("A", "B"):
            for op in ("upload", "download"):
                assert f"| {dataset} | {op} | {contender} |" in proc.stdout, (contender, dataset, op)
    for row in ("| download-next-reuse |", "| download-next-reuse-cold |", "| A | upload-next-incremental-cold |",
                "| B | upload-unchanged-incremental |", "| upload-4-parts |", "| commit |", "| download-4-shards |"):
        assert row in proc.stdout, row
    assert "FAILED" not in proc.stdout
    assert "python benchmarks/bench.py" in proc.stdout  # the command to reproduce it


# Data set C's rows: (bucket, op, contender), as its section prints them
C_ROWS = (
    [("folder", op, "wabucketref-folder") for op in ("upload", "download", "verify", "upload-unchanged",
                                                     "upload-changed", "ls", "diff", "download-1%", "gc")]
    + [("folder", op, peer) for peer in ("cp", "rclone-local") for op in ("upload", "download")]
    + [("S3", op, "wabucketref-s3") for op in ("upload", "download", "upload-unchanged")]
    + [("S3", op, peer) for peer in ("s5cmd", "rclone") for op in ("upload", "download")]
)


@pytest.mark.slow
def test_benchmark_many_small_files(tmp_path):
    """Data set C (many 1 KiB files) at smoke size, 2,000 and 5,000 files: every command of its
    section runs and passes its checks, its targets are printed, and its trees are removed."""
    work = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--only", "C", "--small", "--no-drop-caches",
         "--help-runs", "0", "--workdir", str(work), "--json", str(tmp_path / "bench.json")],
        env=clean_environ(tmp_path / "home"), cwd=tmp_path, capture_output=True, text=True, timeout=1200,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for count in ("2,000", "5,000"):
        for bucket, op, contender in C_ROWS:
            assert f"| {count} | {bucket} | {op} | {contender} |" in proc.stdout, (count, bucket, op, contender)
    for target in ("C: peak memory of every wabucketref command <= 512 MiB at 5,000 files",
                   "<= 1.3x + 30 MB of itself at 2,000", "C: `ls` at 5,000 files under 5 s",
                   "C folder bucket: unchanged upload at 5,000 files moves no byte", "C S3: unchanged upload",
                   "**20,000 entries**"):
        assert target in proc.stdout, target
    assert "FAILED" not in proc.stdout
    runs = json.loads((tmp_path / "bench.json").read_text())["runs"]
    assert {r["dataset"] for r in runs} == {"C-2000", "C-5000", "C-synthetic-20000"} and all(r["ok"] for r in runs)
    assert not (work / "data" / "C-2000").exists() and not (work / "C-5000").exists()  # removed once done
