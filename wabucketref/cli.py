"""The `wabucket` command: each command parses its arguments and calls one WaBucketRefAPI method.

stdout carries results (::set-output lines, the download path); logs and errors go to stderr.
Heavy SDKs (wandb, apolo_sdk, obstore) are imported only when a command runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from . import settings
from .errors import UsageError, WaBucketError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("must not be empty", param=param)
    return value


def _api(ctx: click.Context, quiet: bool = False) -> Any:
    from .api import WaBucketRefAPI
    from .progress import TqdmProgress

    o = ctx.obj
    quiet = quiet or o["quiet"]
    if quiet:  # a command's own -q: as quiet as the global one
        logging.getLogger().setLevel(logging.WARNING)
    api = WaBucketRefAPI(
        bucket=o["bucket"],
        project_name=o["project_name"],
        entity=o["entity"],
        run_name=o["run_name"],
        job_type=o["job_type"],
        quiet=quiet,
        concurrency=o["concurrency"],
        progress=None if quiet else TqdmProgress(),
    )
    api.command_runs = True  # its run ends with the command
    return api


@click.group(context_settings=CONTEXT)
@click.version_option(None, "--version", package_name="wabucketref", prog_name="wabucket")
@click.option(
    "--bucket",
    envvar="WABUCKET_BUCKET",
    show_envvar=True,
    callback=_not_empty,
    help=(
        "Platform bucket name/id or blob:// URI, s3://bucket[/prefix], file:///dir or a folder path. "
        "Default: the project name (a platform bucket)."
    ),
)
@click.option(
    "--project-name",
    "--project_name",
    "project_name",
    envvar="WANDB_PROJECT",
    callback=_not_empty,
    help=(
        "W&B project (default: $WANDB_PROJECT, else a running W&B run's, else the one `wandb init` named). "
        "Required unless WANDB_MODE=disabled."
    ),
)
@click.option("--run-name", "--run_name", "run_name", help="Name of the W&B run this command records.")
@click.option("--job-type", "--job_type", "job_type", help="W&B job type of the run (default: the command's name).")
@click.option("--entity", envvar="WANDB_ENTITY", help="W&B entity (default: $WANDB_ENTITY, else your default entity).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=32,
    show_default=True,
    envvar="WABUCKET_CONCURRENCY",
    show_envvar=True,
    help="Files transferred at once.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@click.pass_context
def cli(ctx: click.Context, bucket, project_name, run_name, job_type, entity, concurrency, quiet) -> None:
    """Keep ML artifact bytes in your bucket; W&B keeps versions, aliases and lineage."""
    ctx.obj = {
        "bucket": bucket,
        "project_name": project_name,
        "run_name": run_name,
        "job_type": job_type,
        "entity": entity,
        "concurrency": concurrency,
        "quiet": quiet,
    }
    logging.basicConfig(
        stream=sys.stderr,
        format="wabucket: %(message)s",
        level=logging.WARNING if quiet else logging.INFO,
    )
    for noisy in ("wandb", "apolo_sdk", "aiohttp", "urllib3", "botocore", "boto3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@cli.command(context_settings=CONTEXT)
@click.argument("src_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-n", "--name", required=True, help="Artifact name ([A-Za-z0-9_.-]).")
@click.option("-t", "--type", "type_", required=True, help="Artifact type, e.g. dataset or model.")
@click.option(
    "-a",
    "--alias",
    help="Alias (also the bucket folder). Default: a new UUID4. '!run-config-hash': sha256 of the run config.",
)
@click.option(
    "-m",
    "--metadata",
    multiple=True,
    metavar="KEY=VALUE",
    help="Artifact metadata (repeatable); also the run's config.",
)
@click.option(
    "--reff/--no-reff",
    default=True,
    show_default=True,
    help="Store a reference to the bucket (default) or the files in W&B.",
)
@click.option("-s", "--suffix", help="Suffix for the ::set-output names ([A-Za-z0-9_]).")
@click.option(
    "--overwrite",
    is_flag=True,
    help=(
        "Replace an existing <TYPE>/<NAME>/<ALIAS>/ (its old content is unusable from the start; "
        "an interrupted overwrite is finished by rerunning it)."
    ),
)
@click.option(
    "--base",
    metavar="ALIAS",
    callback=_not_empty,
    help=(
        "Copy files equal to ALIAS's (same size and sha256) inside the bucket instead of sending them. "
        "Default: the artifact's latest version in the bucket."
    ),
)
@click.option("--no-base", is_flag=True, help="Send every file (no incremental upload).")
@click.option(
    "--part",
    metavar="INDEX/COUNT",
    help="Send SRC_DIR as part INDEX (from 0) of COUNT of one version, registered by `commit` once every part "
    "is in (parts run at once, anywhere; nothing goes to W&B).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@click.pass_context
def upload(ctx, src_dir, name, type_, alias, metadata, reff, suffix, overwrite, base, no_base, part, quiet) -> None:
    """Upload SRC_DIR to <bucket>/<TYPE>/<NAME>/<ALIAS>/ and log a W&B artifact referring to it.

    Files the artifact's latest version (or --base ALIAS) already has in the bucket are copied there
    instead of sent."""
    meta = parse_pairs(metadata)
    with _api(ctx, quiet) as api:
        api.upload_artifact(
            src_dir,
            name,
            type_,
            alias,
            meta,
            as_reference=reff,
            overwrite=overwrite,
            suffix=suffix,
            base=base,
            incremental=not no_base,
            part=part,
            set_outputs=True,
        )


@cli.command(context_settings=CONTEXT)
@click.option("-n", "--name", required=True, help="Artifact name ([A-Za-z0-9_.-]).")
@click.option("-t", "--type", "type_", required=True, help="Artifact type.")
@click.option("-a", "--alias", required=True, help="The alias the parts were uploaded to.")
@click.option("-m", "--metadata", multiple=True, metavar="KEY=VALUE", help="Artifact metadata (repeatable).")
@click.option("-s", "--suffix", help="Suffix for the ::set-output names ([A-Za-z0-9_]).")
@click.option("--overwrite", is_flag=True, help="Replace a version the alias already is, with other content.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@click.pass_context
def commit(ctx, name, type_, alias, metadata, suffix, overwrite, quiet) -> None:
    """Register the parts uploaded with `upload --part` as one version of NAME:ALIAS.

    Every part must be in and agree on COUNT; a path in two parts must have the same content."""
    meta = parse_pairs(metadata)
    with _api(ctx, quiet) as api:
        api.commit(name, type_, alias, meta, overwrite=overwrite, suffix=suffix, set_outputs=True)


@cli.command(context_settings=CONTEXT)
@click.argument("type_", metavar="TYPE")
@click.argument("name")
@click.argument("alias")
@click.option(
    "-d",
    "--dest",
    "--destination-folder",
    "dest",
    callback=_not_empty,
    help="Destination folder. Default: ./TYPE/NAME/ALIAS",
)
@click.option(
    "-a",
    "--run-args",
    "--run_args",
    "run_args",
    help="Run config for the W&B run: a YAML file, KEY=VALUE pairs (space or comma separated) or a JSON object.",
)
@click.option(
    "--include",
    multiple=True,
    metavar="PATTERN",
    help="Only files whose path in the artifact matches this glob ('*' matches '/' too: '*.bin'); repeatable.",
)
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Leave out files matching this glob; repeatable.")
@click.option(
    "--reuse",
    multiple=True,
    metavar="DIR",
    type=click.Path(path_type=Path),
    help="Take files of the same size and sha256 from DIR (an earlier version's) instead of fetching; repeatable.",
)
@click.option(
    "--shard",
    metavar="INDEX/COUNT",
    help="Only this share of the files, split by bytes among COUNT workers (INDEX from 0, as RANK); "
    "'auto' takes RANK and WORLD_SIZE from the environment.",
)
@click.option(
    "--dry-run", is_flag=True, help="Only say what would come (files, bytes), from the manifest; nothing moves."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@click.pass_context
def download(ctx, type_, name, alias, dest, run_args, include, exclude, reuse, shard, dry_run, quiet) -> None:
    """Resolve NAME:ALIAS in W&B and download its files, verified; print the destination path.

    NAME may be qualified as PROJECT/NAME or ENTITY/PROJECT/NAME to read another project's artifact."""
    config = parse_run_args(run_args)
    if dry_run:
        with _api(ctx, quiet) as api:
            p = api.plan_download(name, type_, alias, include=include, exclude=exclude, shard=shard)
        click.echo(f"would download {p['files']} of {p['of_files']} files ({p['bytes']} of {p['of_bytes']} bytes)")
        return
    with _api(ctx, quiet) as api:
        path = api.download_artifact(
            name,
            type_,
            alias,
            Path(dest) if dest else Path(type_, name, alias),
            run_config=config,
            include=include,
            exclude=exclude,
            reuse=reuse,
            shard=shard,
        )
    click.echo(str(path))


