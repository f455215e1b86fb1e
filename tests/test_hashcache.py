"""Local file hashes remembered between commands (hashcache.py): used only while a file is
unchanged, never for a file modified in the same clock tick as its hashing, never by
`verify --local`; and the commands that use them (--reuse, incremental upload, a download into a
folder that has files already) still catch every changed file."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import clean_environ, one_error_line, tree_hashes, use_backend, write_tree
from wabucketref.hashcache import RACY_NS, SWEEP_EVERY_NS, HashCache, settle
from wabucketref.manifest import sha256_file

TREE = {f"part{i}/file{j}.bin": bytes([i * 10 + j]) * (1000 + i) for i in range(3) for j in range(4)}


def age(root: Path, seconds: float = 3600) -> Path:
    """Give every file under root a modification time `seconds` ago (a dataset that has sat there)."""
    then = time.time_ns() - int(seconds * 1e9)
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(then, then))
    return root


def counting(calls: list[Path]):
    def compute(p: Path) -> tuple[str, str]:
        calls.append(p)
        return sha256_file(p), "read"

    return compute


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """Change a file's content in place and put its modification time back (as `touch -r` does)."""
    st = path.stat()
    assert len(data) == st.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def remembered(home: Path) -> dict[int, str]:
    """inode -> sha256, as the cache file of this HOME holds them."""
    return remembered_in(home / ".cache/wabucketref/hashes.sqlite")


def remembered_in(path: Path) -> dict[int, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT ino, sha256 FROM hashes"))


def test_a_hash_is_used_only_while_the_file_is_unchanged(tmp_path):
    db = tmp_path / "cache/hashes.sqlite"
    f = tmp_path / "data.bin"
    f.write_bytes(b"x" * 5000)
    age(tmp_path)
    calls: list[Path] = []
    cache = HashCache(db)
    assert cache.hashed(f, counting(calls)) == (sha256_file(f), "read")
    cache.close()
    assert oct(db.stat().st_mode & 0o777) == "0o600"

    cache = HashCache(db)  # another command
    assert cache.hashed(f, counting(calls)) == (sha256_file(f), None) and len(calls) == 1
    moved = tmp_path / "moved"
    moved.mkdir()
    os.link(f, moved / "link.bin")
    f.rename(moved / "data.bin")  # a hard link changes the ctime: what was remembered is not used
    assert cache.known(moved / "data.bin") is None

    cache.sha256(moved / "data.bin")
    moved.rename(tmp_path / "renamed")  # a renamed folder keeps its files' hashes; so do hard links
    again = tmp_path / "renamed/data.bin"
    assert cache.known(again) == sha256_file(again) == cache.known(tmp_path / "renamed/link.bin")

    rewrite_keeping_mtime(again, b"y" * 5000)  # same size and mtime: the ctime tells
    assert cache.known(again) is None
    assert cache.hashed(again, counting(calls))[0] == sha256_file(again) and len(calls) == 2
    cache.close()


def test_a_file_modified_in_the_tick_of_its_hashing_is_never_trusted(tmp_path):
    cache = HashCache(tmp_path / "hashes.sqlite")
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"a" * 100)  # modified just now: a write in this clock tick would not show
    cache.sha256(fresh)
    assert cache.known(fresh) is None

    written = tmp_path / "written.bin"  # what a download lands: settled, then remembered
    fd = os.open(written, os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"b" * 100)
    settle(fd)
    os.close(fd)
    assert time.time_ns() - written.stat().st_mtime_ns >= RACY_NS
    cache.remember_now(written, sha256_file(written))
    assert cache.known(written) == sha256_file(written)
    with open(written, "r+b") as f:  # at once, in place, same size
        f.write(b"c" * 100)
    assert cache.known(written) is None
    cache.close()


def test_entries_not_refreshed_for_long_are_dropped_once_a_day(tmp_path):
    path = tmp_path / "hashes.sqlite"
    f = age(write_tree(tmp_path / "t", {"x": b"x"})) / "x"
    cache = HashCache(path)
    assert cache.known(f) is None  # the file made, and swept: nothing to drop
    cache.close()

    def add_old_entry() -> None:
        with sqlite3.connect(path) as db:
            st = f.stat()
            row = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, "ab" * 32, 0)
            db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    add_old_entry()
    cache = HashCache(path)  # swept less than a day ago: a command does not read the whole file
    assert cache.known(f) == "ab" * 32
    cache.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE swept SET at_ns = at_ns - ?", (SWEEP_EVERY_NS,))
    cache = HashCache(path)
    assert cache.known(f) is None
    cache.close()
    assert remembered_in(path) == {}


