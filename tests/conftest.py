"""Fixtures: real servers on loopback (SeaweedFS S3, a fake platform control plane, a W&B backend),
a hermetic environment, and one `bucket` fixture parametrized over every bucket kind."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["local", "s3", "platform", "platform-azure"]
# S3 servers that behave unlike SeaweedFS (see tests/servers/other_s3.py), for the core scenarios
OTHER_S3 = ["s3-moto", "s3-rclone"]
MULTIPART_FILE_SIZE = 17 << 20  # above the 16 MiB part size: exercises multipart upload and streamed download


# ------------------------------------------------------------------ servers (started once, lazily)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    from tests.servers.s3 import SeaweedS3

    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as s3:
        yield s3


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    from tests.servers.other_s3 import MotoS3

    with MotoS3(tmp_path_factory.mktemp("moto")) as s3:
        yield s3


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory):
    from tests.servers.other_s3 import RcloneS3

    with RcloneS3(tmp_path_factory.mktemp("rclone")) as s3:
        yield s3


@pytest.fixture(scope="session")
def platform(seaweed):
    from tests.servers.platform import FakePlatform

    with FakePlatform(seaweed) as plat:
        yield plat


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    from tests.servers.azurite import Azurite, azurite_binary

    if azurite_binary() is None:  # .ci/run installs it; CI runs every test
        pytest.skip("azurite-blob is not installed (npm install --prefix .venv/node azurite@3.35.0)")
    with Azurite(tmp_path_factory.mktemp("azurite")) as az:
        yield az


@pytest.fixture(scope="session")
def wandb_server(tmp_path_factory):
    from tests.servers.wandb_backend import WandbBackend

    with WandbBackend(tmp_path_factory.mktemp("wandb-server")) as backend:
        yield backend


# ------------------------------------------------------------------ environment


_CLOSED: list[socket.socket] = []


def closed_port() -> int:
    """A loopback port where nothing listens, for the whole test session: a socket bound to it and
    never listening keeps any other process from taking it, and connections to it are refused at once."""
    if not _CLOSED:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        _CLOSED.append(sock)
    return _CLOSED[0].getsockname()[1]


def metadata_environ() -> dict[str, str]:
    """The cloud credential chains' metadata endpoints, pointed at a closed loopback port: a client
    that finds no keys asks there (and is refused at once) instead of an address outside loopback."""
    port = closed_port()
    url, host = f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"
    return {
        "AWS_METADATA_ENDPOINT": url,  # obstore's S3 client (EC2 instance metadata, IMDSv2)
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": url + "/",  # boto3
        "AWS_EC2_METADATA_DISABLED": "true",  # boto3: never ask it at all
        "GCE_METADATA_HOST": host,  # google-auth, and obstore's GCS client
        "GCE_METADATA_IP": host,
        "GCE_METADATA_ROOT": host,
        "AZURE_MSI_ENDPOINT": url + "/metadata/identity/oauth2/token",  # obstore's Azure client (managed identity)
        "WANDB_X_STATS_COREWEAVE_METADATA_BASE_URL": url,  # wandb-core's system monitor probes CoreWeave's metadata
    }


def clean_environ(home: Path) -> dict[str, str]:
    """os.environ without anything that could point the tool at a real service or account; the
    cloud metadata endpoints point at a closed loopback port."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("WANDB_", "AWS_", "APOLO_", "NEURO_", "WABUCKET_", "GCE_METADATA_", "AZURE_", "GOOGLE_"))
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               PYTHONUNBUFFERED="1")
    env.update(metadata_environ())
    return env


