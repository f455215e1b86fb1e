"""WaBucketRefAPI: the SDK, and everything the CLI does (one command = one SDK call = one W&B run)."""

from __future__ import annotations

import asyncio
import contextlib
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Coroutine, Iterator, TypeVar

from . import jobs, tracking, transfer
from .errors import IntegrityError, NotFoundError, UsageError, WaBucketError
from .marker import claim
from .manifest import NO_HASH, FileEntry, Manifest, check_unique, scan_folder, sha256_file
from .storage import Storage, check_prefix, open_bucket

log = logging.getLogger("wabucketref")
T = TypeVar("T")

RUN_CONFIG_HASH = "!run-config-hash"
META_DIR = ".wabucketref"  # beside the alias folders: TYPE/NAME/.wabucketref/ALIAS.jsonl
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_]+$")


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
    if not isinstance(alias, str) or not alias or len(alias) > 128 or any(c in alias for c in "/:\\\0") or alias in (".", "..", META_DIR):
        raise UsageError(f"invalid alias {alias!r}: 1-128 characters, without / : or \\")
    if for_upload and (alias == "latest" or re.fullmatch(r"v\d+", alias)):
        raise UsageError(f"alias {alias!r} is managed by W&B; choose another")
    if for_upload and (bad := sorted({c for c in alias if c in "#?%" or ord(c) < 32})):
        # the alias is the last segment of the reference URI: these would change what it names
        raise UsageError(f"invalid alias {alias!r}: {' '.join(map(repr, bad))} cannot be part of a bucket URI")
    return alias


def check_suffix(suffix: str | None) -> str:
    if suffix is None or suffix == "":
        return ""
    if not SUFFIX_RE.match(suffix):
        raise UsageError(f"invalid suffix {suffix!r}: use A-Z a-z 0-9 _")
    return f"_{suffix}"


def config_hash(config: dict) -> str:
    """sha256 over the run config's sorted key=value pairs, space-separated: the original tool's
    !run-config-hash, so that the same config finds the same folder with either tool."""
    text = " ".join(f"{k}={config[k]}" for k in sorted(config))
    return hashlib.sha256(text.encode()).hexdigest()


def check_metadata(metadata: dict | None) -> dict:
    """W&B stores metadata as JSON: refuse what it cannot hold before any byte moves."""
    try:
        json.dumps(metadata or {})
    except (TypeError, ValueError) as e:
        raise UsageError(f"artifact metadata must be JSON-serializable: {e}") from e
    return dict(metadata or {})


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class _LoopThread:
    """One event loop, in a background thread, for the API's whole life.

    Platform clients are bound to the loop that made them; a thread also keeps the SDK usable
    from code that already runs a loop (notebooks).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="wabucketref-io", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def wait(self, fut: "concurrent.futures.Future[T]") -> T:
        try:
            return fut.result()
        except KeyboardInterrupt:
            self.cancel_all()
            raise

    def cancel_all(self) -> None:
        """Cancel what runs on the loop and give it 10 s to remove its temporary files."""

        async def cancel() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=10)

        try:
            asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(timeout=15)
        except BaseException:  # noqa: BLE001 - already failing; the original error is the one to report
            pass

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.wait(self.submit(coro))

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


@dataclass
class _Prefetch:
    """A download started from the bucket's manifest before W&B has answered."""

    digest: str | None = None  # of the manifest it follows, once known
    done: set[str] = field(default_factory=set)  # paths written (verified) so far
    task: "asyncio.Task | None" = None
    stats: transfer.Stats | None = None  # once it completed


