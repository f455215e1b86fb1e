"""The manifest package's own logic: the canonical lines and the digest, the sorting writer,
shards and their checks, selections by shard, case collisions and the walk order. Real files
and real zstd on local disk; the commands' behaviour is in test_shards.py and the others."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from wabucketref.errors import IntegrityError, UsageError
from wabucketref.landing import land
from wabucketref.localtree import walk
from wabucketref.manifest import (
    NO_HASH,
    CaseFolds,
    FileEntry,
    ManifestWriter,
    Selection,
    accept_shard,
    diff,
    entry_line,
    format1_bytes,
    hashed,
    index_bytes,
    read_stored,
    safe_relpath,
    write_manifest,
)
from wabucketref.manifest.entry import check_safe_relpaths
from wabucketref.manifest.shards import ShardWriter


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entries(n: int, seed: int = 0) -> list[FileEntry]:
    rnd = random.Random(seed)
    return [FileEntry(f"d{rnd.randrange(40)}/f{i}.bin", rnd.randrange(1 << 20), sha(str(i))) for i in range(n)]


def old_digest(files: list[FileEntry]) -> str:
    """The digest format 1 always had: the sha256 of its content-only serialisation (json.dumps)."""
    lines = [json.dumps({"format": "wabucketref-manifest/1"}, separators=(",", ":"))]
    lines += [json.dumps({"path": f.path, "size": f.size, "sha256": f.sha256}, ensure_ascii=False, separators=(",", ":"),
                         sort_keys=True) for f in sorted(files, key=lambda f: f.path)]
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


def test_entry_lines_are_json_dumps_lines():
    names = ["plain.txt", 'quo"te', "back\\slash", "tab\tnew\nline", "\x01\x1f\x7f", "ünïcödé/文件/😀", "\u2028\u2029",
             "slash/in/path", "a b&c<d>e'f"]
    for name in names + [chr(c) for c in range(0, 0x3000, 7)]:
        e = FileEntry(name, 12, "a" * 64)
        want = json.dumps({"path": name, "sha256": "a" * 64, "size": 12}, ensure_ascii=False, separators=(",", ":"),
                          sort_keys=True).encode() + b"\n"
        assert entry_line(e) == want, name


@pytest.mark.parametrize("shard_files", ["1", "7", "50000"])
def test_digest_is_the_content_alone_whatever_the_shards(tmp_path, monkeypatch, shard_files):
    monkeypatch.setenv("WABUCKET_SHARD_FILES", shard_files)
    files = entries(500)
    m = write_manifest(tmp_path / "m", files)
    assert m.digest == old_digest(files)
    assert len(m.index.shards) == -(-500 // int(shard_files))
    assert [e.path for e in m] == sorted(f.path for f in files)
    assert (m.file_count, m.total_size) == (500, sum(f.size for f in files))


def test_the_writer_sorts_any_order_by_spilling_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WABUCKET_SHARD_FILES", "100")
    files = entries(2_000, seed=3)
    writer = ManifestWriter(tmp_path / "w", run_files=128)
    for f in reversed(sorted(files, key=lambda f: f.path)):  # every run comes before what was written
        writer.add(f)
    m = writer.close()
    assert [e.path for e in m] == sorted(f.path for f in files)
    assert m.digest == old_digest(files)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [f"out1-{i:05d}.jsonl.zst" for i in range(20)]


def test_a_path_twice_is_refused(tmp_path):
    files = entries(10) + [FileEntry("d1/twice", 1, sha("x")), FileEntry("d1/twice", 2, sha("y"))]
    with pytest.raises(IntegrityError, match="twice"):
        write_manifest(tmp_path / "m", files)
    with pytest.raises(IntegrityError, match="twice"):  # across spilled runs as well
        w = ManifestWriter(tmp_path / "n", run_files=3)
        for f in [*entries(9), FileEntry("d1/twice", 1, sha("x")), *entries(4, seed=9), FileEntry("d1/twice", 1, sha("x"))]:
            w.add(f)
        w.close()


def test_stored_forms_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("WABUCKET_SHARD_FILES", "64")
    m = write_manifest(tmp_path / "m", entries(300))
    one = read_stored(format1_bytes(m, {"alias": "x"}), tmp_path / "one", "test")
    assert one.header == {"alias": "x"} and one.index == m.index and list(one.manifest) == list(m)
    two = read_stored(index_bytes(m.index, {"alias": "x"}), tmp_path / "two", "test")
    assert two.manifest is None and two.index == m.index and two.header["alias"] == "x"


def test_a_blake3_is_stored_and_read_back_but_not_digested(tmp_path, monkeypatch):
    """Uploads store each file's blake3 beside its sha256; the version digest covers the content
    alone, so a version with blake3s and one without, of equal content, have one digest."""
    monkeypatch.setenv("WABUCKET_SHARD_FILES", "64")
    plain = entries(300)
    with_b3 = [FileEntry(f.path, f.size, f.sha256, hashlib.sha256(f.path.encode()).hexdigest()) for f in plain]
    m = write_manifest(tmp_path / "m", with_b3)
    assert m.digest == old_digest(plain) == write_manifest(tmp_path / "p", plain).digest
    assert list(m) == sorted(with_b3, key=lambda f: f.path)  # the shards keep it
    one = read_stored(format1_bytes(m, {}), tmp_path / "one", "test")
    assert list(one.manifest) == list(m) and one.index.digest == m.digest
    first = json.loads(format1_bytes(m, {}).split(b"\n")[1])
    assert first == {"blake3": next(iter(m)).blake3, "path": first["path"], "sha256": first["sha256"],
                     "size": first["size"]}


def test_a_download_checks_the_blake3_where_the_entry_has_one(tmp_path):
    data = b"the bytes of a file" * 100
    right = hashed("f.bin", data)
    assert right.blake3 is not None and right.sha256 == hashlib.sha256(data).hexdigest()
    assert land(tmp_path / "ok.bin", data, right, verify=True) == right.sha256
    assert (tmp_path / "ok.bin").read_bytes() == data
    bad = FileEntry("f.bin", right.size, right.sha256, "0" * 64)  # its sha256 alone would pass
    with pytest.raises(IntegrityError, match="sha256 differs"):
        land(tmp_path / "b3.bin", data, bad, verify=True)
    assert not (tmp_path / "b3.bin").exists()
    assert land(tmp_path / "unchecked.bin", data, bad, verify=False) == right.sha256


def test_format1_written_by_hand_is_read_sorted_and_checked(tmp_path):
    lines = ['{"format": "wabucketref-manifest/1", "root": "r"}', '{"path": "b", "size": 1, "sha256": "%s"}' % sha("b"),
             "", '{"path": "a", "size": 2, "sha256": "%s"}' % sha("a")]
    stored = read_stored(("\n".join(lines) + "\n").encode(), tmp_path / "ok", "hand")
    assert [e.path for e in stored.manifest] == ["a", "b"] and stored.header == {"root": "r"}
    for bad in ['{"path": "../x", "size": 1, "sha256": "%s"}' % sha("x"), '{"path": "x", "size": -1, "sha256": "%s"}' % sha("x"),
                '{"path": "x", "size": 1, "sha256": "short"}', "not json"]:
        with pytest.raises(IntegrityError):
            read_stored(("\n".join([lines[0], bad]) + "\n").encode(), tmp_path / "bad", "hand")
    with pytest.raises(IntegrityError, match="unknown format"):
        read_stored(b'{"format": "wabucketref-manifest/9"}\n', tmp_path / "f9", "hand")


def test_a_shard_is_kept_only_if_it_matches_its_index(tmp_path, monkeypatch):
    monkeypatch.setenv("WABUCKET_SHARD_FILES", "50")
    m = write_manifest(tmp_path / "m", entries(120))
    info, data = m.index.shards[1], m.paths[1].read_bytes()
    accept_shard(data, info, tmp_path / "good", "shard 1")
    assert (tmp_path / "good").read_bytes() == data
    with pytest.raises(IntegrityError, match="sha256 differs"):
        accept_shard(m.paths[2].read_bytes(), info, tmp_path / "swapped", "shard 1")
    with pytest.raises(IntegrityError, match="not a zstd"):
        accept_shard(data[:-9] + b"garbage!!", info, tmp_path / "cut", "shard 1")
    assert not (tmp_path / "swapped").exists() and not (tmp_path / "cut").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "m"]


@pytest.mark.parametrize("bad", [["a/1", "a/0"], ["a/1", "a/1"], ["a/1", "a/../x"], ["/etc/x"], ["a/", "b"]])
def test_a_shard_out_of_order_or_with_an_unsafe_path_is_refused(tmp_path, bad):
    writer = ShardWriter(tmp_path / "s.zst")
    for path in ["0/first", *bad]:
        e = FileEntry(path, 1, sha(path))
        writer.add(e, entry_line(e))
    info = writer.close()
    with pytest.raises(IntegrityError, match="out of order or repeated|unsafe path"):
        accept_shard((tmp_path / "s.zst").read_bytes(), info, tmp_path / "kept", "shard 0")
    assert not (tmp_path / "kept").exists()


def test_paths_checked_together_are_refused_exactly_when_one_alone_is():
    rnd = random.Random(7)
    pieces = ["a", "b", "/", ".", "..", "\\", "\0", ":", "c:", "é", "\n", " "]
    for _ in range(20_000):
        path = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 6)))
        try:
            safe_relpath(path)
            alone = True
        except IntegrityError:
            alone = False
        for group in ([path], ["a/b", path], [path, "z"], ["x", path, "y/z"]):
            try:
                check_safe_relpaths(group)
                together = True
            except IntegrityError:
                together = False
            assert together == alone, group


@pytest.mark.parametrize("shard_files", ["3", "50000"])
def test_diff_of_stored_lines_is_the_diff_of_their_entries(tmp_path, monkeypatch, shard_files):
    """Equal lines are skipped undecoded; the rest are compared as entries: a blake3 on one side
    only is no change, NO_HASH compares by size, and shard boundaries do not matter."""
    monkeypatch.setenv("WABUCKET_SHARD_FILES", shard_files)
    rnd = random.Random(3)
    a = {f"d{i % 5}/f{i:03d}": FileEntry(f"d{i % 5}/f{i:03d}", i, sha(str(i))) for i in range(300)}
    b = dict(a)
    for path in rnd.sample(sorted(a), 120):
        e = a[path]
        match rnd.randrange(6):
            case 0:
                del b[path]
            case 1:
                b[path] = FileEntry(path, e.size + 1, e.sha256)
            case 2:
                b[path] = FileEntry(path, e.size, sha(path))
            case 3:
                b[path] = FileEntry(path, e.size, e.sha256, blake3=sha("b3" + path))
            case 4:
                b[path] = FileEntry(path, e.size, NO_HASH)
            case _:
                b[path + "-new"] = FileEntry(path + "-new", 1, sha(path + "-new"))
    d = diff(write_manifest(tmp_path / "a", a.values()), write_manifest(tmp_path / "b", b.values()))
    added = sorted(p for p in b if p not in a)
    removed = sorted(p for p in a if p not in b)
    changed = sorted(p for p in a if p in b and (a[p].size != b[p].size or NO_HASH not in (a[p].sha256, b[p].sha256)
                                                 and a[p].sha256 != b[p].sha256))
    assert [c.path for c in d.added] == added and [c.path for c in d.removed] == removed
    assert [(c.path, c.size_a, c.size_b) for c in d.changed] == [(p, a[p].size, b[p].size) for p in changed]
    assert d.unchanged == len(a) - len(removed) - len(changed) and changed and added and removed


def test_selection_reads_only_the_shards_that_cover_its_prefixes(tmp_path, monkeypatch):
    monkeypatch.setenv("WABUCKET_SHARD_FILES", "10")
    files = [FileEntry(f"{d}/{i:02d}", 1, sha(f"{d}{i}")) for d in ("a", "b", "c") for i in range(25)]
    m = write_manifest(tmp_path / "m", files)  # shards: a/00-09, a/10-19, a/20-b/04, b/05-14, b/15-24, c/...
    assert len(m.index.shards) == 8
    inside = Selection(include=("a/1*",))  # starts and ends inside shard 1
    assert inside.shards(m.index) == [1]
    across = Selection(include=("b/",))  # starts inside shard 2, ends inside shard 4
    assert across.shards(m.index) == [2, 3, 4]
    assert [e.path for e in across.entries(m)] == [f"b/{i:02d}" for i in range(25)]
    assert across.check(m) == (25, 25)
    assert Selection(include=("*/07",)).shards(m.index) == list(range(8))  # no literal prefix: every shard
    assert Selection(include=("a/1*",), exclude=("c/2*",)).shards(m.index) == [1, 7]
    with pytest.raises(UsageError, match="--exclude 'c/9\\*' matches no file"):
        Selection(include=("a/",), exclude=("c/9*",)).check(m)


def test_unicode_paths_sort_by_code_point_everywhere(tmp_path, monkeypatch):
    """Manifests, SQLite listings and the walk agree: code point order (UTF-8 byte order)."""
    monkeypatch.setenv("WABUCKET_SHARD_FILES", "3")
    names = ["a", "a-b", "a.txt", "B", "c", "é", "z", "ω", "文件", "😀", "Z~", "a/b", "a/é", "a.b/c"]
    root = tmp_path / "tree"
    for n in names:
        if n in ("a", "a.b"):
            continue
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_text(n)
    walked = [f.path for f in walk(root)]
    assert walked == sorted(walked) == sorted(walked, key=lambda p: p.encode())
    m = write_manifest(tmp_path / "m", [FileEntry(p, 1, sha(p)) for p in reversed(walked)])
    assert [e.path for e in m] == walked
    assert Selection(include=("文件",)).shards(m.index) == [i for i, s in enumerate(m.index.shards)
                                                         if s.first <= "文件" <= s.last]


@pytest.mark.parametrize("paths, clash", [
    (["Readme.txt", "README.txt"], True),
    (["Data/x.txt", "data/y.txt"], True),
    (["a/Data/x", "a/b", "a/data/y"], True),
    (["a/x", "b/X", "c/x"], False),
    (["a.txt", "a/b", "A.txt/c"], True),
])
def test_case_collisions_in_sorted_paths(paths, clash):
    folds = CaseFolds()
    ordered = sorted(paths)
    if clash:
        with pytest.raises(IntegrityError, match="collide"):
            for p in ordered:
                folds.check(p)
    else:
        for p in ordered:
            folds.check(p)
