"""Incremental uploads: files the base version already holds (same size and sha256) are copied inside
the bucket instead of sent, on every kind of bucket and S3 server of the suite; the result is exactly a
full upload's; a server that refuses copies gets the bytes sent; an interrupted one resumes."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Env, RawBucket, tree_hashes, use_backend
from tests.conftest import write_tree as write
from tests.servers.faultproxy import FaultProxy, Reject

LARGE = 9 << 20  # above transfer.SMALL_FILE: sent in parts, so its copy has a multipart ETag to check


def summary(stderr: str) -> dict[str, int]:
    """The upload's summary line: files sent, copied in the bucket and already there (and their bytes)."""
    m = re.search(r"^wabucket: uploaded (\d+) files? \((.*?)\) in [\d.]+ s, [\d.]+ MB/s(.*)$", stderr, re.MULTILINE)
    assert m, f"no upload summary line in:\n{stderr}"
    rest = m.group(3)
    copied = re.search(r"; (\d+) files? \([^)]*\) copied in the bucket", rest)
    there = re.search(r"; (\d+) files? \([^)]*\) (?:was|were) already there", rest)
    return {
        "sent": int(m.group(1)),
        "copied": int(copied.group(1)) if copied else 0,
        "there": int(there.group(1)) if there else 0,
    }


def first_version(seed: int = 1, large: bool = True) -> dict[str, bytes]:
    rnd = random.Random(seed)
    files = {f"d{i % 3}/f{i:02d}.bin": rnd.randbytes(1000 + i) for i in range(12)}
    files["empty.bin"] = b""
    files["ünï cødé/名前.txt"] = b"unicode and a space"
    if large:
        files["models/weights.bin"] = rnd.randbytes(LARGE)
    return files


def next_version(files: dict[str, bytes]) -> tuple[dict[str, bytes], int, int]:
    """(files, how many must be sent, how many copied): one changed, one added, one removed, one moved."""
    new = dict(files)
    new["d0/f00.bin"] = b"changed " + files["d0/f00.bin"]
    new["added/new.bin"] = os.urandom(3000)
    del new["d1/f01.bin"]
    new["moved/f02.bin"] = new.pop("d2/f02.bin")  # same content, another path: copied
    return new, 2, len(new) - 2


def upload(env: Env, src: Path, alias: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", alias, *args, check=check)


def stored(raw: RawBucket, alias: str) -> dict[str, bytes]:
    prefix = f"dataset/ds/{alias}/"
    return {k[len(prefix):]: raw.read(k) for k in raw.keys(prefix)}


def record(raw: RawBucket, alias: str) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in raw.read(f"dataset/ds/.wabucketref/{alias}.jsonl").splitlines()]
    return lines[0], lines[1:]


def download(env: Env, alias: str, dest: Path) -> dict[str, str]:
    env.wabucket("download", "dataset", "ds", alias, "-d", str(dest), check=True)
    env.wabucket("verify", "dataset", "ds", alias, check=True)
    return tree_hashes(dest)


def via(env: Env, proxy: FaultProxy) -> None:
    env.vars.update(AWS_ENDPOINT_URL=proxy.url, AWS_ENDPOINT_URL_S3=proxy.url, AWS_S3_ENDPOINT_URL=proxy.url)


class CopyCounter:
    """A FaultProxy gate that lets everything through and counts S3 copies (PUT with x-amz-copy-source)
    and plain PUTs of an alias's data."""

    def __init__(self, alias_path: str) -> None:
        self.alias_path = alias_path
        self.copies: list[str] = []
        self.puts: list[str] = []

    def __call__(self, req) -> None:
        if req.method != "PUT" or self.alias_path not in req.target:
            return
        (self.copies if req.header("x-amz-copy-source") else self.puts).append(req.target)


# ------------------------------------------------------------------ every kind of bucket and server


