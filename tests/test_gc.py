"""`wabucket gc` against the real wandb SDK and the suite's W&B backend: it reports (and with --delete
removes) exactly the bucket data that no existing version refers to, and nothing it cannot attribute
to the current W&B entity and project; a W&B that fails mid-listing makes it delete nothing."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

import pytest

from tests.conftest import RawBucket, online, tree_hashes, use_backend

DAY = 86400


def wandb_api(env, monkeypatch):
    import wandb

    for k, v in env.vars.items():
        if k.startswith("WANDB_") and k != "WANDB_PROJECT":
            monkeypatch.setenv(k, v)
    return wandb.Api(api_key=env.vars["WANDB_API_KEY"], overrides={"base_url": env.vars["WANDB_BASE_URL"]})


def files(tmp_path, name: str, n: int = 3) -> object:
    root = tmp_path / "src" / name
    for i in range(n):
        p = root / f"d/{name}-{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(1000 + i) + name.encode())
    return root


def upload(env, src, name: str, alias: str, type_: str = "dataset", *args: str) -> None:
    env.wabucket("upload", str(src), "-n", name, "-t", type_, "-a", alias, *args, check=True)


def gc(env, *args: str, check: bool = True, extra: dict | None = None):
    proc = env.wabucket("gc", *args, check=check, env=extra)
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line]
    return proc, {(r[0], r[1]) for r in rows}


def marker(entity: str, project: str, beat: float) -> bytes:
    return json.dumps({"token": "t", "host": socket.gethostname(), "pid": 1, "started": beat, "beat": beat,
                       "entity": entity, "project": project}).encode()


@pytest.fixture(params=["s3", "local"])
def world(env, request, tmp_path, wandb_server, monkeypatch):
    """One bucket (an S3 prefix, a folder) shared by two W&B projects, holding every kind of data gc
    must tell apart."""
    use_backend(env, request.param, request, tmp_path)
    env = online(env, wandb_server)
    p1 = env.vars["WANDB_PROJECT"]
    p2 = f"other-{uuid.uuid4().hex[:6]}"
    raw = RawBucket(env)
    srcs = {a: files(tmp_path, a) for a in ("keep", "gone", "moved", "w1", "other", "p2gone")}
    upload(env, srcs["keep"], "ds", "keep")
    upload(env, srcs["gone"], "ds", "gone")
    upload(env, srcs["moved"], "ds", "m1")
    upload(env, srcs["moved"], "ds", "m2")  # same content: the version gets alias m2 too, with its own folder
    upload(env, srcs["w1"], "net", "w1", "model")  # another artifact in the bucket
    raw.write("external/folder/x.bin", b"linked data")  # a folder outside the layout, linked
    env.wabucket("link", "external/folder", "-n", "linked", "-t", "dataset", "-a", "l1", check=True)
    other = {**env.vars, "WANDB_PROJECT": p2}
    for alias in ("other", "p2gone"):
        env.run("--bucket", env.bucket, "--project-name", p2, "upload", str(srcs[alias]), "-n", "ds", "-t", "dataset",
                "-a", alias, check=True, env=other)
    entity = json.loads(raw.read("dataset/ds/.wabucketref/keep.jsonl").splitlines()[0])["entity"]
    assert entity and json.loads(raw.read("dataset/ds/.wabucketref/other.jsonl").splitlines()[0])["project"] == p2
    api = wandb_api(env, monkeypatch)
    api.artifact(f"{entity}/{p1}/ds:gone").delete(delete_aliases=True)
    api.artifact(f"{entity}/{p2}/ds:p2gone").delete(delete_aliases=True)
    # the original tool's folder (no record), a fresh and a stale unfinished upload of p1
    raw.write("dataset/legacy/old/a.bin", b"old tool")
    now = time.time()
    raw.write("dataset/ds/.wabucketref/fresh.partial", marker(entity, p1, now - 600))
    raw.write("dataset/ds/fresh/f.bin", b"being uploaded")
    raw.write("dataset/ds/.wabucketref/stale.partial", marker(entity, p1, now - 3 * DAY))
    raw.write("dataset/ds/stale/f.bin", b"abandoned")
    raw.write("dataset/ds/.wabucketref/p2stale.partial", marker(entity, p2, now - 3 * DAY))
    raw.write("dataset/ds/p2stale/f.bin", b"abandoned by p2")
    return env, raw, srcs, p2, other


def test_gc_deletes_exactly_what_no_version_refers_to(world, tmp_path):
    env, raw, srcs, p2, other = world
    before = set(raw.keys())
    garbage = {"dataset/ds/.wabucketref/gone.jsonl", "dataset/ds/.wabucketref/stale.partial", "dataset/ds/stale/f.bin"}
    garbage |= {k for k in before if k.startswith("dataset/ds/gone/")}

    dry, rows = gc(env)
    assert {r for r in rows if r[0] == "unreferenced"} == {("unreferenced", "dataset/ds:gone"),
                                                          ("unreferenced", "dataset/ds:stale")}, dry.stdout
    assert ("unattributable", "dataset/legacy:old") in rows, dry.stdout
    assert not any(r[1] in ("dataset/ds:other", "dataset/ds:p2gone", "dataset/ds:p2stale") for r in rows), dry.stdout
    gone = next(line for line in dry.stdout.splitlines() if line.startswith("unreferenced\tdataset/ds:gone"))
    assert "\t4 files\t" in gone and "no longer exists in W&B" in gone, gone  # 3 files and the record
    assert "could be freed: rerun with --delete" in dry.stderr, dry.stderr
    assert set(raw.keys()) == before  # a dry run deletes nothing

    _, only_models = gc(env, "--type", "model")
    assert not any(r[0] == "unreferenced" for r in only_models), only_models

    done, rows = gc(env, "--delete")
    assert {r for r in rows if r[0] == "deleted"} == {("deleted", "dataset/ds:gone"), ("deleted", "dataset/ds:stale")}
    assert "freed 2 aliases, 6 files" in done.stderr, done.stderr
    assert set(raw.keys()) == before - garbage

    for alias, src in (("keep", "keep"), ("m1", "moved"), ("m2", "moved")):
        env.wabucket("download", "dataset", "ds", alias, "-d", str(tmp_path / "dl" / alias), check=True)
        assert tree_hashes(tmp_path / "dl" / alias) == tree_hashes(srcs[src])
    env.wabucket("download", "model", "net", "w1", "-d", str(tmp_path / "dl" / "w1"), check=True)
    assert tree_hashes(tmp_path / "dl" / "w1") == tree_hashes(srcs["w1"])
    env.wabucket("download", "dataset", "linked", "l1", "-d", str(tmp_path / "dl" / "l1"), check=True)
    assert (tmp_path / "dl" / "l1" / "x.bin").read_bytes() == b"linked data"
    env.run("--bucket", env.bucket, "--project-name", p2, "download", "dataset", "ds", "other", "-d",
            str(tmp_path / "dl" / "other"), check=True, env=other)
    assert tree_hashes(tmp_path / "dl" / "other") == tree_hashes(srcs["other"])

    # the other project's gc finds its own deleted version and stale upload, and only those
    proc = env.run("--bucket", env.bucket, "--project-name", p2, "gc", check=True, env=other)
    rows = {tuple(line.split("\t")[:2]) for line in proc.stdout.splitlines()}
    assert {r for r in rows if r[0] == "unreferenced"} == {("unreferenced", "dataset/ds:p2gone"),
                                                          ("unreferenced", "dataset/ds:p2stale")}, proc.stdout


def test_gc_deletes_nothing_when_wandb_fails(world, wandb_server):
    """W&B failing mid-listing, or a version whose manifest cannot be read: one line, nothing deleted."""
    env, raw, _, _, _ = world
    before = set(raw.keys())
    env.vars.update({"WANDB_X_GRAPHQL_RETRY_MAX": "1", "WANDB_X_GRAPHQL_RETRY_WAIT_MAX_SECONDS": "1"})
    for op in ("ProjectArtifacts", "FetchArtifactManifest", "download"):  # versions, then their manifests
        wandb_server.fail_operation(op, times=1, status=400)  # 5xx are retried by wandb for minutes
        proc, rows = gc(env, "--delete", check=False)
        wandb_server.clear_faults()
        assert proc.returncode == 1 and not rows, (op, proc.stdout, proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("wabucket: error:")]
        assert len(errors) == 1 and "W&B could not list" in errors[0], (op, proc.stderr)
        assert set(raw.keys()) == before, op


def test_gc_gives_up_on_a_failing_wandb_in_bounded_time(world, wandb_server):
    """W&B answering 500 to the versions' listing (which wandb retries for a long time): gc gives up
    after WABUCKET_WANDB_TIMEOUT with one line, nothing deleted."""
    env, raw, _, _, _ = world
    before = set(raw.keys())
    wandb_server.fail_operation("ProjectArtifacts", times=100_000, status=500)
    try:
        start = time.monotonic()
        proc, rows = gc(env, "--delete", check=False, extra={"WABUCKET_WANDB_TIMEOUT": "4"})
        took = time.monotonic() - start
    finally:
        wandb_server.clear_faults()
    assert proc.returncode == 1 and not rows, proc.stderr
    assert "W&B could not list the versions" in proc.stderr and "no answer in 4 s" in proc.stderr, proc.stderr
    assert took < 30, took
    assert set(raw.keys()) == before


def test_gc_refuses_offline_and_bad_ages(env):
    proc = env.wabucket("gc")
    assert proc.returncode == 2 and "gc needs W&B online" in proc.stderr, proc.stderr
    proc = env.wabucket("gc", "--older-than", "soon")
    assert proc.returncode == 2 and "invalid age 'soon'" in proc.stderr, proc.stderr


def test_gc_deletes_a_large_folder_in_batches(env, request, tmp_path, wandb_server, monkeypatch):
    """A deleted version of 1,050 files (more than one listing page and one bulk delete) goes whole."""
    use_backend(env, "local", request, tmp_path)
    env = online(env, wandb_server)
    src = tmp_path / "many"
    for i in range(1050):
        (src / f"s{i % 7}").mkdir(parents=True, exist_ok=True)
        (src / f"s{i % 7}" / f"f{i:04d}.txt").write_bytes(b"%d\n" % i)
    upload(env, src, "many", "big")
    upload(env, files(tmp_path, "small"), "many", "small")
    raw = RawBucket(env)
    entity = json.loads(raw.read("dataset/many/.wabucketref/big.jsonl").splitlines()[0])["entity"]
    wandb_api(env, monkeypatch).artifact(f"{entity}/{env.vars['WANDB_PROJECT']}/many:big").delete(delete_aliases=True)
    proc, rows = gc(env, "--delete", "-n", "many")
    assert rows == {("deleted", "dataset/many:big")}, proc.stdout
    assert "\t1051 files\t" in proc.stdout, proc.stdout  # and its record
    assert not (raw.root / "dataset" / "many" / "big").exists()  # no empty folders left behind
    assert [k for k in raw.keys("dataset/many/") if "/big" in k] == []
    env.wabucket("download", "dataset", "many", "small", "-d", str(tmp_path / "dl"), check=True)
