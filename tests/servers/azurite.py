"""A real Azure Blob server for tests: Azurite (``npm install azurite@3.35``) bound to loopback.

Usage::

    with Azurite(tmp_path / "azurite") as az:
        az.create_container("data")
        sas = az.container_sas("data", ttl=3600)

Azurite serves the well-known development account ``devstoreaccount1`` at
``http://127.0.0.1:PORT/devstoreaccount1`` and checks Shared Key and SAS signatures.
3.35 is the newest release that runs on Node 20; it is started with
``--skipApiVersionCheck`` because azure-storage-blob speaks a newer API version.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .s3 import free_port

__all__ = ["Azurite", "azurite_binary"]

ACCOUNT = "devstoreaccount1"
# Azurite's published development key (the same in every installation; not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_binary() -> str | None:
    """``azurite-blob`` from $AZURITE_BIN, the venv's node folder (where .ci/run installs it), or PATH."""
    if os.environ.get("AZURITE_BIN"):
        return os.environ["AZURITE_BIN"]
    candidate = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "azurite-blob"
    if candidate.exists():
        return str(candidate)
    return shutil.which("azurite-blob")


class Azurite:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def start(self) -> "Azurite":
        binary = azurite_binary()
        if binary is None:
            raise RuntimeError("azurite-blob not found: npm install --prefix .venv/node azurite@3.35.0")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = open(self.workdir / "azurite.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(self.workdir / "data"),
             "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"azurite exited: {(self.workdir / 'azurite.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=2)
            except urllib.error.HTTPError:
                return self  # it answers (403 without a signature)
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("azurite did not start within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "Azurite":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def service(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.endpoint, credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY})

    def container(self, name: str):
        return self.service().get_container_client(name)

    def create_container(self, name: str) -> None:
        self.service().create_container(name)

    def container_sas(self, name: str, ttl: float) -> tuple[str, str]:
        """A read/write/list/delete SAS token for one container, and its expiry (ISO 8601 UTC)."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        expiry = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=ttl)
        perms = ContainerSasPermissions(read=True, add=True, create=True, write=True, delete=True, list=True)
        token = generate_container_sas(ACCOUNT, name, account_key=ACCOUNT_KEY, permission=perms, expiry=expiry)
        return token, expiry.isoformat().replace("+00:00", "Z")
