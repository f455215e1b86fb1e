"""Partial downloads (--include/--exclude) and reuse of what is already on disk (--reuse), on every
kind of bucket, with W&B online (the real wandb SDK against the suite's backend) and offline."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import online, tree_hashes, use_backend
from tests.test_ls_diff import write_tree

TREE = {
    "a.bin": b"A" * 100,
    "b.txt": b"bee",
    "sub/c.bin": b"C" * 200,
    "sub/deep/d.bin": b"D" * 300,
    "sub/e.txt": b"eee",
    "f.json": b"{}",
    "g/h.txt": b"hhh",
    "g/i.bin": b"I" * 50,
    "j.txt": b"jay",
    "k/l.md": b"# l",
}


def summary(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("wabucket: downloaded ")]
    assert len(lines) == 1, stderr
    return lines[0]


def expected(root: Path, paths) -> dict[str, str]:
    return {p: h for p, h in tree_hashes(root).items() if p in set(paths)}


def test_partial_download_then_the_rest_online_and_offline(backend_env, wandb_server, tmp_path):
    env = online(backend_env, wandb_server)
    src = write_tree(tmp_path / "src", TREE)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "one", check=True)

    dest = tmp_path / "dl"
    proc = env.wabucket("--run-name", "partial", "download", "dataset", "ds", "one", "-d", str(dest),
                        "--include", "*.bin", "--exclude", "g/", check=True)
    assert proc.stdout.strip() == str(dest)
    assert tree_hashes(dest) == expected(src, ["a.bin", "sub/c.bin", "sub/deep/d.bin"])
    assert summary(proc.stderr).endswith("; 3 of 10 files selected"), proc.stderr
    run = next(r for r in wandb_server.runs() if r["name"] == "partial")
    assert run["inputs"] == ["ds:v0"] and run["job_type"] == "download"

    # verify names what a partial folder lacks, in one line
    check = env.wabucket("verify", "dataset", "ds", "one", "--local", str(dest))
    assert check.returncode == 1, check
    assert check.stderr.strip().splitlines() == [
        f"wabucket: error: 7 of 10 files missing from {dest}: b.txt, f.json, g/h.txt, g/i.bin, j.txt, k/l.md, sub/e.txt"]

    # a full download into the same folder fetches only the rest
    proc = env.wabucket("download", "dataset", "ds", "one", "-d", str(dest), check=True)
    assert summary(proc.stderr).startswith("wabucket: downloaded 7 files ("), proc.stderr
    assert "3 files (600 B) were already there" in proc.stderr and "selected" not in proc.stderr
    assert tree_hashes(dest) == tree_hashes(src)
    env.wabucket("verify", "dataset", "ds", "one", "--local", str(dest), check=True)

    # a pattern that matches nothing: named, exit 2, nothing left behind
    for option in ("--include", "--exclude"):
        bad = env.wabucket("download", "dataset", "ds", "one", "-d", str(tmp_path / "none"), option, "*.nope")
        assert bad.returncode == 2 and bad.stdout == "", bad
        assert bad.stderr.strip().splitlines() == [
            f"wabucket: error: {option} '*.nope' matches no file of the artifact (10 files)"], bad.stderr
        assert not (tmp_path / "none").exists()

    # offline: the bucket's record resolves the alias; `*` matches `/` (sub/deep/d.bin)
    env.vars["WANDB_MODE"] = "offline"
    off = tmp_path / "off"
    proc = env.wabucket("download", "dataset", "ds", "one", "-d", str(off), "--include", "sub/*", check=True)
    assert tree_hashes(off) == expected(src, ["sub/c.bin", "sub/deep/d.bin", "sub/e.txt"])
    assert summary(proc.stderr).endswith("; 3 of 10 files selected")


# same size, new size, a new file, and a file that v0 has at another path (found by its content)
V1_CHANGES = {"b.txt": b"BEE", "g/i.bin": b"i" * 51, "new.txt": b"new", "moved/a-copy.bin": TREE["a.bin"]}


def test_reuse_takes_matching_files_from_an_earlier_version(backend_env, wandb_server, tmp_path):
    env = online(backend_env, wandb_server)
    src0 = write_tree(tmp_path / "v0", TREE)
    src1 = write_tree(tmp_path / "v1", {**TREE, **V1_CHANGES})
    env.wabucket("upload", str(src0), "-n", "ds", "-t", "dataset", "-a", "one", check=True)
    env.wabucket("upload", str(src1), "-n", "ds", "-t", "dataset", "-a", "two", check=True)
    old = tmp_path / "old"
    env.wabucket("download", "dataset", "ds", "one", "-d", str(old), check=True)
    # a decoy: every file of v1 at its path and size, but other content: none may be used
    decoy = write_tree(tmp_path / "decoy", {p: bytes(len(d)) for p, d in {**TREE, **V1_CHANGES}.items()})

    for mode in ("online", "offline"):
        if mode == "offline":
            env.vars["WANDB_MODE"] = "offline"
        dest = tmp_path / f"new-{mode}"
        proc = env.wabucket("download", "dataset", "ds", "two", "-d", str(dest), "--reuse", str(decoy),
                            "--reuse", str(old), check=True)
        assert tree_hashes(dest) == tree_hashes(src1), mode
        line = summary(proc.stderr)
        reused = sum(len(d) for p, d in TREE.items() if p not in V1_CHANGES) + len(TREE["a.bin"])
        assert re.match(r"wabucket: downloaded 3 files \(57 B\) in ", line), line
        assert line.endswith(f"; 9 files ({reused} B) reused from local folders"), line
        # the same file system: hard links, not copies
        assert (dest / "sub/deep/d.bin").stat().st_ino == (old / "sub/deep/d.bin").stat().st_ino
        assert (dest / "moved/a-copy.bin").stat().st_ino == (old / "a.bin").stat().st_ino
        assert (dest / "b.txt").stat().st_ino != (old / "b.txt").stat().st_ino
        assert tree_hashes(old) == tree_hashes(src0)  # the reused folder is untouched

    only_decoy = env.wabucket("download", "dataset", "ds", "two", "-d", str(tmp_path / "d2"), "--reuse", str(decoy), check=True)
    assert "reused" not in only_decoy.stderr and summary(only_decoy.stderr).startswith("wabucket: downloaded 12 files")
    assert tree_hashes(tmp_path / "d2") == tree_hashes(src1)

    missing = env.wabucket("download", "dataset", "ds", "two", "-d", str(tmp_path / "d3"), "--reuse", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"wabucket: error: --reuse {tmp_path / 'nope'}: no such folder"], missing.stderr
    assert not (tmp_path / "d3").exists()


def test_sdk_partial_and_reuse_copy_across_file_systems(env, request, tmp_path):
    """The SDK's include/exclude/reuse; a --reuse folder on another file system (/dev/shm) is copied."""
    env = use_backend(env, "local", request, tmp_path)
    src = write_tree(tmp_path / "src", TREE)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "one", check=True)
    shm = Path("/dev/shm") / f"reuse-{tmp_path.name}"
    assert Path("/dev/shm").stat().st_dev != tmp_path.stat().st_dev  # else this test proves nothing
    write_tree(shm, {"sub/c.bin": TREE["sub/c.bin"]})
    try:
        code = f"""
from wabucketref import WaBucketRefAPI
with WaBucketRefAPI(bucket={env.bucket!r}, project_name="proj") as api:
    api.download_artifact("ds", "dataset", "one", {str(tmp_path / 'dl')!r}, include=["sub/"], exclude="*.txt", reuse={str(shm)!r})
"""
        proc = env.python(code)
    finally:
        import shutil
        shutil.rmtree(shm)
    assert tree_hashes(tmp_path / "dl") == expected(src, ["sub/c.bin", "sub/deep/d.bin"])
    assert (tmp_path / "dl/sub/c.bin").stat().st_nlink == 1  # a copy
    assert proc.stdout == ""
