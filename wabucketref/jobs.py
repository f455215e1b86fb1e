"""Platform job metadata, so a W&B run says which platform job it ran in."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("wabucketref")

# The original tool read NEURO_*; newer platforms set APOLO_* as well.
_VARS = {"job_id": "JOB_ID", "job_name": "JOB_NAME", "owner": "JOB_OWNER"}
MAX_TAG = 64  # W&B's limit on a tag's length


def _env(suffix: str) -> str | None:
    return os.environ.get(f"APOLO_{suffix}") or os.environ.get(f"NEURO_{suffix}")


def current_job_id() -> str | None:
    return _env("JOB_ID")


def env_tags() -> list[str]:
    """job_id:…, job_name:…, owner:… for the job this process runs in (none outside a job)."""
    if not current_job_id():
        return []
    return [f"{tag}:{value}"[:MAX_TAG] for tag, var in _VARS.items() if (value := _env(var))]


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
    except Exception as e:  # noqa: BLE001 - tags are a nicety; never fail a transfer over them
        log.warning("could not read tags of platform job %s: %s", job_id, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return []
