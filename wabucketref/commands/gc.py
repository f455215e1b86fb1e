"""gc: bucket data that no existing W&B version refers to.

    1. W&B (online only): every version of every artifact of the entity/project, and what each
       refers to; any failure here ends gc before anything is deleted
    2. walk the bucket: for each TYPE/NAME, its records and markers (.wabucketref/) and its
       alias folders (the records' headers only, never their file lists)
    3. decide: garbage (a record of this entity/project whose version W&B no longer has; an
       upload of it abandoned longer than `older_than`; the shards of a big version's manifest
       that no record and no W&B version has, once no upload of the artifact is running),
       unattributable (reported, never deleted: no record, a record that names no
       entity/project, an unreadable one), or kept
    4. report; with delete=True, remove the garbage, a batch of keys at a time

Nothing is garbage that an existing version of any artifact of the project refers to: by its
reference (the folder, a file in it, or a folder above it), or, as downloads find an alias's own
copy, by an alias of the same name with the same content.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from .. import tracking
from ..errors import UsageError, WaBucketError
from ..layout import (
    MARKER_SUFFIX,
    META_DIR,
    PART_NAME,
    PARTS_SUFFIX,
    RECORD_SUFFIX,
    SHARDS_DIR,
    ArtifactKeys,
    BucketRecord,
    join,
)
from ..manifest import peek_header
from ..marker import holder
from ..records import record_header
from ..runtime import Context
from ..storage import Storage

log = logging.getLogger("wabucketref")


@dataclass
class Item:
    """One alias's data in the bucket that gc reports."""

    what: str  # TYPE/NAME:ALIAS
    why: str
    data: str | None = None  # the data prefix removed with it (None: only the bookkeeping keys)
    keys: list[str] = field(default_factory=list)  # its record and marker
    files: int = 0  # under `data`, plus the keys
    bytes: int = 0


@dataclass
class Report:
    garbage: list[Item] = field(default_factory=list)
    unattributable: list[Item] = field(default_factory=list)
    kept: int = 0  # aliases of this entity/project that are referenced, or being uploaded
    others: int = 0  # records and uploads of other W&B entities/projects, left alone
    deleted: bool = False

    @property
    def files(self) -> int:
        return sum(i.files for i in self.garbage)

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.garbage)


def gc(ctx: Context, type_: str | None, name: str | None, older_than: float, delete: bool) -> Report:
    if tracking.mode() != "online":
        raise UsageError("gc needs W&B online: offline it cannot know which versions still exist")
    tracking.preflight()
    storage, base = ctx.home()
    assert ctx.project is not None  # online: the API requires a project
    entity, versions = tracking.project_versions(ctx.project, ctx.entity)  # step 1: fails closed
    refs = _References(storage, versions)
    report = ctx.run(_walk(storage, base, type_, name, (entity, ctx.project), refs, older_than))
    if delete and report.garbage:
        ctx.run(_delete(storage, report.garbage))
        report.deleted = True
    return report


class _References:
    """What the existing versions refer to, indexed for prefix questions."""

    def __init__(self, storage: Storage, versions: list[tracking.VersionRefs]) -> None:
        self.at: set[str] = set()  # keys (and key tails of references spelled otherwise) referred to
        self.below: set[str] = set()  # every folder above a referenced key
        root = storage.uri + "/"
        for v in versions:
            for ref in v.refs:
                ref = ref.rstrip("/")
                if ref.startswith(root):
                    self._add(ref[len(root) :])
                elif "://" in ref:  # another spelling of a bucket (or another bucket): every tail of its path
                    parts = [p for p in ref.split("://", 1)[1].split("/")[1:] if p]
                    for i in range(len(parts)):
                        self._add("/".join(parts[i:]))
        self.aliases: dict[tuple[str, str, str], set[str | None]] = {}
        self.digests = {v.digest for v in versions if v.digest}  # the content of every version
        for v in versions:
            for alias in v.aliases:
                self.aliases.setdefault((v.type, v.name, alias), set()).add(v.digest)

    def _add(self, key: str) -> None:
        self.at.add(key)
        parts = key.split("/")
        for i in range(1, len(parts)):
            self.below.add("/".join(parts[:i]))

    def refer_to(self, key: str) -> bool:
        """Does a version refer to `key`, to something in it, or to a folder above it?"""
        if key in self.at or key in self.below:
            return True
        parts = key.split("/")
        return any("/".join(parts[:i]) in self.at for i in range(1, len(parts)))

    def alias_copy(self, type_: str, name: str, alias: str, digest: str | None) -> bool:
        """Is there a version with this alias whose content this copy is (None: any content)?"""
        digests = self.aliases.get((type_, name, alias), set())
        return bool(digests) and (digest is None or digest in digests or None in digests)


