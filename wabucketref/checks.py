"""Checks of what a user passes in, run once per command before anything moves (UsageError)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import UsageError
from .layout import MANAGED_ALIAS, META_DIR
from .storage import check_prefix

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_]+$")
RUN_CONFIG_HASH = "!run-config-hash"  # the original tool's alias: the sha256 of the run's config


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value) or value in (".", ".."):
        raise UsageError(f"invalid artifact {what} {value!r}: use 1-128 of A-Z a-z 0-9 _ . -")
    return value


def check_qualified_name(value: str) -> str:
    """An artifact name, optionally qualified as project/name or entity/project/name: its last part."""
    parts = value.split("/") if isinstance(value, str) else [value]
    if len(parts) > 3:
        raise UsageError(f"invalid artifact name {value!r}: at most entity/project/name")
    for i, part in enumerate(parts):
        check_name(part, "name" if i == len(parts) - 1 else "name qualifier")
    return parts[-1]


def check_alias(alias: str, *, for_upload: bool) -> str:
    if (
        not isinstance(alias, str)
        or not alias
        or len(alias) > 128
        or any(c in alias for c in "/:\\\0")
        or alias in (".", "..", META_DIR)
    ):
        raise UsageError(f"invalid alias {alias!r}: 1-128 characters, without / : or \\")
    if for_upload and MANAGED_ALIAS.fullmatch(alias):
        raise UsageError(f"alias {alias!r} is managed by W&B; choose another")
    if for_upload and (bad := sorted({c for c in alias if c in "#?%" or ord(c) < 32})):
        # the alias is the last segment of the reference URI: these would change what it names
        raise UsageError(f"invalid alias {alias!r}: {' '.join(map(repr, bad))} cannot be part of a bucket URI")
    return alias


def check_new_alias(alias: str | None) -> None:
    """The alias of an upload or link: None (a new UUID), the run-config hash, or a name of the user's."""
    if alias not in (None, RUN_CONFIG_HASH):
        check_alias(alias, for_upload=True)


def check_suffix(suffix: str | None) -> str:
    """The ::set-output names' suffix, as it is appended (`_SUFFIX`, or nothing)."""
    if suffix is None or suffix == "":
        return ""
    if not SUFFIX_RE.match(suffix):
        raise UsageError(f"invalid suffix {suffix!r}: use A-Z a-z 0-9 _")
    return f"_{suffix}"


def check_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """W&B stores metadata as JSON: refuse what it cannot hold before any byte moves."""
    try:
        json.dumps(metadata or {})
    except (TypeError, ValueError) as e:
        raise UsageError(f"artifact metadata must be JSON-serializable: {e}") from e
    return dict(metadata or {})


def check_count(value: object, what: str, low: int, high: int | None = None) -> int:
    """An integer setting (concurrency, retries) within its range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise UsageError(f"{what} must be an integer {span}, not {value!r}")
    return value


def check_bucket_path(bucket_path: object) -> str:
    """A folder to link: a path inside the bucket, or a full URI."""
    if not isinstance(bucket_path, str):
        raise UsageError(f"invalid bucket path {bucket_path!r}")
    check_prefix(bucket_path.split("://")[-1], bucket_path)
    if not bucket_path.strip("/"):
        raise UsageError("no folder to link: give a path inside the bucket, or a full URI")
    return bucket_path


def check_project(project: str | None) -> str:
    """Every command records in a W&B project: one must be named (unless W&B is disabled)."""
    if not project:
        raise UsageError(
            "no W&B project: pass --project-name (project_name= in the SDK), set WANDB_PROJECT, "
            "or run `wandb init` here to name one (with WANDB_MODE=disabled none is needed)"
        )
    return project


def check_patterns(patterns: str | Iterable[str] | None, option: str) -> tuple[str, ...]:
    """--include / --exclude globs: a string or several."""
    found = (patterns,) if isinstance(patterns, str) else tuple(patterns or ())
    for p in found:
        if not isinstance(p, str) or not p.strip():
            raise UsageError(f"invalid {option} pattern {p!r}: a glob on the path in the artifact, as in '*.bin'")
    return found


def check_share(value: str | tuple[int, int] | None, option: str, auto: bool = True) -> tuple[int, int] | None:
    """INDEX/COUNT (INDEX from 0, as torch's RANK), `auto` (RANK and WORLD_SIZE from the
    environment, as torchrun sets them), or (index, count) from the SDK."""
    if value is None:
        return None
    text = value if isinstance(value, str) else "/".join(map(str, value))
    if text == "auto" and auto:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            raise UsageError(f"{option} auto takes RANK and WORLD_SIZE from the environment (as torchrun sets them)")
        text = f"{rank}/{world}"
    index, slash, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise UsageError(f"invalid {option} {text!r}: INDEX/COUNT (as 0/4){' or auto' * auto}") from None
    if not slash or n < 1 or not 0 <= i < n:
        raise UsageError(f"invalid {option} {text!r}: INDEX/COUNT with 0 <= INDEX < COUNT (as 0/4){' or auto' * auto}")
    return i, n


def check_folders(folders: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None, option: str) -> list[Path]:
    """Folders that must exist (--reuse)."""
    found = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders or [])
    paths = [Path(f) for f in found]
    for p in paths:
        if not p.is_dir():
            raise UsageError(f"{option} {p}: {'not a folder' if p.exists() else 'no such folder'}")
    return paths


def check_base(base: str | None, incremental: bool, alias: str | None, as_reference: bool) -> str | None:
    """The base version of an incremental upload: an alias, `latest` (the default), or None (none)."""
    if base is None:
        return "latest" if incremental and as_reference else None
    if not incremental:
        raise UsageError("a base version was given with incremental uploads turned off (--no-base)")
    if not as_reference:
        raise UsageError("--base needs a bucket upload: --no-reff stores the files in W&B")
    check_alias(base, for_upload=False)
    if base == alias:
        raise UsageError(f"the base version {base!r} is the alias being uploaded; name another")
    return base
