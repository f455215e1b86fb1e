"""Bad input, table-driven: each case exits with its code and exactly one readable line on stderr (or a click
usage error), no traceback, nothing on stdout, nothing written to the bucket and nothing registered in W&B."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import online, use_backend
from wabucketref.retry import REQUEST_TRIES

FAST_WANDB_INIT = {"WANDB_INIT_TIMEOUT": "8"}
# Root reads any file whatever its mode: run the CLI as a root that has dropped CAP_DAC_OVERRIDE and
# CAP_DAC_READ_SEARCH from its bounding set (prctl PR_CAPBSET_DROP), so file modes apply to it again.
DROP_DAC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2):
    if libc.prctl(24, cap, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_CAPBSET_DROP, {cap}) failed: errno {ctypes.get_errno()}")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""
NO_DAC = [sys.executable, "-c", DROP_DAC]


@dataclass
class Case:
    id: str
    args: Callable[[SimpleNamespace], list[str]]
    code: int
    says: str  # in the error line (or the usage error)
    setup: Callable[[SimpleNamespace], None] | None = None
    usage: bool = False  # a click usage error instead of a "wabucket: error:" line
    global_opts: bool = True  # prepend --bucket and --project-name
    max_seconds: float = 30  # the command is stopped (and the test fails) after max_seconds + 60: a hang
    max_connections: int = 8  # to a server that accepts connections and never answers
    marks: list = field(default_factory=list)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _blackhole(c) -> int:
    """A port that accepts connections and never answers; c.silent_connections counts the connections."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    s.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(s.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    c.silent_connections = held

    def close() -> None:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        s.close()

    c.cleanup.append(close)
    return s.getsockname()[1]


def _passed_config(url: str) -> str:
    data = {"token": "t0k3n", "cluster": "default", "url": url, "org_name": "org", "project_name": "proj"}
    return base64.b64encode(json.dumps(data).encode()).decode()


def _platform(c) -> None:
    plat = c.request.getfixturevalue("platform")
    c.env.vars.update(plat.env(config_dir=c.tmp / "apolo-config"))
    c.env.bucket = "no-such-bucket-" + os.urandom(3).hex()
    c.env.kind = "platform-missing"
    c.env.extra["platform"] = plat


def _platform_at(url_of: Callable) -> Callable:
    def setup(c) -> None:
        url = url_of(c)
        c.env.vars.update(APOLO_PASSED_CONFIG=_passed_config(url), NEURO_PASSED_CONFIG=_passed_config(url),
                          APOLO_CONFIG=str(c.tmp / "apolo-cfg"), NEUROMATION_CONFIG=str(c.tmp / "apolo-cfg"))
        c.env.bucket = "plat-bucket"
        c.env.kind = "platform-unreachable"  # no platform answers there: no storage to write to
    return setup


def _s3(bucket: str | None = None, offline: bool = False, **env: Callable[[SimpleNamespace], str] | str) -> Callable:
    """An s3:// bucket on the test SeaweedFS (a fresh one unless `bucket` names one that does not exist),
    with environment overrides: a wrong secret, a closed endpoint."""
    def setup(c) -> None:
        seaweed = c.request.getfixturevalue("seaweed")
        c.env.vars.update(seaweed.env())
        name = bucket or "bad-input-" + os.urandom(3).hex()
        if bucket is None:
            seaweed.create_bucket(name)
        c.env.bucket = f"s3://{name}/p"
        c.env.kind = "s3"
        c.env.extra.update(s3_bucket=name, s3=seaweed, s3_exists=bucket is None)
        c.env.vars.update({k: v(c) if callable(v) else v for k, v in env.items()})
        if offline:
            c.env.vars["WANDB_MODE"] = "offline"
    return setup


def _azure(container_gone: bool = False, credentials_ttl: float | None = None) -> Callable:
    """A platform bucket on Azurite whose container was deleted behind the platform's back, or whose
    SAS tokens the platform hands out already expired (a negative ttl)."""
    def setup(c) -> None:
        use_backend(c.env, "platform-azure", c.request, c.tmp)
        plat = c.env.extra["platform"]
        if container_gone:
            plat.azure.service().delete_container(plat.backing_bucket(c.env.bucket))
        if credentials_ttl is not None:
            plat.credentials_ttl = credentials_ttl
            c.cleanup.append(lambda: setattr(plat, "credentials_ttl", None))
    return setup


