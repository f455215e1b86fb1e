"""Faults: the storage server killed mid-transfer, injected 5xx/SlowDown/resets, W&B failing after the
bytes are in, temporary credentials expiring, Ctrl-C; and integrity (tampering, `verify`)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from tests.conftest import MULTIPART_FILE_SIZE, Env, RawBucket, make_tree, online, tree_hashes, use_backend
from tests.servers.faultproxy import CredentialGate, FaultProxy, Reject, issuing_platform
from wabucketref.ranges import RANGE_SIZE

PART = ".wabucket-part"
FAST_WANDB = {"WANDB_X_GRAPHQL_RETRY_MAX": "2", "WANDB_X_GRAPHQL_RETRY_WAIT_MAX_SECONDS": "1"}
OK = (200, 206)  # whole objects and ranges (small files are fetched as one range)


# ------------------------------------------------------------------ helpers


def make_files(root: Path, n: int, size: int, seed: int = 0) -> Path:
    rnd = random.Random(seed)
    for i in range(n):
        p = root / f"d{i % 4}" / f"f{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rnd.randbytes(size))
    return root


def via(env: Env, proxy: FaultProxy) -> Env:
    """Send this env's s3:// traffic through the proxy."""
    env.vars.update(AWS_ENDPOINT_URL=proxy.url, AWS_ENDPOINT_URL_S3=proxy.url, AWS_S3_ENDPOINT_URL=proxy.url)
    return env


def direct(env: Env, seaweed) -> Env:
    """Back to talking to the S3 server itself."""
    env.vars.update(seaweed.env())
    return env


# A command started from a background job (`cmd &` in a script) inherits SIGINT ignored, and Python keeps that
# disposition: Ctrl-C sent to it would be ignored, rightly. A command started here gets SIGINT at its default,
# as one started from a terminal has, whatever the test run itself was started from.
DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def ignored_signals(pid: int) -> set[int]:
    """The signals a process ignores (SigIgn in /proc/PID/status)."""
    mask = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE).group(1), 16)
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


def spawn(env: Env, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DEFAULT_SIGINT, "-m", "wabucketref", "--bucket", env.bucket,
         "--project-name", env.vars["WANDB_PROJECT"], *args],
        env=env.vars, cwd=env.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_until(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            _out, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def summary(stderr: str, verb: str) -> tuple[int, int]:
    """(files moved, files that were already there) from the closing summary line."""
    m = re.search(rf"^wabucket: {verb} (\d+) files? \(.*?\) in [\d.]+ s, [\d.]+ MB/s(?:; (\d+) files? \(.*?\) (?:was|were) already there)?$",
                  stderr, re.MULTILINE)
    assert m, f"no '{verb}' summary line in:\n{stderr}"
    return int(m.group(1)), int(m.group(2) or 0)


def assert_one_clear_line(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("wabucket: error:")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], stderr
    return errors[0]


def no_part_files(root: Path) -> None:
    assert not [p for p in Path(root).rglob("*") if p.name.endswith(PART)], list(Path(root).rglob("*"))


def final_files_are_whole(dest: Path, src: Path) -> int:
    """Every file under its final name in dest equals the source's; returns how many there are."""
    want = tree_hashes(src)
    have = tree_hashes(dest) if dest.exists() else {}
    for path, digest in have.items():
        assert path in want and want[path] == digest, f"half-written or foreign file under a final name: {path}"
    return len(have)


def s3_keys(env: Env, seaweed, sub: str = "") -> dict[str, bytes]:
    """Objects of an s3 env's bucket under some/prefix/<sub>, read straight from the server."""
    client = seaweed.client()
    prefix = "some/prefix/" + sub
    keys = seaweed.list_keys(env.extra["s3_bucket"], prefix)
    return {k[len(prefix):]: client.get_object(Bucket=env.extra["s3_bucket"], Key=k)["Body"].read() for k in keys}


@pytest.fixture
def s3_env(env, request, tmp_path) -> Env:
    return use_backend(env, "s3", request, tmp_path)


@pytest.fixture
def restart_guard(seaweed):
    """Whatever a test does to the shared S3 server, it is running again afterwards."""
    yield seaweed
    if not seaweed.running:
        seaweed.restart()


# ------------------------------------------------------------------ injected 5xx, SlowDown and resets


@pytest.mark.parametrize("seed", [11, 12])
def test_injected_errors_and_resets(s3_env, seaweed, tmp_path, seed):
    """A fifth of S3 requests fail with 500/503/SlowDown and a tenth get reset: every transfer still completes."""
    env = s3_env
    src = make_files(make_tree(tmp_path / "src", seed=seed), 40, 20_000, seed=seed)
    with FaultProxy(seaweed.endpoint_url, seed=seed, error_rate=0.2, reset_rate=0.1) as proxy:
        via(env, proxy)
        up = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "a1", check=True)
        assert summary(up.stderr, "uploaded")[0] == len(tree_hashes(src))
        dl = env.wabucket("download", "dataset", "ds", "a1", "-d", str(tmp_path / "dl"), check=True)
        env.wabucket("verify", "dataset", "ds", "a1", check=True)
        env.wabucket("link", "dataset/ds/a1", "-n", "linked", "-t", "dataset", "-a", "l1", check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    no_part_files(tmp_path / "dl")
    assert "Traceback" not in up.stderr + dl.stderr
    # the run really was hostile: every kind of fault was injected, on reads and on writes
    assert proxy.fault_kinds() == {"500", "503", "slowdown", "reset", "reset_mid"}, proxy.faults
    assert {m for _, m, _ in proxy.faults} >= {"GET", "PUT"}
    assert len(proxy.faults) >= 15
    # and the bucket holds exactly the files, byte for byte
    stored = s3_keys(env, seaweed, "dataset/ds/a1/")
    assert {k: hashlib.sha256(v).hexdigest() for k, v in stored.items()} == tree_hashes(src)


def test_a_reset_range_of_a_large_file_is_retried_alone(s3_env, seaweed, tmp_path):
    """A connection reset in the middle of one ranged GET repeats that range, not the whole file."""
    env = s3_env
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(4 * RANGE_SIZE + 1000))  # 5 ranges
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "r1", check=True)
    big_get = lambda req: req.method == "GET" and "big.bin" in req.target
    with FaultProxy(seaweed.endpoint_url, reset_rate=1.0, reset_kinds=("reset_mid",), max_faults=1, only=big_get) as proxy:
        via(env, proxy)
        env.wabucket("download", "dataset", "ds", "r1", "-d", str(tmp_path / "dl"), check=True)
    assert [kind for kind, _, _ in proxy.faults] == ["reset_mid"]
    gets = [target for method, target, _ in proxy.log if method == "GET" and "big.bin" in target]
    assert len(gets) == 5 + 1, gets  # obstore resumes the broken response; then our own retries do
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    no_part_files(tmp_path / "dl")