@cli.command(context_settings=CONTEXT)
@click.argument("bucket_path")
@click.option("-n", "--name", required=True, help="Artifact name ([A-Za-z0-9_.-]).")
@click.option("-t", "--type", "type_", required=True, help="Artifact type.")
@click.option("-a", "--alias", help="Alias. Default: a new UUID4. '!run-config-hash': sha256 of the run config.")
@click.option("-m", "--metadata", multiple=True, metavar="KEY=VALUE", help="Artifact metadata (repeatable).")
@click.option("-s", "--suffix", help="Suffix for the ::set-output names ([A-Za-z0-9_]).")
@click.option("--overwrite", is_flag=True, help="Replace the record of an alias that already exists in the bucket.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@click.pass_context
def link(ctx, bucket_path, name, type_, alias, metadata, suffix, overwrite, quiet) -> None:
    """Register a folder already in the bucket (BUCKET_PATH inside it, or a full URI) as an artifact."""
    meta = parse_pairs(metadata)
    with _api(ctx, quiet) as api:
        api.link(bucket_path, name, type_, alias, meta, suffix=suffix, overwrite=overwrite, set_outputs=True)


@cli.command(context_settings=CONTEXT)
@click.argument("type_", metavar="TYPE")
@click.argument("name")
@click.argument("alias")
@click.option(
    "--local", type=click.Path(path_type=Path), help="Check this downloaded folder instead of the bucket's copy."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@click.pass_context
def verify(ctx, type_, name, alias, local, quiet) -> None:
    """Check the bucket's copy of NAME:ALIAS (or --local DIR) against its manifest; writes nothing."""
    with _api(ctx, quiet) as api:
        index = api.verify(name, type_, alias, local=local)
    if not (quiet or ctx.obj["quiet"]):
        n = index.files
        click.echo(f"ok: {n} file{'s' * (n != 1)}, {index.bytes} bytes match the manifest", err=True)


@cli.command("ls", context_settings=CONTEXT)
@click.argument("type_", metavar="[TYPE", required=False)
@click.argument("name", metavar="[NAME]]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Nothing on stderr but errors.")
@click.pass_context
def ls_(ctx, type_, name, as_json, quiet) -> None:
    """List the project's artifacts (of TYPE), or the versions of TYPE NAME, newest first.

    Read from W&B; offline (or WANDB_MODE=disabled) from the records kept in the bucket."""
    with _api(ctx, quiet) as api:
        doc = api.ls(type_, name)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    elif "versions" in doc:
        rows = [
            [
                v["version"] or "-",
                ",".join(v["aliases"]) or "-",
                v["files"],
                v["bytes"],
                v["created"][:19].replace("T", " "),
                v["location"],
            ]
            for v in doc["versions"]
        ]
        _table(["VERSION", "ALIASES", "FILES", "BYTES", "CREATED", "LOCATION"], rows)
    else:
        _table(["TYPE", "NAME", "VERSIONS"], [[a["type"], a["name"], a["versions"]] for a in doc["artifacts"]])
        if not doc["artifacts"]:
            logging.getLogger("wabucketref").info("no artifacts found")


@cli.command("diff", context_settings=CONTEXT)
@click.argument("type_", metavar="TYPE")
@click.argument("name")
@click.argument("a")
@click.argument("b", required=False)
@click.option(
    "--local",
    type=click.Path(path_type=Path),
    help="Compare A with this folder instead of a version B (its files hashed only where sizes match).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--exit-code", is_flag=True, help="Exit 1 if they differ, 0 if not (as git diff --exit-code).")
@click.option("-q", "--quiet", is_flag=True, help="Nothing on stderr but errors.")
@click.pass_context
def diff_(ctx, type_, name, a, b, local, as_json, exit_code, quiet) -> None:
    """Files added, removed and changed from version A to version B of NAME, from their manifests.

    A and B are aliases or versions (vN); OTHER:ALIAS names another artifact of the project."""
    if (b is None) == (local is None):
        raise UsageError("diff needs a version B or --local DIR (one of them)")
    with _api(ctx, quiet) as api:
        doc = api.diff(name, type_, a, b, local=local)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        for what, mark in (("added", "+"), ("removed", "-")):
            for f in doc[what]:
                click.echo(f"{mark} {f['path']}  ({f['size']} bytes)")
        for f in doc["changed"]:
            click.echo(f"~ {f['path']}  ({f['size_a']} -> {f['size_b']} bytes)")
        click.echo(_diff_totals(doc))
    if exit_code and not doc["same"]:
        raise click.exceptions.Exit(1)


def _diff_totals(doc: dict[str, Any]) -> str:
    def side(s: dict[str, Any]) -> str:
        what = s["local"] if "local" in s else f"{s['name']}:{s['alias']}"
        return f"{what} {s['files']} files, {s['bytes']} bytes"

    added = sum(f["size"] for f in doc["added"])
    removed = sum(f["size"] for f in doc["removed"])
    return (
        f"{len(doc['added'])} added (+{added} bytes), {len(doc['removed'])} removed (-{removed} bytes), "
        f"{len(doc['changed'])} changed, {doc['unchanged']} unchanged; {side(doc['a'])} -> {side(doc['b'])}"
    )


def _table(header: list[str], rows: list[list[Any]]) -> None:
    """Columns aligned, two spaces apart (numbers to the right); the header only above rows."""
    if not rows:
        return
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(header))]
    for r in cells:
        line = "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True))
        click.echo(line.rstrip())


