"""WaBucketRefAPI: the SDK. One method per command; each checks its arguments, then calls its
command module (commands/). The API owns what outlives a command: the event loop, the opened
buckets and the W&B run."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import checks, jobs, tracking
from .commands import diff, download, gc, ls, parts, upload, verify
from .commands.diff import Side
from .errors import UsageError
from .hashcache import HashCache
from .landing import Reuse
from .manifest import Index, Selection
from .progress import ProgressCallback
from .runtime import Buckets, Context, LoopThread
from .transfer import DEFAULT_CONCURRENCY, Options

log = logging.getLogger("wabucketref")


class WaBucketRefAPI:
    """Keep artifact bytes in a bucket and their versions, aliases and lineage in W&B.

    bucket: a platform bucket name/id or blob:// URI, s3://bucket[/prefix], file:///dir or a
    folder path; defaults to the project name (a platform bucket, as in the original tool).
    progress: told what each transfer does (the CLI passes a bar); by default nothing is shown.
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
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: ProgressCallback | None = None,
    ) -> None:
        self._project_given = bool(project_name)  # else a joined run's own project is where artifacts are found
        self.project_name = project_name or os.environ.get("WANDB_PROJECT") or _run_project() or None
        if not self.project_name and not bucket:
            self.project_name = tracking.settings_project()
        home = bucket or self.project_name
        if not home:
            raise UsageError(
                "no W&B project and no bucket: pass --project-name (project_name=), set WANDB_PROJECT, or pass --bucket"
            )
        self.bucket: str = home
        self.entity = entity or os.environ.get("WANDB_ENTITY") or None
        self.run_name = run_name
        self.job_type = job_type
        checks.check_count(concurrency, "concurrency", 1, 256)
        self.options = Options(concurrency=concurrency, quiet=quiet, progress=progress or ProgressCallback())
        self.run: Any = None  # the W&B run commands are recorded in: the caller's, or the one started here
        self._own_run: Any = None  # the run this API started, finished by close()
        self.command_runs = False  # the CLI's: a run it starts records one command (tracking.COMMAND_RUN_SETTINGS)
        self._io: LoopThread | None = None
        self._buckets = Buckets()
        self._hashes: HashCache | None = None

    # ------------------------------------------------------------ life cycle

    def __enter__(self) -> WaBucketRefAPI:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(exit_code=0 if exc_type is None else 1)

    def close(self, exit_code: int = 0) -> None:
        """Finish the run this API started, and close bucket connections."""
        if self._io is not None:
            self._io.run(self._buckets.close())
            self._io.close()
            self._io = None
        if self._hashes is not None:
            self._hashes.close()
            self._hashes = None
        if self._own_run is not None and not tracking.is_finished(self._own_run):
            tracking.finish_run(self._own_run, exit_code)
        self.run = None
        self._own_run = None

    def wandb_start_run(
        self,
        run_name: str | None = None,
        job_type: str | None = None,
        config: dict[str, Any] | str | None = None,
        tags: list[str] | None = None,
        *,
        w_run_name: str | None = None,
        w_job_type: str | None = None,
        run_args: dict[str, Any] | str | None = None,
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
                log.warning(
                    "recording in the running W&B run of project %s: artifacts it logs go there, not to %s",
                    live.project,
                    self.project_name,
                )
            self.run = live
            return live
        run_name, job_type = run_name or w_run_name, job_type or w_job_type
        config = config if config is not None else run_args
        all_tags = list(tags or []) + jobs.env_tags()
        if job_id := jobs.current_job_id():
            all_tags += self._loop.run(jobs.platform_tags(job_id))
        self.run = self._own_run = tracking.start_run(
            project=self._project(),
            entity=self.entity,
            name=run_name or self.run_name,
            job_type=job_type or self.job_type,
            tags=list(dict.fromkeys(all_tags)),
            config=config,
            command_only=self.command_runs,
        )
        return self.run

    # ------------------------------------------------------------ commands

    def upload_artifact(
        self,
        src_folder: str | os.PathLike[str],
        art_name: str,
        art_type: str,
        art_alias: str | None = None,
        art_metadata: dict[str, Any] | None = None,
        as_reference: bool = True,
        overwrite: bool = False,
        suffix: str | None = None,
        *,
        base: str | None = None,
        incremental: bool = True,
        as_refference: bool | None = None,
        set_outputs: bool = False,
        part: str | tuple[int, int] | None = None,
    ) -> str:
        """Upload a folder to <bucket>/<TYPE>/<NAME>/<ALIAS>/ and log a W&B artifact referring to it.

        Incremental: files whose size and sha256 equal a file of the base version (`base`, an alias
        of this artifact in the bucket; by default its latest) are copied inside the bucket instead
        of sent; `incremental=False` sends every file. Returns the alias. `set_outputs` prints the
        ::set-output lines for neuro-flow on stdout (the CLI does); `as_refference` is the original
        tool's spelling of `as_reference`. part: (index, count) or "INDEX/COUNT": the folder is one
        part of the version, sent beside the others (which may be sent at the same time, from
        other machines) and registered by `commit` once every part is in; nothing goes to W&B.
        """
        if as_refference is not None:
            as_reference = as_refference
        checks.check_name(art_name, "name")
        checks.check_name(art_type, "type")
        out_suffix = checks.check_suffix(suffix)
        metadata = checks.check_metadata(art_metadata)
        checks.check_new_alias(art_alias)
        base_alias = checks.check_base(base, incremental, art_alias, as_reference)
        share = checks.check_share(part, "--part", auto=False)
        if share is not None and (art_alias is None or not as_reference):
            raise UsageError("--part needs the alias the parts share (-a) and a bucket upload (not --no-reff)")
        with self._context() as ctx:
            if share is not None:
                assert art_alias is not None
                parts.upload_part(ctx, Path(src_folder), art_name, art_type, art_alias, share, overwrite, base_alias)
                alias = art_alias
            elif as_reference:
                alias = upload.upload(
                    ctx, Path(src_folder), art_name, art_type, art_alias, metadata, overwrite, base_alias
                )
            else:
                alias = upload.upload_to_wandb(ctx, Path(src_folder), art_name, art_type, art_alias, metadata)
        if set_outputs:
            jobs.write_outputs(art_name, art_type, alias, out_suffix)
        return alias

    def commit(
        self,
        art_name: str,
        art_type: str,
        art_alias: str,
        art_metadata: dict[str, Any] | None = None,
        overwrite: bool = False,
        suffix: str | None = None,
        *,
        set_outputs: bool = False,
    ) -> str | None:
        """Register the parts uploaded with `upload_artifact(..., part=)` as one version, logged by
        this API's run (its producer; the parts are named in its metadata). Every part must be in
        and agree on COUNT, and a path in two parts must have the same content in both: otherwise
        WaBucketError names the missing parts or the conflicting paths, and nothing is registered.
        Returns the W&B version (None offline, or when the parts were committed already)."""
        checks.check_name(art_name, "name")
        checks.check_name(art_type, "type")
        checks.check_alias(art_alias, for_upload=True)
        out_suffix = checks.check_suffix(suffix)
        metadata = checks.check_metadata(art_metadata)
        with self._context() as ctx:
            version = parts.commit(ctx, art_name, art_type, art_alias, metadata, overwrite)
        if set_outputs:
            jobs.write_outputs(art_name, art_type, art_alias, out_suffix)
        return version

    def link(
        self,
        bucket_path: str,
        art_name: str,
        art_type: str,
        art_alias: str | None = None,
        art_metadata: dict[str, Any] | None = None,
        suffix: str | None = None,
        overwrite: bool = False,
        *,
        set_outputs: bool = False,
    ) -> str:
        """Register data already in the bucket (a folder) as an artifact; its files are hashed once.
        An alias that already has a record or a folder in the bucket needs overwrite=True (which
        replaces the record; files in the alias's folder stay). Returns the alias."""
        checks.check_name(art_name, "name")
        checks.check_name(art_type, "type")
        out_suffix = checks.check_suffix(suffix)
        checks.check_new_alias(art_alias)
        metadata = checks.check_metadata(art_metadata)
        checks.check_bucket_path(bucket_path)
        with self._context() as ctx:
            alias = upload.link(ctx, bucket_path, art_name, art_type, art_alias, metadata, overwrite)
        if set_outputs:
            jobs.write_outputs(art_name, art_type, alias, out_suffix)
        return alias

    def download_artifact(
        self,
        art_name: str,
        art_type: str,
        art_alias: str,
        dst_folder: str | os.PathLike[str] | None = None,
        retries: int | None = None,
        *,
        run_config: dict[str, Any] | str | None = None,
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        reuse: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
        shard: str | tuple[int, int] | None = None,
    ) -> Path:
        """Resolve NAME:ALIAS, bring its files into dst_folder (a fresh temporary folder if None), verified.

        art_name may name another project's artifact (`project/name`, `entity/project/name`); its
        bucket folder uses the last part. retries: tries per request (default 4). run_config: the
        config of a run this API starts (a dict, or the path of a YAML file, as wandb reads it).
        On failure, a temporary folder is removed; in dst_folder, the folders this call created and
        left empty are removed, and verified files stay for a rerun to resume.

        include / exclude: globs on the path in the artifact (huggingface_hub's rules: `*` also
        matches `/`, so "*.bin" is every .bin file; "dir/" is everything under dir): only the
        files matching an include (all, if none) and no exclude come; a pattern matching no file
        is a UsageError. reuse: folders (e.g. an earlier version's download) whose files of the
        same size and sha256 are hard-linked (or copied) instead of fetched. shard: (index, count),
        "INDEX/COUNT" or "auto" (RANK and WORLD_SIZE from the environment): only that share of
        the (selected) files, split by bytes among count workers, the same on every machine.
        """
        name = checks.check_qualified_name(art_name)
        checks.check_name(art_type, "type")
        checks.check_alias(art_alias, for_upload=False)
        options = self.options
        if retries is not None:
            options = dataclasses.replace(options, attempts=checks.check_count(retries, "retries", 1))
        plan = download.Plan(
            selection=Selection(
                checks.check_patterns(include, "--include"),
                checks.check_patterns(exclude, "--exclude"),
                checks.check_share(shard, "--shard"),
            ),
            reuse=Reuse(folders, self._hash_cache()) if (folders := checks.check_folders(reuse, "--reuse")) else None,
        )
        dest = Path(dst_folder) if dst_folder is not None else None
        with self._context(options) as ctx:
            return download.download(ctx, art_name, name, art_type, art_alias, dest, run_config, plan)

    def plan_download(
        self,
        art_name: str,
        art_type: str,
        art_alias: str,
        *,
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        shard: str | tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """What download_artifact would bring, without moving a byte or recording a use:
        {"version", "files", "bytes", "of_files", "of_bytes"} (the selection, and the version)."""
        name = checks.check_qualified_name(art_name)
        checks.check_name(art_type, "type")
        checks.check_alias(art_alias, for_upload=False)
        selection = Selection(
            checks.check_patterns(include, "--include"),
            checks.check_patterns(exclude, "--exclude"),
            checks.check_share(shard, "--shard"),
        )
        with self._context() as ctx:
            return download.plan(ctx, art_name, name, art_type, art_alias, download.Plan(selection))

    def verify(
        self, art_name: str, art_type: str, art_alias: str, local: str | os.PathLike[str] | None = None
    ) -> Index:
        """Check the bucket's copy (or a downloaded folder) against the manifest; raise IntegrityError
        naming the first bad file. Returns the version's index: its digest, files and bytes."""
        name = checks.check_qualified_name(art_name)
        checks.check_name(art_type, "type")
        checks.check_alias(art_alias, for_upload=False)
        local_path = Path(local) if local is not None else None
        with self._context() as ctx:
            return verify.verify(ctx, art_name, name, art_type, art_alias, local_path)

    def ls(self, art_type: str | None = None, art_name: str | None = None) -> dict[str, Any]:
        """What the project holds, as plain data (what `wabucket ls --json` prints).

        No arguments: {"artifacts": [{"type", "name", "versions"}, ...]} (art_type alone: of that
        type). art_type and art_name: {"versions": [{"version", "aliases", "files", "bytes",
        "created", "location"}, ...]}, newest first. "source" says where it was read: "wandb", or
        "bucket" offline (the records kept beside the data; "version" is then the one W&B gave at
        upload, or None). Nothing is recorded in W&B.
        """
        if art_name is not None and art_type is None:
            raise UsageError("ls NAME needs its TYPE: ls TYPE NAME")
        if art_type is not None:
            checks.check_name(art_type, "type")
        name = checks.check_qualified_name(art_name) if art_name is not None else None
        with self._context() as ctx:
            return ls.ls(ctx, art_name, name, art_type)

    def diff(
        self,
        art_name: str,
        art_type: str,
        a: str,
        b: str | None = None,
        *,
        local: str | os.PathLike[str] | None = None,
    ) -> dict[str, Any]:
        """What differs from version `a` to version `b` (an alias or vN; `OTHER:ALIAS` names another
        artifact of the project), or to the folder `local`, from their manifests: not a byte of
        data moves. Returns {"a", "b", "added", "removed", "changed", "unchanged", "same"}; the
        lists hold {"path", "size"} ({"path", "size_a", "size_b"} for changed files). A folder's
        files are hashed only where size and path match. Nothing is recorded in W&B."""
        if (b is None) == (local is None):
            raise UsageError("diff compares version A with a version B or with a local folder: give one of them")
        checks.check_name(art_type, "type")
        side_a = self._side(art_name, a)
        side_b = self._side(art_name, b) if b is not None else None
        with self._context() as ctx:
            return diff.diff(ctx, art_type, side_a, side_b, Path(local) if local is not None else None)

    def _side(self, art_name: str, version: str) -> Side:
        """ALIAS (of art_name) or NAME:ALIAS."""
        qualified, _, alias = version.rpartition(":") if isinstance(version, str) else ("", "", version)
        qualified = qualified or art_name
        name = checks.check_qualified_name(qualified)
        checks.check_alias(alias, for_upload=False)
        return Side(qualified, name, alias)

    def gc(
        self, art_type: str | None = None, art_name: str | None = None, older_than: str = "1d", delete: bool = False
    ) -> gc.Report:
        """Find bucket data that no existing W&B version of this entity/project refers to: versions
        deleted in W&B, and uploads abandoned longer than `older_than` (30m, 12h, 2d). Reports it
        (Report.garbage; Report.unattributable is never deleted); delete=True removes it.
        Needs W&B online; art_type / art_name limit it to one TYPE or NAME."""
        if art_type is not None:
            checks.check_name(art_type, "type")
        if art_name is not None:
            checks.check_name(art_name, "name")
        age = gc.parse_age(older_than)
        with self._context() as ctx:
            return gc.gc(ctx, art_type, art_name, age, delete)

    # ------------------------------------------------------------ what commands run on

    @property
    def _loop(self) -> LoopThread:
        if self._io is None:
            self._io = LoopThread()
        return self._io

    def _hash_cache(self) -> HashCache:
        if self._hashes is None:
            self._hashes = HashCache.default()
        return self._hashes

    def _project(self) -> str | None:
        """The W&B project a command records in: required unless W&B is disabled."""
        if tracking.is_disabled():
            return self.project_name
        return checks.check_project(self.project_name or _run_project() or tracking.settings_project())

    def _context(self, options: Options | None = None) -> Context:
        project = self._project()
        return Context(
            io=self._loop,
            buckets=self._buckets,
            bucket=self.bucket,
            options=dataclasses.replace(options or self.options, hashes=self._hash_cache()),
            project=project,
            lookup_project=project if self._project_given else None,
            entity=self.entity,
            start_run=self._start_run,
        )

    def _start_run(self, job_type: str, config: Any) -> Any:
        return self.wandb_start_run(job_type=self.job_type or job_type, config=config)


def _run_project() -> str | None:
    return getattr(tracking.live_run(), "project", None)