def test_injected_faults_platform_bucket(env, seaweed, tmp_path):
    """The same hostility on a platform bucket: its temporary credentials lead to the proxy."""
    gate = CredentialGate(seaweed.access_key_id, seaweed.secret_access_key, ttl=600)
    with FaultProxy(seaweed.endpoint_url, seed=5, error_rate=0.2, reset_rate=0.1, gate=gate) as proxy:
        plat = issuing_platform(seaweed, gate, proxy).start()
        try:
            env.bucket = "b-flt" + os.urandom(4).hex()
            plat.add_bucket(env.bucket)
            env.vars.update(plat.env(config_dir=tmp_path / "apolo-config"))
            src = make_files(make_tree(tmp_path / "src", seed=5), 30, 20_000, seed=5)
            env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "p1", check=True)
            env.wabucket("download", "dataset", "ds", "p1", "-d", str(tmp_path / "dl"), check=True)
            env.wabucket("verify", "dataset", "ds", "p1", check=True)
        finally:
            plat.stop()
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    assert proxy.fault_kinds() >= {"500", "503", "slowdown", "reset"} and len(proxy.faults) >= 10, proxy.faults
    assert sum(gate.accepted.values()) > 60


# ------------------------------------------------------------------ the storage server killed mid-transfer


N_FILES, FILE_SIZE = 40, 100_000


def _kill_when(proc, proxy, method: str, n: int, seaweed) -> int:
    wait_until(lambda: proxy.count(method, OK) >= n, 60, f"{n} {method}s", proc)
    seaweed.kill()
    return proxy.count(method, OK)


def _ride_out_short_outage(proc, seaweed, verb: str) -> None:
    """The server comes back after 2 s: the command finishes with every file moved."""
    time.sleep(2)
    seaweed.restart()
    _out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert summary(err, verb)[0] == N_FILES


def _fail_on_long_outage(proc) -> str:
    """The server stays down: exit 1 with one clear line. Returns stdout."""
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    assert_one_clear_line(err, "failed after")
    return out


@pytest.mark.parametrize("outage", ["short", "long"])
def test_storage_killed_mid_upload(s3_env, wandb_server, restart_guard, tmp_path, outage):
    """Kill -9 the S3 server mid-upload. Short outage: retries carry the upload through. Long outage: exit 1 with one
    clear line and nothing registered; the rerun uploads only what is missing and registers the artifact."""
    seaweed = restart_guard
    env = online(s3_env, wandb_server)
    env.vars.update(FAST_WANDB)
    src = make_files(tmp_path / "src", N_FILES, FILE_SIZE)
    with FaultProxy(seaweed.endpoint_url, bandwidth=1_000_000) as proxy:
        via(env, proxy)
        proc = spawn(env, "--concurrency", "2", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "k1")
        _kill_when(proc, proxy, "PUT", 8, seaweed)
        if outage == "short":
            _ride_out_short_outage(proc, seaweed, "uploaded")
        else:
            assert _fail_on_long_outage(proc) == ""  # no ::set-output for an artifact that does not exist
            seaweed.restart()
            # nothing registered: no version, no manifest beside the data; the marker says "unfinished"
            assert wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds") == []
            meta = s3_keys(env, seaweed, "dataset/ds/.wabucketref/")
            assert set(meta) == {"k1.partial"}
            rerun = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "k1", check=True)
            moved, there = summary(rerun.stderr, "uploaded")
            assert there >= 6 and moved + there == N_FILES, rerun.stderr
            assert moved >= 1
    direct(env, seaweed)
    versions = wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds")
    assert len(versions) == 1 and "k1" in versions[0]["aliases"]
    assert set(s3_keys(env, seaweed, "dataset/ds/.wabucketref/")) == {"k1.jsonl"}
    env.wabucket("download", "dataset", "ds", "k1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


@pytest.mark.parametrize("outage", ["short", "long"])
def test_storage_killed_mid_download(s3_env, restart_guard, tmp_path, outage):
    seaweed = restart_guard
    env = s3_env
    src = make_files(tmp_path / "src", N_FILES, FILE_SIZE)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "k1", check=True)
    dest = tmp_path / "dl"
    with FaultProxy(seaweed.endpoint_url, bandwidth=1_000_000) as proxy:
        via(env, proxy)
        proc = spawn(env, "--concurrency", "2", "download", "dataset", "ds", "k1", "-d", str(dest))
        _kill_when(proc, proxy, "GET", 10, seaweed)
        if outage == "short":
            _ride_out_short_outage(proc, seaweed, "downloaded")
        else:
            _fail_on_long_outage(proc)
            no_part_files(dest)
            done = final_files_are_whole(dest, src)
            assert 0 < done < N_FILES
            seaweed.restart()
            rerun = env.wabucket("download", "dataset", "ds", "k1", "-d", str(dest), check=True)
            moved, there = summary(rerun.stderr, "downloaded")
            assert there == done and moved == N_FILES - done, rerun.stderr
    assert tree_hashes(dest) == tree_hashes(src)
    no_part_files(dest)


