"""Platform job metadata, so a W&B run says which platform job it ran in."""

from __future__ import annotations

import logging

from .failures import first_line
from .settings import platform_job_env

log = logging.getLogger("wabucketref")

_VARS = {"job_id": "JOB_ID", "job_name": "JOB_NAME", "owner": "JOB_OWNER"}
MAX_TAG = 64  # W&B's limit on a tag's length


def current_job_id() -> str | None:
    return platform_job_env("JOB_ID")


def env_tags() -> list[str]:
    """job_id:…, job_name:…, owner:… for the job this process runs in (none outside a job)."""
    if not current_job_id():
        return []
    return [f"{tag}:{value}"[:MAX_TAG] for tag, var in _VARS.items() if (value := platform_job_env(var))]


async def platform_tags(job_id: str) -> list[str]:
    """The job's own tags, read from the platform; a failure is a warning, not an error."""
    try:
        from .storage.platform import open_client

        client = await open_client()
        try:
            status = await client.jobs.status(job_id)
        finally:
            await client.close()
        return [str(t)[:MAX_TAG] for t in (status.tags or ())]
    except Exception as e:  # tags are a nicety; never fail a transfer over them
        log.warning("could not read tags of platform job %s: %s", job_id, first_line(e))
        return []


def write_outputs(name: str, type_: str, alias: str, suffix: str = "") -> None:
    """The ::set-output lines neuro-flow reads from a job's log, each at the start of its own
    stdout line; `suffix` is appended to the names (`_x`, as checks.check_suffix makes it)."""
    import sys
    import time

    sys.stdout.write(
        f"::set-output name=artifact_name{suffix}::{name}\n"
        f"::set-output name=artifact_type{suffix}::{type_}\n"
        f"::set-output name=artifact_alias{suffix}::{alias}\n"
    )
    sys.stdout.flush()
    if current_job_id():  # as the original tool does: a job's last log lines can be lost when it ends at once
        time.sleep(1)