def _closed_endpoint(c) -> str:
    return f"http://127.0.0.1:{_closed_port()}"


def _silent_endpoint(c) -> str:
    if not hasattr(c, "silent"):
        c.silent = f"http://127.0.0.1:{_blackhole(c)}"
    return c.silent


def _wandb_at(url_of: Callable) -> Callable:
    def setup(c) -> None:
        c.env.vars.update(WANDB_BASE_URL=url_of(c), **FAST_WANDB_INIT)
    return setup


def _no_credentials(c) -> None:
    c.env.vars.pop("WANDB_API_KEY")
    c.env.vars["NETRC"] = str(c.tmp / "no-netrc")


def _no_project(c) -> None:
    c.env.vars.pop("WANDB_PROJECT")


def _unreadable(c) -> None:
    secret = c.src / "nested" / "secret.bin"
    secret.write_bytes(b"top secret")
    secret.chmod(0)
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it
        c.prefix = NO_DAC


def _unreadable_dir(c) -> None:
    d = c.src / "locked"
    d.mkdir()
    (d / "inside.txt").write_text("x")
    d.chmod(0)
    if os.geteuid() == 0:
        c.prefix = NO_DAC


def _fifo_only(c) -> None:
    c.fifo_dir = c.tmp / "fifo-only"
    c.fifo_dir.mkdir()
    os.mkfifo(c.fifo_dir / "pipe")


def _a_file(c) -> None:
    c.file = c.tmp / "a-file.txt"
    c.file.write_text("not a folder")


def _odd_name(name: bytes) -> Callable:
    """A file in the source folder whose name is these bytes."""
    def setup(c) -> None:
        with open(os.path.join(os.fsencode(c.src), name), "wb") as f:
            f.write(b"x")
    return setup


UP = ["upload"]
OK = ["-n", "ds", "-t", "dataset", "-a", "al1"]


def up(*extra: str, src: Callable | None = None) -> Callable:
    return lambda c: [*UP, str(src(c) if src else c.src), *extra]


