#!/usr/bin/env python3
"""Benchmark wabucketref against the platform SDK, s5cmd, rclone and `cp -r`, on one real S3 server.

The entry point: the benchmark itself is the `wabench` package beside this file (see its
__init__ for the map, and README.md here for what it measures).

    python benchmarks/bench.py --small            # CI smoke size, about two minutes
    python benchmarks/bench.py                    # A = 10,000 x 100 KiB, B = 4 x 256 MiB, 5 repeats
    python benchmarks/bench.py --only C --c-files 10000,100000 --repeat 1   # many small files, on demand
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # wabench, also when bench.py is imported

from wabench.cli import main

if __name__ == "__main__":
    sys.exit(main())
