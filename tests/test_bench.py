"""The benchmark runs end to end at smoke size: every contender moves and verifies the data.

Speed is not asserted here (targets are ratios read from the report, see README); this catches a
benchmark that no longer runs or a contender whose transfer is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, clean_environ


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--small", "--no-drop-caches", "--help-runs", "3",
         "--workdir", str(tmp_path / "bench"), "--json", str(tmp_path / "bench.json")],
        env=clean_environ(tmp_path / "home"), cwd=ROOT, capture_output=True, text=True, timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for contender in ("wabucketref", "wabucketref-s3", "sdk", "s5cmd", "rclone", "cp"):
        for dataset in ("A", "B"):
            for op in ("upload", "download"):
                assert f"| {dataset} | {op} | {contender} |" in proc.stdout, (contender, dataset, op)
    for row in ("| download-next-reuse |", "| download-next-reuse-cold |", "| A | upload-next-incremental-cold |",
                "| B | upload-next-incremental |", "| B | upload-unchanged-incremental |"):
        assert row in proc.stdout, row
    assert "FAILED" not in proc.stdout
    assert "python benchmarks/bench.py" in proc.stdout  # the command to reproduce it
