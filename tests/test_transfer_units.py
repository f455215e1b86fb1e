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
    """Write `data` range by range in `order` (chunk by chunk, as lanes do); returns (sha, hashed_to, bytes read back)."""
    starts = list(range(0, len(data), PART))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    reads = 0
    real_pread = os.pread

    def counting_pread(fd_, n, offset):
        nonlocal reads
        out = real_pread(fd_, n, offset)
        reads += len(out)
        return out

    os.pread = counting_pread
    try:
        os.ftruncate(fd, len(data))
        hashing = _InOrderHash(fd, starts)

        def one(i: int) -> None:
            start = starts[i]
            end = min(start + PART, len(data))
            for offset in range(start, end, chunk):
                piece = data[offset:min(offset + chunk, end)]
                os.pwrite(fd, piece, offset)
                hashing.wrote(start, offset, piece)
            hashing.catch_up()

        if threaded:
            threads = [threading.Thread(target=one, args=(i,)) for i in order]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for i in order:
                one(i)
        return hashing.sha.hexdigest(), hashing.hashed_to, reads
    finally:
        os.pread = real_pread
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
    assert in_order[2] == 0  # nothing read back
    reverse = _write_ranges(tmp_path / "b", data, [5, 4, 3, 2, 1, 0], 100, threaded=False)
    assert reverse[0] == hashlib.sha256(data).hexdigest()
    assert reverse[2] == SIZE - PART  # all but the first range came back from the file


def test_a_free_lane_goes_to_the_range_nearest_its_files_start():
    async def main() -> list[str]:
        lanes = _Lanes(1)
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
        hashing = _InOrderHash(fd, [0, PART, 2 * PART])
        for start in (0, 2 * PART):  # ranges 0 and 2 done; range 1 broke off after 300 bytes
            os.pwrite(fd, data[start:start + PART], start)
            hashing.wrote(start, start, data[start:start + PART])
        os.pwrite(fd, data[PART:PART + 300], PART)
        hashing.wrote(PART, PART, data[PART:PART + 300])
        fetched = []
        f = FileEntry("obj", len(data), hashlib.sha256(data).hexdigest())
        _stream_range(store, "obj", f, PART, 2 * PART, hashing, fetched.append, threading.Event())
        assert sum(fetched) == PART - 300
        assert hashing.hashed_to == len(data) and hashing.sha.hexdigest() == f.sha256
    finally:
        os.close(fd)
