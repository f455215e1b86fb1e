"""Weights & Biases: runs, artifacts that refer to bucket data, alias resolution, lineage.

Knows nothing of bytes: it is given a reference URI and a manifest, and gives them back.
"""

from __future__ import annotations

import logging
import netrc
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import settings
from .errors import IntegrityError, NotFoundError, WaBucketError
from .failures import USAGE, classify, first_line
from .manifest import NO_HASH, FileEntry, Manifest, Stored, format1_bytes, index_bytes, read_stored, safe_relpath
from .manifest import write_manifest as _write_manifest

log = logging.getLogger("wabucketref")

REFERENCE_NAME = "platform_blob"  # the original tool's entry name: keep it so both read each other
MANIFEST_NAME = "wabucketref.manifest.jsonl"  # the whole file list (format 1)
INDEX_NAME = "wabucketref.manifest-index.json"  # a big version's index; its shards are in the bucket
OWN_FILES = (REFERENCE_NAME, MANIFEST_NAME, INDEX_NAME)


@dataclass
class Resolved:
    """What W&B knows of one artifact version."""

    name: str
    type: str
    version: str | None
    aliases: list[str] = field(default_factory=list)
    ref: str | None = None  # the bucket URI of the data, if the artifact has one
    stored: Stored | None = None  # its content manifest (format 1 on local disk, or a format-2 index)
    shards_at: str | None = None  # where a format-2 index's shards are, as the upload said
    metadata: dict = field(default_factory=dict)
    stored_files: frozenset[str] = frozenset()  # paths W&B itself stores (--no-reff), beside or instead of a reference
    # W&B's own s3:// references (one per object): the ETags they recorded, checked instead of a
    # sha256; they leave out empty objects
    s3_etags: dict[str, str] | None = None
    artifact: Any = None

    @property
    def has_files(self) -> bool:
        return bool(self.stored_files)


def live_run() -> Any:
    """The process's current W&B run (the caller's, or one wabucketref started), unless finished.
    Never imports wandb: without it no run can exist."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None)
    return None if run is None or is_finished(run) else run


def is_finished(run: Any) -> bool:
    return bool(getattr(run, "_is_finished", False))


def mode() -> str:
    """'online', 'offline' or 'disabled': the live run's mode if there is one, else WANDB_MODE."""
    run = live_run()
    if run is not None:
        if getattr(run, "disabled", False):
            return "disabled"
        return "offline" if getattr(run, "offline", False) else "online"
    env = os.environ.get("WANDB_MODE", "").lower()
    return "disabled" if env == "disabled" else "offline" if env in ("offline", "dryrun") else "online"


def is_offline() -> bool:
    """No W&B server to ask (offline or disabled)."""
    return mode() != "online"


