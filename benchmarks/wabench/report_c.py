"""The report's section on data set C: each command's wall, CPU and peak memory per file count,
the slot of the synthetic 10M-entry version, and C's targets (met or missed)."""

from __future__ import annotations

import re
from typing import Any

from . import synthetic
from .bench_c import ROWS, S3_PEERS, WAB_FOLDER, WAB_S3
from .common import MiB
from .dataset_c import FILE_SIZE, include_pattern
from .fmt import cell, fmt, human_size, mb, median_of
from .measure import Run
from .tally import Index, Out, Target, verdict_lines

MEMORY_LIMIT = 512 * MiB  # every command at the largest count
GROWTH, GROWTH_PLUS = 1.3, 30e6  # ... and at most 1.3x + 30 MB of itself at the smallest count
FAST_S = 5.0  # ls and diff at the largest count
UNCHANGED_SHARE = 0.25  # an unchanged upload against the first upload, folder bucket
WAB = (WAB_FOLDER, WAB_S3)

INTRO = (
    "N files of 1 KiB in folders of 1,000 (`d00000/f00000000.bin`; content from a PRNG seeded by the file's "
    "index), generated before each file count and removed after it. Each repetition runs three groups in a "
    "rotated order, the page cache dropped before every run: **folder bucket** (`--bucket DIR`, W&B online): "
    "`upload` (alias `first`; the hash cache emptied first), `download` (in full, into an empty folder), "
    "`verify` (the bucket's copy), `upload-unchanged` (the same tree to alias `same`: every file copied in the "
    "bucket, a hard link), `upload-changed` (alias `changed`: the tree with 1% of its files, every 100th, "
    "rewritten in place with new content of the same size), `ls dataset NAME`, `diff dataset NAME first changed`, "
    "`download-1%` (`--include` of about 1% of `first`: one folder in 100, or one file in 100 when there are "
    "fewer than 100 folders), `gc` (a dry run); **peers** between local folders: `cp -a SRC DST` (the floor) "
    "and `rclone copy --transfers 32 SRC DST`, the tree into a new folder (upload) and that folder into "
    "another (download); **S3** (SeaweedFS): wabucketref `--bucket s3://...` (W&B online), `s5cmd` and "
    "`rclone` (the flags of the A/B table), then wabucketref's `upload-unchanged` (what the in-bucket copies "
    "cost). Memory: the peak of the whole process tree as the sum of each process's PSS (sampled at 10 Hz), "
    "and the largest single process's max RSS (GNU time); the targets judge the larger of the two. Every upload "
    "is checked by listing its copy (files and bytes), every download by its files (the first repetition: "
    "every byte), `diff` by the files it lists. `x peer` = wall / the faster peer's wall (folder: "
    "`rclone copy`; S3: the faster of s5cmd and rclone)."
)


def c_counts(idx: Index) -> list[int]:
    return sorted({int(d[2:]) for d, _op, _c in idx.by if re.fullmatch(r"C-\d+", d)})


def memory(r: Run) -> int:
    """What the memory targets judge: the larger of the tree's PSS and the largest process's RSS."""
    return max(r.peak_rss_tree, r.max_rss_single)