# ------------------------------------------------------------------ W&B fails after the bytes are in


def _upload_while_wandb_fails(env, wandb_server, src: Path, alias: str, op: str, times: int, status: int):
    """(the upload's process, how often it asked W&B for `op`, failures left unasked) while W&B answers `status`
    to `op`, `times` times. The process is stopped after 120 s, a hang."""
    wandb_server.fail_operation(op, times=times, status=status)
    asked = wandb_server.operations().count(op)
    try:
        proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", alias, timeout=120)
        with wandb_server._lock:
            left = len(wandb_server._faults.get(op, []))
        return proc, wandb_server.operations().count(op) - asked, left
    finally:
        wandb_server.clear_faults()


@pytest.mark.parametrize("kind,op,status,times", [
    ("local", "CommitArtifact", 400, 1), ("s3", "CommitArtifact", 400, 1), ("platform", "CommitArtifact", 400, 1),
    ("platform-azure", "CommitArtifact", 400, 1),  # Azure ETags say nothing of content: the rerun hashes the objects
    ("local", "CreateArtifact", 500, 20),
])
def test_wandb_fails_after_upload(env, request, wandb_server, tmp_path, kind, op, status, times):
    """W&B fails while the artifact is logged, after the bytes are in (a 400 the SDK does not retry, or 500s until
    it gives up): one clear line, nothing registered; the rerun registers it without uploading the bytes again."""
    env = online(use_backend(env, kind, request, tmp_path), wandb_server)
    env.vars.update(FAST_WANDB)
    src = make_tree(tmp_path / "src", big=False)
    first, asked, _ = _upload_while_wandb_fails(env, wandb_server, src, "w1", op, times, status)
    assert first.returncode == 1, first.stderr
    assert_one_clear_line(first.stderr, "W&B")
    assert first.stdout == ""
    # a 400 is asked once; 500s as often as the SDK's bounded retries allow (FAST_WANDB: 2 retries)
    assert asked == (1 if status == 400 else 1 + int(FAST_WANDB["WANDB_X_GRAPHQL_RETRY_MAX"])), asked
    assert summary(first.stderr, "uploaded") == (len(tree_hashes(src)), 0)  # the bytes were in
    assert wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds") == []

    rerun = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "w1", check=True)
    assert summary(rerun.stderr, "uploaded") == (0, len(tree_hashes(src)))  # nothing uploaded again
    versions = wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds")
    assert len(versions) == 1 and "w1" in versions[0]["aliases"] and versions[0]["state"] == "COMMITTED"
    env.wabucket("download", "dataset", "ds", "w1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


def test_a_wandb_that_keeps_failing_is_waited_for_a_bounded_time(env, wandb_server, tmp_path):
    """W&B answers 500 to every commit: wandb retries for many minutes by default. The command
    gives up after WABUCKET_WANDB_TIMEOUT with one line (finishing the run is bounded too), and a
    rerun once W&B is back registers the artifact without moving the bytes again."""
    env = online(env, wandb_server)
    env.vars["WABUCKET_WANDB_TIMEOUT"] = "6"
    src = make_tree(tmp_path / "src", big=False)
    first, asked, _ = _upload_while_wandb_fails(env, wandb_server, src, "k1", "CommitArtifact", 10_000, 500)
    assert first.returncode == 1, first.stderr
    assert asked >= 1, asked  # the commit W&B kept failing is what the command gave up on
    assert "W&B did not register artifact ds:k1: no answer in 6 s" in first.stderr, first.stderr
    assert "Traceback" not in first.stderr, first.stderr  # nor from wandb giving up in the finishing thread
    rerun = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "k1", check=True)
    assert summary(rerun.stderr, "uploaded") == (0, len(tree_hashes(src)))
    env.wabucket("download", "dataset", "ds", "k1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


# ------------------------------------------------------------------ temporary credentials that expire


@pytest.fixture
def expiring_platform(env, seaweed, tmp_path):
    """A platform bucket whose temporary S3 credentials live 2 s and are enforced by the proxy in front of S3."""
    gate = CredentialGate(seaweed.access_key_id, seaweed.secret_access_key, ttl=2.0)
    with FaultProxy(seaweed.endpoint_url, gate=gate, bandwidth=2_000_000) as proxy:
        plat = issuing_platform(seaweed, gate, proxy).start()
        try:
            name = "b-exp" + os.urandom(4).hex()
            plat.add_bucket(name)
            env.vars.update(plat.env(config_dir=tmp_path / "apolo-config"))
            env.bucket, env.kind = name, "platform"
            env.extra.update(platform=plat, gate=gate, proxy=proxy)
            yield env
        finally:
            plat.stop()


def test_gate_enforces_expiry(expiring_platform, seaweed):
    """The harness itself: a request signed with an expired temporary credential is refused."""
    import boto3
    from botocore.config import Config

    gate, proxy = expiring_platform.extra["gate"], expiring_platform.extra["proxy"]
    cred = gate.issue()
    bucket = expiring_platform.extra["platform"].backing_bucket(expiring_platform.bucket)
    client = boto3.client(
        "s3", endpoint_url=proxy.url, aws_access_key_id=cred.access_key_id, aws_secret_access_key=cred.secret_access_key,
        aws_session_token=cred.session_token, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    client.put_object(Bucket=bucket, Key="probe", Body=b"x")  # valid: re-signed and accepted by the server
    cred.expires = time.time() - 1
    with pytest.raises(Exception, match="ExpiredToken"):
        client.put_object(Bucket=bucket, Key="probe", Body=b"y")


def test_credentials_expire_during_transfer(expiring_platform, tmp_path):
    env = expiring_platform
    gate, plat = env.extra["gate"], env.extra["platform"]
    src = make_files(tmp_path / "src", 24, 250_000)  # ~3 s each way through the throttled proxy, ttl 2 s
    env.wabucket("--concurrency", "4", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "c1", check=True)
    env.wabucket("--concurrency", "4", "download", "dataset", "ds", "c1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    # the transfers outlived credentials: several that signed requests have expired by now
    expired_after_use = [k for k, n in gate.accepted.items() if n and gate.issued[k].expires <= time.time()]
    assert len(expired_after_use) >= 2, gate.accepted
    refreshed = plat.calls_matching("make_tmp_credentials", "POST")
    assert len(refreshed) > 2
    # requests were signed with several credentials, none of them used after it expired
    assert len([k for k, n in gate.accepted.items() if n]) > 2
    assert not [r for r in gate.rejected if r[0] == "ExpiredToken"], gate.rejected
    assert not gate.rejected, gate.rejected


def test_s3_error_code_is_shown(s3_env, seaweed, tmp_path):
    """A refused request names the S3 error code and message, not the first line of an XML body."""
    env = s3_env
    gate = CredentialGate(seaweed.access_key_id, seaweed.secret_access_key, ttl=0)  # born expired
    cred = gate.issue()
    src = make_tree(tmp_path / "src", big=False)
    with FaultProxy(seaweed.endpoint_url, gate=gate) as proxy:
        via(env, proxy)
        env.vars.update(AWS_ACCESS_KEY_ID=cred.access_key_id, AWS_SECRET_ACCESS_KEY=cred.secret_access_key,
                        AWS_SESSION_TOKEN=cred.session_token)
        proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "e1")
    assert proc.returncode == 1
    assert_one_clear_line(proc.stderr, "ExpiredToken", "The provided token has expired")
    assert "<?xml" not in proc.stderr


def test_refused_writes_are_not_retried(s3_env, seaweed, tmp_path):
    """An S3 refusal that another try cannot fix (AccessDenied on every PUT, as with a read-only key) fails the
    upload at once, in one line naming the bucket, instead of being retried file after file."""
    env = s3_env
    puts = []

    def read_only(req):  # the upload's own marker may be written: the data files are refused
        if req.method == "PUT" and "/.wabucketref/" not in req.target:
            puts.append(req.target)
            raise Reject(403, "AccessDenied", "Access Denied")

    src = make_tree(tmp_path / "src", big=False)
    with FaultProxy(seaweed.endpoint_url, gate=read_only) as proxy:
        via(env, proxy)
        proc = env.wabucket("--concurrency", "1", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "ro1")
    assert proc.returncode == 1
    assert_one_clear_line(proc.stderr, f"s3://{env.extra['s3_bucket']}: http://127.0.0.1:", "refused the request: AccessDenied")
    assert len(puts) == 1, puts  # one file tried once, then the command stopped


def test_full_disk_fails_cleanly(env, tmp_path):
    """A destination disk that fills up mid-download: one clear line at once (no retries), and nothing under a
    final name that is not whole. pwrite may write part of a range before the disk is full; that part
    must not be taken for the whole."""
    src = make_tree(tmp_path / "src")  # small files, and one multipart-sized file fetched in ranges
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "f1", check=True)
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=False).returncode:
        pytest.skip("needs root and mount(8) for a 2 MiB tmpfs to fill up")
    try:
        proc = env.wabucket("download", "dataset", "ds", "f1", "-d", str(disk / "dl"))
        assert proc.returncode == 1
        assert_one_clear_line(proc.stderr, "models/weights.bin", "No space left on device")
        assert "retrying" not in proc.stderr
        assert final_files_are_whole(disk / "dl", src) >= 1  # the small files that fitted are there, whole
        assert not (disk / "dl" / "models" / "weights.bin").exists()
        no_part_files(disk / "dl")
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ------------------------------------------------------------------ Ctrl-C