def settings_project() -> str | None:
    """The project wandb's own settings files name (`wandb init` writes ./wandb/settings)."""
    import configparser

    root = Path(os.environ.get("WANDB_DIR") or ".")
    local = root / (".wandb" if (root / ".wandb").exists() else "wandb") / "settings"
    system = Path(os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb").expanduser() / "settings"
    for path in (local, system):
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        if project := parser.get("default", "project", fallback="").strip():
            return project
    return None


def is_disabled() -> bool:
    """No run at all; without a caller's run, wandb is not even imported (it costs ~0.5 s of CPU)."""
    return mode() == "disabled"


def _base_url() -> str:
    return (os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").rstrip("/")


def _api_key() -> str | None:
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        auth = netrc.netrc(path).authenticators(urlsplit(_base_url()).hostname or "")
    except (OSError, netrc.NetrcParseError):
        return None
    return auth[2] if auth else None


def check_credentials() -> None:
    """Fail fast, instead of blocking on wandb's login prompt, when no API key can be found."""
    if is_offline() or os.environ.get("WANDB_IDENTITY_TOKEN_FILE") or _api_key():
        return
    raise WaBucketError(
        "no W&B credentials: run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline to "
        "record runs locally for a later `wandb sync`"
    )


def preflight(timeout: float = 10.0) -> str | None:
    """Check that W&B answers and accepts the key, before anything is written anywhere; returns
    the key's default entity (None offline, or if W&B does not say).

    One small GraphQL query: cheaper than finding out after the bytes moved (upload) or landed
    (download) that the run cannot start.
    """
    check_credentials()
    key = _api_key()
    if is_offline() or key is None:  # identity-token auth: left to wandb itself
        return None
    import base64
    import json
    import ssl
    import urllib.error
    import urllib.request

    url = _base_url() + "/graphql"
    request = urllib.request.Request(
        url,
        data=json.dumps({"query": "query Viewer { viewer { id entity } }"}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode(),
        },
    )
    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
    answer = b""
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            answer = response.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise WaBucketError(
                f"W&B at {_base_url()} rejected the API key (HTTP {e.code}): run `wandb login --relogin`"
            ) from e
        if e.code >= 500:
            raise WaBucketError(
                f"W&B at {_base_url()} is failing (HTTP {e.code}); try again later or set WANDB_MODE=offline"
            ) from e
    except (OSError, TimeoutError) as e:  # URLError, refused, reset, timeout
        reason = getattr(e, "reason", e)
        raise WaBucketError(
            f"cannot reach W&B at {_base_url()} ({reason}); check WANDB_BASE_URL and proxies, or set WANDB_MODE=offline"
        ) from e
    try:
        entity = json.loads(answer)["data"]["viewer"]["entity"]
    except (ValueError, KeyError, TypeError):
        return None
    return entity if isinstance(entity, str) and entity else None


FAILED_RUN_WAIT = 30.0


def finish_run(run: Any, exit_code: int) -> None:
    """run.finish(), for at most settings.wandb_timeout() seconds (FAILED_RUN_WAIT after a failure, which may
    have been W&B's): it waits until wandb has sent everything, which a failing W&B server can make
    endless. What is left stays in the run's folder."""
    import threading

    def finish() -> None:
        try:
            run.finish(exit_code=exit_code)
        except BaseException as e:
            log.debug("finishing W&B run: %s", e)

    limit = settings.wandb_timeout() if exit_code == 0 else min(settings.wandb_timeout(), FAILED_RUN_WAIT)
    done = threading.Thread(target=finish, name="wandb-finish", daemon=True)
    done.start()
    done.join(limit)
    if done.is_alive():
        log.warning(
            "W&B did not finish run %s in %.0f s; what it did not send stays in %s (`wandb sync` sends it)",
            getattr(run, "id", "?"),
            limit,
            getattr(run, "dir", "its wandb folder"),
        )


def _share_ca_with_wandb_service() -> None:
    """wandb's service (in Go) trusts SSL_CERT_FILE only; its Python side and our own check read
    REQUESTS_CA_BUNDLE: a CA named there must reach the service (a child process) too."""
    if os.environ.get("REQUESTS_CA_BUNDLE") and not os.environ.get("SSL_CERT_FILE"):
        os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"]


# What a run that only records one command (the CLI's: it ends with the command) never uses: Launch
# jobs, code and git capture, system metrics, machine info and the list of installed packages.
# wandb then starts no wandb-symon process and runs 1 git command instead of 5 (wandb 0.31: ~0.1 s
# less per command), and lists no packages (~0.05 s, 0.06 CPU-s less). x_disable_meta is left
# alone: with machine info off it saved nothing measurable. A run the SDK starts may become the
# caller's training run: it keeps wandb's defaults.
COMMAND_RUN_SETTINGS: dict[str, Any] = {
    "disable_job_creation": True,
    "save_code": False,
    "disable_code": True,
    "disable_git": True,
    "x_disable_stats": True,
    "x_disable_machine_info": True,
    "x_save_requirements": False,
}


def start_run(
    *,
    project: str | None,
    entity: str | None,
    name: str | None,
    job_type: str | None,
    tags: list[str] | None = None,
    config: dict[str, Any] | str | None = None,
    command_only: bool = False,
) -> Any:
    """command_only: the run records one command and ends with it (COMMAND_RUN_SETTINGS)."""
    check_credentials()
    import wandb

    _share_ca_with_wandb_service()
    known = wandb.Settings.model_fields  # the names this wandb has (some are young: wandb>=0.19 is allowed)
    lean: dict[str, Any] = {k: v for k, v in COMMAND_RUN_SETTINGS.items() if k in known} if command_only else {}
    try:
        return wandb.init(
            project=project,
            entity=entity,
            name=name,
            job_type=job_type,
            tags=tags or None,
            config=config or None,
            settings=wandb.Settings(
                console="off", silent=True, init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", 90)), **lean
            ),
        )
    except Exception as e:  # wandb raises many types for unreachable servers
        failure = classify(e)
        if failure.kind == USAGE:
            raise failure.error() from e
        raise WaBucketError(f"cannot start a W&B run: {first_line(e)}") from e


def log_artifact(
    run: Any, *, name: str, type: str, alias: str, ref: str, manifest: Manifest, metadata: dict, shards: str | None
) -> str | None:
    """Log the artifact as the run's output; wait until W&B has it (online). Returns its version.
    shards: where a big version's shards are (its index is what W&B stores)."""
    if run is None:  # W&B disabled
        return None
    import wandb
    from wandb.sdk.artifacts.artifact_manifest_entry import ArtifactManifestEntry
    from wandb.sdk.lib.paths import LogicalPath

    art = wandb.Artifact(name, type=type, metadata=metadata)
    # The reference's digest is the manifest's, not the URI's: the version follows the content.
    # `extra` does not enter W&B's digest: the counts let `ls` answer without the file list.
    extra: dict[str, Any] = {"files": manifest.file_count}
    if shards is not None:
        extra["shards"] = shards
    art.manifest.add_entry(
        ArtifactManifestEntry(
            path=LogicalPath(REFERENCE_NAME), ref=ref, digest=manifest.digest, size=manifest.total_size, extra=extra
        )
    )
    return _log_with_manifest(run, art, alias, manifest, sharded=shards is not None)


def log_files_artifact(
    run: Any, *, name: str, type: str, alias: str, src: Path, manifest: Manifest, metadata: dict
) -> str | None:
    """--no-reff: the files themselves go to W&B storage (with the manifest, for verified downloads)."""
    import wandb

    art = wandb.Artifact(name, type=type, metadata=metadata)
    art.add_dir(str(src))
    return _log_with_manifest(run, art, alias, manifest, sharded=False)


def _log_with_manifest(run: Any, art: Any, alias: str, manifest: Manifest, sharded: bool) -> str | None:
    """Add the content-only manifest (a big version's index) as a file, log, wait for W&B."""
    with tempfile.TemporaryDirectory(prefix="wabucket-") as tmp:
        name = INDEX_NAME if sharded else MANIFEST_NAME
        path = Path(tmp) / name
        path.write_bytes(index_bytes(manifest.index, {}) if sharded else format1_bytes(manifest, {}))
        art.add_file(str(path), name=name)
        try:
            run.log_artifact(art, aliases=[alias])
            if is_offline():
                return None
            art.wait(timeout=settings.wandb_timeout())  # wandb retries a failing server for many minutes
        except Exception as e:
            timed_out = type(e).__name__ == "WaitTimeoutError"  # not a TimeoutError
            reason = f"no answer in {settings.wandb_timeout():.0f} s" if timed_out else first_line(e)
            raise WaBucketError(f"W&B did not register artifact {art.name}:{alias}: {reason}") from e
    return art.version


def artifact_path(name: str, alias: str, project: str | None, entity: str | None, run: Any = None) -> str:
    """[entity/][project/]name:alias. A name with a slash is already qualified; the run's own
    project and entity are left for W&B to fill in."""
    path = f"{name}:{alias}"
    if "/" in name or not project:
        return path
    if run is not None and project == getattr(run, "project", None) and entity in (None, getattr(run, "entity", None)):
        return path
    return f"{entity}/{project}/{path}" if entity else f"{project}/{path}"


def use_artifact(
    run: Any,
    *,
    name: str,
    type: str,
    alias: str,
    scratch: Path,
    project: str | None = None,
    entity: str | None = None,
) -> Resolved:
    """Resolve name:alias (in `project`, if not the run's) through W&B and record it as the run's input.

    An artifact the run's own project holds is found too: that is where the run logs its outputs."""
    import wandb

    paths = list(
        dict.fromkeys([artifact_path(name, alias, project, entity, run), artifact_path(name, alias, None, None)])
    )
    for i, path in enumerate(paths):
        try:
            art = run.use_artifact(path, type=type)
            break
        except (wandb.errors.CommError, ValueError) as e:
            if i == len(paths) - 1:
                raise NotFoundError(f"artifact {name}:{alias} of type {type} not found in W&B: {first_line(e)}") from e
    return _resolved(art, name, type, alias, scratch)


def _stored(art: Any, scratch: Path, source: str) -> Stored | None:
    """The content manifest W&B keeps for a version (its index, for a big one), read into `scratch`."""
    entries = art.manifest.entries
    name = INDEX_NAME if INDEX_NAME in entries else MANIFEST_NAME if MANIFEST_NAME in entries else None
    if name is None:
        return None
    with tempfile.TemporaryDirectory(prefix="wabucket-") as tmp:
        path = art.get_entry(name).download(root=tmp)
        with open(path, "rb") as f:
            return read_stored(f, scratch, source=source)


def _resolved(art: Any, name: str, type: str | None, alias: str, scratch: Path) -> Resolved:
    if type is not None and art.type != type:
        raise NotFoundError(f"artifact {name}:{alias} has type {art.type!r}, not {type!r}")
    entries = art.manifest.entries
    ref_entry = entries.get(REFERENCE_NAME)
    stored = _stored(art, scratch, f"manifest of {name}:{alias}")
    ref = ref_entry.ref if ref_entry is not None else None
    extra = (getattr(ref_entry, "extra", None) or {}) if ref_entry is not None else {}
    files = frozenset(p for p in entries if p not in OWN_FILES)
    s3_etags = None
    if ref is None and stored is None and (s3 := _s3_references(entries, scratch)) is not None:
        ref, manifest, s3_etags = s3
        stored = Stored({}, manifest.index, manifest)
        files = frozenset()
        log.warning(
            "%s:%s refers to its files one by one in %s (W&B's own s3:// references, as the first "
            "wabucketref logged them): their sizes and ETags are checked, not a sha256",
            name,
            alias,
            ref,
        )
    return Resolved(
        name=name.rsplit("/", 1)[-1],
        type=art.type,
        version=art.version,
        aliases=list(art.aliases),
        ref=ref,
        stored=stored,
        shards_at=extra.get("shards") if isinstance(extra.get("shards"), str) else None,
        metadata=dict(art.metadata or {}),
        stored_files=files,
        s3_etags=s3_etags,
        artifact=art,
    )


def _s3_references(entries: dict, scratch: Path) -> tuple[str, Manifest, dict[str, str]] | None:
    """The folder and files of an artifact made of W&B's own s3:// references (one entry per object,
    named by its path under the referenced folder), as the original tool's first version logged them:
    wabucketref moves those bytes itself instead of leaving them to W&B (which needs boto3)."""
    root = _s3_root(entries)
    if root is None:
        return None
    files = [FileEntry(safe_relpath(path), entry.size or 0, NO_HASH) for path, entry in entries.items()]
    etags = {
        path: etag.strip('"')
        for path, entry in entries.items()
        if (etag := (getattr(entry, "extra", None) or {}).get("etag"))
    }
    # W&B's S3 handler leaves out empty objects: the download adds those it finds in the folder
    manifest = _write_manifest(scratch, files, verified=False, source=f"W&B's references to {root}")
    return root, manifest, etags


def _s3_root(entries: dict) -> str | None:
    """The one s3:// folder that every entry refers into, by its own path, if there is one."""
    roots = set()
    for path, entry in entries.items():
        ref = entry.ref or ""
        if not ref.startswith("s3://") or not ref.endswith("/" + path):
            return None
        roots.add(ref[: -len(path) - 1])
    return roots.pop() if len(roots) == 1 else None


def fetch_artifact(
    project: str | None, entity: str | None, *, name: str, type: str | None, alias: str, scratch: Path
) -> Resolved:
    """Resolve name:alias without a run (nothing is recorded as used): for verify, diff.
    type None: whatever type it has (Resolved.type says which)."""
    check_credentials()
    import wandb

    _share_ca_with_wandb_service()
    try:
        art = wandb.Api().artifact(artifact_path(name, alias, project, entity), type=type)
    except (wandb.errors.CommError, ValueError) as e:
        of_type = f" of type {type}" if type else ""
        raise NotFoundError(f"artifact {name}:{alias}{of_type} not found in W&B: {first_line(e)}") from e
    return _resolved(art, name, type, alias, scratch)


def download_files(resolved: Resolved, dest: Path) -> None:
    """Download an artifact stored in W&B itself, then check it against its manifest if it has one."""
    from .manifest import sha256_file

    root = Path(resolved.artifact.download(root=str(dest)))
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    if resolved.stored is None or resolved.stored.manifest is None:
        # wandb skips an entry it cannot write (a folder in the way) with a warning only
        _check_sizes(root, dict(resolved.artifact.manifest.entries))
        return
    for f in resolved.stored.manifest:
        p = root / f.path
        if not p.is_file() or p.stat().st_size != f.size or sha256_file(p) != f.sha256:
            raise IntegrityError(f"{f.path}: downloaded from W&B but does not match the manifest")


def download_stored_files(
    resolved: Resolved, dest: Path, bucket_files: Manifest | None, wanted: Callable[[str], bool] = lambda p: True
) -> None:
    """The files of a bucket-referencing version that W&B itself stores (added to it in W&B)."""
    entries = {p: resolved.artifact.manifest.entries[p] for p in resolved.stored_files if wanted(p)}
    clash = next((f.path for f in bucket_files if f.path in entries), None) if bucket_files and entries else None
    if clash is not None:
        raise IntegrityError(f"{clash}: both in the bucket and stored in W&B for {resolved.name}:{resolved.version}")
    for path in entries:
        resolved.artifact.get_entry(path).download(root=str(dest))
    _check_sizes(dest, entries)
    if entries:
        log.info("also downloaded %d file(s) stored in W&B itself, checked by W&B's digests", len(entries))


def _check_sizes(root: Path, entries: dict) -> None:
    for path, entry in entries.items():
        p = root / path
        if not p.is_file() or (entry.size is not None and p.stat().st_size != entry.size):
            raise IntegrityError(f"{path}: W&B did not bring it as a file of {entry.size} bytes")


# ---------------------------------------------------------------- listing (ls)


def _api() -> Any:
    check_credentials()
    import wandb

    return wandb.Api()


def project_path(project: str | None, entity: str | None) -> str | None:
    """entity/project, or the project alone (W&B's default entity)."""
    if not project:
        return None
    return f"{entity}/{project}" if entity and "/" not in project else project


def list_artifacts(project: str | None, entity: str | None, type_: str | None = None) -> list[dict[str, Any]]:
    """The project's artifacts (of one type, if given): name, type and number of versions, by type then name."""
    import wandb

    api = _api()
    path = project_path(project, entity)
    out: list[dict[str, Any]] = []
    try:
        types = [api.artifact_type(type_, path)] if type_ else list(api.artifact_types(path))
        for t in types:
            for c in t.collections():
                out.append({"type": t.name, "name": c.name, "versions": len(c.artifacts())})
    except (wandb.errors.CommError, ValueError) as e:
        what = f"artifacts of type {type_}" if type_ else "artifacts"
        raise NotFoundError(f"no {what} found in W&B project {path}: {first_line(e)}") from e
    return sorted(out, key=lambda a: (a["type"], a["name"]))


def list_versions(project: str | None, entity: str | None, *, type: str, name: str) -> list[dict[str, Any]]:
    """The versions of one artifact, newest first: version, aliases, files, bytes, created, where the data is."""
    import wandb

    api = _api()
    path = project_path(project, entity)
    qualified = f"{path}/{name}" if path and "/" not in name else name
    try:
        if not api.artifact_collection_exists(qualified, type):
            raise NotFoundError(f"no artifact {name} of type {type} in W&B project {path}")
        arts = list(api.artifacts(type, qualified))
    except (wandb.errors.CommError, ValueError) as e:
        raise NotFoundError(f"no artifact {name} of type {type} in W&B project {path}: {first_line(e)}") from e
    rows = [_version_row(art) for art in arts]
    return sorted(rows, key=lambda r: -int(r["version"][1:]) if r["version"][1:].isdigit() else 0)


def _version_row(art: Any) -> dict[str, Any]:
    entries = art.manifest.entries
    ref_entry = entries.get(REFERENCE_NAME)
    stored = {p: e for p, e in entries.items() if p not in OWN_FILES}
    files, size = len(stored), sum(e.size or 0 for e in stored.values())
    location = "wandb"
    if (counted := _content_counts(art)) is not None:
        if ref_entry is not None:  # the bucket's files, plus any stored in W&B beside them
            files, size = files + counted[0], size + counted[1]
        else:  # --no-reff: the manifest lists the stored files
            files, size = counted
    elif (root := _s3_root(entries)) is not None:
        location, files, size = root, len(entries), sum(e.size or 0 for e in entries.values())
    if ref_entry is not None:
        location = ref_entry.ref
    return {
        "version": art.version,
        "aliases": (["latest"] if "latest" in art.aliases else []) + sorted(a for a in art.aliases if a != "latest"),
        "files": files,
        "bytes": size,
        "created": art.created_at,
        "location": location,
    }


def _content_counts(art: Any) -> tuple[int, int] | None:
    """(files, bytes) of the content manifest, read from what W&B says of it without its file list
    where it can: the reference's counts, else the index, else the whole list."""
    entries = art.manifest.entries
    ref_entry = entries.get(REFERENCE_NAME)
    extra = (getattr(ref_entry, "extra", None) or {}) if ref_entry is not None else {}
    if isinstance(extra.get("files"), int) and ref_entry.size is not None:
        return extra["files"], ref_entry.size
    with tempfile.TemporaryDirectory(prefix="wabucket-") as tmp:
        stored = _stored(art, Path(tmp), f"manifest of {art.name}")
        return None if stored is None else (stored.index.files, stored.index.bytes)


@dataclass(frozen=True)
class VersionRefs:
    """One existing version of an artifact and what it refers to (for gc)."""

    type: str
    name: str
    version: str
    aliases: tuple[str, ...]
    digest: str | None  # of the bucket reference entry: wabucketref's manifest digest
    refs: tuple[str, ...]  # the URI of every reference entry


def project_versions(project: str, entity: str | None) -> tuple[str, list[VersionRefs]]:
    """(the entity, every version of every artifact of entity/project with its references).

    Anything W&B fails to answer, a version whose manifest cannot be read, or no complete answer
    within settings.wandb_timeout() (wandb retries a failing server for a long time) raises: a
    caller that deletes what no version refers to must then delete nothing.
    """
    check_credentials()
    import threading

    import wandb

    result: list[tuple[str, list[VersionRefs]]] = []
    failure: list[BaseException] = []

    def listing() -> None:
        try:
            result.append(_list_versions(wandb.Api(timeout=60), project, entity))
        except BaseException as e:
            failure.append(e)

    worker = threading.Thread(target=listing, name="wandb-versions", daemon=True)
    worker.start()
    worker.join(settings.wandb_timeout())
    where = f"{entity}/{project}" if entity else project
    if worker.is_alive():
        raise WaBucketError(
            f"W&B could not list the versions of {where}: no answer in {settings.wandb_timeout():.0f} s"
        )
    if failure:
        e = failure[0]
        if isinstance(e, WaBucketError):
            raise e
        raise WaBucketError(f"W&B could not list the versions of {where}: {first_line(e)}") from e
    return result[0]


def _list_versions(api: Any, project: str, entity: str | None) -> tuple[str, list[VersionRefs]]:
    entity = entity or api.default_entity
    if not entity:
        raise WaBucketError("W&B names no default entity: pass --entity")
    out: list[VersionRefs] = []
    for art_type in api.artifact_types(project=f"{entity}/{project}"):
        for collection in art_type.collections():
            for art in collection.artifacts():
                entries = art.manifest.entries
                ref_entry = entries.get(REFERENCE_NAME)
                out.append(
                    VersionRefs(
                        type=art_type.name,
                        name=collection.name,
                        version=art.version,
                        aliases=tuple(art.aliases),
                        digest=ref_entry.digest if ref_entry is not None else None,
                        refs=tuple(e.ref for e in entries.values() if e.ref),
                    )
                )
    return entity, out