CASES = [
    # ---- the source folder
    Case("src-missing", lambda c: [*UP, str(c.tmp / "nope"), *OK], 2, "does not exist"),
    Case("src-is-a-file", lambda c: [*UP, str(c.file), *OK], 2, "is a file", setup=_a_file, usage=True),
    Case("src-empty", lambda c: [*UP, str(c.empty), *OK], 2, "has no files"),
    Case("src-only-a-fifo", lambda c: [*UP, str(c.fifo_dir), *OK], 2, "has no files", setup=_fifo_only),
    Case("src-unreadable-file", up(*OK), 2, "nested/secret.bin", setup=_unreadable),
    Case("src-unreadable-folder", up(*OK), 2, "locked", setup=_unreadable_dir),
    Case("src-name-tab", up(*OK), 2, "control character not supported: 'tab\\tname'", setup=_odd_name(b"tab\tname")),
    Case("src-name-newline", up(*OK), 2, "control character not supported: 'two\\nlines'", setup=_odd_name(b"two\nlines")),
    Case("src-name-not-utf8", up(*OK), 2, "file name not supported: 'bad\\udcff'", setup=_odd_name(b"bad\xff")),
    Case("src-names-differ-in-case", up(*OK), 2, "collide when case is ignored", setup=_odd_name(b"A.txt")),
    Case("src-name-like-local-staging", up(*OK), 2, "weights#1: a local folder bucket cannot hold", setup=_odd_name(b"weights#1")),
    # ---- names, aliases, metadata, suffix (W&B rules: names [A-Za-z0-9_.-] up to 128; aliases without / or :)
    Case("name-slash", up("-n", "a/b", "-t", "dataset", "-a", "al1"), 2, "invalid artifact name"),
    Case("name-space", up("-n", "a b", "-t", "dataset", "-a", "al1"), 2, "invalid artifact name"),
    Case("name-colon", up("-n", "a:b", "-t", "dataset", "-a", "al1"), 2, "invalid artifact name"),
    Case("name-129", up("-n", "x" * 129, "-t", "dataset", "-a", "al1"), 2, "invalid artifact name"),
    Case("name-unicode", up("-n", "dätä", "-t", "dataset", "-a", "al1"), 2, "invalid artifact name"),
    Case("name-empty", up("-n", "", "-t", "dataset", "-a", "al1"), 2, "invalid artifact name"),
    Case("name-dotdot", up("-n", "..", "-t", "dataset", "-a", "al1"), 2, "invalid artifact name"),
    Case("type-bad", up("-n", "ds", "-t", "data/set", "-a", "al1"), 2, "invalid artifact type"),
    Case("type-dot", up("-n", "ds", "-t", ".", "-a", "al1"), 2, "invalid artifact type"),
    Case("alias-hash", up("-n", "ds", "-t", "dataset", "-a", "a#b"), 2, "cannot be part of a bucket URI"),
    Case("alias-slash", up("-n", "ds", "-t", "dataset", "-a", "a/b"), 2, "invalid alias"),
    Case("alias-colon", up("-n", "ds", "-t", "dataset", "-a", "a:b"), 2, "invalid alias"),
    Case("alias-dotdot", up("-n", "ds", "-t", "dataset", "-a", ".."), 2, "invalid alias"),
    Case("alias-latest", up("-n", "ds", "-t", "dataset", "-a", "latest"), 2, "managed by W&B"),
    Case("alias-version", up("-n", "ds", "-t", "dataset", "-a", "v3"), 2, "managed by W&B"),
    Case("metadata-no-equals", up(*OK, "-m", "novalue"), 2, "KEY=VALUE"),
    Case("metadata-empty-key", up(*OK, "-m", "=value"), 2, "KEY=VALUE"),
    Case("suffix-dash", up(*OK, "-s", "a-b"), 2, "invalid suffix"),
    Case("suffix-dollar", up(*OK, "-s", "x$(id)"), 2, "invalid suffix"),
    Case("missing-name-option", up("-t", "dataset"), 2, "Missing option", usage=True),
    Case("concurrency-zero", lambda c: ["--concurrency", "0", *UP, str(c.src), *OK], 2, "concurrency", usage=True),
    # ---- buckets
    Case("bucket-unknown-platform", up(*OK), 1, "platform bucket not found", setup=_platform),
    Case("bucket-bad-scheme", lambda c: ["--bucket", "ftp://host/x", "--project-name", "p", *UP, str(c.src), *OK], 2,
         "unsupported bucket URI scheme", global_opts=False),
    Case("bucket-file-relative", lambda c: ["--bucket", "file://relbucket", "--project-name", "p", *UP, str(c.src), *OK],
         2, "needs an absolute path", global_opts=False),
    Case("bucket-s3-dotdot", lambda c: ["--bucket", "s3://b/../x", "--project-name", "p", *UP, str(c.src), *OK], 2,
         "'..' segments are not allowed", global_opts=False),
    Case("bucket-s3-dot", lambda c: ["--bucket", "s3://b/./x", "--project-name", "p", *UP, str(c.src), *OK], 2,
         "'.' and '..' segments are not allowed", global_opts=False),
    Case("bucket-s3-empty-segment", lambda c: ["--bucket", "s3://b/a//x", "--project-name", "p", *UP, str(c.src), *OK], 2,
         "segments are not allowed", global_opts=False),
    Case("bucket-blob-short", lambda c: ["--bucket", "blob:proj", "--project-name", "p", *UP, str(c.src), *OK], 2,
         "use blob://CLUSTER/[ORG/]PROJECT/BUCKET[/PREFIX]", global_opts=False),
    Case("bucket-blob-query", lambda c: ["--bucket", "blob://c/o/p/b?x=1", "--project-name", "p", *UP, str(c.src), *OK], 2,
         "use blob://CLUSTER/[ORG/]PROJECT/BUCKET[/PREFIX]", global_opts=False),
    Case("bucket-blob-dotdot", lambda c: ["--bucket", "blob://c/o/p/b/../x", "--project-name", "p", *UP, str(c.src), *OK], 2,
         "'..' segments are not allowed", global_opts=False),
    Case("bucket-empty", lambda c: ["--bucket", "", "--project-name", "p", *UP, str(c.src), *OK], 2,
         "must not be empty", global_opts=False, usage=True),
    Case("bucket-s3-without-name", lambda c: ["--bucket", "s3:///x", "--project-name", "p", *UP, str(c.src), *OK], 2,
         "needs a bucket name", global_opts=False),
    Case("platform-endpoint-closed", up(*OK), 1, "cannot reach the platform (Cannot connect to host 127.0.0.1",
         setup=_platform_at(lambda c: f"http://127.0.0.1:{_closed_port()}/api/v1"), max_seconds=20),
    Case("platform-endpoint-silent", up(*OK), 1, "imeout",
         setup=_platform_at(lambda c: f"http://127.0.0.1:{_blackhole(c)}/api/v1"), max_seconds=90,
         marks=[pytest.mark.slow]),
    # ---- s3:// buckets the server refuses: one line naming the bucket, not the client's error chain
    Case("s3-no-such-bucket", up(*OK), 1, "s3://no-such-bucket-wab: no such bucket at http://127.0.0.1:",
         setup=_s3("no-such-bucket-wab")),
    Case("s3-no-such-bucket-download-offline", lambda c: ["download", "dataset", "ds", "al1", "-d", str(c.tmp / "dl")], 1,
         "s3://no-such-bucket-wab: no such bucket", setup=_s3("no-such-bucket-wab", offline=True)),
    Case("s3-wrong-secret", up(*OK), 1, "refused the request: SignatureDoesNotMatch",
         setup=_s3(AWS_SECRET_ACCESS_KEY="not-the-secret")),
    Case("s3-unknown-key-id", lambda c: ["verify", "dataset", "ds", "al1"], 1, "refused the request: InvalidAccessKeyId",
         setup=_s3(offline=True, AWS_ACCESS_KEY_ID="nobody")),
    Case("s3-endpoint-closed", up(*OK), 1, "cannot connect to http://127.0.0.1:",
         setup=_s3(AWS_ENDPOINT_URL=_closed_endpoint, AWS_ENDPOINT_URL_S3=_closed_endpoint, AWS_S3_ENDPOINT_URL=_closed_endpoint),
         max_seconds=20),
    Case("s3-endpoint-silent", up(*OK), 1, "no answer from http://127.0.0.1:",
         setup=_s3(AWS_ENDPOINT_URL=_silent_endpoint, AWS_ENDPOINT_URL_S3=_silent_endpoint, AWS_S3_ENDPOINT_URL=_silent_endpoint,
                   WABUCKET_REQUEST_TIMEOUT="1"), max_seconds=60,
         max_connections=REQUEST_TRIES),  # each try of the one listing request, then the one-line error
    # ---- Azure platform buckets the server refuses
    Case("azure-container-gone", up(*OK), 1, "no such bucket at http://127.0.0.1:", setup=_azure(container_gone=True)),
    Case("azure-sas-expired", up(*OK), 1, "refused the request: AuthorizationFailure: Server failed to authenticate the request.",
         setup=_azure(credentials_ttl=-60)),
    # ---- download / link / verify arguments
    Case("dest-is-a-file", lambda c: ["download", "dataset", "ds", "al1", "-d", str(c.file)], 2,
         "destination is not a folder", setup=_a_file),
    Case("dest-under-a-file", lambda c: ["download", "dataset", "ds", "al1", "-d", str(c.file / "sub")], 2,
         "cannot create the destination folder", setup=_a_file),
    Case("dest-empty", lambda c: ["download", "dataset", "ds", "al1", "-d", ""], 2, "must not be empty", usage=True),
    Case("download-name-too-qualified", lambda c: ["download", "dataset", "a/b/c/ds", "al1"], 2, "at most entity/project/name"),
    Case("download-offline-unknown", lambda c: ["download", "dataset", "ds", "al1", "-d", str(c.tmp / "dl")], 1,
         "offline: no manifest for dataset/ds:al1", setup=lambda c: c.env.vars.update(WANDB_MODE="offline")),
    Case("download-disabled-version", lambda c: ["download", "dataset", "ds", "v3", "-d", str(c.tmp / "dl")], 1,
         "disabled: no manifest for dataset/ds:v3 in", setup=lambda c: c.env.vars.update(WANDB_MODE="disabled")),
    Case("download-alias-slash", lambda c: ["download", "dataset", "ds", "a/b"], 2, "invalid alias"),
    Case("download-name-bad", lambda c: ["download", "dataset", "d s", "latest"], 2, "invalid artifact name"),
    Case("download-run-args-bad-json", lambda c: ["download", "dataset", "ds", "latest", "-a", "{nope"], 2,
         "invalid run args"),
    Case("download-run-args-list", lambda c: ["download", "dataset", "ds", "latest", "-a", "[1]"], 2,
         "KEY=VALUE"),
    Case("link-name-bad", lambda c: ["link", "dataset/x/y", "-n", "a/b", "-t", "dataset"], 2, "invalid artifact name"),
    Case("link-empty-path", lambda c: ["link", "", "-n", "ds", "-t", "dataset"], 2, "no folder to link"),
    Case("link-dotdot", lambda c: ["link", "../elsewhere", "-n", "ds", "-t", "dataset"], 2, "'..' segments are not allowed"),
    Case("link-empty-segment", lambda c: ["link", "raw//x", "-n", "ds", "-t", "dataset"], 2, "segments are not allowed"),
    Case("link-missing-folder", lambda c: ["link", "no/such/folder", "-n", "ds", "-t", "dataset", "-a", "al1"], 1,
         "does not exist"),
    Case("verify-name-bad", lambda c: ["verify", "dataset", "a:b", "latest"], 2, "invalid artifact name"),
    # ---- W&B project and credentials
    # (with --bucket and no project, W&B's default project is used, as with the original tool)
    Case("project-missing", lambda c: [*UP, str(c.src), *OK], 2, "no W&B project",
         setup=_no_project, global_opts=False),
    Case("wandb-no-credentials", up(*OK), 1, "no W&B credentials", setup=_no_credentials, max_seconds=15),
    Case("wandb-no-credentials-download", lambda c: ["download", "dataset", "ds", "al1", "-d", str(c.tmp / "dl")], 1,
         "no W&B credentials", setup=_no_credentials, max_seconds=15),
    Case("wandb-unreachable", up(*OK), 1, "W&B", setup=_wandb_at(lambda c: f"http://127.0.0.1:{_closed_port()}"),
         max_seconds=40),
    Case("wandb-silent", up(*OK), 1, "W&B", setup=_wandb_at(lambda c: f"http://127.0.0.1:{_blackhole(c)}"),
         max_seconds=40),
    Case("wandb-unreachable-link", lambda c: ["link", "dataset/ds/al1", "-n", "ds", "-t", "dataset", "-a", "l1"], 1,
         "cannot reach W&B", setup=_wandb_at(lambda c: f"http://127.0.0.1:{_closed_port()}"), max_seconds=15),
    Case("wandb-unreachable-verify", lambda c: ["verify", "dataset", "ds", "al1"], 1,
         "cannot reach W&B", setup=_wandb_at(lambda c: f"http://127.0.0.1:{_closed_port()}"), max_seconds=15),
    Case("wandb-unreachable-download", lambda c: ["download", "dataset", "ds", "al1", "-d", str(c.tmp / "dl")], 1,
         "W&B", setup=_wandb_at(lambda c: f"http://127.0.0.1:{_closed_port()}"), max_seconds=40),
]


