"""The CLI's process gives big freed buffers back to the system (malloc.py): buffers of a few MiB
made and freed by worker threads, as shards and file chunks are, leave no lasting growth."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHURN = """
import sys, threading
from wabucketref.malloc import fix_mmap_threshold
assert fix_mmap_threshold()

def rss_mb():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) // 1024

def work(kept):
    for _ in range(40):
        blocks = [bytes(3 << 20) for _ in range(4)]  # 12 MiB in flight per thread
        kept.append(bytes(1000))  # a small object that lives on between them
        del blocks

before = rss_mb()
kept = []
threads = [threading.Thread(target=work, args=(kept,)) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_freed_buffers_of_worker_threads_go_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 8, f"{out.stdout} MB kept after 4 threads freed 12 MiB each"  # 39 MB without the fix