# Ctrl-C, and SIGTERM (docker stop, a cancelled job): the same cleanup, and the exit status a shell reports
STOPS = {"sigint": (signal.SIGINT, 130, "wabucket: interrupted"), "sigterm": (signal.SIGTERM, 143, "wabucket: terminated")}
STOPPED_WITHIN = 3  # requests that may still complete after the signal: those in flight, at most --concurrency 3


def _interrupt(proc: subprocess.Popen, sig: int, done: Callable[[], int]) -> tuple[int, str, str]:
    """Send `sig` to the command; (requests that `done` counts completed after it, stdout, stderr)."""
    assert sig not in ignored_signals(proc.pid), "the command ignores the signal the test sends"
    before = done()
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # a guard against a hang
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running 30 s after signal {sig}\n{err}")
    return done() - before, out, err


@pytest.mark.parametrize("stop", sorted(STOPS))
def test_ctrl_c_during_upload(s3_env, seaweed, tmp_path, stop):
    sig, status, said = STOPS[stop]
    env = s3_env
    src = make_files(tmp_path / "src", N_FILES, FILE_SIZE)
    (src / "big.bin").write_bytes(os.urandom(MULTIPART_FILE_SIZE))
    with FaultProxy(seaweed.endpoint_url, bandwidth=1_000_000) as proxy:
        via(env, proxy)
        proc = spawn(env, "--concurrency", "3", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "i1")
        wait_until(lambda: proxy.count("PUT", OK) >= 8, 60, "8 PUTs", proc)
        after, out, err = _interrupt(proc, sig, lambda: proxy.count("PUT", OK))
    direct(env, seaweed)
    assert after <= STOPPED_WITHIN, (after, err)  # it stopped starting requests: at most those in flight ended
    assert proc.returncode == status and said in err, err
    assert "Traceback" not in err and out == "" and "wabucket: uploaded" not in err
    # no object under a final name is anything but a whole source file
    stored = s3_keys(env, seaweed, "dataset/ds/i1/")
    want = {p: (src / p).read_bytes() for p in tree_hashes(src)}
    assert 0 < len(stored) < len(want)
    for key, data in stored.items():
        assert want.get(key) == data, f"partial object under a final name: {key}"
    assert set(s3_keys(env, seaweed, "dataset/ds/.wabucketref/")) == {"i1.partial"}
    rerun = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "i1", check=True)
    moved, there = summary(rerun.stderr, "uploaded")
    assert there == len(stored) and moved == len(want) - len(stored)
    env.wabucket("download", "dataset", "ds", "i1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


def _uploaded_with_a_big_file(env: Env, tmp_path: Path, alias: str) -> Path:
    src = make_files(tmp_path / "src", N_FILES, FILE_SIZE)
    (src / "big.bin").write_bytes(os.urandom(MULTIPART_FILE_SIZE))
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", alias, check=True)
    return src


@pytest.mark.parametrize("stop", sorted(STOPS))
def test_ctrl_c_during_download(s3_env, seaweed, tmp_path, stop):
    sig, status, said = STOPS[stop]
    env = s3_env
    src = _uploaded_with_a_big_file(env, tmp_path, "i1")
    dest = tmp_path / "dl"
    with FaultProxy(seaweed.endpoint_url, bandwidth=1_000_000) as proxy:
        via(env, proxy)
        proc = spawn(env, "--concurrency", "3", "download", "dataset", "ds", "i1", "-d", str(dest))
        wait_until(lambda: proxy.count("GET", OK) >= 10, 60, "10 GETs", proc)
        after, out, err = _interrupt(proc, sig, lambda: proxy.count("GET", OK))
    direct(env, seaweed)
    assert after <= STOPPED_WITHIN, (after, err)
    assert proc.returncode == status and said in err, err
    assert "Traceback" not in err and out == "" and "wabucket: downloaded" not in err
    no_part_files(dest)
    done = final_files_are_whole(dest, src)
    assert 0 < done < N_FILES + 1
    rerun = env.wabucket("download", "dataset", "ds", "i1", "-d", str(dest), check=True)
    moved, there = summary(rerun.stderr, "downloaded")
    assert there == done and moved == N_FILES + 1 - done
    assert tree_hashes(dest) == tree_hashes(src)


def test_two_downloads_into_one_folder_take_turns(s3_env, seaweed, tmp_path):
    """Each download removes the part files it finds as a killed run's leftovers: two at once in one
    folder would delete each other's. The second waits for the first, then finds everything there."""
    env = s3_env
    src = _uploaded_with_a_big_file(env, tmp_path, "c1")
    dest = tmp_path / "dl"
    with FaultProxy(seaweed.endpoint_url, bandwidth=2_000_000) as proxy:
        via(env, proxy)
        first = spawn(env, "download", "dataset", "ds", "c1", "-d", str(dest))
        wait_until(lambda: proxy.count("GET", OK) >= 3, 60, "3 GETs", first)
        second = spawn(env, "download", "dataset", "ds", "c1", "-d", str(dest))
        outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outs
    assert "waiting for another download into" in outs[1][1], outs[1][1]
    assert summary(outs[1][1], "downloaded") == (0, N_FILES + 1)
    assert tree_hashes(dest) == tree_hashes(src)
    no_part_files(dest)


def test_killed_download_resumes_without_leftovers(s3_env, seaweed, tmp_path):
    """SIGKILL (the OOM killer, a preempted job) cleans nothing up: the rerun removes the dead run's part
    files, keeps the finished files and brings the rest."""
    env = s3_env
    src = _uploaded_with_a_big_file(env, tmp_path, "k1")
    dest = tmp_path / "dl"
    mine = dest / ".notes.txt.0123abcd.wabucket-part"  # looks like a part file, but of no file in the artifact
    dest.mkdir()
    mine.write_text("mine")
    with FaultProxy(seaweed.endpoint_url, bandwidth=1_000_000) as proxy:
        via(env, proxy)
        proc = spawn(env, "--concurrency", "3", "download", "dataset", "ds", "k1", "-d", str(dest))
        wait_until(lambda: any(p.name.startswith(".big.bin.") for p in dest.iterdir()), 60, "big.bin's part file", proc)
        proc.kill()
        proc.communicate()
    direct(env, seaweed)
    assert [p for p in dest.rglob("*") if p.name.endswith(PART) and p != mine]  # what a killed run leaves
    env.wabucket("download", "dataset", "ds", "k1", "-d", str(dest), check=True)
    assert mine.read_text() == "mine"
    mine.unlink()
    no_part_files(dest)
    assert tree_hashes(dest) == tree_hashes(src)


# ------------------------------------------------------------------ integrity: tampering and `verify`


@pytest.mark.parametrize("change", ["byte", "removed", "added"])
def test_tampered_bucket_fails_download_and_verify(backend_env, tmp_path, change):
    env = backend_env
    src = make_tree(tmp_path / "src", big=False)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "t1", check=True)
    ok = env.wabucket("verify", "dataset", "ds", "t1", check=True)
    assert re.search(r"ok: 6 files, \d+ bytes match the manifest", ok.stderr)
    raw = RawBucket(env)
    write, delete = raw.write, raw.delete
    victim = "nested/small.bin"
    if change == "byte":
        data = bytearray((src / victim).read_bytes())
        data[1234] ^= 1
        write(f"dataset/ds/t1/{victim}", bytes(data))
    elif change == "removed":
        delete(f"dataset/ds/t1/{victim}")
    else:
        victim = "nested/intruder.txt"
        write(f"dataset/ds/t1/{victim}", b"not in the manifest")
    before = sorted(p.name for p in env.cwd.iterdir())
    v = env.wabucket("verify", "dataset", "ds", "t1")
    assert v.returncode == 1
    assert_one_clear_line(v.stderr, victim)
    assert sorted(p.name for p in env.cwd.iterdir()) == before  # verify writes nothing

    dest = tmp_path / "dl"
    d = env.wabucket("download", "dataset", "ds", "t1", "-d", str(dest))
    assert d.returncode == 1 and d.stdout == ""
    assert_one_clear_line(d.stderr, victim)
    assert not (dest / victim).exists()
    if dest.exists():
        no_part_files(dest)
        final_files_are_whole(dest, src)


