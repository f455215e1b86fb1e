"""The report's versions sections: partial and reusing downloads of A, incremental uploads of A and B."""

from __future__ import annotations

from typing import Any

from .common import REFERENCE, MiB
from .datasets import Dataset, share_pattern
from .fmt import cell, fmt, median_of
from .tally import Index, Out, Target, verdict_lines
from .versions import (
    INCREMENTAL_OPS,
    INCREMENTAL_SHARE,
    INCREMENTAL_TIME_SHARE,
    PARTIAL_OPS,
    REUSE_OPS,
    SHARE,
    SHARE_FACTOR,
)

PARTIAL_INTRO = (
    "`download-1%-nowandb` = the same with `WANDB_MODE=disabled` (no W&B run: what W&B's fixed cost is); "
    "`download-next` = the next version (A with {n:,} files, one in every {every}, rewritten; "
    "uploaded beforehand as a new version of the same artifact, not timed) into an empty folder; "
    "`download-next-reuse` = the same with `--reuse DIR`, DIR = a full download of the previous version made "
    "beforehand (not timed), whose files' hashes the download remembered (the local hash cache); "
    "`download-next-reuse-cold` = the same with the hash cache emptied first, so every file of DIR is read back "
    "from disk (the page cache is dropped before each run) and hashed. "
    "Files fetched and reused are from the summary line; every file of every run is checked by sha256. "
    "`x full` = against the full download of A (the table above), and for the reusing downloads against "
    "`download-next`. `outside` = wall - transfer: start-up, session, W&B run, manifest, (re)use of local files."
)

INCREMENTAL_INTRO = (
    "The next version of each data set (A with 1% of its files rewritten, one in every 100; B with one of "
    "its four files rewritten; same sizes) uploaded three ways (and the base once more), alternating: `upload-next-incremental` = "
    "`wabucket upload DIR -n NAME -t dataset -a next --base base` (files equal to a file of the base by size "
    "and sha256 are copied inside the bucket instead of sent; the default without --base takes the latest "
    "version), where the base is the previous version uploaded beforehand as alias `base` of a fresh artifact "
    "(not timed) from the folder whose unchanged files DIR shares (hard links: as when a dataset folder is "
    "uploaded, edited and uploaded again, so their hashes are remembered); `upload-next-incremental-cold` = "
    "the same to alias `next-cold` with the local hash cache emptied first (every file of DIR is read and "
    "hashed: a folder this machine has not seen); `upload-unchanged-incremental` = the base's own folder "
    "to alias `same` with `--base base` (every file copied, none sent: what the copies alone cost the "
    "server); `upload-next-full` = the same folder with `--no-base` (every file sent) to alias `next` of "
    "another fresh artifact. Files sent and copied are from the upload's summary line (bytes sent = files "
    "sent x the file size); every upload is checked by listing its folder (file count and bytes). "
    "`x full` = incremental / full wall time. A copy is a server-side S3 CopyObject: SeaweedFS's S3 gateway "
    "reads every chunk of the source object from its volume server and writes it as a new chunk (a new file "
    "id; the copy shares no chunk with its source), four chunks at a time, so a copy costs server CPU and "
    "disk I/O (the SeaweedFS CPU column: CPU seconds of the one `weed mini` process during the run) and no "
    "client bytes."
)


# ------------------------------------------------------------------ partial and reusing downloads


def partial_section(out: Out, idx: Index, datasets: list[Dataset]) -> tuple[dict[str, Any], list[Target]]:
    """Partial and reusing downloads (dataset A, the reference): table and target lines."""
    a = next((d for d in datasets if d.name == "A"), None)
    if a is None or not any(idx.all("A", op, REFERENCE) for op in PARTIAL_OPS):
        return {}, []
    pattern, n = share_pattern(a.count, SHARE)
    out(f"## Partial and reusing downloads (dataset A, `{REFERENCE}`)")
    out("")
    out(
        f"`download-1%` = `wabucket download ... --include '{pattern}'` ({n:,} of the {a.count:,} files); "
        + PARTIAL_INTRO.format(n=n, every=round(1 / SHARE))
    )
    out("")
    out(
        "| op | files fetched | files reused | MiB fetched | median s | min | max | transfer s | outside s | x full | client CPU s |"
    )
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    partial: dict[str, Any] = {}
    for op in ("download", *PARTIAL_OPS):
        if idx.all("A", op, REFERENCE):
            partial[op] = _partial_row(out, idx, a, op)
    out("")
    targets = _partial_targets(idx, a, partial, n)
    verdict_lines(out, targets)
    return partial, targets