def test_incremental_upload_equals_a_full_one(any_server_env, tmp_path):
    """v2 of an artifact copies from v1 what is unchanged (the default base: the latest version); its
    folder and manifest are exactly those of a full upload of the same folder (--no-base)."""
    env = any_server_env
    v1 = first_version()
    upload(env, write(tmp_path / "v1", v1), "one")
    v2, n_sent, n_copied = next_version(v1)
    src = write(tmp_path / "v2", v2)

    inc = upload(env, src, "two")
    assert summary(inc.stderr) == {"sent": n_sent, "copied": n_copied, "there": 0}, inc.stderr
    copied_bytes = sum(len(v2[p]) for p in v2 if p not in ("d0/f00.bin", "added/new.bin"))
    assert f"{n_copied} files ({copied_bytes / 1e6:.1f} MB) copied in the bucket" in inc.stderr, inc.stderr
    assert "from here" not in inc.stderr and "refuses copies" not in inc.stderr, inc.stderr  # every copy checked out

    full = upload(env, src, "full", "--no-base")
    assert summary(full.stderr) == {"sent": len(v2), "copied": 0, "there": 0}, full.stderr

    raw = RawBucket(env)
    assert stored(raw, "two") == stored(raw, "full") == v2
    (h_inc, files_inc), (h_full, files_full) = record(raw, "two"), record(raw, "full")
    assert files_inc == files_full and h_inc["digest"] == h_full["digest"]
    assert download(env, "two", tmp_path / "dl") == tree_hashes(src)
    assert download(env, "one", tmp_path / "dl1") == tree_hashes(tmp_path / "v1")  # the base is untouched


def test_explicit_base_and_no_base(env, tmp_path):
    """--base names an older version to copy from; --no-base sends everything; a base that does not
    exist, or one given with --no-base, is refused before anything is written (the choice of the base
    is the same on every kind of bucket)."""
    v1 = first_version(large=False)
    upload(env, write(tmp_path / "v1", v1), "one")
    other = {f"o{i}.bin": os.urandom(500) for i in range(4)}
    upload(env, write(tmp_path / "other", other), "other")  # now the latest: shares nothing with v1

    back = upload(env, tmp_path / "v1", "again")
    assert summary(back.stderr) == {"sent": len(v1), "copied": 0, "there": 0}, back.stderr
    picked = upload(env, tmp_path / "v1", "picked", "--base", "one")
    assert summary(picked.stderr) == {"sent": 0, "copied": len(v1), "there": 0}, picked.stderr
    assert "incremental upload: files equal to a file of one (" in picked.stderr, picked.stderr

    raw = RawBucket(env)
    before = raw.keys()
    missing = upload(env, tmp_path / "v1", "x1", "--base", "nope", check=False)
    assert missing.returncode == 1 and "--base nope: no record of dataset/ds:nope" in missing.stderr, missing.stderr
    both = upload(env, tmp_path / "v1", "x2", "--base", "one", "--no-base", check=False)
    assert both.returncode == 2 and "--no-base" in both.stderr, both.stderr
    itself = upload(env, tmp_path / "v1", "one", "--base", "one", "--overwrite", check=False)
    assert itself.returncode == 2 and "is the alias being uploaded" in itself.stderr, itself.stderr
    assert raw.keys() == before  # nothing written by the refused ones

    assert stored(raw, "picked") == stored(raw, "one") == v1
    assert download(env, "picked", tmp_path / "dl") == tree_hashes(tmp_path / "v1")


def test_sdk_incremental_flags(env, tmp_path):
    """The SDK: `base=` picks the version, `incremental=False` sends everything."""
    write(tmp_path / "v1", first_version(large=False))
    code = f"""
import logging, sys
from wabucketref import WaBucketRefAPI
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="wabucket: %(message)s")
with WaBucketRefAPI(bucket={env.bucket!r}, project_name="proj") as api:
    api.upload_artifact({str(tmp_path / "v1")!r}, "ds", "dataset", "one")
    api.upload_artifact({str(tmp_path / "v1")!r}, "ds", "dataset", "two", base="one")
    api.upload_artifact({str(tmp_path / "v1")!r}, "ds", "dataset", "three", incremental=False)
"""
    proc = env.python(code)
    lines = [summary(part) for part in re.split(r"(?=^wabucket: uploaded)", proc.stderr, flags=re.M) if "uploaded" in part]
    assert lines == [
        {"sent": 14, "copied": 0, "there": 0},
        {"sent": 0, "copied": 14, "there": 0},
        {"sent": 14, "copied": 0, "there": 0},
    ], proc.stderr


# ------------------------------------------------------------------ what the server sees


@pytest.fixture
def s3_env(env, request, tmp_path) -> Env:
    return use_backend(env, "s3", request, tmp_path)


