"""The machine and the tool versions a report names."""

from __future__ import annotations

import os
import platform as pyplatform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        return out[0] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "not found"


def _packages() -> dict[str, str]:
    pkgs = {}
    for p in ("wabucketref", "obstore", "apolo-sdk", "aiobotocore", "wandb"):
        try:
            pkgs[p] = pkg_version(p)
        except PackageNotFoundError:
            pkgs[p] = "-"
    return pkgs


def machine_info() -> dict[str, Any]:
    from tests.servers.s3 import weed_binary

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    bindir = Path(sys.executable).parent

    def tool(name: str) -> str:
        return str(bindir / name) if (bindir / name).exists() else name

    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "ram_gib": round(ram / (1 << 30), 1),
        "kernel": pyplatform.release(),
        "python": pyplatform.python_version(),
        "packages": _packages(),
        "s5cmd": _first_line([tool("s5cmd"), "version"]),
        "rclone": _first_line([tool("rclone"), "version"]),
        "seaweedfs": _first_line([weed_binary(), "version"]),
    }
