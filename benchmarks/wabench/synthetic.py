"""A synthetic 10,000,000-entry version of C: its manifest written directly (no file bytes), with
the bucket's record and a W&B version as an upload makes them; then `ls`, `diff` against a
1%-changed copy, `download --include` (1%) `--dry-run` and `gc` run on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .bench_c import CBench

ENTRIES = 10_000_000  # the default (--synthetic-entries)
PREFIX = "C-synthetic-"  # the rows' data set in the runs and the JSON: PREFIX + the entry count
OPS = {
    # op: what the row measures
    "ls": "`ls dataset NAME`: the versions of the artifact",
    "diff": "`diff dataset NAME first changed`: against a copy with 1% of its entries changed",
    "download-1%-dry-run": "`download --include PATTERN --dry-run` (1% of the entries): planning only",
    "gc": "`gc` (dry run) over a bucket whose records name 10M files",
}
NOT_YET = "not run"


def write_synthetic_version(bucket: Path, artifact: str, alias: str, entries: int, changed: bool, env: dict) -> None:
    """Record version `alias` of `artifact` in the folder `bucket` with `entries` files of 1 KiB named
    as data set C's (dataset_c.rel_path), without their bytes; with `changed`, 1% of them
    (dataset_c.is_changed) have other content. Run in a process of its own with `env` (the W&B
    backend's): the manifest's shards and the record go to the bucket, the version to W&B."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from wabench.synthetic import _write; "
        "_write(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] == '1')"
    )
    argv = [sys.executable, "-c", code, str(Path(__file__).parent.parent), str(bucket), artifact, alias, str(entries)]
    subprocess.run([*argv, "1" if changed else "0"], env=env, check=True, stdin=subprocess.DEVNULL)


def _write(bucket: str, artifact: str, alias: str, entries: int, changed: bool) -> None:
    import asyncio
    import hashlib
    import tempfile

    from wabucketref import tracking
    from wabucketref.layout import ArtifactKeys, BucketRecord
    from wabucketref.manifest import FileEntry, ManifestWriter
    from wabucketref.records import put_shards, write_record
    from wabucketref.storage.local import open_local

    from .dataset_c import FILE_SIZE, is_changed, rel_path

    storage = open_local(bucket)
    keys = ArtifactKeys("", "dataset", artifact).alias(alias)
    with tempfile.TemporaryDirectory(prefix="synthetic-") as tmp:
        writer = ManifestWriter(Path(tmp))
        for i in range(entries):
            seed = b"%d" % i + (b"/changed" if changed and is_changed(i) else b"")
            writer.add(FileEntry(rel_path(i), FILE_SIZE, hashlib.sha256(seed).hexdigest()))
        manifest = writer.close()
        shards = asyncio.run(put_shards(storage, keys.artifact, manifest))
        run = tracking.start_run(project=os.environ["WANDB_PROJECT"], entity=None, name=None, job_type="synthetic")
        ref = storage.uri_for(keys.data)
        version = tracking.log_artifact(
            run,
            name=artifact,
            type="dataset",
            alias=alias,
            ref=ref,
            manifest=manifest,
            metadata={},
            shards=storage.uri_for(shards) if shards is not None else None,
        )
        record = BucketRecord.new(keys, ref, keys.data, manifest, version, run.entity, run.project)
        asyncio.run(write_record(storage, keys, record, manifest))
        tracking.finish_run(run, 0)


def bench_synthetic(b: CBench) -> None:
    """The 10M-entry rows, on the stack of C's largest file count."""
    from .bench_c import WAB_FOLDER, wab_folder
    from .common import WANDB_PROJECT
    from .dataset_c import include_pattern

    bucket, art = b.work / "bucket-synthetic", f"bench-{PREFIX}{b.args.synthetic_entries}"
    env = {**b.cs.env[WAB_FOLDER], "WANDB_PROJECT": WANDB_PROJECT}
    for alias, changed in (("first", False), ("changed", True)):
        write_synthetic_version(bucket, art, alias, b.args.synthetic_entries, changed, env)
    wab, pattern = wab_folder(bucket), include_pattern(b.args.synthetic_entries)[0]
    argvs = {
        "ls": [*wab, "ls", "dataset", art],
        "diff": [*wab, "diff", "dataset", art, "first", "changed"],
        "download-1%-dry-run": [*wab, "download", "dataset", art, "first", "--include", pattern, "--dry-run"],
        "gc": [*wab, "gc"],
    }
    for op, argv in argvs.items():
        b.run(WAB_FOLDER, op, 0, argv, dataset=f"{PREFIX}{b.args.synthetic_entries}")