def test_copies_are_server_side(s3_env, seaweed, tmp_path):
    """The S3 server sees one CopyObject per unchanged file and a PUT with a body only for the others."""
    env = s3_env
    v1 = first_version()
    upload(env, write(tmp_path / "v1", v1), "one")
    v2, n_sent, n_copied = next_version(v1)
    gate = CopyCounter("/dataset/ds/two/")
    with FaultProxy(seaweed.endpoint_url, gate=gate) as proxy:
        via(env, proxy)
        inc = upload(env, write(tmp_path / "v2", v2), "two")
    env.vars.update(seaweed.env())
    assert summary(inc.stderr) == {"sent": n_sent, "copied": n_copied, "there": 0}, inc.stderr
    assert len(gate.copies) == n_copied and len(gate.puts) == n_sent, (gate.copies, gate.puts)
    assert proxy.count("PUT", 200) == n_copied + n_sent + 2  # and the marker and the record
    assert stored(RawBucket(env), "two") == v2


def test_refused_copies_fall_back_to_sending(s3_env, seaweed, tmp_path):
    """A server without CopyObject (501 NotImplemented): one warning, every file sent, nothing lost."""
    env = s3_env
    v1 = first_version()
    upload(env, write(tmp_path / "v1", v1), "one")
    v2, _, _ = next_version(v1)

    def no_copies(req) -> None:
        if req.method == "PUT" and req.header("x-amz-copy-source"):
            raise Reject(501, "NotImplemented", "A header you provided implies functionality that is not implemented")

    with FaultProxy(seaweed.endpoint_url, gate=no_copies) as proxy:
        via(env, proxy)
        inc = upload(env, write(tmp_path / "v2", v2), "two")
    env.vars.update(seaweed.env())
    assert summary(inc.stderr) == {"sent": len(v2), "copied": 0, "there": 0}, inc.stderr
    assert inc.stderr.count("refuses copies inside the bucket (NotImplemented)") == 1, inc.stderr
    assert 1 <= proxy.count("PUT", 501) <= 32, proxy.log  # learned once: at most the copies already in flight
    assert stored(RawBucket(env), "two") == v2
    assert download(env, "two", tmp_path / "dl") == tree_hashes(tmp_path / "v2")


def test_a_tampered_base_object_is_not_copied(s3_env, tmp_path):
    """A base object whose content no longer matches its manifest (its ETag says so) is not copied:
    the local file is sent."""
    env = s3_env
    v1 = first_version(large=False)
    upload(env, write(tmp_path / "v1", v1), "one")
    raw = RawBucket(env)
    raw.write("dataset/ds/one/d0/f03.bin", b"X" * len(v1["d0/f03.bin"]))  # same size, other bytes
    inc = upload(env, tmp_path / "v1", "two")
    assert summary(inc.stderr) == {"sent": 1, "copied": len(v1) - 1, "there": 0}, inc.stderr
    assert "d0/f03.bin: the base version's copy differs from its manifest" in inc.stderr, inc.stderr
    assert stored(raw, "two") == v1


@pytest.mark.parametrize("hashes", ["remembered", "not remembered"])
def test_a_folder_bucket_links_only_base_objects_still_whole(env, tmp_path, hashes):
    """In a folder bucket a copy is a hard link; files whose hash is remembered and whose base
    object is at their own path are linked a batch at a time. A base object that is gone or no
    longer of its manifest's size is not linked (that file is sent); moved content is still found."""
    v1 = first_version(large=False)
    src = write(tmp_path / "v1", v1)
    upload(env, src, "one")
    raw = RawBucket(env)
    gone, shorter, kept = "d0/f03.bin", "d1/f04.bin", "d2/f05.bin"
    raw.delete(f"dataset/ds/one/{gone}")
    raw.write(f"dataset/ds/one/{shorter}", b"x")
    v2, n_sent, n_copied = next_version(v1)
    src = write(tmp_path / "v2", v2)
    if hashes == "remembered":  # files that have sat there: their hashes are kept (hashcache.RACY_NS)
        then = time.time_ns() - 3600 * 10**9
        for f in src.rglob("*.*"):
            os.utime(f, ns=(then, then))
        env.wabucket("diff", "dataset", "ds", "one", "--local", str(src), check=False)  # hashes every file
    inc = upload(env, src, "two")
    assert summary(inc.stderr) == {"sent": n_sent + 2, "copied": n_copied - 2, "there": 0}, inc.stderr
    assert stored(raw, "two") == v2
    root = Path(env.bucket) / "dataset/ds"
    assert (root / "one" / kept).stat().st_ino == (root / "two" / kept).stat().st_ino
    assert (root / "one/d2/f02.bin").stat().st_ino == (root / "two/moved/f02.bin").stat().st_ino
    assert download(env, "two", tmp_path / "dl") == tree_hashes(src)