def test_the_record_holds_each_files_blake3_which_downloads_check(backend_env, tmp_path):
    """An upload stores each file's blake3 beside its sha256 (downloads hash with it: less CPU);
    the tampering tests around this one show a changed byte is still caught."""
    env = backend_env
    src = make_tree(tmp_path / "src")
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "b3", check=True)
    lines = RawBucket(env).read("dataset/ds/.wabucketref/b3.jsonl").splitlines()[1:]
    stored = {e["path"]: e for e in map(json.loads, lines)}
    assert stored.keys() == tree_hashes(src).keys()
    for path, e in stored.items():
        data = (src / path).read_bytes()
        assert (e["sha256"], e["blake3"]) == (hashlib.sha256(data).hexdigest(), blake3.blake3(data).hexdigest())


@pytest.mark.parametrize("offset", [100, MULTIPART_FILE_SIZE - 100], ids=["first-range", "last-range"])
def test_tampered_large_file_fails_download_and_verify(backend_env, tmp_path, offset):
    """A large file lands in parallel ranges, hashed as they stream or read back: a changed byte in
    either is caught, and nothing lands under the file's name."""
    env = backend_env
    src = make_tree(tmp_path / "src")
    victim = "models/weights.bin"
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "t2", check=True)
    data = bytearray((src / victim).read_bytes())
    data[offset] ^= 1
    RawBucket(env).write(f"dataset/ds/t2/{victim}", bytes(data))
    v = env.wabucket("verify", "dataset", "ds", "t2")  # large objects are hashed in a thread as they stream
    assert v.returncode == 1
    assert_one_clear_line(v.stderr, victim)
    dest = tmp_path / "dl"
    d = env.wabucket("download", "dataset", "ds", "t2", "-d", str(dest))
    assert d.returncode == 1 and d.stdout == ""
    assert_one_clear_line(d.stderr, victim, "sha256 differs")
    assert not (dest / victim).exists()
    no_part_files(dest)