class WaBucketRefAPI:
    """Keep artifact bytes in a bucket and their versions, aliases and lineage in W&B.

    bucket: a platform bucket name/id or blob:// URI, s3://bucket[/prefix], file:///dir or a
    folder path; defaults to the project name (a platform bucket, as in the original tool).
    """

    def __init__(
        self,
        bucket: str | None = None,
        project_name: str | None = None,
        entity: str | None = None,
        *,
        run_name: str | None = None,
        job_type: str | None = None,
        quiet: bool = False,
        concurrency: int = transfer.DEFAULT_CONCURRENCY,
    ) -> None:
        user_run = tracking.live_run()
        self.project_name = project_name or os.environ.get("WANDB_PROJECT") or getattr(user_run, "project", None) or None
        self._project_given = bool(project_name)  # else a joined run's own project is where artifacts are found
        if not self.project_name and not bucket:
            raise UsageError("no W&B project and no bucket: pass --project-name (project_name=), set WANDB_PROJECT, or pass --bucket")
        self.entity = entity or os.environ.get("WANDB_ENTITY") or None
        self.bucket = bucket or self.project_name
        self.run_name = run_name
        self.job_type = job_type
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 256:
            raise UsageError(f"concurrency must be an integer from 1 to 256, not {concurrency!r}")
        self.options = transfer.Options(concurrency=concurrency, quiet=quiet)
        self.run: Any = None  # the W&B run commands are recorded in: the caller's, or the one started here
        self._own_run: Any = None  # the run this API started, finished by close()
        self._io: _LoopThread | None = None
        self._storages: dict[str, Storage] = {}  # by root URI
        self._opened: dict[str, tuple[Storage, str]] = {}  # by the spec the user gave

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> "WaBucketRefAPI":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(exit_code=0 if exc_type is None else 1)

    def close(self, exit_code: int = 0) -> None:
        """Finish the run this API started, and close bucket connections."""
        if self._io is not None:
            for storage in self._storages.values():
                try:
                    self._io.run(storage.close())
                except Exception as e:  # noqa: BLE001
                    log.debug("closing %s: %s", storage, e)
            self._storages.clear()
            self._opened.clear()
            self._io.close()
            self._io = None
        if self._own_run is not None and not tracking.is_finished(self._own_run):
            tracking.finish_run(self._own_run, exit_code)
        self.run = None
        self._own_run = None

    @property
    def _loop(self) -> _LoopThread:
        if self._io is None:
            self._io = _LoopThread()
        return self._io

    def _run_io(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    def wandb_start_run(
        self, run_name: str | None = None, job_type: str | None = None, config: dict | None = None,
        tags: list[str] | None = None, *, w_run_name: str | None = None, w_job_type: str | None = None,
        run_args: dict | str | None = None,
    ) -> Any:
        """Start (or join) the W&B run that this API's commands are recorded in (None if W&B is disabled).

        A live `wandb.run` (the caller's, or one this API started) is joined: lineage goes where the
        script logs. `w_run_name`, `w_job_type` and `run_args` are the original tool's names.
        A `str` config is a YAML file that wandb reads, as in the original tool.
        """
        if tracking.is_disabled():
            return None
        if (live := tracking.live_run()) is not None:
            if live is not self.run and self._project_given and getattr(live, "project", None) != self.project_name:
                log.warning("recording in the running W&B run of project %s: artifacts it logs go there, not to %s",
                            live.project, self.project_name)
            self.run = live
            return live
        run_name, job_type = run_name or w_run_name, job_type or w_job_type
        config = config if config is not None else run_args
        all_tags = list(tags or []) + jobs.env_tags()
        job_id = jobs.current_job_id()
        if job_id:
            all_tags += self._run_io(jobs.platform_tags(job_id))
        self.run = self._own_run = tracking.start_run(
            project=self.project_name, entity=self.entity, name=run_name or self.run_name,
            job_type=job_type or self.job_type, tags=list(dict.fromkeys(all_tags)), config=config,
        )
        return self.run

    def _while_run_starts(self, moving: Coroutine[Any, Any, T], job_type: str, config: dict | None) -> tuple[T, Any]:
        """Move bytes in the I/O thread while this one starts the W&B run (wandb's import alone is
        ~0.5 s): bookkeeping overlaps the transfer. Returns (the transfer's result, the run)."""
        fut = self._loop.submit(moving)
        try:
            run = self.wandb_start_run(job_type=self.job_type or job_type, config=config)
        except BaseException:
            self._loop.cancel_all()
            raise
        return self._loop.wait(fut), run

    async def _astorage(self, spec: str) -> tuple[Storage, str]:
        """(bucket root, key inside it) for a bucket spec or a data URI; each bucket is opened once."""
        if spec not in self._opened:
            storage, key = await open_bucket(spec)
            if storage.uri in self._storages or spec in self._opened:  # opened meanwhile
                await storage.close()
            else:
                self._storages[storage.uri] = storage
            self._opened.setdefault(spec, (self._storages[storage.uri], key))
        return self._opened[spec]

    def _storage(self, spec: str) -> tuple[Storage, str]:
        return self._run_io(self._astorage(spec))

    # ------------------------------------------------------------ upload

    def upload_artifact(
        self,
        src_folder: str | os.PathLike,
        art_name: str,
        art_type: str,
        art_alias: str | None = None,
        art_metadata: dict | None = None,
        as_reference: bool = True,
        overwrite: bool = False,
        suffix: str | None = None,
        *,
        as_refference: bool | None = None,
    ) -> str:
        """Upload a folder to <bucket>/<TYPE>/<NAME>/<ALIAS>/ and log a W&B artifact referring to it.

        Returns the alias. Prints the ::set-output lines for neuro-flow on stdout, as the original
        tool did; `as_refference` is its spelling of `as_reference`.
        """
        if as_refference is not None:
            as_reference = as_refference
        check_name(art_name, "name")
        check_name(art_type, "type")
        out_suffix = check_suffix(suffix)
        metadata = check_metadata(art_metadata)
        if art_alias not in (None, RUN_CONFIG_HASH):
            check_alias(art_alias, for_upload=True)
        files = scan_folder(Path(src_folder))
        if not files:
            raise UsageError(f"source folder has no files: {src_folder}")
        try:
            check_unique(f.path for f in files)
        except IntegrityError as e:  # the user's own folder: bad input
            raise UsageError(str(e)) from e
        alias = self._alias(art_alias, metadata)
        if not as_reference:
            run = self.wandb_start_run(job_type=self.job_type or "upload", config=metadata)
            if run is None:
                raise UsageError("--no-reff stores the files in W&B, and WANDB_MODE=disabled: unset it or drop --no-reff")
            manifest = Manifest([FileEntry(f.path, f.size, sha256_file(f.abspath)) for f in files])
            tracking.log_files_artifact(run, name=art_name, type=art_type, alias=alias, src=Path(src_folder), manifest=manifest, metadata=metadata)
            self._print_outputs(art_name, art_type, alias, out_suffix)
            return alias

        tracking.preflight()  # W&B must answer before any byte moves
        storage, base = self._storage(self.bucket)
        storage.check_names([f.path for f in files])
        prefix = _join(base, art_type, art_name, alias)
        meta_key = _join(base, art_type, art_name, META_DIR, alias + ".jsonl")
        partial_key = _join(base, art_type, art_name, META_DIR, alias + ".partial")
        manifest, run = self._while_run_starts(
            self._upload_bytes(storage, prefix, meta_key, partial_key, files, overwrite), "upload", metadata
        )
        ref = storage.uri_for(prefix)
        version = tracking.log_artifact(
            run, name=art_name, type=art_type, alias=alias, ref=ref, manifest=manifest, metadata=metadata
        )
        info = _record(art_name, art_type, alias, ref, prefix, manifest, version)
        self._run_io(self._commit(storage, meta_key, partial_key, manifest, info))
        log.info("artifact %s:%s (%s) -> %s", art_name, alias, version or tracking.mode(), ref)
        self._print_outputs(art_name, art_type, alias, out_suffix)
        return alias

    async def _upload_bytes(
        self, storage: Storage, prefix: str, meta_key: str, partial_key: str, files: list, overwrite: bool
    ) -> Manifest:
        where = storage.uri_for(prefix)
        listing = await storage.list(prefix)
        complete = await storage.exists(meta_key)
        found = await storage.read(partial_key)
        # A marker says the upload there is unfinished (even beside a manifest, if it was stopped
        # just before removing the marker): the same command resumes it.
        if (complete or listing) and found is None and not overwrite:
            raise WaBucketError(f"{where} already exists; pass --overwrite to replace it")
        # The marker says "bytes here are an unfinished upload, by us": a rerun may resume over them
        # once we are gone, and no other upload writes here meanwhile.
        marker = await claim(storage, partial_key, found, where)
        if found is not None and listing:
            log.info("resuming an interrupted upload to %s", where)
        if complete:
            await storage.delete([meta_key])
        beat = asyncio.ensure_future(marker.keep_alive())
        try:
            # Stale files go first: where keys are paths on a disk (rclone, a local folder), an old
            # file `a` is in the way of a new `a/b`.
            stale = sorted({o.key for o in listing} - {f.path for f in files})
            await storage.delete([_join(prefix, k) for k in stale])
            manifest, _ = await transfer.upload(storage, prefix, files, {o.key: o for o in listing}, self.options)
            await storage.remove_leftovers(prefix)  # of earlier, interrupted tries
            await marker.check_still_ours(where)
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        return manifest

    async def _commit(self, storage: Storage, meta_key: str, partial_key: str, manifest: Manifest, info: dict) -> None:
        await storage.put_bytes(meta_key, manifest.dumps(info))
        await storage.delete([partial_key])

    def _alias(self, art_alias: str | None, config: dict) -> str:
        """The alias to use; `!run-config-hash` hashes the current run's config, else `config`
        (the config this API would start its run with)."""
        if art_alias is None:
            return str(uuid.uuid4())
        if art_alias == RUN_CONFIG_HASH:
            run = tracking.live_run()
            return config_hash(dict(run.config) if run is not None else config)
        return art_alias

    def _print_outputs(self, name: str, type_: str, alias: str, suffix: str) -> None:
        # For neuro-flow: each at the start of its own stdout line (logs go to stderr).
        sys.stdout.write(
            f"::set-output name=artifact_name{suffix}::{name}\n"
            f"::set-output name=artifact_type{suffix}::{type_}\n"
            f"::set-output name=artifact_alias{suffix}::{alias}\n"
        )
        sys.stdout.flush()
        if jobs.current_job_id():  # the original tool waits too: a job's last log lines can be lost when it ends at once
            time.sleep(1)

    # ------------------------------------------------------------ link

    def link(
        self,
        bucket_path: str,
        art_name: str,
        art_type: str,
        art_alias: str | None = None,
        art_metadata: dict | None = None,
        suffix: str | None = None,
        overwrite: bool = False,
    ) -> str:
        """Register data already in the bucket (a folder) as an artifact; its files are hashed once.
        An alias that already has a record or a folder in the bucket needs overwrite=True (which
        replaces the record; files in the alias's folder stay). Returns the alias."""
        check_name(art_name, "name")
        check_name(art_type, "type")
        out_suffix = check_suffix(suffix)
        if art_alias not in (None, RUN_CONFIG_HASH):
            check_alias(art_alias, for_upload=True)
        metadata = check_metadata(art_metadata)
        if not isinstance(bucket_path, str):
            raise UsageError(f"invalid bucket path {bucket_path!r}")
        check_prefix(bucket_path.split("://")[-1], bucket_path)
        if not bucket_path.strip("/"):
            raise UsageError("no folder to link: give a path inside the bucket, or a full URI")
        tracking.preflight()  # W&B must answer before every byte is read
        storage, base = self._storage(self.bucket)
        if "://" in bucket_path:
            data_storage, key = self._storage(bucket_path)
        else:
            data_storage, key = storage, _join(base, bucket_path)
        alias = self._alias(art_alias, metadata)
        meta_key = _join(base, art_type, art_name, META_DIR, alias + ".jsonl")
        if not overwrite:
            self._run_io(self._refuse_existing(storage, meta_key, _join(base, art_type, art_name, alias)))
        manifest = self._run_io(self._hash_folder(data_storage, key))
        run = self.wandb_start_run(job_type=self.job_type or "link", config=metadata)
        ref = data_storage.uri_for(key)
        version = tracking.log_artifact(
            run, name=art_name, type=art_type, alias=alias, ref=ref, manifest=manifest, metadata=metadata
        )
        if data_storage is storage:
            info = _record(art_name, art_type, alias, ref, key, manifest, version)
            try:
                self._run_io(storage.put_bytes(meta_key, manifest.dumps(info)))
            except Exception as e:  # noqa: BLE001 - a read-only bucket can still be linked
                log.warning("could not write the manifest beside the data (%s); offline download will not find it", e)
        else:
            log.warning("%s is outside --bucket: only W&B records it, so offline downloads cannot resolve %s:%s",
                        ref, art_name, alias)
        log.info("artifact %s:%s (%s) -> %s", art_name, alias, version or tracking.mode(), ref)
        self._print_outputs(art_name, art_type, alias, out_suffix)
        return alias

    @staticmethod
    async def _refuse_existing(storage: Storage, meta_key: str, folder: str) -> None:
        if await storage.exists(meta_key) or await storage.has_prefix(folder):
            raise WaBucketError(f"{storage.uri_for(folder)} already exists; pass --overwrite to replace it")

    async def _hash_folder(self, storage: Storage, key: str) -> Manifest:
        listing = await storage.list(key)
        if not listing:
            if key and await storage.exists(key):
                raise UsageError(f"{storage.uri_for(key)} is a file, not a folder")
            raise NotFoundError(f"{storage.uri_for(key)} does not exist or is empty")
        if own := next((o.key for o in listing if META_DIR in o.key.split("/")), None):
            raise UsageError(f"{storage.uri_for(key)} holds wabucketref's own records ({own}): link a folder of data, not one that holds artifacts")
        check_unique(o.key for o in listing)
        listing = await storage.without_empty_folders(key, listing)
        manifest, _ = await transfer.hash_remote(storage, key, listing, self.options, "hashed")
        return manifest

    # ------------------------------------------------------------ download

    def download_artifact(
        self, art_name: str, art_type: str, art_alias: str, dst_folder: str | os.PathLike | None = None,
        retries: int | None = None, *, run_config: dict | str | None = None,
    ) -> Path:
        """Resolve NAME:ALIAS, bring its files into dst_folder (a fresh temporary folder if None), verified.

        art_name may name another project's artifact (`project/name`, `entity/project/name`); its
        bucket folder uses the last part. retries: tries per request (default 4). run_config: the
        config of a run this API starts (a dict, or the path of a YAML file, as wandb reads it).
        On failure, a temporary folder is removed; in dst_folder, the folders this call created and
        left empty are removed, and verified files stay for a rerun to resume.
        """
        name = check_qualified_name(art_name)
        check_name(art_type, "type")
        check_alias(art_alias, for_upload=False)
        options = self.options
        if retries is not None:
            if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
                raise UsageError(f"retries must be a positive integer, not {retries!r}")
            self.options = dataclasses.replace(options, attempts=retries)
        dest = Path(dst_folder) if dst_folder is not None else Path(tempfile.mkdtemp(prefix=f"wabucket-{name}-"))
        if dest.exists() and not dest.is_dir():
            raise UsageError(f"destination is not a folder: {dest}")
        created = _first_missing(dest)
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file in the way, no permission
            raise UsageError(f"cannot create the destination folder {dest}: {e.strerror or e}") from e
        try:
            with _one_download_into(dest):
                try:
                    self._download_artifact(art_name, name, art_type, art_alias, dest, run_config)
                except BaseException:
                    if dst_folder is None:  # its name was never given out: nothing could resume into it
                        shutil.rmtree(dest, ignore_errors=True)
                    else:
                        _remove_empty_folders(dest, created)
                    raise
        finally:
            self.options = options
        return dest

    def _download_artifact(self, art_name: str, name: str, art_type: str, art_alias: str, dest: Path, run_config: Any) -> None:
        if tracking.is_offline():
            resolved, storage, key = self._resolve_offline(name, art_type, art_alias)
            self._while_run_starts(self._download(storage, key, resolved, dest), "download", run_config)
            return

        tracking.preflight()  # W&B must answer before anything lands in dest
        # While W&B resolves the alias, start on the copy the bucket's own manifest names; the
        # result is kept only if W&B's manifest has the same digest (same content).
        pre = _Prefetch()
        prefetch = self._loop.submit(self._prefetch(name, art_type, art_alias, dest, pre))
        try:
            run = self.wandb_start_run(job_type=self.job_type or "download", config=run_config)
            resolved = tracking.use_artifact(
                run, name=art_name, type=art_type, alias=art_alias,
                project=self.project_name if self._project_given else None, entity=self.entity,
            )
        except BaseException:
            self._stop_prefetch(prefetch, pre)
            _remove_files(dest, pre.done)  # W&B did not confirm what the prefetch brought
            raise
        manifest = resolved.manifest
        if manifest is not None and pre.digest == manifest.digest():
            self._loop.wait(prefetch)
            complete = pre.done == {f.path for f in manifest.files}
            if complete and pre.stats is not None and not self.options.quiet:  # its summary waited for W&B's word
                log.info(pre.stats.summary())
            trusted = set(pre.done)
        else:
            self._stop_prefetch(prefetch, pre)
            complete, trusted = False, self._keep_matching(dest, pre.done, manifest)
        if resolved.ref is None and resolved.has_files:
            tracking.download_files(resolved, dest)
            return
        if not complete:
            storage, key = self._locate(resolved, art_alias)
            self._run_io(self._download(storage, key, resolved, dest, trusted))
        if resolved.has_files:  # files added to this version in W&B itself (a draft of it, `add_file`)
            tracking.download_stored_files(resolved, dest)

    async def _prefetch(self, name: str, type_: str, alias: str, dest: Path, pre: "_Prefetch") -> None:
        pre.task = asyncio.current_task()
        try:
            storage, base = await self._astorage(self.bucket)
            manifest = await self._bucket_manifest(storage, base, type_, name, alias)
            root = manifest.info.get("root") if manifest is not None else None
            if not isinstance(root, str):
                return
            pre.digest = manifest.digest()
            # Listing 10k objects takes as long as fetching hundreds of them: do both at once. Every
            # file is checked against the manifest as it lands, and the confirmed pass lists again.
            copy = asyncio.ensure_future(
                transfer.download(storage, root, manifest, dest, self.options, done=pre.done, skip_existing=True)
            )
            try:
                transfer.check_listing(manifest, await storage.list(root), storage.uri_for(root))
                pre.stats = await copy
            finally:
                if not copy.done():
                    copy.cancel()
                    await asyncio.gather(copy, return_exceptions=True)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the confirmed pass reports real problems
            log.debug("prefetch from the bucket manifest stopped: %s", e)

    def _stop_prefetch(self, prefetch: "concurrent.futures.Future[None]", pre: "_Prefetch") -> None:
        async def cancel() -> None:
            if pre.task is not None:
                pre.task.cancel()
                try:
                    await pre.task
                except BaseException:  # noqa: BLE001
                    pass

        prefetch.cancel()
        self._run_io(cancel())

    @staticmethod
    def _keep_matching(dest: Path, written: set[str], manifest: Manifest | None) -> set[str]:
        """After a prefetch of the wrong version: keep the files this version has too, delete the rest."""
        wanted = manifest.by_path() if manifest is not None else {}
        keep = set()
        for path in written:
            f = wanted.get(path)
            if f is not None and (dest / path).stat().st_size == f.size and sha256_file(dest / path) == f.sha256:
                keep.add(path)
            else:
                (dest / path).unlink(missing_ok=True)
        return keep

    def _locate(self, resolved: tracking.Resolved, alias: str) -> tuple[Storage, str]:
        if resolved.ref is not None:
            return self._run_io(self._copy_of(resolved, alias)) or self._storage(resolved.ref)
        # The oldest artifacts of the original tool have no reference: the data sits at
        # <bucket>/<TYPE>/<NAME>/<ALIAS>, under one of the version's aliases.
        storage, base = self._storage(self.bucket)
        candidates = [alias] + [a for a in resolved.aliases if a != alias and a != "latest"]
        for candidate in candidates:
            key = _join(base, resolved.type, resolved.name, candidate)
            if self._run_io(storage.has_prefix(key)):
                return storage, key
        raise NotFoundError(f"artifact {resolved.name}:{alias} has no bucket reference and no data at {storage.uri_for(_join(base, resolved.type, resolved.name, alias))}")

    async def _copy_of(self, resolved: tracking.Resolved, alias: str) -> tuple[Storage, str] | None:
        """The folder of one of the version's aliases whose bucket manifest has exactly its content.

        Logging the same content under a new alias adds the alias to the existing version, whose
        reference keeps naming the first alias's folder; that folder may since have been
        overwritten with other content. Each alias's own copy stays findable by its manifest.
        """
        if resolved.manifest is None or not resolved.manifest.verified:
            return None
        digest = resolved.manifest.digest()
        try:
            storage, base = await self._astorage(self.bucket)
            for candidate in dict.fromkeys([alias, *resolved.aliases]):
                if candidate == "latest" or re.fullmatch(r"v\d+", candidate):
                    continue
                kept = await self._bucket_manifest(storage, base, resolved.type, resolved.name, candidate)
                root = kept.info.get("root") if kept is not None else None
                if isinstance(root, str) and kept.digest() == digest:
                    return storage, root
        except Exception as e:  # noqa: BLE001 - the reference is still there to try
            log.debug("no copy found by the bucket's manifests: %s", e)
        return None

    async def _download(
        self, storage: Storage, key: str, resolved: tracking.Resolved, dest: Path, trusted: set[str] = frozenset()
    ) -> None:
        listing = await storage.list(key)
        if not listing:
            encoded = _sdk_encoded(key)
            if encoded != key:
                listing = await storage.list(encoded)
                key = encoded if listing else key
        where = storage.uri_for(key)
        if not listing and (resolved.manifest is None or resolved.manifest.files):
            raise NotFoundError(f"no data at {where}")
        manifest = resolved.manifest
        if manifest is None:
            log.warning("%s has no content manifest (written by an older tool): files are not verified", where)
            check_unique(o.key for o in listing)
            listing = await storage.without_empty_folders(key, listing)
            manifest = Manifest([FileEntry(o.key, o.size, NO_HASH) for o in listing], info={"verified": False})
        else:
            if manifest.info.get("empty_files_unlisted"):  # W&B's own s3:// references: the objects they name
                known = manifest.by_path()
                unlisted = [o for o in listing if o.size == 0 and o.key not in known]
                empty = await storage.without_empty_folders(key, unlisted)
                manifest = Manifest(manifest.files + [FileEntry(o.key, 0, NO_HASH) for o in empty], info=manifest.info)
                listing = [o for o in listing if o.key in known] + empty  # objects added since are not the version's
                _check_etags(manifest.info.get("etags") or {}, listing, where)
            transfer.check_listing(manifest, listing, where)
        await transfer.download(storage, key, manifest, dest, self.options, trusted=trusted)

    def _resolve_offline(self, name: str, type_: str, alias: str) -> tuple[tracking.Resolved, Storage, str]:
        """Without W&B, the bucket's own manifests say which folder an alias is."""
        storage, base = self._storage(self.bucket)
        manifest = self._run_io(self._bucket_manifest(storage, base, type_, name, alias))
        folder = storage.uri_for(_join(base, type_, name, META_DIR))
        if manifest is None:
            if alias == "latest":
                raise NotFoundError(f"{tracking.mode()}: no versions of {type_}/{name} in {folder}")
            hint = " (version aliases like v3, and artifacts stored in W&B with --no-reff, need W&B online)"
            raise NotFoundError(f"{tracking.mode()}: no manifest for {type_}/{name}:{alias} in {folder}{hint}")
        root = manifest.info.get("root")
        if not isinstance(root, str):
            raise IntegrityError(f"bucket manifest of {name}:{alias} does not say where the data is")
        resolved = tracking.Resolved(name=name, type=type_, version=None, aliases=[manifest.info.get("alias", alias)], manifest=manifest)
        log.info("W&B %s: %s:%s resolved from the bucket to %s", tracking.mode(), name, alias, storage.uri_for(root))
        return resolved, storage, root

    async def _bucket_manifest(self, storage: Storage, base: str, type_: str, name: str, alias: str) -> Manifest | None:
        """The manifest kept in the bucket for name:alias (`latest`: the newest one), or None."""
        folder = _join(base, type_, name, META_DIR)
        if alias != "latest":
            data = await storage.get_bytes(_join(folder, alias + ".jsonl"))
            return None if data is None else Manifest.loads(data, source=f"{name}:{alias}")
        newest: Manifest | None = None
        for info in await storage.list(folder):
            if info.key.endswith(".jsonl"):
                m = Manifest.loads(await storage.get_bytes(_join(folder, info.key)) or b"", source=info.key)
                if newest is None or m.info.get("created_at", "") > newest.info.get("created_at", ""):
                    newest = m
        return newest

    # ------------------------------------------------------------ verify

    def verify(self, art_name: str, art_type: str, art_alias: str, local: str | os.PathLike | None = None) -> Manifest:
        """Check the bucket's copy (or a downloaded folder) against the manifest; raise IntegrityError naming the first bad file."""
        name = check_qualified_name(art_name)
        check_name(art_type, "type")
        check_alias(art_alias, for_upload=False)
        if tracking.is_offline():
            resolved, storage, key = self._resolve_offline(name, art_type, art_alias)
        else:
            tracking.preflight()
            resolved = tracking.fetch_artifact(self.project_name, self.entity, name=art_name, type=art_type, alias=art_alias)
        if resolved.manifest is None or not resolved.manifest.verified:
            raise IntegrityError(f"{art_name}:{art_alias} has no content manifest: nothing to verify against")
        manifest = resolved.manifest
        stored = resolved.stored_files if resolved.ref is not None else frozenset()
        if stored:
            log.warning("%s:%s also has %d file(s) stored in W&B itself: W&B checks those, not this command",
                        art_name, art_alias, len(stored))
        if local is not None:
            root = Path(local)
            if not root.is_dir():
                raise UsageError(f"not a folder: {root}")
            actual = {f.path: f for f in scan_folder(root) if f.path not in stored}
            expected = manifest.by_path()
            for path in sorted(set(actual) | set(expected)):
                if path not in actual:
                    raise IntegrityError(f"{path}: missing from {root}")
                if path not in expected:
                    raise IntegrityError(f"{path}: in {root} but not in the artifact's manifest")
                f = actual[path]
                if f.size != expected[path].size or sha256_file(f.abspath) != expected[path].sha256:
                    raise IntegrityError(f"{path}: content in {root} does not match the manifest")
            return manifest
        if not tracking.is_offline():
            storage, key = self._locate(resolved, art_alias)

        async def check() -> None:
            listing = await storage.list(key)
            transfer.check_listing(manifest, listing, storage.uri_for(key))
            actual, _ = await transfer.hash_remote(storage, key, listing, self.options, "verified")
            expected = manifest.by_path()
            for f in actual.files:
                if f.sha256 != expected[f.path].sha256:
                    raise IntegrityError(f"{f.path}: content in the bucket does not match the manifest (sha256 differs)")

        self._run_io(check())
        return manifest


def _record(name: str, type_: str, alias: str, ref: str, root: str, manifest: Manifest, version: str | None) -> dict:
    """Header of the manifest kept in the bucket: what offline downloads resolve aliases with."""
    return {
        "name": name, "type": type_, "alias": alias, "ref": ref, "root": root,
        "created_at": datetime.now(timezone.utc).isoformat(), "digest": manifest.digest(),
        "wandb_version": version,
    }


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what mkdir(parents=True) creates)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _check_etags(recorded: dict[str, str], listing: list, where: str) -> None:
    """Objects W&B recorded by ETag must still have it (the content of such a version has no sha256)."""
    for o in listing:
        want = recorded.get(o.key)
        if want and o.etag and o.etag.strip('"') != want:
            raise IntegrityError(f"{o.key}: changed in {where} since W&B recorded it (its ETag differs)")


