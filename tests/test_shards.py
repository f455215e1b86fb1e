"""Big versions keep their manifest as an index of shards (format 2): the CLI end to end, with
shards of a few files (WABUCKET_SHARD_FILES) so that every boundary case is small. Real
buckets (a folder, SeaweedFS), W&B offline and online (the W&B-protocol backend)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import RawBucket, one_error_line, online, tree_hashes, use_backend, write_tree
from tests.test_gc import wandb_api

SHARD = 5
# 3 folders of 8 files, plus unicode names: shards of 5 files cut inside folders
TREE = {f"{d}/{i:02d}.bin": f"{d}{i}".encode() * (i + 1) for d in ("img", "lbl", "txt") for i in range(8)}
TREE.update({"ünï/é.txt": b"e", "ünï/文件.txt": b"wen", "😀.txt": b"smile", "Zebra.txt": b"z", "a.txt": b"a",
             "b.txt": b"b", "c.txt": b"c"})  # 12 paths sort before lbl/: its folder starts inside a shard


@pytest.fixture(params=["local", "s3"])
def sharded_env(request, env, tmp_path):
    env = use_backend(env, request.param, request, tmp_path)
    env.vars["WABUCKET_SHARD_FILES"] = str(SHARD)
    return env


def shard_keys(raw: RawBucket, name: str) -> list[str]:
    return [k for k in raw.keys(f"dataset/{name}/.wabucketref/shards/")]


def test_a_big_version_is_an_index_of_shards(sharded_env, tmp_path):
    env = sharded_env
    src = write_tree(tmp_path / "src", TREE)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "one", check=True)
    raw = RawBucket(env)
    record = raw.read("dataset/ds/.wabucketref/one.jsonl")
    assert record.count(b"\n") == 1  # one line: the index, not the file list
    index = json.loads(record)
    assert index["format"] == "wabucketref-manifest/2" and index["files"] == len(TREE)
    assert index["root"].endswith("dataset/ds/one") and index["alias"] == "one"
    assert [s["files"] for s in index["shards"]] == [5, 5, 5, 5, 5, 5, 1]
    keys = shard_keys(raw, "ds")
    assert keys == [f"dataset/ds/.wabucketref/shards/{index['digest']}/{i:05d}.jsonl.zst" for i in range(7)]

    dest = tmp_path / "dl"
    env.wabucket("download", "dataset", "ds", "one", "-d", str(dest), check=True)
    assert tree_hashes(dest) == tree_hashes(src)
    env.wabucket("verify", "dataset", "ds", "one", check=True)
    env.wabucket("verify", "dataset", "ds", "one", "--local", str(dest), check=True)
    ls = json.loads(env.wabucket("ls", "dataset", "ds", "--json", check=True).stdout)
    assert [(v["files"], v["bytes"]) for v in ls["versions"]] == [(len(TREE), sum(map(len, TREE.values())))]

    # the same content with another shard size is the same content: the digest does not change
    other = env.run("--bucket", env.bucket, "--project-name", "proj", "upload", str(src), "-n", "ds", "-t", "dataset",
                    "-a", "oneb", env={"WABUCKET_SHARD_FILES": "7"}, check=True)
    assert json.loads(raw.read("dataset/ds/.wabucketref/oneb.jsonl"))["digest"] == index["digest"], other.stderr


def test_partial_download_reads_only_the_shards_it_needs(sharded_env, tmp_path):
    """Patterns whose paths start and end inside shards: the other shards are deleted from the bucket
    and the partial downloads still work; a full download then names the missing shard."""
    env = sharded_env
    src = write_tree(tmp_path / "src", TREE)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "one", check=True)
    raw = RawBucket(env)
    index = json.loads(raw.read("dataset/ds/.wabucketref/one.jsonl"))
    # "lbl/" runs from inside shard 1 to inside shard 3: a/img (9 files) come first
    covering = [i for i, s in enumerate(index["shards"]) if s["last"] >= "lbl/" and s["first"][:4] <= "lbl/"]
    assert len(covering) >= 2 and index["shards"][covering[0]]["first"] < "lbl/"
    for i, key in enumerate(shard_keys(raw, "ds")):
        if i not in covering:
            raw.delete(key)
    dest = tmp_path / "part"
    proc = env.wabucket("download", "dataset", "ds", "one", "-d", str(dest), "--include", "lbl/", check=True)
    assert tree_hashes(dest) == {p: h for p, h in tree_hashes(src).items() if p.startswith("lbl/")}
    assert f"; 8 of {len(TREE)} files selected" in proc.stderr
    one = env.wabucket("download", "dataset", "ds", "one", "-d", str(tmp_path / "one"), "--include", "lbl/03*", check=True)
    assert list(tree_hashes(tmp_path / "one")) == ["lbl/03.bin"], one.stderr

    full = env.wabucket("download", "dataset", "ds", "one", "-d", str(tmp_path / "full"))
    assert full.returncode == 1
    assert re.search(r"shard [01] of the manifest is missing from", one_error_line(full)), full.stderr
    assert not (tmp_path / "full").exists() or not [p for p in (tmp_path / "full").rglob("*") if p.is_file()]


def test_a_shard_that_fails_its_sha256_places_nothing(sharded_env, tmp_path):
    env = sharded_env
    src = write_tree(tmp_path / "src", TREE)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "one", check=True)
    raw = RawBucket(env)
    keys = shard_keys(raw, "ds")
    raw.write(keys[3], raw.read(keys[2]))  # a real shard, in the wrong place
    dest = tmp_path / "dl"
    proc = env.wabucket("download", "dataset", "ds", "one", "-d", str(dest))
    assert proc.returncode == 1 and proc.stdout == ""
    one_error_line(proc, "00003.jsonl.zst", "sha256 differs")
    assert not dest.exists() or not [p for p in dest.rglob("*") if p.is_file()]
    for cmd in (["verify", "dataset", "ds", "one"], ["diff", "dataset", "ds", "one", "--local", str(src)]):
        bad = env.wabucket(*cmd)
        assert bad.returncode == 1
        one_error_line(bad, "sha256 differs")


def test_a_version_that_fits_one_shard_keeps_one_document(sharded_env, tmp_path):
    env = sharded_env
    src = write_tree(tmp_path / "src", {f"f{i}": b"x" * i for i in range(SHARD)})
    env.wabucket("upload", str(src), "-n", "small", "-t", "dataset", "-a", "one", check=True)
    raw = RawBucket(env)
    lines = raw.read("dataset/small/.wabucketref/one.jsonl").splitlines()
    assert json.loads(lines[0])["format"] == "wabucketref-manifest/1" and len(lines) == SHARD + 1
    assert shard_keys(raw, "small") == []
    env.wabucket("download", "dataset", "small", "one", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


def test_sharded_versions_online_diff_incremental_and_gc(env, request, wandb_server, tmp_path, monkeypatch):
    """Online: W&B keeps the index (not the file list); diff streams two versions; an incremental
    upload copies from a sharded base; gc removes the shards of a deleted version only."""
    env = online(use_backend(env, "local", request, tmp_path), wandb_server)
    env.vars["WABUCKET_SHARD_FILES"] = str(SHARD)
    src = write_tree(tmp_path / "src", TREE)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "one", check=True)
    changed = dict(TREE, **{"img/03.bin": b"changed", "new/file.txt": b"new"})
    del changed["txt/07.bin"]
    src2 = write_tree(tmp_path / "src2", changed)
    up = env.wabucket("upload", str(src2), "-n", "ds", "-t", "dataset", "-a", "two", check=True)
    assert f"{len(changed) - 2} files (" in up.stderr and "copied in the bucket" in up.stderr, up.stderr
    art = next(v for v in wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds") if "two" in v["aliases"])
    assert set(art["files"]) == {"wabucketref.manifest-index.json"}  # the index, not the file list
    assert art["entries"]["platform_blob"]["extra"]["files"] == len(changed)

    d = json.loads(env.wabucket("diff", "dataset", "ds", "one", "two", "--json", check=True).stdout)
    assert [c["path"] for c in d["added"]] == ["new/file.txt"] and [c["path"] for c in d["removed"]] == ["txt/07.bin"]
    assert [c["path"] for c in d["changed"]] == ["img/03.bin"] and d["unchanged"] == len(TREE) - 2
    dest = tmp_path / "dl2"
    env.wabucket("download", "dataset", "ds", "two", "-d", str(dest), check=True)
    assert tree_hashes(dest) == tree_hashes(src2)

    raw = RawBucket(env)
    digests = {json.loads(raw.read(f"dataset/ds/.wabucketref/{a}.jsonl"))["digest"] for a in ("one", "two")}
    assert {k.split("/")[4] for k in shard_keys(raw, "ds")} == digests
    entity = json.loads(raw.read("dataset/ds/.wabucketref/one.jsonl"))["entity"]
    wandb_api(env, monkeypatch).artifact(f"{entity}/{env.vars['WANDB_PROJECT']}/ds:one").delete(delete_aliases=True)
    gc = env.wabucket("gc", "--delete", check=True)
    assert "shards/" in gc.stdout, gc.stdout
    v2 = json.loads(raw.read("dataset/ds/.wabucketref/two.jsonl"))["digest"]
    assert {k.split("/")[4] for k in shard_keys(raw, "ds")} == {v2}
    env.wabucket("download", "dataset", "ds", "two", "-d", str(tmp_path / "dl3"), check=True)
    assert tree_hashes(tmp_path / "dl3") == tree_hashes(src2)