def test_verify_local_folder(env, tmp_path):
    src = make_tree(tmp_path / "src", big=False)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "ok1", check=True)
    dest = tmp_path / "dl"
    env.wabucket("download", "dataset", "ds", "ok1", "-d", str(dest), check=True)
    ok = env.wabucket("verify", "dataset", "ds", "ok1", "--local", str(dest), check=True)
    assert "6 files" in ok.stderr and ok.stdout == ""

    (dest / "a.txt").write_bytes(b"hellO 0\n")  # same size, one byte differs
    bad = env.wabucket("verify", "dataset", "ds", "ok1", "--local", str(dest))
    assert bad.returncode == 1
    assert_one_clear_line(bad.stderr, "a.txt", "does not match")
    (dest / "a.txt").write_bytes((src / "a.txt").read_bytes())

    (dest / "nested" / "small.bin").unlink()
    gone = env.wabucket("verify", "dataset", "ds", "ok1", "--local", str(dest))
    assert gone.returncode == 1
    assert_one_clear_line(gone.stderr, "nested/small.bin", "missing")
    (dest / "nested" / "small.bin").write_bytes((src / "nested" / "small.bin").read_bytes())

    (dest / "extra.txt").write_text("x")
    extra = env.wabucket("verify", "dataset", "ds", "ok1", "--local", str(dest))
    assert extra.returncode == 1
    assert_one_clear_line(extra.stderr, "extra.txt")
    (dest / "extra.txt").unlink()

    # the bucket's copy is still fine, and verify reports it without touching dest
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    env.wabucket("verify", "dataset", "ds", "ok1", check=True)
    env.wabucket("verify", "dataset", "ds", "ok1", "--local", str(dest), check=True)
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == mtimes

    missing = env.wabucket("verify", "dataset", "ds", "ok1", "--local", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a folder" in missing.stderr and "Traceback" not in missing.stderr


# ------------------------------------------------------------------ process exit


@pytest.mark.slow
@pytest.mark.parametrize("via", ["cli", "sdk"])
def test_processes_that_end_right_after_a_transfer_exit_cleanly(env, request, tmp_path, via):
    """A process that ends right after obstore's last result: Python's teardown used to race obstore's
    tokio thread that hands that result back, and the process aborted (SIGABRT) after a successful
    upload, in about 7% of runs. With W&B disabled nothing else delays the exit, so the race is at
    its widest; 50 runs found it with ~97% odds before the fix."""
    env = use_backend(env, "platform", request, tmp_path)
    env.vars["WANDB_MODE"] = "disabled"
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):  # multipart-sized: the streaming upload is where the race showed
        (src / f"f{i}.bin").write_bytes(os.urandom(20_000_000))
    raw = RawBucket(env)
    for n in range(50):
        if via == "cli":
            proc = env.wabucket("upload", str(src), "-n", "quick", "-t", "dataset", "-a", f"q{n}")
        else:  # a script whose last act is the upload
            proc = env.python(
                "from wabucketref import WaBucketRefAPI\n"
                f"WaBucketRefAPI(bucket={env.bucket!r}, project_name='p').upload_artifact({str(src)!r}, 'quick', 'dataset', 'q{n}')\n",
                check=False,
            )
        assert proc.returncode == 0, f"run {n} exited {proc.returncode}\n{proc.stderr}"
        for key in raw.keys(f"dataset/quick/q{n}/"):  # keep the server's disk small
            raw.delete(key)


