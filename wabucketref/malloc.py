"""The CLI's process returns big freed buffers to the system.

glibc's malloc maps each allocation above a threshold (128 KiB) on its own and unmaps it when
freed; but after such a block is freed it raises the threshold to that block's size (up to
32 MiB), so later buffers of that size (manifest shards, file chunks) come from the heaps of
the worker threads and stay there once freed. Measured: an unchanged upload of 1.28M files
peaked at 118 MB with the moving threshold, 69 MB with it fixed. Only the CLI fixes it: the SDK
runs in its caller's process, whose memory is its caller's choice.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
THRESHOLD = 128 << 10  # glibc's default; setting it turns the moving threshold off


def fix_mmap_threshold() -> bool:
    """True if set (glibc); elsewhere (macOS, musl) nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
