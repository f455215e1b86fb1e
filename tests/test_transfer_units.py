"""Pure pieces of the transfer engine: in-order hashing of ranges written side by side, and lane order."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading

import pytest

from wabucketref.ranges import InOrderHash as _InOrderHash
from wabucketref.ranges import Lanes as _Lanes

SIZE = 5 * 1000 + 123
PART = 1000


def _write_ranges(path, data: bytes, order: list[int], chunk: int, threaded: bool) -> tuple[str, int, int]:
    """Write `data` range by range in `order` (chunk by chunk, as lanes do) while the hashing thread
    runs beside them; returns (sha, hashed_to, bytes read back)."""
    starts = list(range(0, len(data), PART))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    reads = 0
    real_preadv = os.preadv

    def counting_preadv(fd_, buffers, offset):
        nonlocal reads
        got = real_preadv(fd_, buffers, offset)
        reads += got
        return got

    os.preadv = counting_preadv
    try:
        os.ftruncate(fd, len(data))
        hashing = _InOrderHash(fd, starts, len(data))
        hasher = threading.Thread(target=hashing.run, args=(threading.Event(),))
        hasher.start()

        def one(i: int) -> None:
            start = starts[i]
            end = min(start + PART, len(data))
            for offset in range(start, end, chunk):
                piece = data[offset:min(offset + chunk, end)]
                os.pwrite(fd, piece, offset)
                hashing.wrote(start, offset, piece)

        if threaded:
            threads = [threading.Thread(target=one, args=(i,)) for i in order]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for i in order:
                one(i)
        hasher.join(timeout=10)
        assert not hasher.is_alive()
        return hashing.hasher.hexdigest(), hashing.hashed_to, reads
    finally:
        os.preadv = real_preadv
        os.close(fd)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("threaded", [False, True], ids=["serial", "threads"])
def test_ranges_in_any_order_hash_to_the_whole_files_sha256(tmp_path, seed, threaded):
    rnd = random.Random(seed)
    data = rnd.randbytes(SIZE)
    order = list(range(-(-SIZE // PART)))
    rnd.shuffle(order)
    sha, hashed_to, _ = _write_ranges(tmp_path / "f", data, order, rnd.choice([1, 7, 256, PART]), threaded)
    assert hashed_to == SIZE
    assert sha == hashlib.sha256(data).hexdigest()


def test_in_order_ranges_are_hashed_as_written_and_others_read_back(tmp_path):
    data = random.Random(1).randbytes(SIZE)
    in_order = _write_ranges(tmp_path / "a", data, [0, 1, 2, 3, 4, 5], 100, threaded=False)
    assert in_order[:2] == (hashlib.sha256(data).hexdigest(), SIZE)
    assert in_order[2] == 0  # nothing read back
    reverse = _write_ranges(tmp_path / "b", data, [5, 4, 3, 2, 1, 0], 100, threaded=False)
    assert reverse[0] == hashlib.sha256(data).hexdigest()
    assert reverse[2] == SIZE - PART  # all but the first range came back from the file


def test_a_free_lane_goes_to_the_range_nearest_its_files_start():
    async def main() -> list[str]:
        lanes = _Lanes(1, files=1)
        got = []
        await lanes.acquire(0)  # held by file a, range 0

        async def want(label: str, index: int) -> None:
            await lanes.acquire(index)
            got.append(label)
            await asyncio.sleep(0)
            lanes.release()

        waiters = [asyncio.ensure_future(want(label, index)) for label, index in [("a1", 1), ("a2", 2), ("b0", 0), ("c0", 0)]]
        cancelled = asyncio.ensure_future(want("never", 0))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        lanes.release()
        await asyncio.gather(*waiters)
        assert lanes.free == 1  # every lane came back, the cancelled waiter's too
        lanes.close()
        return got

    assert asyncio.run(main()) == ["b0", "c0", "a1", "a2"]


def test_a_retried_range_resumes_where_the_last_try_stopped_writing(tmp_path):
    """Against a real obstore LocalStore: the second try of a range asks only for what is missing."""
    import threading

    from wabucketref.manifest import FileEntry
    from wabucketref.ranges import stream_range as _stream_range
    from wabucketref.storage.local import LocalStorage

    data = random.Random(2).randbytes(3 * PART)
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / "obj").write_bytes(data)
    store = LocalStorage(tmp_path / "bucket")
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, len(data))
        hashing = _InOrderHash(fd, [0, PART, 2 * PART], len(data))
        for start in (0, 2 * PART):  # ranges 0 and 2 done; range 1 broke off after 300 bytes
            os.pwrite(fd, data[start:start + PART], start)
            hashing.wrote(start, start, data[start:start + PART])
        os.pwrite(fd, data[PART:PART + 300], PART)
        hashing.wrote(PART, PART, data[PART:PART + 300])
        fetched = []
        f = FileEntry("obj", len(data), hashlib.sha256(data).hexdigest())
        _stream_range(store, "obj", f, PART, 2 * PART, hashing, fetched.append, threading.Event())
        assert sum(fetched) == PART - 300
        hashing.run(threading.Event())  # everything is written: hashes it all and returns
        assert hashing.hashed_to == len(data) and hashing.hasher.hexdigest() == f.sha256
    finally:
        os.close(fd)


def test_a_whole_file_tried_again_is_hashed_from_its_first_byte(tmp_path):
    """From a server that ignores ranges a file comes whole: a try that broke off (here after half
    the file, of other bytes) is started over from byte 0, its bytes and their hash dropped, while
    the hashing thread runs beside."""
    from wabucketref.manifest import FileEntry
    from wabucketref.ranges import stream_range as _stream_range
    from wabucketref.storage.local import LocalStorage

    data = random.Random(3).randbytes(3 * PART)
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / "obj").write_bytes(data)
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, len(data))
        hashing = _InOrderHash(fd, [0], len(data))
        hasher = threading.Thread(target=hashing.run, args=(threading.Event(),))
        hasher.start()
        junk = bytes(len(data) // 2)
        os.pwrite(fd, junk, 0)
        hashing.wrote(0, 0, junk)
        fetched = []
        f = FileEntry("obj", len(data), hashlib.sha256(data).hexdigest())
        _stream_range(LocalStorage(tmp_path / "bucket"), "obj", f, 0, len(data), hashing, fetched.append,
                      threading.Event(), whole=True)
        hasher.join(timeout=10)
        assert not hasher.is_alive()
        assert sum(fetched) == len(data)
        assert hashing.hashed_to == len(data) and hashing.hasher.hexdigest() == f.sha256
    finally:
        os.close(fd)


def test_a_stopped_hashing_thread_ends_without_its_bytes(tmp_path):
    """Cancelling a download stops its hashing thread (it may be waiting for bytes that will never
    come) before the part file is closed and removed."""
    from wabucketref.ranges import Stopped

    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT)
    try:
        hashing = _InOrderHash(fd, [0, PART], 2 * PART)
        stop = threading.Event()
        ended: list[BaseException] = []

        def run() -> None:
            try:
                hashing.run(stop)
            except BaseException as e:  # noqa: BLE001
                ended.append(e)

        hasher = threading.Thread(target=run)
        hasher.start()
        stop.set()
        hasher.join(timeout=5)
        assert not hasher.is_alive() and isinstance(ended[0], Stopped)
    finally:
        os.close(fd)


@pytest.mark.parametrize("listed", [1000, 2999, 3000])
def test_an_object_hashed_where_it_lies_is_hashed_whole_even_if_it_grew_since_its_listing(tmp_path, listed):
    """verify and link read a small object with its listed size: one that grew since is still
    hashed whole, as it is now, never cut at the listed size."""
    from wabucketref.storage.local import LocalStorage
    from wabucketref.transfer import _remote_entry

    data = random.Random(3).randbytes(3000)
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket" / "obj").write_bytes(data)
    entry = asyncio.run(_remote_entry(LocalStorage(tmp_path / "bucket"), "obj", "obj", listed))
    assert (entry.size, entry.sha256) == (len(data), hashlib.sha256(data).hexdigest())