def _partial_row(out: Out, idx: Index, a: Dataset, op: str) -> dict[str, Any]:
    m = idx.med("A", op, REFERENCE)
    if m is None:
        err = idx.error("A", op, REFERENCE)
        out(f"| {op} | FAILED | | | | | | | | | {cell(err)} |")
        return {"error": err}
    good = idx.ok("A", op, REFERENCE)
    fetched, reused = idx.med("A", op, REFERENCE, "files_moved"), idx.med("A", op, REFERENCE, "files_reused")
    tr = idx.med("A", op, REFERENCE, "transfer_s")
    base = idx.med("A", "download-next", REFERENCE) if op in REUSE_OPS else idx.med("A", "download", REFERENCE)
    row = {
        "median": m,
        "min": min(r.wall for r in good),
        "max": max(r.wall for r in good),
        "files_fetched": fetched,
        "files_reused": reused,
        "bytes_fetched": fetched * a.size if fetched is not None else None,
        "transfer": tr,
        "ratio": m / base if base else None,
        "client_cpu": median_of([r.user_cpu + r.sys_cpu for r in good]),
    }
    mib = fmt(row["bytes_fetched"] / MiB, 1) if row["bytes_fetched"] is not None else "-"
    out(
        f"| {op} | {fmt(fetched, 0)} | {fmt(reused, 0)} | {mib} | {m:.2f} | {row['min']:.2f} | {row['max']:.2f} | "
        f"{fmt(tr)} | {fmt(m - tr if tr is not None else None)} | {fmt(row['ratio'], 3)} | {fmt(row['client_cpu'], 1)} |"
    )
    return row


def _partial_targets(idx: Index, a: Dataset, partial: dict[str, Any], n: int) -> list[Target]:
    full, nxt = idx.med("A", "download", REFERENCE), idx.med("A", "download-next", REFERENCE)
    few = f"{SHARE_FACTOR} x {100 * SHARE:.0f}%"
    targets: list[Target] = []
    lim1 = SHARE_FACTOR * SHARE * full if full is not None else None
    for op in ("download-1%", "download-1%-nowandb"):
        p1 = partial.get(op, {}).get("median")
        shown1 = (
            f"{fmt(p1)} s = {fmt(100 * p1 / full if p1 and full else None, 1)}% of the full download's "
            f"{fmt(full)} s (limit {few} = {fmt(lim1)} s); {n:,} of {a.count:,} files"
        )
        nowandb = " with `WANDB_MODE=disabled` (no W&B run)" if op.endswith("-nowandb") else ""
        name = f"A download of {100 * SHARE:.0f}% of the files (`--include`){nowandb} <= {few} of the full download"
        targets.append((name, p1, lim1, shown1))
    for op in REUSE_OPS:
        r = partial.get(op, {})
        pr, fetched = r.get("median"), r.get("files_fetched")
        lim2 = SHARE_FACTOR * SHARE * nxt if nxt is not None else None
        # Its share of the work: fetching no more than the changed files, and a few times their share of the time.
        ok_bytes = fetched is not None and fetched <= n
        shown2 = (
            f"{fmt(pr)} s = {fmt(100 * pr / nxt if pr and nxt else None, 1)}% of the plain download's {fmt(nxt)} s "
            f"(limit {few} = {fmt(lim2)} s); fetched {fmt(fetched, 0)} files "
            f"({fmt(fetched * a.size / MiB if fetched is not None else None, 1)} MiB, limit {n:,} changed), "
            f"reused {fmt(r.get('files_reused'), 0)}"
        )
        cold = ", hash cache emptied first" if op.endswith("-cold") else ""
        name = (
            f"A download of the next version ({100 * SHARE:.0f}% changed) with `--reuse`{cold} <= {few} of a "
            "plain download, fetching only the changed files"
        )
        targets.append((name, pr if ok_bytes or pr is None else float("inf"), lim2, shown2))
    return targets


# ------------------------------------------------------------------ incremental uploads


def _changed_count(d: Dataset) -> int:
    return len(range(0, d.count, round(1 / INCREMENTAL_SHARE[d.name])))