def c_section(out: Out, idx: Index, runs: list[Run]) -> tuple[dict[str, Any], list[Target]]:
    counts = c_counts(idx)
    if not counts:
        return {}, []
    out("## Data set C: many small files")
    out("")
    out(INTRO)
    out("")
    out(
        "| files | bucket | op | contender | median s | min | max | x peer | client CPU s | SeaweedFS CPU s "
        "| peak memory MB (tree PSS) | max RSS MB (largest process) | notes |"
    )
    out("|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    data: dict[str, Any] = {}
    for count in counts:
        for bucket, c, op in ROWS:
            if idx.all(f"C-{count}", op, c):
                data[f"C-{count}/{bucket}/{c}/{op}"] = _row(out, idx, count, bucket, c, op)
    out("")
    _synthetic_slot(out, idx)
    # --c-s3-up-to may leave S3 out at the biggest count: S3 is judged at the biggest it ran
    on_s3 = max((n for n in counts if idx.all(f"C-{n}", "upload", WAB_S3)), default=counts[-1])
    targets = memory_targets(idx, counts) + speed_targets(idx, counts[-1], on_s3)
    verdict_lines(out, targets)
    out(f"- {s3_copies(idx, on_s3)} (reported, no target)")
    out("")
    return data, targets


def _peer(idx: Index, d: str, c: str, op: str) -> float | None:
    """The faster peer's median wall for a wabucketref upload or download row."""
    if op not in ("upload", "download") or c not in WAB:
        return None
    peers = ["rclone-local"] if c == WAB_FOLDER else S3_PEERS
    walls = [m for m in (idx.med(d, op, p) for p in peers) if m is not None]
    return min(walls) if walls else None


def _row(out: Out, idx: Index, count: int, bucket: str, c: str, op: str) -> dict[str, Any]:
    d = f"C-{count}"
    m = idx.med(d, op, c)
    if m is None:
        err = idx.error(d, op, c)
        out(f"| {count:,} | {bucket} | {op} | {c} | FAILED | | | | | | | | {cell(err)} |")
        return {"error": err}
    good = idx.ok(d, op, c)
    peer = _peer(idx, d, c, op)
    row = {
        "median": m,
        "min": min(r.wall for r in good),
        "max": max(r.wall for r in good),
        "ratio_to_peer": m / peer if peer else None,
        "client_cpu": median_of([r.user_cpu + r.sys_cpu for r in good]),
        "server_cpu": median_of([r.server_cpu for r in good]),
        "peak_rss_tree": max(r.peak_rss_tree for r in good),
        "max_rss_single": max(r.max_rss_single for r in good),
        "files_moved": idx.med(d, op, c, "files_moved"),
        "files_copied": idx.med(d, op, c, "files_copied"),
    }
    out(
        f"| {count:,} | {bucket} | {op} | {c} | {m:.2f} | {row['min']:.2f} | {row['max']:.2f} | "
        f"{fmt(row['ratio_to_peer'])} | {fmt(row['client_cpu'], 1)} | {fmt(row['server_cpu'], 1)} | "
        f"{mb(row['peak_rss_tree'])} | {mb(row['max_rss_single'])} | {_notes(count, c, op, row)} |"
    )
    return row


def _notes(count: int, c: str, op: str, row: dict[str, Any]) -> str:
    """What the summary line says the command moved."""
    moved, copied = row["files_moved"], row["files_copied"]
    if c not in WAB or moved is None:
        return ""
    if op.startswith("upload"):
        return f"sent {moved:,.0f} files ({human_size(moved * FILE_SIZE)}); {copied or 0:,.0f} copied in the bucket"
    if op == "download-1%":
        pattern, n = include_pattern(count)
        return f"`--include '{pattern}'`: {moved:,.0f} of {count:,} files fetched ({n:,} selected)"
    return f"fetched {moved:,.0f} files"


def _synthetic_slot(out: Out, idx: Index) -> None:
    ran = sorted({d for d, _, _ in idx.by if d.startswith(synthetic.PREFIX)})
    dataset = ran[-1] if ran else f"{synthetic.PREFIX}{synthetic.ENTRIES}"
    entries = int(dataset[len(synthetic.PREFIX) :])
    out(f"**{entries:,} entries** (a synthetic version: its manifest written directly, no file bytes):")
    out("")
    for op, what in synthetic.OPS.items():
        m = idx.med(dataset, op, WAB_FOLDER)
        peak = max((memory(r) for r in idx.ok(dataset, op, WAB_FOLDER)), default=None)
        verdict = "met" if peak is not None and peak <= MEMORY_LIMIT else "missed"
        shown = f"{m:.2f} s, peak {mb(peak)} MB (<= 512 MiB: {verdict})" if m is not None and peak is not None else None
        out(f"- {what}: {shown or idx.error(dataset, op, WAB_FOLDER) or synthetic.NOT_YET}")
    out("")


def _wab_memory(idx: Index, count: int) -> dict[str, int]:
    """Peak memory of each wabucketref row at `count` files, by `bucket/op`."""
    rows = {}
    for bucket, c, op in ROWS:
        good = idx.ok(f"C-{count}", op, c)
        if c in WAB and good:
            rows[f"{bucket}/{op}"] = max(memory(r) for r in good)
    return rows


def memory_targets(idx: Index, counts: list[int]) -> list[Target]:
    big, small = counts[-1], counts[0]
    at_big = _wab_memory(idx, big)
    worst = max(at_big, key=at_big.__getitem__, default=None)
    over = [f"{k} {mb(v)} MB" for k, v in at_big.items() if v > MEMORY_LIMIT]
    targets: list[Target] = [
        (
            f"C: peak memory of every wabucketref command <= 512 MiB at {big:,} files",
            at_big[worst] if worst else None,
            MEMORY_LIMIT,
            f"largest: {worst} {mb(at_big[worst])} MB (limit {mb(MEMORY_LIMIT)} MB)"
            + (f"; over: {', '.join(over)}" if over else "")
            if worst
            else "no run",
        )
    ]
    if small == big:
        return targets
    at_small = _wab_memory(idx, small)
    excess = {k: v - (GROWTH * at_small[k] + GROWTH_PLUS) for k, v in at_big.items() if k in at_small}
    worst = max(excess, key=excess.__getitem__, default=None)
    grown = [f"{k} {mb(at_small[k])} -> {mb(at_big[k])} MB" for k in excess if excess[k] > 0]
    targets.append(
        (
            f"C: peak memory of every wabucketref command at {big:,} files <= {GROWTH:g}x + 30 MB of itself at {small:,}",
            excess[worst] if worst else None,
            0.0,
            f"tightest: {worst} {mb(at_small[worst])} MB -> {mb(at_big[worst])} MB "
            f"(limit {mb(int(GROWTH * at_small[worst] + GROWTH_PLUS))} MB)"
            + (f"; over: {', '.join(grown)}" if grown else "")
            if worst
            else "no run",
        )
    )
    return targets


def speed_targets(idx: Index, count: int, s3_count: int) -> list[Target]:
    d = f"C-{count}"
    targets: list[Target] = []
    for c, peers, n in ((WAB_FOLDER, "`rclone copy` (local)", count), (WAB_S3, "the faster of s5cmd/rclone", s3_count)):
        where = "folder bucket" if c == WAB_FOLDER else "S3"
        for op in ("upload", "download"):
            m, peer = idx.med(f"C-{n}", op, c), _peer(idx, f"C-{n}", c, op)
            what = "first upload" if op == "upload" else "full download"
            shown = f"{fmt(m)} s vs {fmt(peer)} s (x{fmt(m / peer if m and peer else None, 3)})"
            targets.append((f"C {where}: {what} at {n:,} files <= 1.0x {peers}", m, peer, shown))
    for op in ("ls", "diff"):
        m = idx.med(d, op, WAB_FOLDER)
        targets.append((f"C: `{op}` at {count:,} files under {FAST_S:g} s", m, FAST_S, f"{fmt(m)} s"))
    targets.append(_unchanged_target(idx, count))
    targets.append(_commit_target(idx, count))
    return targets


def _commit_target(idx: Index, count: int) -> Target:
    d = f"C-{count}"
    m, parts = idx.med(d, "commit", WAB_FOLDER), idx.med(d, "upload-4-parts", WAB_FOLDER)
    peak = max((memory(r) for r in idx.ok(d, "commit", WAB_FOLDER)), default=None)
    limit = parts / 10 if parts is not None else None
    value = None if m is None or peak is None else (m if peak <= MEMORY_LIMIT else float("inf"))
    shown = f"commit {fmt(m)} s, peak {mb(peak) if peak else '-'} MB; the 4 parts' upload {fmt(parts)} s (limit {fmt(limit)} s)"
    return (
        f"C folder bucket: commit of {count:,} files in 4 parts < 1/10 of the parts' upload, <= 512 MiB",
        value,
        limit,
        shown,
    )


def _unchanged_target(idx: Index, count: int) -> Target:
    d = f"C-{count}"
    m, first = idx.med(d, "upload-unchanged", WAB_FOLDER), idx.med(d, "upload", WAB_FOLDER)
    sent = idx.med(d, "upload-unchanged", WAB_FOLDER, "files_moved")
    limit = UNCHANGED_SHARE * first if first is not None else None
    value = None if m is None or sent is None else (m if sent == 0 else float("inf"))
    shown = (
        f"sent {fmt(sent, 0)} files = {human_size((sent or 0) * FILE_SIZE)} (the summary line's count x 1 KiB) in {fmt(m)} s; "
        f"first upload {fmt(first)} s (limit {fmt(limit)} s)"
    )
    return (
        f"C folder bucket: unchanged upload at {count:,} files moves no byte and takes < 1/4 of the first",
        value,
        limit,
        shown,
    )


def s3_copies(idx: Index, count: int) -> str:
    d = f"C-{count}"
    m, first = idx.med(d, "upload-unchanged", WAB_S3), idx.med(d, "upload", WAB_S3)
    sent, copied = (idx.med(d, "upload-unchanged", WAB_S3, a) for a in ("files_moved", "files_copied"))
    scpu = median_of([r.server_cpu for r in idx.ok(d, "upload-unchanged", WAB_S3)])
    share = f" = {100 * m / first:.0f}% of the first upload's {first:.2f} s" if m and first else ""
    return (
        f"C S3: unchanged upload at {count:,} files (every file an S3 CopyObject in the bucket): {fmt(m)} s{share}; "
        f"SeaweedFS CPU {fmt(scpu, 1)} s; sent {fmt(sent, 0)} files, copied {fmt(copied, 0)}"
    )
