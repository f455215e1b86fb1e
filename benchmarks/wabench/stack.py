"""The servers one data set runs against, all on 127.0.0.1, and the hermetic environment of every command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .common import PLATFORM_BUCKET, S3_BUCKET


class Stack:
    """SeaweedFS + fake platform control plane + W&B backend, all on loopback, for one dataset."""

    def __init__(self, workdir: Path) -> None:
        from tests.servers.platform import FakePlatform
        from tests.servers.s3 import SeaweedS3
        from tests.servers.wandb_backend import WandbBackend

        self.workdir = workdir
        self.s3 = SeaweedS3(workdir / "seaweed").start()
        try:
            self.platform = FakePlatform(self.s3).start()
            self.platform.add_bucket(PLATFORM_BUCKET)
            self.s3.create_bucket(S3_BUCKET)
            self.wandb = WandbBackend(workdir / "wandb").start()
        except BaseException:
            self.s3.stop()
            raise
        self.client = self.s3.client(read_timeout=120)

    def stop(self) -> None:
        for what in (getattr(self, "wandb", None), getattr(self, "platform", None), self.s3):
            if what is not None:
                try:
                    what.stop()
                except Exception as e:
                    print(f"warning: stopping {type(what).__name__}: {e}", file=sys.stderr)

    def listing(self, bucket: str, prefix: str) -> tuple[int, int]:
        n = total = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix.rstrip("/") + "/"
        ):
            for o in page.get("Contents", []):
                if o["Key"].endswith("/") and o["Size"] == 0:
                    continue  # a folder marker (apolo_sdk's upload_dir writes one), not a file
                n += 1
                total += o["Size"]
        return n, total


def clean_environ(home: Path) -> dict[str, str]:
    """os.environ without anything that could point a command at a real service or account, and
    the cloud metadata endpoints on a closed loopback port (as the test suite's commands see them):
    a client that finds no keys is refused at once instead of asking an address outside loopback."""
    from tests.conftest import metadata_environ

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("WANDB_", "AWS_", "APOLO_", "NEURO_", "WABUCKET_", "RCLONE_", "S3_", "GCE_METADATA_", "AZURE_", "GOOGLE_")
        )
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    env.update(metadata_environ())
    return env