# ------------------------------------------------------------------ two uploads to one alias


def test_a_second_upload_to_an_alias_being_uploaded_is_refused(s3_env, seaweed, tmp_path):
    """Two uploads to one alias at once (a batch flow run twice, !run-config-hash): the second is
    refused while the first runs, and the first completes with exactly its own files."""
    env = s3_env
    src = make_files(tmp_path / "src", N_FILES, FILE_SIZE)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("another folder")
    with FaultProxy(seaweed.endpoint_url, bandwidth=1_000_000) as proxy:
        via(env, proxy)
        first = spawn(env, "--concurrency", "2", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "same")
        wait_until(lambda: proxy.count("PUT", OK) >= 4, 60, "4 PUTs", first)
        direct(env, seaweed)
        second = env.wabucket("upload", str(other), "-n", "ds", "-t", "dataset", "-a", "same", "--overwrite")
        _out, err = first.communicate(timeout=120)
    assert second.returncode == 1 and "is running (host" in second.stderr, second.stderr
    assert first.returncode == 0, err
    env.wabucket("download", "dataset", "ds", "same", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


def _gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("holder, refused", [
    (lambda: {"host": "elsewhere", "pid": 1, "beat": time.time()}, True),
    (lambda: {"host": "elsewhere", "pid": 1, "beat": time.time() - 120}, False),  # stopped without a word
    (lambda: {"host": socket.gethostname(), "pid": os.getpid(), "beat": time.time()}, True),  # a live process here
    (lambda: {"host": socket.gethostname(), "pid": _gone_pid(), "beat": time.time()}, False),  # killed here
    (lambda: None, False),  # an empty marker, as versions before 26.11 wrote
], ids=["other-host-fresh", "other-host-stale", "this-host-running", "this-host-gone", "empty"])
def test_an_unfinished_upload_is_resumed_only_when_its_writer_is_gone(backend_env, tmp_path, holder, refused):
    env = backend_env
    src = make_files(tmp_path / "src", 6, 1000)
    info = holder()
    marker = b"" if info is None else json.dumps({"token": "t", "started": time.time(), **info}).encode()
    raw = RawBucket(env)
    raw.write("dataset/ds/.wabucketref/al.partial", marker)
    raw.write("dataset/ds/al/d0/f000.bin", (src / "d0" / "f000.bin").read_bytes())  # what it had uploaded
    proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "al")
    if refused:
        assert proc.returncode == 1 and "another upload to" in proc.stderr and "is running" in proc.stderr, proc.stderr
        assert raw.read("dataset/ds/.wabucketref/al.partial") == marker
        assert raw.keys("dataset/ds/al/") == ["dataset/ds/al/d0/f000.bin"]
    else:
        assert proc.returncode == 0, proc.stderr
        assert summary(proc.stderr, "uploaded") == (5, 1)
        assert raw.keys("dataset/ds/.wabucketref/") == ["dataset/ds/.wabucketref/al.jsonl"]


