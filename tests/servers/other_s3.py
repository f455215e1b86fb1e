"""S3 servers other than SeaweedFS, each with its own behaviour a client meets in the field:

* moto (``moto_server``): an in-memory emulation of AWS's API, strict about conditional writes;
* ``rclone serve s3``: keys are files on a local disk (an object ``a`` and an object ``a/b``
  cannot both exist), it answers a ranged GET with ``200`` and the whole object, and it ignores
  ``If-None-Match``/``If-Match``.

Both run as a child process bound to 127.0.0.1 and are stopped by their PID.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .s3 import free_port

__all__ = ["MotoS3", "RcloneS3", "OTHER_S3_SERVERS"]


class _ChildS3:
    region = "us-east-1"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.access_key_id = "AK" + secrets.token_hex(8).upper()
        self.secret_access_key = secrets.token_urlsafe(30)
        self._proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self):
        log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
        self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.endpoint_url, timeout=2)
                return self
            except urllib.error.HTTPError:  # any HTTP answer (403 for an unsigned request): up
                return self
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"{self.command()[0]} did not start: {(self.workdir / 'server.log').read_text()[-2000:]}")
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)


class MotoS3(_ChildS3):
    def command(self) -> list[str]:
        server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        return [server, "-H", "127.0.0.1", "-p", str(self.port)]


class RcloneS3(_ChildS3):
    def command(self) -> list[str]:
        rclone = shutil.which("rclone", path=str(Path(sys.executable).parent)) or "rclone"
        root = self.workdir / "root"
        root.mkdir(exist_ok=True)
        return [
            rclone, "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
            "--auth-key", f"{self.access_key_id},{self.secret_access_key}", "--config", "/dev/null", str(root),
        ]


OTHER_S3_SERVERS = {"moto": MotoS3, "rclone": RcloneS3}
