"""Scale out: `download --shard` (each worker its share of a version) and `upload --part` + `commit`
(one version written by many jobs). The real CLI as concurrent processes against real buckets (a
folder, SeaweedFS) and the W&B-protocol backend."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Env, RawBucket, one_error_line, online, tree_hashes, use_backend, write_tree
from tests.test_reliability import FAST_WANDB, spawn, wait_until
from wabucketref.manifest import read_stored
from wabucketref.manifest.split import split

rnd = random.Random(24)
TREE = {f"{d}/f{i:02d}.bin": rnd.randbytes(rnd.randrange(1, 4000)) for d in ("a", "b", "c") for i in range(20)}
TREE["empty.txt"] = b""


@pytest.fixture(params=["local", "s3"])
def kind_env(request, env, tmp_path) -> Env:
    return use_backend(env, request.param, request, tmp_path)


def run_all(env: Env, commands: list[list[str]], extra: dict | None = None) -> list[subprocess.CompletedProcess]:
    """The commands as concurrent processes; each one's result."""
    procs = [subprocess.Popen([sys.executable, "-m", "wabucketref", "--bucket", env.bucket, "--project-name",
                               env.vars["WANDB_PROJECT"], *c], env={**env.vars, **(extra or {})}, cwd=env.cwd,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    out = []
    for p, c in zip(procs, commands):
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(c, p.returncode, stdout, stderr))
    return out


def expected_shares(env: Env, name: str, alias: str, count: int, keep=lambda p: True) -> list[set[str]]:
    """The split computed from the manifest alone (the bucket's record), as any machine would."""
    data = RawBucket(env).read(f"dataset/{name}/.wabucketref/{alias}.jsonl")
    stored = read_stored(data, Path(env.cwd) / f"m-{alias}-{count}", "record")
    shares: list[set[str]] = [set() for _ in range(count)]
    for i, e in split((e for e in stored.manifest if keep(e.path)), count):
        shares[i].add(e.path)
    return shares


# ------------------------------------------------------------------ download --shard


def test_shards_cover_the_version_once_balanced_and_stable(kind_env, tmp_path):
    env = kind_env
    src = write_tree(tmp_path / "src", TREE)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "one", check=True)
    count = 4
    results = run_all(env, [["download", "dataset", "ds", "one", "-d", str(tmp_path / f"s{i}"), "--shard", f"{i}/{count}"]
                            for i in range(count)])
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    got = [tree_hashes(tmp_path / f"s{i}") if (tmp_path / f"s{i}").exists() else {} for i in range(count)]
    union = {p: h for g in got for p, h in g.items()}
    assert union == tree_hashes(src)  # every file, verified
    assert sum(len(g) for g in got) == len(TREE)  # each in one share only
    sizes = [sum(len(TREE[p]) for p in g) for g in got]
    assert max(sizes) - min(sizes) <= max(len(v) for v in TREE.values()), sizes
    assert [set(g) for g in got] == expected_shares(env, "ds", "one", count)  # the split, from the manifest alone
    assert f"of {len(TREE)} files selected" in results[0].stderr
    again = env.wabucket("download", "dataset", "ds", "one", "-d", str(tmp_path / "again"), "--shard", "2/4", check=True)
    assert set(tree_hashes(tmp_path / "again")) == set(got[2]), again.stderr  # the same on every run


def test_shard_composes_with_include_reuse_and_auto(env, request, wandb_server, tmp_path):
    env = online(use_backend(env, "local", request, tmp_path), wandb_server)
    src = write_tree(tmp_path / "src", TREE)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "one", check=True)
    keep = lambda p: p.startswith("b/")  # noqa: E731
    want = expected_shares(env, "ds", "one", 3, keep)
    dest = tmp_path / "inc"
    env.wabucket("--run-name", "node1", "download", "dataset", "ds", "one", "-d", str(dest), "--include", "b/",
                 "--shard", "1/3", check=True)
    assert set(tree_hashes(dest)) == want[1]
    run = next(r for r in wandb_server.runs() if r["name"] == "node1")
    assert run["inputs"] == ["ds:v0"]  # recorded as a use of the artifact

    full = tmp_path / "full"
    env.wabucket("download", "dataset", "ds", "one", "-d", str(full), check=True)
    reused = env.run("--bucket", env.bucket, "--project-name", env.vars["WANDB_PROJECT"], "download", "dataset", "ds",
                     "one", "-d", str(tmp_path / "auto"), "--include", "b/", "--shard", "auto", "--reuse", str(full),
                     env={"RANK": "2", "WORLD_SIZE": "3"}, check=True)
    assert set(tree_hashes(tmp_path / "auto")) == want[2]
    assert f"{len(want[2])} files (" in reused.stderr and "reused from local folders" in reused.stderr, reused.stderr


