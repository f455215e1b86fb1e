"""README claims, each tried through the CLI as a user runs it, against the suite's real servers:
an offline upload sent later with `wandb sync`, --entity and --job-type, WABUCKET_BUCKET and
WABUCKET_CONCURRENCY, a platform bucket given by id, `~/bucket`, WABUCKET_DEBUG, the upload
marker's refresh and takeover, an interrupted --overwrite; and Ctrl-C, SIGTERM and a killed storage
server on platform buckets of both providers (the s3:// versions are in test_reliability.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import (
    MULTIPART_FILE_SIZE,
    Env,
    make_tree,
    one_error_line,
    online,
    tree_hashes,
    use_backend,
)
from tests.servers.faultproxy import FaultProxy
from tests.servers.platform import FakePlatform
from tests.test_reliability import (  # noqa: F401 - restart_guard is a fixture
    FILE_SIZE,
    N_FILES,
    OK,
    STOPS,
    _interrupt,
    direct,
    final_files_are_whole,
    make_files,
    no_part_files,
    restart_guard,
    spawn,
    summary,
    via,
    wait_until,
)


@pytest.fixture
def s3_env(env, request, tmp_path) -> Env:
    return use_backend(env, "s3", request, tmp_path)


# ------------------------------------------------------------------ offline, then `wandb sync`, then online


def test_offline_upload_synced_later_then_downloaded_online_with_lineage(s3_env, wandb_server, tmp_path):
    """README: with WANDB_MODE=offline uploads are recorded for `wandb sync`. The offline upload
    is sent with `wandb sync`; W&B then has the version, logged by the synced run, and an online
    download resolves it, brings the bytes and is recorded as its user."""
    env = online(s3_env, wandb_server)
    project = env.vars["WANDB_PROJECT"]
    src = make_tree(tmp_path / "src", big=False)
    env.wabucket("--run-name", "offline-producer", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "off1",
                 "-m", "source=offline", check=True, env={"WANDB_MODE": "offline"})
    assert wandb_server.artifact_versions(project, "ds") == []  # nothing reached W&B yet
    [run_dir] = (env.cwd / "wandb").glob("offline-run-*")
    sync = subprocess.run([sys.executable, "-m", "wandb", "sync", str(run_dir)], env=env.vars, cwd=env.cwd,
                          capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert sync.returncode == 0, sync.stdout + sync.stderr

    [version] = wandb_server.artifact_versions(project, "ds")
    assert version["state"] == "COMMITTED" and {"off1", "latest"} <= set(version["aliases"])
    assert version["metadata"] == {"source": "offline"}
    assert version["entries"]["platform_blob"]["ref"] == f"s3://{env.extra['s3_bucket']}/some/prefix/dataset/ds/off1"
    producer = {r["id"]: r for r in wandb_server.runs()}[version["logged_by"]]
    assert producer["name"] == "offline-producer" and producer["job_type"] == "upload" and producer["project"] == project

    dest = tmp_path / "dl"
    env.wabucket("--run-name", "online-consumer", "download", "dataset", "ds", "off1", "-d", str(dest), check=True)
    assert tree_hashes(dest) == tree_hashes(src)
    [version] = wandb_server.artifact_versions(project, "ds")
    consumers = [r for r in wandb_server.runs() if r["id"] in version["used_by"]]
    assert [(r["name"], r["job_type"]) for r in consumers] == [("online-consumer", "download")]
    assert consumers[0]["inputs"] == [f"ds:{version['version']}"]
    assert producer["id"] != consumers[0]["id"]


# ------------------------------------------------------------------ --entity and --job-type


def test_entity_and_job_type_options(env, wandb_server, tmp_path):
    """--entity puts the runs and the artifact under that entity (not WANDB_ENTITY's), --job-type
    names the runs' job type (default: the command's name); downloading with --entity finds it there."""
    env = online(env, wandb_server)
    project = env.vars["WANDB_PROJECT"]
    assert env.vars["WANDB_ENTITY"] != "team-x"
    src = make_tree(tmp_path / "src", big=False)
    env.wabucket("--entity", "team-x", "--job-type", "prepare-data", "--run-name", "producer",
                 "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "e1", check=True)
    env.wabucket("--entity", "team-x", "--run-name", "consumer", "download", "dataset", "ds", "e1",
                 "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    runs = {r["name"]: r for r in wandb_server.runs() if r["project"] == project}
    assert (runs["producer"]["entity"], runs["producer"]["job_type"]) == ("team-x", "prepare-data")
    assert (runs["consumer"]["entity"], runs["consumer"]["job_type"]) == ("team-x", "download")
    [version] = wandb_server.artifact_versions(project, "ds", entity="team-x")
    assert "e1" in version["aliases"] and version["used_by"] == [runs["consumer"]["id"]]
    assert wandb_server.artifact_versions(project, "ds") == []  # not under WANDB_ENTITY's entity


# ------------------------------------------------------------------ WABUCKET_BUCKET and WABUCKET_CONCURRENCY


def test_bucket_from_wabucket_bucket(env, tmp_path):
    """--bucket's variable: WABUCKET_BUCKET names the bucket when the option is not given, and the
    option wins over it."""
    src = make_tree(tmp_path / "src", big=False)
    from_env, from_option = tmp_path / "env-bucket", tmp_path / "option-bucket"
    env.vars["WABUCKET_BUCKET"] = str(from_env)
    env.run("--project-name", "proj", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "b1", check=True)
    assert tree_hashes(from_env / "dataset" / "ds" / "b1") == tree_hashes(src)
    env.run("--project-name", "proj", "download", "dataset", "ds", "b1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    env.run("--bucket", str(from_option), "--project-name", "proj", "upload", str(src), "-n", "ds", "-t", "dataset",
            "-a", "b2", check=True)
    assert tree_hashes(from_option / "dataset" / "ds" / "b2") == tree_hashes(src)
    assert not (from_env / "dataset" / "ds" / "b2").exists()


class InFlight(FaultProxy):
    """A FaultProxy that records how many requests of each method were in flight at once (a
    listing counts as LIST: it moves no file)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    async def _one(self, req, reader, writer) -> bool:
        m = "LIST" if req.method == "GET" and "list-type=" in req.target else req.method
        self.now[m] = self.now.get(m, 0) + 1
        self.peak[m] = max(self.peak.get(m, 0), self.now[m])
        try:
            return await super()._one(req, reader, writer)
        finally:
            self.now[m] -= 1


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_from_wabucket_concurrency(s3_env, seaweed, tmp_path, concurrency):
    """WABUCKET_CONCURRENCY bounds the files moving at once: with a slow link (so that transfers
    overlap), the S3 server sees exactly that many uploads, and downloads, in flight at most (a
    download checks the bucket's listing beside them)."""
    env = s3_env
    env.vars.update(WABUCKET_CONCURRENCY=str(concurrency), WANDB_MODE="disabled")
    src = make_files(tmp_path / "src", 12, 40_000)
    with InFlight(seaweed.endpoint_url, bandwidth=400_000) as proxy:
        via(env, proxy)
        env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "c1", check=True)
        env.wabucket("download", "dataset", "ds", "c1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    assert proxy.peak["PUT"] == concurrency, proxy.peak
    assert proxy.peak["GET"] == concurrency, proxy.peak


# ------------------------------------------------------------------ a platform bucket given by id; ~/bucket


def test_platform_bucket_by_id(env, request, tmp_path):
    """README: --bucket accepts a platform bucket's id as well as its name: the same bucket."""
    env = use_backend(env, "platform", request, tmp_path)
    plat = env.extra["platform"]
    bucket_id = plat.bucket(env.bucket).id
    assert bucket_id != env.bucket
    src = make_tree(tmp_path / "src", big=False)
    env.run("--bucket", bucket_id, "--project-name", "proj", "upload", str(src), "-n", "ds", "-t", "dataset",
            "-a", "i1", check=True)
    stored = plat.s3.list_keys(plat.backing_bucket(env.bucket), "dataset/ds/i1/")
    assert sorted(k.removeprefix("dataset/ds/i1/") for k in stored) == sorted(tree_hashes(src))
    env.run("--bucket", env.bucket, "--project-name", "proj", "download", "dataset", "ds", "i1",  # by name
            "-d", str(tmp_path / "by-name"), check=True)
    env.run("--bucket", bucket_id, "--project-name", "proj", "download", "dataset", "ds", "i1",
            "-d", str(tmp_path / "by-id"), check=True, env={"WABUCKET_CACHE": "0"})
    assert tree_hashes(tmp_path / "by-name") == tree_hashes(tmp_path / "by-id") == tree_hashes(src)
    assert plat.calls_matching(f"/buckets/buckets/{bucket_id}", "GET")  # the platform was asked by id


def test_tilde_bucket_is_under_home(env, tmp_path):
    """`~/bucket` is a folder bucket under $HOME (the tool expands it, as a shell would not when
    the argument is quoted or comes from a flow's YAML)."""
    home = Path(env.vars["HOME"])
    src = make_tree(tmp_path / "src", big=False)
    env.run("--bucket", "~/bucket", "--project-name", "proj", "upload", str(src), "-n", "ds", "-t", "dataset",
            "-a", "h1", check=True)
    assert tree_hashes(home / "bucket" / "dataset" / "ds" / "h1") == tree_hashes(src)
    assert not (env.cwd / "~").exists()
    dest = tmp_path / "dl"
    env.run("--bucket", "~/bucket", "--project-name", "proj", "download", "dataset", "ds", "h1", "-d", str(dest), check=True)
    assert tree_hashes(dest) == tree_hashes(src)


# ------------------------------------------------------------------ WABUCKET_DEBUG


def test_wabucket_debug_shows_the_traceback(env, tmp_path):
    """README: any failure is one line, never a traceback; WABUCKET_DEBUG=1 prints the full traceback."""
    args = ("download", "dataset", "nothing", "here", "-d", str(tmp_path / "dl"))
    plain = env.wabucket(*args)
    assert plain.returncode == 1
    line = one_error_line(plain, "no manifest for dataset/nothing:here")
    debug = env.wabucket(*args, env={"WABUCKET_DEBUG": "1"})
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr, debug.stderr
    assert 'File "' in debug.stderr and "wabucketref" in debug.stderr
    assert line.removeprefix("wabucket: error: ") in debug.stderr.strip().splitlines()[-1]  # the same error, at the end


# ------------------------------------------------------------------ the upload marker: refreshed while it runs, taken over when stale


def _marker(seaweed, env: Env, alias: str) -> dict | None:
    client = seaweed.client()
    try:
        body = client.get_object(Bucket=env.extra["s3_bucket"], Key=f"some/prefix/dataset/ds/.wabucketref/{alias}.partial")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return json.loads(body)


@pytest.mark.slow
def test_the_upload_marker_is_refreshed_while_the_upload_runs(s3_env, seaweed, tmp_path):
    """README: the marker names the upload's host and process and is refreshed every 15 s while it
    runs. A slow upload (~25 s): the marker's `beat` advances, always by the same upload; once the
    upload is done the marker is gone."""
    import socket

    env = s3_env
    env.vars["WANDB_MODE"] = "disabled"
    src = make_files(tmp_path / "src", 8, 300_000)
    seen = []
    with FaultProxy(seaweed.endpoint_url, bandwidth=100_000) as proxy:
        via(env, proxy)
        proc = spawn(env, "--concurrency", "2", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "r1")
        while proc.poll() is None:
            if (m := _marker(seaweed, env, "r1")) is not None:
                seen.append(m)
            time.sleep(0.5)
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert seen, "the marker was never seen"
    assert {(m["token"], m["host"], m["pid"]) for m in seen} == {(seen[0]["token"], socket.gethostname(), proc.pid)}
    beats = sorted({m["beat"] for m in seen})
    assert len(beats) >= 2, beats  # refreshed at least once
    assert 10 <= beats[1] - beats[0] < 60, beats  # every 15 s: well before others may take it as stale (60 s)
    assert _marker(seaweed, env, "r1") is None
    direct(env, seaweed)
    env.wabucket("download", "dataset", "ds", "r1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


@pytest.mark.slow
def test_a_stale_marker_is_taken_over_and_the_stopped_upload_registers_nothing(s3_env, seaweed, tmp_path):
    """An upload stopped without a word (a machine suspended, a frozen job): once its marker is over
    a minute old, another upload to the alias takes over and completes. When the first one wakes
    up it must find that out, stop writing and register nothing: the alias's record is the second
    upload's. Requests the first had in flight when it was stopped may still land when it wakes
    (nothing can recall them); verify names a file they changed, and rerunning the second upload
    with --overwrite repairs the alias (README)."""
    env = s3_env
    env.vars["WANDB_MODE"] = "disabled"
    first_src = make_files(tmp_path / "first", 8, 300_000)  # ~25 s through the slow link
    second_src = make_files(tmp_path / "second", 3, 1000, seed=7)
    with FaultProxy(seaweed.endpoint_url, bandwidth=100_000) as proxy:
        via(env, proxy)
        first = spawn(env, "--concurrency", "2", "upload", str(first_src), "-n", "ds", "-t", "dataset", "-a", "t1")
        wait_until(lambda: proxy.count("PUT", OK) >= 2 and _marker(seaweed, env, "t1") is not None, 60, "the first upload", first)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            marker = _marker(seaweed, env, "t1")
            marker["beat"] -= 120  # as if it had been stopped for two minutes
            seaweed.client().put_object(Bucket=env.extra["s3_bucket"], Key="some/prefix/dataset/ds/.wabucketref/t1.partial",
                                        Body=json.dumps(marker).encode())
            direct(env, seaweed)
            second = env.wabucket("upload", str(second_src), "-n", "ds", "-t", "dataset", "-a", "t1")
        finally:
            os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=180)
    assert second.returncode == 0, second.stderr
    assert "resuming an interrupted upload" in second.stderr, second.stderr
    assert first.returncode == 1, err
    one_error_line(subprocess.CompletedProcess(first.args, 1, "", err), "took over while this one ran")
    record = seaweed.client().get_object(Bucket=env.extra["s3_bucket"], Key="some/prefix/dataset/ds/.wabucketref/t1.jsonl")
    entries = [json.loads(line) for line in record["Body"].read().splitlines()[1:]]
    assert {e["path"]: e["size"] for e in entries} == {p: 1000 for p in tree_hashes(second_src)}
    check = env.wabucket("verify", "dataset", "ds", "t1")
    if check.returncode != 0:  # an in-flight PUT of the first upload landed after the takeover
        line = one_error_line(check)
        assert any(f"{p}: " in line for p in tree_hashes(second_src)), line  # names the file
        env.wabucket("upload", str(second_src), "-n", "ds", "-t", "dataset", "-a", "t1", "--overwrite", check=True)
    env.wabucket("verify", "dataset", "ds", "t1", check=True)
    env.wabucket("download", "dataset", "ds", "t1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(second_src)
    assert _marker(seaweed, env, "t1") is None


# ------------------------------------------------------------------ an interrupted --overwrite, finished by rerunning it


def test_an_interrupted_overwrite_is_finished_by_rerunning_it(s3_env, seaweed, tmp_path):
    """--overwrite help: the old content is unusable from the start; an interrupted overwrite is
    finished by rerunning it. Ctrl-C mid-overwrite: the alias serves neither the old content nor a
    mix; the rerun moves only what is missing, removes the old files, and the alias is the new folder."""
    env = s3_env
    old_src = make_tree(tmp_path / "old", big=False)
    new_src = make_files(tmp_path / "new", 40, 100_000)
    env.wabucket("upload", str(old_src), "-n", "ds", "-t", "dataset", "-a", "o1", check=True)
    with FaultProxy(seaweed.endpoint_url, bandwidth=1_000_000) as proxy:
        via(env, proxy)
        proc = spawn(env, "--concurrency", "3", "upload", str(new_src), "-n", "ds", "-t", "dataset", "-a", "o1", "--overwrite")
        wait_until(lambda: proxy.count("PUT", OK) >= 8, 60, "8 PUTs", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    direct(env, seaweed)
    assert proc.returncode == 130 and "wabucket: interrupted" in err, err
    for cmd in (("download", "dataset", "ds", "o1", "-d", str(tmp_path / "between")), ("verify", "dataset", "ds", "o1")):
        between = env.wabucket(*cmd)
        assert between.returncode == 1, between.stderr
        one_error_line(between, "no manifest for dataset/ds:o1")
    assert not [p for p in (tmp_path / "between").rglob("*") if p.is_file()]

    rerun = env.wabucket("upload", str(new_src), "-n", "ds", "-t", "dataset", "-a", "o1", "--overwrite", check=True)
    moved, there = summary(rerun.stderr, "uploaded")
    assert there >= 7 and moved + there == 40, rerun.stderr
    raw = seaweed.list_keys(env.extra["s3_bucket"], "some/prefix/dataset/ds/")
    assert sorted(k.removeprefix("some/prefix/dataset/ds/o1/") for k in raw if "/o1/" in k) == sorted(tree_hashes(new_src))
    assert [k for k in raw if "/.wabucketref/" in k] == ["some/prefix/dataset/ds/.wabucketref/o1.jsonl"]
    env.wabucket("download", "dataset", "ds", "o1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(new_src)


# ------------------------------------------------------------------ Ctrl-C, SIGTERM and a killed server on platform buckets (S3 and Azure)


CREATED = (200, 201)  # a PUT's answer: S3 says 200, Azure 201


class ProxiedPlatform(FakePlatform):
    """A platform whose temporary credentials send the bytes through a proxy in front of the
    storage server (a slow link; a server killed behind it)."""

    s3_url = ""
    azure_url = ""

    def _s3_creds(self, bucket):
        return {**super()._s3_creds(bucket), "endpoint_url": self.s3_url}

    def _azure_creds(self, bucket):
        return {**super()._azure_creds(bucket), "storage_endpoint": self.azure_url}


@dataclass
class Stage:
    """A platform bucket whose bytes pass a FaultProxy, and the storage server behind it."""

    env: Env
    kind: str
    proxy: InFlight
    plat: ProxiedPlatform
    seaweed: object
    azurite: object = None

    def keys(self, prefix: str) -> dict[str, bytes]:
        """Objects under prefix in the bucket, read straight from the storage server."""
        backing = self.plat.backing_bucket(self.env.bucket)
        if self.kind == "platform-azure":
            container = self.azurite.container(backing)
            names = [b.name for b in container.list_blobs(name_starts_with=prefix)]
            return {n[len(prefix):]: container.download_blob(n).readall() for n in names}
        client = self.seaweed.client()
        return {k[len(prefix):]: client.get_object(Bucket=backing, Key=k)["Body"].read()
                for k in self.seaweed.list_keys(backing, prefix)}

    def quiet(self) -> None:
        """Full speed, once the requests in flight have ended (a stopped client may have sent a
        whole request that the slow link is still carrying to the server)."""
        wait_until(lambda: not any(self.proxy.now.values()), 60, "the requests in flight to end")
        self.proxy.bandwidth = None

    def kill(self) -> None:
        if self.kind == "platform-azure":
            os.killpg(self.azurite.proc.pid, signal.SIGKILL)
            self.azurite.proc.wait()
            self.azurite.proc = None
        else:
            self.seaweed.kill()

    def killed_during(self, enough, what: str, *args: str) -> None:
        """Run the CLI over a slow link, kill the storage once `enough()`: the command must fail
        in one line, with nothing on stdout."""
        self.proxy.bandwidth = 1_000_000
        proc = spawn(self.env, "--concurrency", "2", *args)
        wait_until(enough, 60, what, proc)
        self.kill()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err
        one_error_line(subprocess.CompletedProcess(proc.args, 1, out, err), "failed after")
        assert out == ""
        self.proxy.bandwidth = None

    def restart(self) -> None:
        if self.kind == "platform-azure":
            self.azurite.start()  # the same data folder, on a new port: the proxy follows it
            self.proxy.upstream_port = self.azurite.port
        else:
            self.seaweed.restart()


@contextlib.contextmanager
def staged(env: Env, kind: str, tmp_path: Path, seaweed, azurite) -> Stage:
    upstream = seaweed.endpoint_url if kind == "platform" else f"http://127.0.0.1:{azurite.port}"
    with InFlight(upstream) as proxy:
        plat = ProxiedPlatform(seaweed)
        plat.azure = azurite
        plat.s3_url, plat.azure_url = proxy.url, f"{proxy.url}/devstoreaccount1"
        plat.start()
        try:
            env.bucket = f"b-{os.urandom(5).hex()}"
            plat.add_bucket(env.bucket, provider="azure" if kind == "platform-azure" else "aws")
            env.vars.update(plat.env(config_dir=tmp_path / "apolo-config"))
            env.vars["WANDB_MODE"] = "disabled"
            yield Stage(env, kind, proxy, plat, seaweed, azurite)
        finally:
            plat.stop()


@pytest.fixture(params=["platform", "platform-azure"])
def platform_stage(request, env, seaweed, tmp_path):
    azurite = request.getfixturevalue("azurite") if request.param == "platform-azure" else None
    with staged(env, request.param, tmp_path, seaweed, azurite) as stage:
        yield stage


def _with_a_big_file(tmp_path: Path) -> Path:
    src = make_files(tmp_path / "src", N_FILES, FILE_SIZE)
    (src / "big.bin").write_bytes(os.urandom(MULTIPART_FILE_SIZE))
    return src


@pytest.mark.parametrize("stop", sorted(STOPS))
def test_ctrl_c_and_sigterm_during_upload_to_a_platform_bucket(platform_stage, tmp_path, stop):
    """README: Ctrl-C exits 130 and SIGTERM 143, after the same cleanup, and a rerun resumes;
    nothing half-written is left under a final name. On platform buckets of both providers."""
    sig, status, said = STOPS[stop]
    st, env = platform_stage, platform_stage.env
    src = _with_a_big_file(tmp_path)
    st.proxy.bandwidth = 3_000_000  # ~7 s for the whole upload
    proc = spawn(env, "--concurrency", "3", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "i1")
    wait_until(lambda: st.proxy.count("PUT", CREATED) >= 8, 60, "8 PUTs", proc)
    after, out, err = _interrupt(proc, sig, lambda: st.proxy.count("PUT", CREATED))
    st.quiet()
    assert proc.returncode == status and said in err, err
    assert "Traceback" not in err and out == "" and "wabucket: uploaded" not in err
    assert after <= 3, after  # only the requests in flight (--concurrency 3) end after the signal
    stored = st.keys("dataset/ds/i1/")
    want = {p: (src / p).read_bytes() for p in tree_hashes(src)}
    assert 0 < len(stored) < len(want)
    for key, data in stored.items():
        assert want.get(key) == data, f"partial object under a final name: {key}"
    assert set(st.keys("dataset/ds/.wabucketref/")) == {"i1.partial"}
    rerun = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "i1", check=True)
    assert summary(rerun.stderr, "uploaded") == (len(want) - len(stored), len(stored))
    env.wabucket("download", "dataset", "ds", "i1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


@pytest.mark.parametrize("stop", sorted(STOPS))
def test_ctrl_c_and_sigterm_during_download_from_a_platform_bucket(platform_stage, tmp_path, stop):
    sig, status, said = STOPS[stop]
    st, env = platform_stage, platform_stage.env
    src = _with_a_big_file(tmp_path)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "i1", check=True)
    dest = tmp_path / "dl"
    st.proxy.bandwidth = 1_000_000
    proc = spawn(env, "--concurrency", "3", "download", "dataset", "ds", "i1", "-d", str(dest))
    wait_until(lambda: st.proxy.count("GET", OK) >= 10, 60, "10 GETs", proc)
    after, out, err = _interrupt(proc, sig, lambda: st.proxy.count("GET", OK))
    st.quiet()
    assert proc.returncode == status and said in err, err
    assert "Traceback" not in err and out == "" and "wabucket: downloaded" not in err
    assert after <= 3 + 4, after  # the requests in flight: 3 files, or up to 4 ranges of big.bin
    no_part_files(dest)
    done = final_files_are_whole(dest, src)
    assert 0 < done < N_FILES + 1
    rerun = env.wabucket("download", "dataset", "ds", "i1", "-d", str(dest), check=True)
    assert summary(rerun.stderr, "downloaded") == (N_FILES + 1 - done, done)
    assert tree_hashes(dest) == tree_hashes(src)


@pytest.fixture
def killable_stage(request, env, restart_guard, tmp_path):  # noqa: F811 - the fixture imported above
    """platform_stage, with a storage server of the test's own for Azure (it is killed)."""
    kind = request.param
    azurite = None
    if kind == "platform-azure":
        from tests.servers.azurite import Azurite

        request.getfixturevalue("azurite")  # the same check that Azurite is installed
        azurite = Azurite(tmp_path / "azurite").start()
    try:
        with staged(env, kind, tmp_path, restart_guard, azurite) as stage:
            yield stage
    finally:
        if azurite is not None:
            azurite.stop()


AZURITE_SAVES = 6  # s: Azurite keeps its metadata in memory and saves it every 5 s; a kill loses what is newer


@pytest.mark.slow
@pytest.mark.parametrize("killable_stage", ["platform", "platform-azure"], indirect=True)
def test_storage_killed_mid_upload_to_a_platform_bucket(killable_stage, tmp_path):
    """kill -9 of the storage server mid-upload, for good: exit 1 with one clear line, nothing
    registered (only the marker); once it is back, the rerun completes the upload."""
    st, env = killable_stage, killable_stage.env
    src = make_files(tmp_path / "src", N_FILES, FILE_SIZE)
    if st.kind == "platform-azure":
        time.sleep(AZURITE_SAVES)  # the container must outlive the kill
    st.killed_during(lambda: st.proxy.count("PUT", CREATED) >= 8, "8 PUTs",
                     "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "k1")
    st.restart()
    assert set(st.keys("dataset/ds/.wabucketref/")) <= {"k1.partial"}  # nothing registered
    rerun = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "k1", check=True)
    moved, there = summary(rerun.stderr, "uploaded")
    assert moved + there == N_FILES and moved >= 1
    if st.kind == "platform":
        assert there >= 6  # what was written before the kill is kept
    assert set(st.keys("dataset/ds/.wabucketref/")) == {"k1.jsonl"}
    env.wabucket("download", "dataset", "ds", "k1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


@pytest.mark.slow
@pytest.mark.parametrize("killable_stage", ["platform", "platform-azure"], indirect=True)
def test_storage_killed_mid_download_from_a_platform_bucket(killable_stage, tmp_path):
    st, env = killable_stage, killable_stage.env
    src = make_files(tmp_path / "src", N_FILES, FILE_SIZE)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "k1", check=True)
    if st.kind == "platform-azure":
        time.sleep(AZURITE_SAVES)  # the upload must outlive the kill
    dest = tmp_path / "dl"
    st.killed_during(lambda: st.proxy.count("GET", OK) >= 10, "10 GETs", "download", "dataset", "ds", "k1", "-d", str(dest))
    no_part_files(dest)
    done = final_files_are_whole(dest, src)
    assert 0 < done < N_FILES
    st.restart()
    rerun = env.wabucket("download", "dataset", "ds", "k1", "-d", str(dest), check=True)
    assert summary(rerun.stderr, "downloaded") == (N_FILES - done, done)
    assert tree_hashes(dest) == tree_hashes(src)
