"""The slot for a synthetic 10,000,000-entry version of C: its manifest written directly (no file
bytes), then `ls`, `diff` against a 1%-changed copy, `download --include` (1%) `--dry-run` and `gc`.

TODO(lead): the manifest format is being rewritten; once it is settled, implement
`write_synthetic_version` (the manifest, the bucket's record of the alias, and whatever W&B needs)
and set READY = True. Until then the report prints this slot as "not run" and no run is recorded
(a failed run would fail the benchmark)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .bench_c import CBench

READY = False
ENTRIES = 10_000_000
DATASET = f"C-synthetic-{ENTRIES}"  # the rows' data set in the runs and the JSON
OPS = {
    # op: what the row measures
    "ls": "`ls dataset NAME`: the versions of an artifact with 10M files",
    "diff": "`diff dataset NAME first changed`: against a copy with 1% of its entries changed",
    "download-1%-dry-run": "`download --include PATTERN --dry-run` (1% of the entries): planning only",
    "gc": "`gc` (dry run) over a bucket whose records name 10M files",
}
NOT_YET = "not run: the synthetic manifest is not written yet (TODO(lead), benchmarks/wabench/synthetic.py)"


def write_synthetic_version(bucket: Path, artifact: str, alias: str, entries: int, changed: bool) -> None:
    """Record version `alias` of `artifact` in the folder `bucket` with `entries` files of 1 KiB named
    as data set C's (dataset_c.rel_path), without their bytes; with `changed`, 1% of them
    (dataset_c.is_changed) have the changed content's sha256 (dataset_c.content(i, True)).

    TODO(lead): write the manifest in the new format, and the alias's record beside it; log it to
    W&B as an upload would (or run `wabucket link` on it) so that ls, diff and gc find it online."""
    raise NotImplementedError("TODO(lead): the synthetic manifest waits for the new manifest format")


def bench_synthetic(b: CBench) -> None:
    """The 10M-entry rows, on the stack of C's largest file count. Until READY, nothing runs."""
    if not READY:
        return
    from .bench_c import WAB_FOLDER, wab_folder
    from .dataset_c import include_pattern

    bucket, art = b.work / "bucket-synthetic", f"bench-{DATASET}"
    write_synthetic_version(bucket, art, "first", ENTRIES, changed=False)
    write_synthetic_version(bucket, art, "changed", ENTRIES, changed=True)
    wab, pattern = wab_folder(bucket), include_pattern(ENTRIES)[0]
    argvs = {
        "ls": [*wab, "ls", "dataset", art],
        "diff": [*wab, "diff", "dataset", art, "first", "changed"],
        "download-1%-dry-run": [*wab, "download", "dataset", art, "first", "--include", pattern, "--dry-run"],
        "gc": [*wab, "gc"],
    }
    for op, argv in argvs.items():
        b.run(WAB_FOLDER, op, 0, argv, dataset=DATASET)
