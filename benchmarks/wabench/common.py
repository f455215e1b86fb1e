"""Names, units and paths every part of the benchmark shares."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.servers: the same servers the test suite starts

KiB = 1 << 10
MiB = 1 << 20

REFERENCE = "wabucketref"
PLATFORM_BUCKET = "bench-plat"
S3_BUCKET = "bench-s3"
WANDB_PROJECT = "bench"
TIME_BIN = "/usr/bin/time"