def test_off_or_unusable_it_only_costs_speed(tmp_path, monkeypatch):
    for name, value in clean_environ(tmp_path / "home").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WABUCKET_CACHE", "0")
    assert HashCache.default().path is None
    monkeypatch.delenv("WABUCKET_CACHE")
    assert HashCache.default().path == tmp_path / "home/.cache/wabucketref/hashes.sqlite"

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    cache = HashCache.default()
    f = age(write_tree(tmp_path / "t", {"x": b"x"})) / "x"
    assert cache.sha256(f) == sha256_file(f)
    cache.close()
    assert cache.known(f) is None and cache.path is None

    first, second = HashCache(tmp_path / "shared.sqlite"), HashCache(tmp_path / "shared.sqlite")
    g = age(write_tree(tmp_path / "u", {"y": b"y"})) / "y"
    first.sha256(f)
    second.sha256(g)
    first.close()
    second.close()
    both = HashCache(tmp_path / "shared.sqlite")
    assert (both.known(f), both.known(g)) == (sha256_file(f), sha256_file(g))
    both.close()


def test_reuse_of_a_download_trusts_nothing_that_changed(env, request, tmp_path):
    """A download remembers what it wrote; --reuse of that folder uses it, except a file changed
    in place at once with its mtime put back."""
    env = use_backend(env, "local", request, tmp_path)
    v0 = age(write_tree(tmp_path / "v0", TREE))
    v1 = age(write_tree(tmp_path / "v1", {**TREE, "part0/file0.bin": b"new" * 10}))
    env.wabucket("upload", str(v0), "-n", "ds", "-t", "dataset", "-a", "one", check=True)
    env.wabucket("upload", str(v1), "-n", "ds", "-t", "dataset", "-a", "two", check=True)
    old = tmp_path / "old"
    env.wabucket("download", "dataset", "ds", "one", "-d", str(old), check=True)
    known = remembered(Path(env.vars["HOME"]))
    assert {known.get(p.stat().st_ino) for p in old.rglob("*.bin")} == set(tree_hashes(v0).values())

    rewrite_keeping_mtime(old / "part1/file1.bin", bytes(len(TREE["part1/file1.bin"])))
    dest = tmp_path / "new"
    proc = env.wabucket("download", "dataset", "ds", "two", "-d", str(dest), "--reuse", str(old), check=True)
    assert tree_hashes(dest) == tree_hashes(v1)
    assert "downloaded 2 files (" in proc.stderr and "; 10 files (" in proc.stderr, proc.stderr

    # into a folder that has the files: the one changed in place is fetched again
    rewrite_keeping_mtime(dest / "part2/file3.bin", bytes(len(TREE["part2/file3.bin"])))
    proc = env.wabucket("download", "dataset", "ds", "two", "-d", str(dest), check=True)
    assert "downloaded 1 file (" in proc.stderr and "11 files (" in proc.stderr, proc.stderr
    assert tree_hashes(dest) == tree_hashes(v1)


def test_verify_local_reads_every_byte(env, request, tmp_path):
    """Bit rot leaves a file's stat as it was: verify --local must not take the remembered hash."""
    env = use_backend(env, "local", request, tmp_path)
    src = age(write_tree(tmp_path / "src", TREE))
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "one", check=True)
    dest = tmp_path / "dl"
    env.wabucket("download", "dataset", "ds", "one", "-d", str(dest), check=True)
    victim = dest / "part2/file0.bin"
    with sqlite3.connect(Path(env.vars["HOME"]) / ".cache/wabucketref/hashes.sqlite") as db:
        assert db.execute("UPDATE hashes SET sha256 = ? WHERE ino = ?", ("0" * 64, victim.stat().st_ino)).rowcount == 1
    env.wabucket("verify", "dataset", "ds", "one", "--local", str(dest), check=True)  # the bytes are right
    with open(victim, "r+b") as f:
        f.write(b"\x00")
    one_error_line(env.wabucket("verify", "dataset", "ds", "one", "--local", str(dest)), "part2/file0.bin")


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_incremental_upload_after_an_edit_in_place(env, request, tmp_path, kind):
    """The dataset folder uploaded, then one file edited in place (mtime put back): the next upload
    copies the others in the bucket without reading them, and sends the edited one."""
    env = use_backend(env, kind, request, tmp_path)
    src = age(write_tree(tmp_path / "src", TREE))
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "one", check=True)
    known = remembered(Path(env.vars["HOME"]))
    assert {known.get(p.stat().st_ino) for p in src.rglob("*.bin")} == set(tree_hashes(src).values())

    rewrite_keeping_mtime(src / "part1/file2.bin", b"E" * len(TREE["part1/file2.bin"]))
    proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "two", check=True)
    assert "uploaded 1 file (" in proc.stderr and "11 files (" in proc.stderr and "copied in the bucket" in proc.stderr
    dest = tmp_path / "two"
    env.wabucket("download", "dataset", "ds", "two", "-d", str(dest), check=True)
    assert tree_hashes(dest) == tree_hashes(src)
    env.wabucket("verify", "dataset", "ds", "two", check=True)
