"""A folder bucket's own listing (a walk, not obstore's): in key order, links followed, writes
under way left out, sizes and ETags from the file."""

from __future__ import annotations

import asyncio
import os

from wabucketref.storage import open_bucket

NAMES = ["ab", "a-b", "a.b", "a0", "b/c", "a/x", "a/y/z", "é", "A", "a/x-1", "a/x.1", "a/w/deep"]  # "a/" sorts after "a.b"


async def _listing(root, prefix):
    storage, _ = await open_bucket(str(root))
    return [o async for page in storage.iter_objects(prefix, batch=3) for o in page]


def test_folder_bucket_lists_in_key_order(tmp_path):
    top = tmp_path / "bucket" / "data"
    for i, name in enumerate(NAMES):
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(b"x" * i)
    (top / "a" / "y" / "z#1").write_bytes(b"a write under way")
    (top / "linked").symlink_to(top / "a" / "y")  # a folder link: followed
    (top / "a" / "gone").symlink_to(tmp_path / "missing")  # dangling: left out
    os.link(top / "a0", top / "hard")

    listed = asyncio.run(_listing(tmp_path / "bucket", "data"))

    keys = [o.key for o in listed]
    assert keys == sorted([*NAMES, "linked/z", "hard"])
    sizes = {o.key: o.size for o in listed}
    assert all(sizes[n] == i for i, n in enumerate(NAMES)) and sizes["linked/z"] == sizes["a/y/z"]
    etags = {o.key: o.etag for o in listed}
    assert etags["hard"] == etags["a0"] and etags["ab"] != etags["a0"]  # a hard link keeps the inode
    assert asyncio.run(_listing(tmp_path / "bucket", "nothing-here")) == []