def test_a_marker_left_beside_a_manifest_is_resumed_by_the_same_command(backend_env, tmp_path):
    """Stopped after the manifest was written but before the marker was removed: the rerun of the
    same command finishes it (no --overwrite needed), moving no bytes."""
    env = backend_env
    src = make_files(tmp_path / "src", 6, 1000)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "al", check=True)
    raw = RawBucket(env)
    raw.write("dataset/ds/.wabucketref/al.partial", b"")
    proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "al", check=True)
    assert "resuming an interrupted upload" in proc.stderr and summary(proc.stderr, "uploaded") == (0, 6), proc.stderr
    assert raw.keys("dataset/ds/.wabucketref/") == ["dataset/ds/.wabucketref/al.jsonl"]


def test_staging_files_of_an_interrupted_local_upload_are_removed(env, tmp_path):
    """obstore writes a local bucket's file through NAME#N and leaves it when interrupted: hidden from
    listings, but seen by anything that reads the folder. The upload that completes the alias removes them."""
    src = make_files(tmp_path / "src", 6, 1000)
    alias_dir = Path(env.bucket) / "dataset" / "ds" / "al"
    (alias_dir / "d0").mkdir(parents=True)
    (alias_dir / "d0" / "f000.bin#1").write_bytes(b"half")  # as a killed upload left them
    (alias_dir / "big.bin#12").write_bytes(b"half")
    (alias_dir.parent / ".wabucketref").mkdir()
    (alias_dir.parent / ".wabucketref" / "al.partial").write_bytes(b"")
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "al", check=True)
    assert sorted(p.relative_to(alias_dir).as_posix() for p in alias_dir.rglob("*") if p.is_file()) == sorted(tree_hashes(src))


CLAIMS = """
import asyncio, json, os, sys
from wabucketref.storage import open_bucket

async def main(spec):
    storage, base = await open_bucket(spec)
    key = (base + "/m.partial").lstrip("/")
    try:
        got = [await storage.put_if_unchanged(key, b"1", None), await storage.put_if_unchanged(key, b"2", None)]
        data, etag = await storage.read(key)
        got += [await storage.put_if_unchanged(key, b"3", etag), await storage.put_if_unchanged(key, b"4", etag)]
        print(json.dumps(got + [(await storage.read(key))[0].decode()]), flush=True)
    finally:
        await storage.close()

asyncio.run(main(sys.argv[1]))
os._exit(0)  # as the CLI leaves: obstore's threads may abort the interpreter's teardown
"""


@pytest.mark.parametrize("kind", ["local", "s3", "platform-azure"])
def test_a_marker_is_claimed_only_if_unchanged(env, request, tmp_path, kind):
    """Two uploads that find the same marker (or none) at the same moment: one claims it, the other
    is told so. The stores' conditional writes decide (a local folder cannot check an update)."""
    use_backend(env, kind, request, tmp_path)
    proc = env.python(CLAIMS.replace("sys.argv[1]", repr(env.bucket)))
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    checks_updates = kind != "local"
    assert got == [True, False, True, not checks_updates, "3" if checks_updates else "4"]


@pytest.mark.parametrize("status,code", [(501, "NotImplemented"), (400, "InvalidArgument")])
def test_a_server_without_conditional_writes_still_takes_uploads(s3_env, seaweed, tmp_path, status, code):
    """Some S3-compatible servers refuse If-None-Match/If-Match on PUT: the marker is then written
    plainly, with a warning that simultaneous uploads cannot be told apart there."""
    env = s3_env
    src = make_files(tmp_path / "src", 4, 1000)

    def refuse_conditions(req):
        if req.method == "PUT" and (req.header("if-none-match") or req.header("if-match")):
            raise Reject(status, code, "A header you provided implies functionality that is not implemented")

    raw = RawBucket(env)
    raw.write("dataset/ds/.wabucketref/resumed.partial", b"")  # an interrupted upload's marker: If-Match
    with FaultProxy(seaweed.endpoint_url, gate=refuse_conditions) as proxy:
        via(env, proxy)
        for alias in ("fresh", "resumed"):  # If-None-Match, then If-Match
            proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", alias)
            assert proc.returncode == 0, proc.stderr
            assert "refuses conditional writes" in proc.stderr and code in proc.stderr, proc.stderr
            env.wabucket("download", "dataset", "ds", alias, "-d", str(tmp_path / alias), check=True)
            assert tree_hashes(tmp_path / alias) == tree_hashes(src)
        assert proxy.count("PUT", status) >= 2
    assert raw.keys("dataset/ds/.wabucketref/") == ["dataset/ds/.wabucketref/fresh.jsonl", "dataset/ds/.wabucketref/resumed.jsonl"]

