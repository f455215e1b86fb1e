"""`wabucket ls` and `wabucket diff`: what a project holds and what changed between two versions,
read from W&B (the real wandb SDK against the suite's backend) or, offline, from the records in
every kind of bucket; no byte of data moves."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import online, use_backend, write_tree
from tests.test_roundtrip import wandb_api

V0 = {"a.txt": b"alpha\n", "nested/b.bin": b"\x00" * 300, "nested/deep/c.csv": b"x,y\n1,2\n", "gone.txt": b"old"}
V1 = {"a.txt": b"ALPHA!\n", "nested/b.bin": b"\x00" * 300, "nested/deep/c.csv": b"x,y\n1,2\n3,4\n", "new/d.txt": b"dd"}


def upload(env, src: Path, name: str, alias: str, type_: str = "dataset") -> None:
    env.wabucket("upload", str(src), "-n", name, "-t", type_, "-a", alias, check=True)


def ls(env, *args: str, **kw) -> dict:
    proc = env.wabucket("ls", *args, "--json", check=True, **kw)
    return json.loads(proc.stdout)


def by_version(doc: dict) -> list[tuple]:
    return [(v["version"], v["aliases"], v["files"], v["bytes"]) for v in doc["versions"]]


def test_ls_online_then_offline_after_aliases_move_and_a_version_is_deleted(backend_env, wandb_server, tmp_path, monkeypatch):
    env = online(backend_env, wandb_server)
    unknown = list(wandb_server.unknown)
    v0 = write_tree(tmp_path / "v0", V0)
    v1 = write_tree(tmp_path / "v1", V1)
    upload(env, v0, "ds", "one")
    upload(env, v0, "ds", "two")  # same content: the same version gets a second alias
    upload(env, v1, "ds", "three")
    upload(env, v0, "m", "prod", type_="model")
    v2 = write_tree(tmp_path / "v2", {"only.txt": b"short-lived"})
    upload(env, v2, "ds", "four")

    proj = f"{env.vars['WANDB_ENTITY']}/{env.vars['WANDB_PROJECT']}"
    api = wandb_api(env, monkeypatch)
    # through W&B itself: `best` added to v0, `two` moved to v1, v2 deleted (with its aliases)
    first = api.artifact(f"{proj}/ds:v0")
    first.aliases.append("best")
    first.save()
    second = api.artifact(f"{proj}/ds:v1")
    second.aliases.append("two")
    second.save()
    api.artifact(f"{proj}/ds:v2").delete(delete_aliases=True)

    everything = ls(env)
    assert everything["source"] == "wandb" and everything["project"] == proj
    assert everything["artifacts"] == [
        {"type": "dataset", "name": "ds", "versions": 2},
        {"type": "model", "name": "m", "versions": 1},
    ]
    assert ls(env, "model")["artifacts"] == [{"type": "model", "name": "m", "versions": 1}]

    doc = ls(env, "dataset", "ds")
    size0, size1 = sum(map(len, V0.values())), sum(map(len, V1.values()))
    assert by_version(doc) == [("v1", ["latest", "three", "two"], 4, size1), ("v0", ["best", "one"], 4, size0)], doc
    locations = [v["location"] for v in doc["versions"]]
    assert locations[0].endswith("/dataset/ds/three") and locations[1].endswith("/dataset/ds/one"), locations
    assert all(v["created"] for v in doc["versions"])

    text = env.wabucket("ls", "dataset", "ds", check=True)
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "ALIASES", "FILES", "BYTES", "CREATED", "LOCATION"]
    assert lines[1].split()[:4] == ["v1", "latest,three,two", "4", str(size1)] and lines[2].startswith("v0 "), text.stdout
    assert "Traceback" not in text.stderr
    assert wandb_server.unknown == unknown  # every field the SDK asked for has a real answer

    # offline: the bucket's records, as each alias was uploaded (W&B's later changes are not there)
    env.vars["WANDB_MODE"] = "offline"
    off = ls(env, "dataset", "ds")
    assert off["source"] == "bucket"
    assert by_version(off) == [
        ("v2", ["latest", "four"], 1, len(b"short-lived")),
        ("v1", ["three"], 4, size1),
        ("v0", ["one", "two"], 4, size0),
    ], off
    assert [v["location"].rsplit("/", 3)[1:] for v in off["versions"]] == [
        ["dataset", "ds", "four"], ["dataset", "ds", "three"], ["dataset", "ds", "one"]]
    proc = env.wabucket("ls", check=True)
    assert proc.stdout.split() == ["TYPE", "NAME", "VERSIONS", "dataset", "ds", "3", "model", "m", "1"], proc.stdout
    assert "offline: listed from the records in" in proc.stderr
    assert env.wabucket("-q", "ls", check=True).stderr == ""


def test_ls_of_unknown_artifacts_and_without_wandb(env, wandb_server, request, tmp_path):
    env = online(use_backend(env, "local", request, tmp_path), wandb_server)
    unknown = list(wandb_server.unknown)
    upload(env, write_tree(tmp_path / "v0", V0), "ds", "one")
    for args in (["dataset", "nope"], ["model", "ds"]):
        proc = env.wabucket("ls", *args)
        assert proc.returncode == 1 and proc.stdout == "", proc
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and f"no artifact {args[1]} of type {args[0]}" in err[0], proc.stderr
    proc = env.wabucket("ls", "nosuchtype")
    assert proc.returncode == 1 and "nosuchtype" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # a version stored in W&B itself (--no-reff) lists its files, and W&B as where they are
    env.wabucket("upload", str(tmp_path / "v0"), "-n", "raw", "-t", "dataset", "-a", "r1", "--no-reff", check=True)
    assert by_version(ls(env, "dataset", "raw")) == [("v0", ["latest", "r1"], 4, 317)]
    assert ls(env, "dataset", "raw")["versions"][0]["location"] == "wandb"
    assert wandb_server.unknown == unknown

    env.vars["WANDB_MODE"] = "disabled"
    code = f"""