@cli.command(context_settings=CONTEXT)
@click.option("-t", "--type", "type_", help="Only artifacts of this TYPE.")
@click.option("-n", "--name", help="Only artifacts of this NAME.")
@click.option(
    "--older-than",
    default="1d",
    show_default=True,
    metavar="AGE",
    help="Unfinished uploads count as abandoned once their marker is older than AGE (30m, 12h, 2d).",
)
@click.option("--delete", is_flag=True, help="Delete what is reported (default: only report it).")
@click.pass_context
def gc(ctx, type_, name, older_than, delete) -> None:
    """Report (or --delete) bucket data that no existing W&B version refers to.

    Only data whose bucket record names this W&B entity and project is considered: folders of
    versions deleted in W&B, and uploads abandoned longer than --older-than. Folders without a
    record are listed as unattributable and never deleted. Needs W&B online."""
    with _api(ctx) as api:
        report = api.gc(type_, name, older_than=older_than, delete=delete)
    verb = "deleted" if report.deleted else "unreferenced"
    for item in report.garbage:
        click.echo(f"{verb}\t{item.what}\t{item.files} files\t{item.bytes} bytes\t{item.why}")
    for item in report.unattributable:
        click.echo(f"unattributable\t{item.what}\t-\t-\t{item.why} (never deleted)")
    from .progress import _human

    size = f"{len(report.garbage)} aliases, {report.files} files ({_human(report.bytes)})"
    if report.deleted:
        said = f"freed {size}"
    elif report.garbage:
        said = f"{size} could be freed: rerun with --delete to delete them"
    else:
        said = "nothing to delete"
    click.echo(
        f"wabucket: gc: {said}; {report.kept} aliases kept, {len(report.unattributable)} unattributable, "
        f"{report.others} of other W&B projects left alone",
        err=True,
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, a cancelled job): unwound like Ctrl-C, so part files and markers are
    cleaned up and a rerun resumes."""


def _on_sigterm(signum: int, frame: object) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the cleanup finish
    raise Terminated


def main(argv: list[str] | None = None) -> None:
    """The process entry point: run the CLI, then end the process (in-process callers use run())."""
    import signal

    from .malloc import fix_mmap_threshold

    signal.signal(signal.SIGTERM, _on_sigterm)
    fix_mmap_threshold()
    code = run(argv)
    # Leave without the interpreter's final teardown. obstore hands each result back from a
    # tokio thread that may still be returning into Python as the last command ends; Python 3.11
    # kills such a thread with pthread_exit during teardown, and the unwind through Rust frames
    # aborts the process (SIGABRT, exit 134) after a successful command: seen in ~7% of quick
    # uploads once nothing else (wandb) delayed the exit. What exit handlers do is done here.
    teardown = getattr(sys.modules.get("wandb"), "teardown", None)
    if teardown is not None:
        try:
            teardown()  # wandb's own exit handler: stops its service process
        except Exception as e:
            logging.getLogger("wabucketref").debug("wandb teardown: %s", e)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status: 2 for usage errors, 1 for failures, never a traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["wabucket"]:  # flows written for the original image pass `wabucket ...` to the entrypoint
        args = args[1:]
    try:
        code = cli.main(args=args, prog_name="wabucket", standalone_mode=False)
        return code if isinstance(code, int) else 0  # a command's ctx.exit(N) (diff --exit-code)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort as e:
        if isinstance(e.__context__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            return _interrupted(e.__context__)
        click.echo("wabucket: aborted", err=True)
        return 1
    except WaBucketError as e:
        if settings.debug():
            raise
        click.echo(f"wabucket: error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except Exception as e:  # one readable line instead of a traceback
        if settings.debug():
            raise
        from .failures import one_line  # an S3 error's code and message, not its XML body's first line

        first = one_line(e) if str(e).strip() else ""
        click.echo(f"wabucket: error: {type(e).__name__}: {first} (set WABUCKET_DEBUG=1 for details)", err=True)
        return 1


def _interrupted(e: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM, as a shell reports a process those signals ended."""
    terminated = isinstance(e, Terminated)
    click.echo("wabucket: terminated" if terminated else "wabucket: interrupted", err=True)
    return 143 if terminated else 130


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