def _written(env) -> list[str]:
    """Every object in the storage the command was pointed at (the whole bucket, not only its prefix)."""
    if env.kind == "local":
        bucket = Path(env.bucket)  # a local folder: an empty folder at most
        return [str(p) for p in bucket.rglob("*") if not p.is_dir()] if bucket.is_absolute() else []
    if env.kind == "s3":
        s3 = env.extra["s3"]
        if not env.extra["s3_exists"]:  # a bucket that does not exist must not have been created
            names = [b["Name"] for b in s3.client().list_buckets().get("Buckets", [])]
            return ["<the bucket was created>"] if env.extra["s3_bucket"] in names else []
        return s3.list_keys(env.extra["s3_bucket"], "")
    if env.kind == "platform-missing":  # the unknown platform bucket was not created
        return [b.id for b in env.extra["platform"].buckets.values() if b.name == env.bucket]
    if env.kind == "platform-unreachable":
        return []
    plat = env.extra["platform"]
    if env.kind == "platform-azure":
        container = plat.azure.container(plat.backing_bucket(env.bucket))
        if not container.exists():  # deleted behind the platform's back: not created again
            return []
        return [b.name for b in container.list_blobs()]
    raise AssertionError(f"no check of the bucket for kind {env.kind!r}")


def _wandb_state(wandb_server) -> tuple[list, list]:
    """Every artifact (any state) and every run in every project of the W&B backend."""
    with wandb_server._lock:
        artifacts = [(a.seq.project.name, a.seq.name, a.state) for a in wandb_server._artifacts.values()]
    return artifacts, wandb_server.runs()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, env, wandb_server, tmp_path, request):
    env = online(env, wandb_server)
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "nested" / "b.txt").write_text("b")
    (tmp_path / "empty").mkdir()
    c = SimpleNamespace(env=env, tmp=tmp_path, src=src, empty=tmp_path / "empty", request=request, prefix=[], cleanup=[],
                        silent_connections=None)
    artifacts_before, runs_before = _wandb_state(wandb_server)
    requests_before = len(wandb_server.requests)
    try:
        if case.setup:
            case.setup(c)
        args = case.args(c)
        if case.global_opts:
            args = ["--bucket", env.bucket, "--project-name", env.vars["WANDB_PROJECT"], *args]
        try:
            proc = subprocess.run(
                [*(c.prefix or [sys.executable]), "-m", "wabucketref", *args], env=env.vars, cwd=env.cwd,
                capture_output=True, text=True, timeout=case.max_seconds + 60, stdin=subprocess.DEVNULL, check=False,
            )
        except subprocess.TimeoutExpired as e:  # a guard against a hang, not a speed limit
            raise AssertionError(f"still running after {e.timeout} s: it never gives up\n{e.stderr}") from None
        silent_connections = None if c.silent_connections is None else len(c.silent_connections)
    finally:
        for fn in c.cleanup:
            fn()
        for p in (src / "nested" / "secret.bin", src / "locked"):
            if p.exists():
                p.chmod(0o700)

    err = proc.stderr
    assert proc.returncode == case.code, f"exit {proc.returncode}, wanted {case.code}\n{err}"
    assert "Traceback" not in err and proc.stdout == "", err
    lines = [line for line in err.splitlines() if line.strip()]
    if case.usage:
        assert lines[0].startswith("Usage: wabucket"), err
        assert lines[-1].startswith("Error:") and case.says in lines[-1], err
    else:
        assert len(lines) == 1, f"wanted one line on stderr, got:\n{err}"
        assert lines[0].startswith("wabucket: error: ") and case.says in lines[0], err
    # a server that never answers is given up on after a bounded number of connections, not retried forever
    if silent_connections is not None:
        assert 1 <= silent_connections <= case.max_connections, silent_connections
    # a command that cannot authenticate to W&B fails before it asks the W&B server anything
    if case.setup is _no_credentials:
        assert wandb_server.requests[requests_before:] == []
    # nothing written to the bucket, whatever its kind
    assert _written(env) == []
    # nothing registered in W&B, in any project (with --project-name p, or with no project at all, the
    # command names another project than the environment's)
    artifacts, runs = _wandb_state(wandb_server)
    assert artifacts == artifacts_before, [a for a in artifacts if a not in artifacts_before]
    assert wandb_server.artifact_versions(env.vars.get("WANDB_PROJECT") or "uncategorized", "ds") == []
    # (a run may have started beside the transfer, as it does on every upload: it logged and used nothing)
    assert [r for r in runs if r not in runs_before and (r["outputs"] or r["inputs"])] == []
