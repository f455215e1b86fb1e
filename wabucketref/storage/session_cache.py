"""Platform sessions kept between commands: a bucket's location and its temporary credentials.

Without it every command imports apolo_sdk and asks the platform for the same answers again,
about a second before the first byte moves. A file is private to the user (0600 in a 0700
folder), is used only while its credentials have MIN_LIFETIME left and for MAX_AGE at most, and
belongs to the platform login it came from: logging in again (apolo_sdk rewrites its `db`) or
another passed config starts afresh. WABUCKET_CACHE=0 turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from .. import settings

log = logging.getLogger("wabucketref")

MAX_AGE = 600.0  # seconds
MIN_LIFETIME = 300.0  # seconds of credential validity a cached session must still have


def _folder() -> Path | None:
    base = settings.cache_folder()
    return base / "platform" if base is not None else None


def _login() -> tuple[str, list] | None:
    """(identity, stamp) of the platform login apolo_sdk would use; None before the first login.

    The identity names the config (apolo_sdk's choice of folder, and any passed config); the stamp
    changes whenever a file apolo_sdk reads changes: its `db` (rewritten by a new login or a
    project switch), `user.toml`, and the `.apolo.toml` of the working folder or a parent.
    """
    folders = [os.environ.get("APOLO_CONFIG", "~/.apolo"), os.environ.get("NEUROMATION_CONFIG", "~/.neuro")]
    db = next((p for p in (Path(f).expanduser() / "db" for f in folders) if p.exists()), None)
    if db is None:
        return None
    passed = os.environ.get("APOLO_PASSED_CONFIG") or os.environ.get("NEURO_PASSED_CONFIG") or ""
    identity = hashlib.sha256(json.dumps([str(db.resolve()), passed]).encode()).hexdigest()
    return identity, [_file_stamp(p) for p in (db, db.with_name("user.toml"), _project_config())]


def _project_config() -> Path | None:
    try:
        here = Path.cwd()
    except OSError:
        return None
    for parent in (here, *here.parents):
        for name in (".apolo.toml", ".neuro.toml"):
            if (parent / name).exists():
                return parent / name
    return None


def _file_stamp(path: Path | None) -> list | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return None if st is None else [str(path), st.st_ino, st.st_size, st.st_mtime_ns]


def _where(spec: str) -> tuple[Path, list] | None:
    """The file that keeps `spec`'s session, and the login stamp it must carry; None: keep nothing."""
    where = _folder() if settings.cache_enabled() else None
    login = _login() if where is not None else None
    if where is None or login is None:
        return None
    identity, stamp = login
    return where / (hashlib.sha256(f"{identity}\n{spec}".encode()).hexdigest()[:40] + ".json"), stamp


def load(spec: str) -> dict[str, Any] | None:
    """The cached session for a bucket spec, if it is still good to use."""
    found = _where(spec)
    if found is None:
        return None
    path, stamp = found
    try:
        data = json.loads(path.read_text())
        now = time.time()
        if data["stamp"] != stamp or not 0 <= now - data["saved"] <= MAX_AGE:
            return None
        if data["expires"] is not None and data["expires"] - now < MIN_LIFETIME:
            return None
        return data["session"] if isinstance(data["session"], dict) else None
    except (OSError, ValueError, TypeError, KeyError):  # missing, unreadable or not ours: ask afresh
        return None


def save(spec: str, session: dict[str, Any], expires: float | None) -> None:
    """Keep a session (written whole under a temporary name, then renamed); failures only cost speed."""
    found = _where(spec)
    if found is None:
        return
    path, stamp = found
    tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"stamp": stamp, "saved": time.time(), "expires": expires, "session": session}, out)
        os.replace(tmp, path)
    except OSError as e:
        log.debug("platform session not cached: %s", e)
        with contextlib.suppress(OSError):  # e.g. no folder to remove it from
            tmp.unlink()
        return
    _prune(path.parent)


def _prune(where: Path) -> None:
    """Remove sessions too old to be used (each blob:// prefix has its own, so they add up)."""
    too_old = time.time() - MAX_AGE
    try:
        for entry in os.scandir(where):
            if entry.name.endswith(".json") and entry.stat().st_mtime < too_old:
                os.unlink(entry.path)
    except OSError as e:
        log.debug("pruning %s: %s", where, e)


def forget(spec: str) -> None:
    found = _where(spec)
    if found is not None:
        with contextlib.suppress(OSError):
            found[0].unlink()