@contextlib.contextmanager
def _one_download_into(dest: Path) -> Iterator[None]:
    """Downloads into one folder take turns (a lock on the folder itself, none where locks cannot be
    had): each removes the part files it finds there as a killed run's leftovers."""
    try:
        import fcntl
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another download into %s to end", dest)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks
            pass
        yield
    finally:
        os.close(fd)


def _remove_files(root: Path, paths: set[str]) -> None:
    """Remove these files under root, and the folders they leave empty (up to root)."""
    for rel in paths:
        (root / rel).unlink(missing_ok=True)
        for parent in (root / rel).parents:
            if parent == root or not _remove_empty(parent):
                break


def _remove_empty_folders(dest: Path, created: Path | None) -> None:
    """dest was made by this call (`created`: the outermost folder made for it): remove the folders
    in it left empty, then dest and its new parents while empty. Verified files stay, for a resume."""
    if created is None:
        return
    for folder, _, _ in os.walk(dest, topdown=False):
        _remove_empty(Path(folder))
    for p in [dest, *dest.parents]:
        if p.exists() and not _remove_empty(p) or p == created:
            break


def _remove_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
        return True
    except OSError:  # not empty, or already gone
        return False


def _sdk_encoded(key: str) -> str:
    """The key that apolo_sdk stored for a prefix built as `bucket.uri / key` (percent-encoded)."""
    from yarl import URL

    return URL.build(path="/" + key).raw_path.lstrip("/")


def parse_pairs(pairs: list[str] | tuple[str, ...], what: str = "metadata") -> dict[str, str]:
    """KEY=VALUE strings (from -m) into a dict."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"invalid {what} {pair!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def parse_run_args(text: str | None) -> dict[str, Any] | str:
    """Run config for download's -a: a YAML file's path (wandb reads it, as with the original tool),
    a JSON object, or KEY=VALUE pairs separated by spaces or commas."""
    if not text:
        return {}
    if "=" not in text and os.path.isfile(text):
        return text
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as e:
            raise UsageError(f"invalid run args (JSON): {e}") from e
        if not isinstance(value, dict):
            raise UsageError("run args JSON must be an object")
        return value
    return parse_pairs(re.split(r"[\s,]+", text.strip()), what="run arg")