@pytest.fixture(scope="session", autouse=True)
def metadata_endpoints_on_loopback():
    """The same endpoints for clients that run inside pytest's own process (boto3 in RawBucket and
    the servers' helpers, azure-storage-blob): restored when the session ends."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in metadata_environ().items():
            mp.setenv(key, value)
        yield


@dataclass
class Env:
    """Everything one test's CLI runs see: environment, working folder, bucket spec."""

    vars: dict[str, str]
    cwd: Path
    bucket: str = ""
    kind: str = ""
    online: bool = False
    extra: dict = field(default_factory=dict)

    def run(self, *args: str, check: bool = False, timeout: float = 300, env: dict | None = None, input: str | None = None):
        proc = subprocess.run(
            [sys.executable, "-m", "wabucketref", *args], env={**self.vars, **(env or {})}, cwd=self.cwd,
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL if input is None else None,
            input=input,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"wabucket {' '.join(args)} exited {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
        return proc

    def wabucket(self, *args: str, **kw):
        """The CLI with the global --bucket and --project-name of this environment."""
        return self.run("--bucket", self.bucket, "--project-name", self.vars["WANDB_PROJECT"], *args, **kw)

    def python(self, code: str, timeout: float = 300, check: bool = True):
        proc = subprocess.run([sys.executable, "-c", code], env=self.vars, cwd=self.cwd, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"python exited {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
        return proc


def outputs(stdout: str) -> dict[str, str]:
    """::set-output lines, as neuro-flow reads them."""
    return dict(re.findall(r"^::set-output name=([a-zA-Z][a-zA-Z0-9_]*)::(.*)$", stdout, re.M))


def one_error_line(proc, *needles: str) -> str:
    """The command's one `wabucket: error:` line (no traceback), holding every needle."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("wabucket: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], proc.stderr
    return errors[0]


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*")) if p.is_file()
    }


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """These files (relative path -> bytes) under root."""
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def make_tree(root: Path, seed: int = 0, big: bool = True) -> Path:
    """Nested folders, an empty file, a multipart-sized file, names with spaces and unicode."""
    import random

    rnd = random.Random(seed)
    files = {
        "a.txt": b"hello %d\n" % seed,
        "empty.bin": b"",
        "nested/deeper/deepest/data.csv": b"x,y\n" + b"".join(b"%d,%d\n" % (i, i * seed) for i in range(500)),
        "with space/file name.txt": b"spaces %d" % seed,
        "ünïcødé/данные 数据.json": ('{"seed": %d}' % seed).encode(),
        "nested/small.bin": rnd.randbytes(100_000),
    }
    if big:
        files["models/weights.bin"] = rnd.randbytes(MULTIPART_FILE_SIZE)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture(params=["offline", "online"])
def wandb_mode(request):
    return request.param


@pytest.fixture
def env(request, tmp_path, home) -> Env:
    """A W&B-offline environment with a local folder bucket (the embedded default)."""
    vars = clean_environ(home)
    vars.update(WANDB_MODE="offline", WANDB_PROJECT="proj", WANDB_SILENT="true")
    work = tmp_path / "work"
    work.mkdir()
    return Env(vars, work, bucket=str(tmp_path / "bucket"), kind="local")


def online(env: Env, wandb_server) -> Env:
    env.vars.pop("WANDB_MODE", None)
    env.vars.update(wandb_server.env())
    # W&B dedups versions by content within a project: one project per test keeps tests apart.
    env.vars["WANDB_PROJECT"] = f"proj-{uuid.uuid4().hex[:8]}"
    env.vars["WANDB_CACHE_DIR"] = str(env.cwd.parent / "wandb-cache")  # each test reads what the server has
    env.online = True
    return env


def use_backend(env: Env, kind: str, request, tmp_path: Path) -> Env:
    """Point env at a fresh bucket of the given kind."""
    env.kind = kind
    name = f"b-{uuid.uuid4().hex[:10]}"
    if kind == "local":
        env.bucket = str(tmp_path / name)
    elif kind.startswith("s3"):
        s3 = request.getfixturevalue({"s3": "seaweed", "s3-moto": "moto_s3", "s3-rclone": "rclone_s3"}[kind])
        s3.create_bucket(name)
        env.vars.update(s3.env())
        env.bucket = f"s3://{name}/some/prefix"
        env.extra.update(s3_bucket=name, s3=s3)
    elif kind in ("platform", "platform-azure"):
        plat = request.getfixturevalue("platform")
        if kind == "platform-azure":
            plat.azure = request.getfixturevalue("azurite")
        plat.add_bucket(name, provider="azure" if kind == "platform-azure" else "aws")
        env.vars.update(plat.env(config_dir=tmp_path / "apolo-config"))
        env.bucket = name
        env.extra["platform"] = plat
    return env


class RawBucket:
    """The test's bucket straight through the storage server's own client, not through the tool."""

    def __init__(self, env: Env) -> None:
        self.env = env
        plat = env.extra.get("platform")
        if env.kind == "local":
            self.root = Path(env.bucket)
        elif env.kind.startswith("s3"):
            self.bucket, self.prefix = env.extra["s3_bucket"], "some/prefix/"
            self.s3 = env.extra["s3"].client()
        elif env.kind == "platform":
            self.bucket, self.prefix = plat.backing_bucket(env.bucket), ""
            self.s3 = plat.s3.client()
        else:
            self.container = plat.azure.container(plat.backing_bucket(env.bucket))

    def read(self, key: str) -> bytes:
        if self.env.kind == "local":
            return (self.root / key).read_bytes()
        if self.env.kind == "platform-azure":
            return self.container.download_blob(key).readall()
        return self.s3.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        if self.env.kind == "local":
            (self.root / key).parent.mkdir(parents=True, exist_ok=True)
            (self.root / key).write_bytes(data)
        elif self.env.kind == "platform-azure":
            self.container.upload_blob(key, data, overwrite=True)
        else:
            self.s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def keys(self, prefix: str = "") -> list[str]:
        if self.env.kind == "local":
            return sorted(p.relative_to(self.root).as_posix() for p in (self.root / prefix).rglob("*") if p.is_file())
        if self.env.kind == "platform-azure":
            return sorted(b.name for b in self.container.list_blobs(name_starts_with=prefix))
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        return sorted(o["Key"][len(self.prefix):] for page in pages for o in page.get("Contents", []))

    def delete(self, key: str) -> None:
        if self.env.kind == "local":
            (self.root / key).unlink()
        elif self.env.kind == "platform-azure":
            self.container.delete_blob(key)
        else:
            self.s3.delete_object(Bucket=self.bucket, Key=self.prefix + key)


@pytest.fixture(params=BACKENDS)
def backend_env(request, env, tmp_path) -> Env:
    """The same test body against every bucket kind (W&B offline unless the test goes online)."""
    return use_backend(env, request.param, request, tmp_path)


@pytest.fixture(params=BACKENDS + OTHER_S3)
def any_server_env(request, env, tmp_path) -> Env:
    """backend_env, plus S3 servers other than SeaweedFS: for the scenarios every user meets."""
    return use_backend(env, request.param, request, tmp_path)


# ------------------------------------------------------------------ the W&B backend is strict


@pytest.fixture(autouse=True)
def _wandb_backend_knows_every_field_asked():
    """A test fails when a client asked any W&B backend running during it for a GraphQL field,
    operation or HTTP route the backend does not implement (the backend records each one and
    answers with errors, but a client may swallow an error)."""
    mod = sys.modules.get("tests.servers.wandb_backend")
    before = {id(b): len(b.unknown_fields) for b in mod.WandbBackend.started} if mod else {}
    yield
    mod = sys.modules.get("tests.servers.wandb_backend")
    asked = [f for b in (mod.WandbBackend.started if mod else ()) for f in b.unknown_fields[before.get(id(b), 0):]]
    if asked:
        pytest.fail("the W&B test backend was asked for what it does not implement: "
                    + ", ".join(dict.fromkeys(asked)), pytrace=False)
