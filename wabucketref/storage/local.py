"""Local folder buckets (file:///abs/dir or a path): the embedded default, and volumes mounted into jobs."""

from __future__ import annotations

import itertools
import os
import re
import stat
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from obstore.store import LocalStore

from ..errors import UsageError, WaBucketError
from ..localtree import read_ahead
from ..threads import in_thread
from .base import ObjectInfo
from .objectstore import ObjectStoreStorage

T = TypeVar("T")

# obstore's LocalStore writes NAME through a staging file NAME#N and renames it; so it refuses such
# names as keys, and leaves the staging file behind when a write is interrupted.
_STAGING = re.compile(r".*#\d+")


def _is_staging(name: str) -> bool:
    return "#" in name and _STAGING.fullmatch(name) is not None


class LocalStorage(ObjectStoreStorage):
    """A folder. Small objects are written and read here with plain file calls, on the calling
    thread: for a file of a few KiB, handing the call to obstore's threads costs more than the
    call. Like obstore's LocalStore, a write goes through a staging file `NAME#N` renamed into
    place, so a reader never sees half a file."""

    SMALL = 256 << 10
    copies_are_links = True

    def __init__(self, root: Path):
        super().__init__(LocalStore(root), root.as_uri())
        self.root = root
        self._folders: OrderedDict[str, None] = OrderedDict()  # made lately (a few hundred)

    async def put(self, key: str, data: Any) -> None:
        if len(data) > self.SMALL:
            return await super().put(key, data)
        path = os.path.join(self.root, key)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        staging, fd = self._staging(path, lambda name: os.open(name, flags, 0o644))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(staging, path)

    async def iter_objects(self, prefix: str, batch: int = 1000) -> AsyncIterator[list[ObjectInfo]]:
        """A walk of the folder in a thread: lighter than obstore's listing of a folder (a
        dictionary per object). Its ETags (inode, modification time, size: a hard link keeps
        them) compare with its own listings only."""
        pages = _pages(self.root / prefix.strip("/"), batch)
        while page := await in_thread(next, pages, []):
            yield page

    def objects_in(self, prefix: str) -> FolderObjects:
        return FolderObjects(self.root / prefix.strip("/"))

    def link(self, src_key: str, dst_key: str) -> bool:
        path = os.path.join(self.root, dst_key)
        try:
            self._make_folder_of(path)
            os.link(os.path.join(self.root, src_key), path)
        except OSError:
            return False
        return True

    async def copy(self, src_key: str, dst_key: str) -> None:
        """A hard link (as obstore's LocalStore copies), made here: no bytes move. A link is whole
        from the start: it gets its final name at once, unless a file has that name already."""
        if self.link(src_key, dst_key):
            return
        path, src = os.path.join(self.root, dst_key), os.path.join(self.root, src_key)
        try:
            staging, _ = self._staging(path, lambda name: os.link(src, name))
        except (FileNotFoundError, NotADirectoryError) as e:
            raise FileNotFoundError(f"{src_key}: not found in {self.uri}") from e
        os.replace(staging, path)

    def _staging(self, path: str, make: Callable[[str], T]) -> tuple[str, T]:
        """Make a staging file beside `path` (NAME#N, the first N free, as obstore names them:
        a longest file name leaves no room for more), its folder made first."""
        self._make_folder_of(path)
        for n in itertools.count(1):
            name = f"{path}#{n}"
            try:
                return name, make(name)
            except FileExistsError:  # another writer of this key, or a killed one's leftover
                continue
        raise AssertionError("unreachable")

    def _make_folder_of(self, path: str) -> None:
        folder = os.path.dirname(path)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders[folder] = None
            if len(self._folders) > 256:
                self._folders.popitem(last=False)

    async def get(self, key: str, size: int | None = None) -> Any:
        if size is None or size > self.SMALL:
            return await super().get(key, size)
        try:
            with open(os.path.join(self.root, key), "rb") as f:
                return f.read(size + 1)  # a longer object comes back longer, as a range would
        except (FileNotFoundError, NotADirectoryError) as e:
            raise FileNotFoundError(f"{key}: not found in {self.uri}") from e

    def etag_matches(self, info: ObjectInfo, md5_parts: Sequence[bytes] | None) -> bool | None:
        return None  # local ETags describe inode and mtime, not content: hash the file instead

    def read_ahead(self, keys: Iterable[str]) -> None:
        read_ahead(os.path.join(self.root, key) for key in keys)

    def check_names(self, paths: Iterable[str]) -> None:
        if bad := next((p for p in paths if _is_staging(p.rpartition("/")[2])), None):
            raise UsageError(f"{bad}: a local folder bucket cannot hold a file whose name ends in '#' and digits")

    async def remove_leftovers(self, prefix: str) -> None:
        await in_thread(_remove_staging, str(self.root / prefix))

    async def delete(self, keys: list[str]) -> None:
        """Delete, then remove the folders left empty: a folder is in the way of a file of its name."""
        await super().delete(keys)
        for folder in sorted(
            {p for k in keys for p in (self.root / k).parents if self.root in p.parents}, reverse=True
        ):
            try:
                folder.rmdir()
            except OSError:  # not empty, or gone
                pass


class FolderObjects:
    """A folder's files as objects (storage.Objects), read from disk when asked: walked in key
    order, or looked up by key; nothing stored."""

    def __init__(self, top: Path) -> None:
        self.top = top

    def sorted(self) -> Iterator[ObjectInfo]:
        try:
            fd = os.open(self.top, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            for key, st in _sorted_files(fd, ""):
                yield _info(key, st)
        finally:
            os.close(fd)

    def get(self, key: str) -> ObjectInfo | None:
        if _is_staging(key.rpartition("/")[2]):
            return None
        try:
            st = os.stat(self.top / key)
        except OSError:
            return None
        return _info(key, st) if stat.S_ISREG(st.st_mode) else None

    def close(self) -> None:
        pass


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key, st.st_size, f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}")


def _pages(top: Path, batch: int) -> Iterator[list[ObjectInfo]]:
    objects = FolderObjects(top).sorted()
    while page := list(itertools.islice(objects, batch)):
        yield page


def _sorted_files(folder: int, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
    """The files under the open folder with their keys, in key order (a folder's files come
    where "NAME/" sorts: a listing stored in key order is written faster), without writes under
    way or interrupted ones' leftovers. Links are followed, as obstore's LocalStore does; names
    are looked up relative to their folder (a stat by full path costs more)."""
    with os.scandir(folder) as it:
        names = [(e.name + "/" if _is_folder(e) else e.name) for e in it if not _is_staging(e.name)]
    names.sort()
    for name in names:
        try:
            if not name.endswith("/"):
                yield prefix + name, os.stat(name, dir_fd=folder)
                continue
            sub = os.open(name[:-1], os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder)
        except OSError:  # removed meanwhile, or a dangling link
            continue
        try:
            yield from _sorted_files(sub, prefix + name)
        finally:
            os.close(sub)


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _remove_staging(top: str) -> None:
    for folder, _, names in os.walk(top):
        for name in names:
            if _is_staging(name):
                os.unlink(os.path.join(folder, name))


def open_local(path: str | Path) -> LocalStorage:
    root = Path(path).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only or missing mount
        raise WaBucketError(f"cannot use {root} as a bucket folder: {e.strerror or e}") from e
    return LocalStorage(root)