# ------------------------------------------------------------------ interrupted, then resumed


def test_an_interrupted_incremental_upload_resumes(s3_env, seaweed, tmp_path):
    """Killed (SIGKILL) after some copies and some sends: the same command resumes it, copying and
    sending only what is missing; the result equals a full upload."""
    env = s3_env
    rnd = random.Random(3)
    v1 = {f"f{i:02d}.bin": rnd.randbytes(40_000) for i in range(24)}
    upload(env, write(tmp_path / "v1", v1), "one")
    v2 = {p: (data if i % 2 else rnd.randbytes(40_000)) for i, (p, data) in enumerate(sorted(v1.items()))}
    src = write(tmp_path / "v2", v2)
    gate = CopyCounter("/dataset/ds/two/")
    with FaultProxy(seaweed.endpoint_url, gate=gate, bandwidth=200_000) as proxy:
        via(env, proxy)
        proc = subprocess.Popen(
            [sys.executable, "-m", "wabucketref", "--bucket", env.bucket, "--project-name", "proj",
             "--concurrency", "2", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "two"],
            env=env.vars, cwd=env.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            start = time.monotonic()
            while not (len(gate.copies) >= 3 and len(gate.puts) >= 3):
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() - start < 60, "no progress"
                time.sleep(0.02)
            proc.kill()
        finally:
            proc.wait()
    # the proxy is stopped: nothing more reaches the server
    done_before = set(stored(RawBucket(env), "two"))
    assert 0 < len(done_before) < len(v2)
    gate = CopyCounter("/dataset/ds/two/")
    with FaultProxy(seaweed.endpoint_url, gate=gate) as proxy:
        via(env, proxy)
        rerun = upload(env, src, "two")
    env.vars.update(seaweed.env())
    s = summary(rerun.stderr)
    assert "resuming an interrupted upload" in rerun.stderr, rerun.stderr
    assert s["there"] == len(done_before) and s["sent"] + s["copied"] + s["there"] == len(v2), (s, done_before, rerun.stderr)
    assert s["sent"] and s["copied"], s  # both kinds were left to do
    assert s["sent"] == len(gate.puts) and s["copied"] == len(gate.copies), (s, gate.puts, gate.copies)
    assert s["sent"] == len([p for p in v2 if v2[p] != v1[p] and p not in done_before]), s
    raw = RawBucket(env)
    assert stored(raw, "two") == v2
    assert raw.keys("dataset/ds/.wabucketref/") == ["dataset/ds/.wabucketref/one.jsonl", "dataset/ds/.wabucketref/two.jsonl"]
    upload(env, src, "full", "--no-base")
    assert record(raw, "two")[1] == record(raw, "full")[1]
    assert download(env, "two", tmp_path / "dl") == tree_hashes(src)


@pytest.mark.parametrize("kind", ["local", "platform-azure"])
def test_resume_where_etags_say_nothing_of_content(env, request, tmp_path, kind):
    """A folder bucket (copies are hard links) and Azure (ETags name versions): an alias that an
    interrupted incremental upload left half done is finished by the same command, with the objects
    already copied checked by size and copied again only where their ETag is not the source's."""
    use_backend(env, kind, request, tmp_path)
    v1 = first_version(large=False)
    upload(env, write(tmp_path / "v1", v1), "one")
    raw = RawBucket(env)
    # as a killed upload left it: its marker, two of the files (one copied by the server, one written)
    raw.write("dataset/ds/.wabucketref/two.partial", b"")
    raw.write("dataset/ds/two/d0/f00.bin", v1["d0/f00.bin"])
    rerun = upload(env, tmp_path / "v1", "two")
    s = summary(rerun.stderr)
    assert "resuming an interrupted upload" in rerun.stderr, rerun.stderr
    assert s == {"sent": 0, "copied": len(v1), "there": 0}, s  # the one written there is not the base's: copied
    assert stored(raw, "two") == v1
    assert raw.keys("dataset/ds/.wabucketref/") == ["dataset/ds/.wabucketref/one.jsonl", "dataset/ds/.wabucketref/two.jsonl"]
    assert download(env, "two", tmp_path / "dl") == tree_hashes(tmp_path / "v1")