def incremental_section(out: Out, idx: Index, datasets: list[Dataset]) -> tuple[dict[str, Any], list[Target]]:
    """Incremental uploads (datasets A and B, the reference): table and target lines."""
    inc_sets = [d for d in datasets if any(idx.all(d.name, op, REFERENCE) for op in INCREMENTAL_OPS)]
    if not inc_sets:
        return {}, []
    out(f"## Incremental uploads (datasets A and B, `{REFERENCE}`)")
    out("")
    out(INCREMENTAL_INTRO)
    out("")
    out(
        "| dataset | op | files changed | files sent | MiB sent | files copied | MiB copied | median s | min | max "
        "| transfer s | x full | client CPU s | SeaweedFS CPU s |"
    )
    out("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    incremental: dict[str, Any] = {}
    for d in inc_sets:
        for op in INCREMENTAL_OPS:
            if idx.all(d.name, op, REFERENCE):
                incremental[f"{d.name}/{op}"] = _incremental_row(out, idx, d, op)
    out("")
    targets = [t for d in inc_sets for t in _incremental_targets(d, incremental)]
    verdict_lines(out, targets)
    return incremental, targets


def _mib(v: float | None) -> str:
    return fmt(v / MiB, 1) if v is not None else "-"


def _incremental_row(out: Out, idx: Index, d: Dataset, op: str) -> dict[str, Any]:
    changed = 0 if op == "upload-unchanged-incremental" else _changed_count(d)
    m = idx.med(d.name, op, REFERENCE)
    if m is None:
        err = idx.error(d.name, op, REFERENCE)
        out(f"| {d.name} | {op} | {changed:,} | FAILED | | | | | | | | | | {cell(err)} |")
        return {"error": err}
    good = idx.ok(d.name, op, REFERENCE)
    full = idx.med(d.name, "upload-next-full", REFERENCE)
    sent, copied = idx.med(d.name, op, REFERENCE, "files_moved"), idx.med(d.name, op, REFERENCE, "files_copied")
    tr = idx.med(d.name, op, REFERENCE, "transfer_s")
    row = {
        "median": m,
        "min": min(r.wall for r in good),
        "max": max(r.wall for r in good),
        "files_changed": changed,
        "bytes_changed": changed * d.size,
        "files_sent": sent,
        "bytes_sent": sent * d.size if sent is not None else None,
        "files_copied": copied,
        "bytes_copied": copied * d.size if copied is not None else None,
        "transfer": tr,
        "ratio_to_full": m / full if full else None,
        "client_cpu": median_of([r.user_cpu + r.sys_cpu for r in good]),
        "server_cpu": median_of([r.server_cpu for r in good]),
    }
    out(
        f"| {d.name} | {op} | {changed:,} | {fmt(sent, 0)} | {_mib(row['bytes_sent'])} | {fmt(copied, 0)} | "
        f"{_mib(row['bytes_copied'])} | {m:.2f} | {row['min']:.2f} | {row['max']:.2f} | {fmt(tr)} | "
        f"{fmt(row['ratio_to_full'], 3)} | {fmt(row['client_cpu'], 1)} | {fmt(row['server_cpu'], 1)} |"
    )
    return row


def _incremental_targets(d: Dataset, incremental: dict[str, Any]) -> list[Target]:
    """Per incremental op: only the changed bytes sent; on B also at most half a full upload's time."""
    targets: list[Target] = []
    changed = _changed_count(d)
    full_row = incremental.get(f"{d.name}/upload-next-full", {})
    for op in (op for op in INCREMENTAL_OPS if op.startswith("upload-next-inc")):
        inc = incremental.get(f"{d.name}/{op}", {})
        sent_b = inc.get("bytes_sent")
        what = f"{changed:,} of {d.count:,} files" if d.name == "A" else f"{changed} of its {d.count} files"
        cold = " (hash cache emptied first)" if op.endswith("-cold") else ""
        targets.append(
            (
                f"{d.name} incremental upload{cold} ({what} changed) sends only the changed bytes",
                None if sent_b is None else (0.0 if sent_b == changed * d.size else float("inf")),
                0.0,
                f"sent {fmt(inc.get('files_sent'), 0)} file(s) = {fmt(sent_b / MiB if sent_b is not None else None, 1)} MiB "
                f"(changed: {changed:,} file(s) = {changed * d.size / MiB:.1f} MiB); "
                f"copied {fmt(inc.get('files_copied'), 0)} in the bucket",
            )
        )
        if d.name == "B":
            im, fm = inc.get("median"), full_row.get("median")
            lim = INCREMENTAL_TIME_SHARE * fm if fm is not None else None
            targets.append(
                (
                    f"B incremental upload{cold} <= {INCREMENTAL_TIME_SHARE:g} x a full upload (`--no-base`) of the "
                    "same version",
                    im,
                    lim,
                    f"{fmt(im)} s = {fmt(100 * im / fm if im and fm else None, 1)}% of the full upload's "
                    f"{fmt(fm)} s (limit {fmt(lim)} s)",
                )
            )
    return targets