@pytest.mark.parametrize("value", ["3/3", "-1/3", "1/0", "x", "1/", "auto"])
def test_bad_shard_is_a_usage_error(env, tmp_path, value):
    env.vars.pop("RANK", None), env.vars.pop("WORLD_SIZE", None)  # auto without them
    proc = env.wabucket("download", "dataset", "ds", "one", "-d", str(tmp_path / "d"), "--shard", value)
    assert proc.returncode == 2 and proc.stdout == ""
    one_error_line(proc, "--shard")
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------ upload --part, commit


def parts_of(tmp_path: Path, count: int, shared: dict[str, bytes] | None = None) -> list[Path]:
    """TREE split in `count` folders by first letter, each with `shared` files too."""
    folders = []
    for i in range(count):
        files = {p: d for j, (p, d) in enumerate(sorted(TREE.items())) if j % count == i}
        folders.append(write_tree(tmp_path / f"part{i}", {**files, **(shared or {})}))
    return folders


def part_cmd(folder: Path, alias: str, i: int, count: int) -> list[str]:
    return ["upload", str(folder), "-n", "ds", "-t", "dataset", "-a", alias, "--part", f"{i}/{count}"]


def test_parts_uploaded_at_once_then_one_commit(kind_env, wandb_server, tmp_path):
    env = online(kind_env, wandb_server)
    folders = parts_of(tmp_path, 4, shared={"README": b"the same in every part"})
    ups = run_all(env, [part_cmd(f, "big", i, 4) for i, f in enumerate(folders)])
    assert all(u.returncode == 0 for u in ups), [u.stderr for u in ups]
    assert wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds") == []  # parts register nothing
    done = env.wabucket("--run-name", "committer", "commit", "-n", "ds", "-t", "dataset", "-a", "big", "-m", "k=v",
                        check=True)
    assert "::set-output name=artifact_alias::big" in done.stdout
    [version] = wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds")
    assert "big" in version["aliases"] and version["metadata"]["k"] == "v"
    assert [p["part"] for p in version["metadata"]["wabucketref_parts"]] == [0, 1, 2, 3]
    run = next(r for r in wandb_server.runs() if r["name"] == "committer")
    assert run["outputs"] == ["ds:v0"] and run["job_type"] == "commit"  # the committing run is the producer
    dest = tmp_path / "dl"
    env.wabucket("download", "dataset", "ds", "big", "-d", str(dest), check=True)
    assert tree_hashes(dest) == {**tree_hashes(tmp_path / "part0"), **{p: h for f in folders for p, h in tree_hashes(f).items()}}
    env.wabucket("verify", "dataset", "ds", "big", check=True)
    assert not [k for k in RawBucket(env).keys("dataset/ds/.wabucketref/") if ".parts/" in k]

    again = env.wabucket("commit", "-n", "ds", "-t", "dataset", "-a", "big", check=True)  # twice: nothing to do
    assert "committed already" in again.stderr and len(wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds")) == 1
    nxt = env.wabucket("upload", str(folders[0]), "-n", "ds", "-t", "dataset", "-a", "next", check=True)
    assert "copied in the bucket" in nxt.stderr  # an ordinary version: a base for incremental uploads


def test_commit_refuses_missing_disagreeing_and_conflicting_parts(kind_env, tmp_path):
    env = kind_env
    folders = parts_of(tmp_path, 3)
    env.wabucket(*part_cmd(folders[0], "x", 0, 3), check=True)
    env.wabucket(*part_cmd(folders[2], "x", 2, 3), check=True)
    missing = env.wabucket("commit", "-n", "ds", "-t", "dataset", "-a", "x")
    assert missing.returncode == 1 and missing.stdout == ""
    one_error_line(missing, "part 1 of 3", "missing")

    env.wabucket(*part_cmd(folders[1], "x", 1, 2), check=True)  # a part that counts otherwise
    disagree = env.wabucket("commit", "-n", "ds", "-t", "dataset", "-a", "x")
    assert disagree.returncode == 1
    one_error_line(disagree, "disagree on COUNT", "1-of-2", "0-of-3")

    a = write_tree(tmp_path / "ca", {"same.txt": b"equal", "clash.bin": b"one", "own-a": b"a"})
    b = write_tree(tmp_path / "cb", {"same.txt": b"equal", "clash.bin": b"two", "own-b": b"b"})
    env.wabucket(*part_cmd(a, "y", 0, 2), check=True)
    env.wabucket(*part_cmd(b, "y", 1, 2), check=True)
    clash = env.wabucket("commit", "-n", "ds", "-t", "dataset", "-a", "y")
    assert clash.returncode == 1
    one_error_line(clash, "clash.bin (parts 0, 1)", "different content")
    assert "same.txt" not in clash.stderr  # equal bytes in two parts are one file
    raw = RawBucket(env)
    assert not [k for k in raw.keys("dataset/ds/.wabucketref/") if k.endswith(("y.jsonl", "y.partial"))]

    # a part writes over another's file of the same path: after a conflict, every part that named it runs again
    env.wabucket(*part_cmd(write_tree(tmp_path / "cb2", {"same.txt": b"equal", "own-b": b"b"}), "y", 1, 2), check=True)
    env.wabucket(*part_cmd(a, "y", 0, 2), check=True)
    env.wabucket("commit", "-n", "ds", "-t", "dataset", "-a", "y", check=True)
    dest = tmp_path / "dly"
    env.wabucket("download", "dataset", "ds", "y", "-d", str(dest), check=True)
    assert tree_hashes(dest) == tree_hashes(a) | {"own-b": tree_hashes(b)["own-b"]}


def test_a_killed_part_then_rerun_and_an_interrupted_commit(env, request, wandb_server, tmp_path):
    env = online(use_backend(env, "local", request, tmp_path), wandb_server)
    env.vars.update(FAST_WANDB)
    many = write_tree(tmp_path / "many", {f"m/{i:05d}.bin": os.urandom(64) for i in range(3000)})
    small = write_tree(tmp_path / "small", {"s/one.txt": b"one"})
    raw = RawBucket(env)
    proc = spawn(env, "--concurrency", "1", *part_cmd(many, "k", 0, 2))
    wait_until(lambda: len(raw.keys("dataset/ds/k/m/")) > 50, 60, "the part's first files", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    env.wabucket(*part_cmd(small, "k", 1, 2), check=True)
    blocked = env.wabucket("commit", "-n", "ds", "-t", "dataset", "-a", "k")
    assert blocked.returncode == 1
    one_error_line(blocked, "part 0 of 2", "interrupted")
    rerun = env.wabucket(*part_cmd(many, "k", 0, 2), check=True)
    assert "already there" in rerun.stderr  # it resumed

    wandb_server.fail_operation("CommitArtifact", times=1, status=400)
    failed = env.wabucket("commit", "-n", "ds", "-t", "dataset", "-a", "k")
    wandb_server.clear_faults()
    assert failed.returncode == 1 and failed.stdout == ""
    one_error_line(failed, "W&B")
    assert wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds") == []
    env.wabucket("commit", "-n", "ds", "-t", "dataset", "-a", "k", check=True)  # the rerun registers it
    [version] = wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds")
    assert "k" in version["aliases"]
    dest = tmp_path / "dl"
    env.wabucket("download", "dataset", "ds", "k", "-d", str(dest), check=True)
    assert tree_hashes(dest) == tree_hashes(many) | tree_hashes(small)


def test_gc_deletes_parts_never_committed_once_old(env, request, wandb_server, tmp_path):
    env = online(use_backend(env, "local", request, tmp_path), wandb_server)
    folders = parts_of(tmp_path, 2)
    env.wabucket("upload", str(folders[1]), "-n", "ds", "-t", "dataset", "-a", "kept", check=True)
    for alias in ("old", "fresh"):
        env.wabucket(*part_cmd(folders[0], alias, 0, 2), check=True)
    raw = RawBucket(env)
    key = "dataset/ds/.wabucketref/old.parts/0-of-2.jsonl"
    header, _, rest = raw.read(key).partition(b"\n")
    fields = json.loads(header)
    fields["created_at"] = "2020-01-01T00:00:00+00:00"  # written long ago
    raw.write(key, json.dumps(fields).encode() + b"\n" + rest)
    report = env.wabucket("gc", check=True)
    assert "dataset/ds:old" in report.stdout and "never committed" in report.stdout, report.stdout
    assert "dataset/ds:fresh" not in report.stdout  # its parts may still be coming (--older-than: 1 day)
    assert raw.keys("dataset/ds/old/")  # a dry run deletes nothing
    env.wabucket("gc", "--delete", check=True)
    assert not raw.keys("dataset/ds/old/") and not [k for k in raw.keys("dataset/ds/.wabucketref/") if "old.parts" in k]
    assert raw.keys("dataset/ds/fresh/") and [k for k in raw.keys("dataset/ds/.wabucketref/") if "fresh.parts" in k]
    assert raw.keys("dataset/ds/kept/")