import sys
from wabucketref import WaBucketRefAPI
with WaBucketRefAPI(bucket={env.bucket!r}) as api:
    doc = api.ls("dataset", "ds")
print(doc["source"], [v["aliases"] for v in doc["versions"]], "wandb" in sys.modules)
"""
    assert env.python(code).stdout.split("\n")[0] == "bucket [['latest', 'one']] False"
    proc = env.wabucket("ls", "dataset", "nope")
    assert proc.returncode == 1 and "disabled: no records of dataset/nope" in proc.stderr, proc.stderr


def diff(env, *args: str, code: int = 0) -> dict:
    proc = env.wabucket("diff", *args, "--json")
    assert proc.returncode == code, proc
    return json.loads(proc.stdout)


EXPECTED = {
    "added": [{"path": "new/d.txt", "size": 2}],
    "removed": [{"path": "gone.txt", "size": 3}],
    "changed": [{"path": "a.txt", "size_a": 6, "size_b": 7}, {"path": "nested/deep/c.csv", "size_a": 8, "size_b": 12}],
    "unchanged": 1,
    "same": False,
}


def test_diff_of_versions_and_of_a_folder_online_and_offline(backend_env, wandb_server, tmp_path):
    env = online(backend_env, wandb_server)
    upload(env, write_tree(tmp_path / "v0", V0), "ds", "one")
    upload(env, write_tree(tmp_path / "v1", V1), "ds", "two")
    upload(env, write_tree(tmp_path / "m", {"w.bin": b"w"}), "m", "x", type_="model")
    runs = len(wandb_server.runs())

    for mode in ("online", "offline"):
        if mode == "offline":
            env.vars["WANDB_MODE"] = "offline"
        doc = diff(env, "dataset", "ds", "one", "two")
        assert {k: doc[k] for k in EXPECTED} == EXPECTED, (mode, doc)
        assert (doc["a"]["files"], doc["a"]["bytes"], doc["b"]["files"], doc["b"]["bytes"]) == (4, 317, 4, 321)
        assert doc["a"]["version"] == ("v0" if mode == "online" else None)

        text = env.wabucket("diff", "dataset", "ds", "one", "two")
        assert text.returncode == 0, text
        assert text.stdout.splitlines() == [
            "+ new/d.txt  (2 bytes)",
            "- gone.txt  (3 bytes)",
            "~ a.txt  (6 -> 7 bytes)",
            "~ nested/deep/c.csv  (8 -> 12 bytes)",
            "1 added (+2 bytes), 1 removed (-3 bytes), 2 changed, 1 unchanged; "
            "ds:one 4 files, 317 bytes -> ds:two 4 files, 321 bytes",
        ], text.stdout
        assert env.wabucket("diff", "dataset", "ds", "one", "two", "--exit-code").returncode == 1
        same = env.wabucket("diff", "dataset", "ds", "one", "one", "--exit-code", "-q")
        assert same.returncode == 0 and same.stdout.startswith("0 added") and same.stderr == "", same

        # a folder: a file of the same size but other content is found by its hash
        local = write_tree(tmp_path / f"local-{mode}", {**V1, "nested/b.bin": b"\x01" * 300, "extra.txt": b"e"})
        doc = diff(env, "dataset", "ds", "two", "--local", str(local))
        assert doc["b"] == {"local": str(local), "files": 5, "bytes": 322}
        assert (doc["added"], doc["removed"], doc["changed"], doc["unchanged"]) == (
            [{"path": "extra.txt", "size": 1}], [], [{"path": "nested/b.bin", "size_a": 300, "size_b": 300}], 3)

        # bad input: another type, an unknown alias, neither or both of B and --local
        other = env.wabucket("diff", "dataset", "ds", "one", "m:x")
        assert other.returncode == 2 and other.stdout == "", other
        assert [line for line in other.stderr.splitlines() if "error" in line] == [
            "wabucket: error: cannot diff artifacts of different types: m:x is a model, not a dataset"], other.stderr
        unknown = env.wabucket("diff", "dataset", "ds", "one", "nope")
        assert unknown.returncode == 1 and "nope" in unknown.stderr and unknown.stderr.count("error") == 1, unknown.stderr
        for args in ([], ["two", "--local", str(local)]):
            bad = env.wabucket("diff", "dataset", "ds", "one", *args)
            assert bad.returncode == 2 and bad.stderr.startswith("wabucket: error: diff needs a version B or --local DIR"), bad.stderr
            assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert len(wandb_server.runs()) == runs  # diff records nothing in W&B