async def _walk(
    storage: Storage,
    base: str,
    type_: str | None,
    name: str | None,
    ours: tuple[str, str],
    refs: _References,
    older_than: float,
) -> Report:
    report = Report()
    types = [type_] if type_ else await storage.list_folders(base)
    for t in types:
        names = [name] if name else await storage.list_folders(join(base, t))
        for n in names:
            if n == META_DIR:
                continue
            await _artifact(storage, ArtifactKeys(base, t, n), ours, refs, older_than, report)
    return report


async def _artifact(
    storage: Storage,
    artifact: ArtifactKeys,
    ours: tuple[str, str],
    refs: _References,
    older_than: float,
    report: Report,
) -> None:
    records: dict[str, BucketRecord | None] = {}
    markers: dict[str, dict | None] = {}
    parts: dict[str, list[str]] = {}  # uploads in parts, until committed: their parts' keys
    for info in await storage.list_objects(artifact.records):
        folder, _, leaf = info.key.rpartition("/")
        if folder.endswith(PARTS_SUFFIX) and "/" not in folder and PART_NAME.fullmatch(leaf):
            parts.setdefault(folder[: -len(PARTS_SUFFIX)], []).append(info.key)
        if "/" in info.key:
            continue
        if info.key.endswith(RECORD_SUFFIX):
            alias = info.key[: -len(RECORD_SUFFIX)]
            header = await record_header(storage, artifact, alias)
            records[alias] = BucketRecord.of(header) if header is not None else None
        elif info.key.endswith(MARKER_SUFFIX):
            alias = info.key[: -len(MARKER_SUFFIX)]
            markers[alias] = holder(await storage.get_bytes(artifact.alias(alias).marker))
    folders = [f for f in await storage.list_folders(artifact.folder) if f != META_DIR]
    now = time.time()
    part_digests = await _parts(storage, artifact, parts, records, ours, older_than, now, report)
    for alias in sorted(set(records) | set(markers) | set(folders)):
        keys = artifact.alias(alias)
        what = f"{artifact.type}/{artifact.name}:{alias}"
        bookkeeping = [k for k, there in ((keys.record, alias in records), (keys.marker, alias in markers)) if there]
        if alias in parts and alias not in records and alias not in markers:
            continue  # its folder is its parts' (above)
        if alias not in records and alias not in markers:
            report.unattributable.append(
                Item(what, "no record: not written by wabucketref, or before records", keys.data)
            )
            continue
        marker = markers.get(alias)
        if alias in markers:
            owner = _owner(marker)
            if owner is None:
                report.unattributable.append(Item(what, "an unfinished upload whose marker names no W&B project"))
                continue
            if owner != ours:
                report.others += 1
                continue
            assert marker is not None  # an owner was read from it
            if now - float(marker["beat"]) <= older_than:
                report.kept += 1  # an upload that ran lately: perhaps still running
                continue
        if alias in records:
            record = records[alias]
            if record is None:
                report.unattributable.append(Item(what, "its record is unreadable"))
                continue
            if record.entity is None or record.project is None or record.wandb_version is None:
                report.unattributable.append(Item(what, "its record names no W&B entity and project"))
                continue
            if (record.entity, record.project) != ours:
                report.others += 1
                continue
            if refs.refer_to(record.root) or refs.alias_copy(artifact.type, artifact.name, alias, record.digest):
                report.kept += 1
                continue
            own_folder = record.root == keys.data
            why = f"its version ({record.wandb_version}) no longer exists in W&B"
            if not own_folder:  # a linked folder: not written by wabucketref, so only the record goes
                why += f"; the linked folder {storage.uri_for(record.root)} stays"
            if alias in markers:
                why += "; with an abandoned upload"
            report.garbage.append(Item(what, why, keys.data if own_folder else None, bookkeeping))
        else:
            if refs.refer_to(keys.data) or refs.alias_copy(artifact.type, artifact.name, alias, None):
                report.kept += 1
                continue
            assert marker is not None
            hours = (now - float(marker["beat"])) / 3600
            report.garbage.append(Item(what, f"an upload abandoned {hours:.1f} h ago", keys.data, bookkeeping))
    running = any(now - float((m or {}).get("beat", 0)) <= older_than for m in markers.values())
    going = {i.what for i in report.garbage}
    staying = {a: r for a, r in records.items() if f"{artifact.type}/{artifact.name}:{a}" not in going}
    await _shards(storage, artifact, staying, part_digests, refs, running, report)
    for item in report.garbage:
        if item.what.startswith(f"{artifact.type}/{artifact.name}") and not item.files:
            await _measure(storage, item)


async def _parts(
    storage: Storage,
    artifact: ArtifactKeys,
    parts: dict[str, list[str]],
    records: dict[str, BucketRecord | None],
    ours: tuple[str, str],
    older_than: float,
    now: float,
    report: Report,
) -> set[str]:
    """Uploads in parts never committed: garbage once every part of this entity/project was last
    written longer ago than `older_than` (with the alias's folder, unless the alias is a version
    already). Returns the digests of the parts' manifests that stay (their shards stay too)."""
    staying: set[str] = set()
    for alias, part_keys in sorted(parts.items()):
        what = f"{artifact.type}/{artifact.name}:{alias}"
        headers = [_part_header(await storage.get_bytes(join(artifact.records, k))) for k in part_keys]
        owners = {_owner(h) for h in headers}
        digests = {h["digest"] for h in headers if h and isinstance(h.get("digest"), str)}
        if None in owners:
            report.unattributable.append(Item(what, "parts of an upload that name no W&B project"))
            staying |= digests
            continue
        if owners != {ours}:
            report.others += 1
            staying |= digests
            continue
        newest = max(_written(h) for h in headers)
        if now - newest <= older_than:
            report.kept += 1  # its parts may still be coming, or its commit
            staying |= digests
            continue
        keys = artifact.alias(alias)
        done = sum(k.endswith(RECORD_SUFFIX) for k in part_keys)
        why = f"an upload in parts never committed ({done} part(s) in, last written {(now - newest) / 3600:.1f} h ago)"
        data = None if alias in records else keys.data
        report.garbage.append(Item(what, why, data, [join(artifact.records, k) for k in part_keys]))
    return staying


def _part_header(data: bytes | None) -> dict | None:
    """A part's manifest header, or its marker's holder."""
    return peek_header(data or b"") or holder(data)


def _written(header: dict | None) -> float:
    """When a part was last written (0 if it does not say)."""
    if header is None:
        return 0.0
    if isinstance(header.get("beat"), (int, float)):
        return float(header["beat"])
    try:
        return datetime.fromisoformat(str(header.get("created_at"))).timestamp()
    except ValueError:
        return 0.0


async def _shards(
    storage: Storage,
    artifact: ArtifactKeys,
    records: dict[str, BucketRecord | None],
    part_digests: set[str],
    refs: _References,
    running: bool,
    report: Report,
) -> None:
    """The shard folders of big versions' manifests that no record that stays (of any project:
    they share the artifact's folder) and no existing W&B version has. While an upload of the
    artifact may run, none is garbage: it writes its shards before its record."""
    folders = await storage.list_folders(join(artifact.records, SHARDS_DIR))
    if not folders:
        return
    unreadable = any(r is None for r in records.values())
    named = {r.digest for r in records.values() if r is not None} | part_digests
    for digest in folders:
        if digest in named or digest in refs.digests or running:
            report.kept += 1
        elif unreadable:
            report.unattributable.append(
                Item(
                    f"{artifact.type}/{artifact.name} shards/{digest[:12]}",
                    "manifest shards beside an unreadable record",
                )
            )
        else:
            report.garbage.append(
                Item(
                    f"{artifact.type}/{artifact.name} shards/{digest[:12]}",
                    "manifest shards of content that no record and no W&B version has",
                    artifact.shards(digest),
                )
            )


def _owner(marker: dict | None) -> tuple[str, str] | None:
    if not marker or not isinstance(marker.get("entity"), str) or not isinstance(marker.get("project"), str):
        return None
    return marker["entity"], marker["project"]


async def _measure(storage: Storage, item: Item) -> None:
    item.files = len(item.keys)
    if item.data is not None:
        async for batch in storage.iter_objects(item.data):
            item.files += len(batch)
            item.bytes += sum(o.size for o in batch)


async def _delete(storage: Storage, garbage: list[Item]) -> None:
    """Data first, then its record and marker: an interrupted gc leaves a record to find again."""
    for item in garbage:
        if item.data is not None:
            last: list[str] = []
            while batch := await _first_batch(storage, item.data):  # keys are never all held at once
                keys = [join(item.data, o.key) for o in batch]
                if keys == last:
                    raise WaBucketError(f"{storage.uri_for(keys[0])} is still listed after it was deleted")
                await storage.delete(keys)
                last = keys
        await storage.delete(item.keys)
        log.debug("deleted %s", item.what)


async def _first_batch(storage: Storage, prefix: str) -> list:
    async for batch in storage.iter_objects(prefix):
        return batch
    return []


def parse_age(text: str) -> float:
    """Seconds in `30m`, `12h`, `2d` (or `45s`, `1w`)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        seconds = float(value) * units[unit]
    except (KeyError, ValueError):
        raise UsageError(f"invalid age {text!r}: a number and a unit, as in 30m, 12h or 2d") from None
    if not seconds > 0:
        raise UsageError(f"invalid age {text!r}: must be more than 0")
    return seconds
