"""The markdown report and the JSON document of a benchmark's runs, one function per section."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict
from typing import Any

from .common import REFERENCE
from .contenders import DESCRIPTIONS, PEERS
from .datasets import Dataset
from .fmt import cell, fmt, mb, median_of
from .measure import Run
from .report_c import c_section, memory
from .report_versions import incremental_section, partial_section
from .scaleout import scaleout_section
from .tally import Index, Out, Target


def report(
    runs: list[Run],
    datasets: list[Dataset],
    contenders: list[str],
    info: dict[str, Any],
    help_times: list[float],
    args: argparse.Namespace,
    command: str,
) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    out = lines.append
    idx = Index(runs)
    cold = any(r.cold_cache for r in runs)
    _header(out, datasets, info, args, cold)
    table = _main_table(out, idx, datasets, contenders) if datasets else {}
    partial, partial_targets = partial_section(out, idx, datasets)
    incremental, incremental_targets = incremental_section(out, idx, datasets)
    scaleout = scaleout_section(out, idx, datasets, memory)
    book = _bookkeeping(out, idx, datasets, contenders) if datasets else {}
    c_data, c_targets = c_section(out, idx, runs)
    help_med, rss_runs = _startup(out, runs, help_times)
    sections = partial_targets + incremental_targets
    targets = _targets(idx, datasets, contenders, book, sections, help_med, rss_runs) + _judged(c_targets)
    _targets_table(out, targets)
    _footer(out, args, command)
    data = {
        "machine": info,
        "small": args.small,
        "datasets": {d.name: _dataset_doc(d) for d in datasets},
        "repeat": args.repeat,
        "sdk_repeat": args.sdk_repeat,
        "cold_cache": cold,
        "table": table,
        "bookkeeping": book,
        "partial": partial,
        "incremental": incremental,
        "scaleout": scaleout,
        "help_seconds": help_times,
        "targets": targets,
        "runs": [asdict(r) for r in runs],
        "command": command,
    }
    if c_data:
        data["c"] = c_data
    return "\n".join(lines), data


def _dataset_doc(d: Dataset) -> dict[str, int]:
    described = d.describe()
    folders = int(described.split(" in ")[-1].split()[0]) if " in " in described else 0
    return {"count": d.count, "size": d.size, "folders": folders}


def _header(out: Out, datasets: list[Dataset], info: dict[str, Any], args: argparse.Namespace, cold: bool) -> None:
    out("# wabucketref benchmark")
    out("")
    out(
        f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']} GiB RAM, Linux {info['kernel']}, Python {info['python']}"
    )
    out(
        "- versions: "
        + ", ".join(f"{k} {v}" for k, v in info["packages"].items())
        + f"; s5cmd {info['s5cmd']}; {info['rclone']}; SeaweedFS `{info['seaweedfs']}`"
    )
    out(
        "- server: SeaweedFS `weed mini` on 127.0.0.1 (one server per dataset, shared by all contenders); "
        "fake platform control plane and W&B backend on 127.0.0.1 (in the benchmark process)"
    )
    for ds in datasets:
        out(f"- dataset {ds.name}: {ds.describe()}")
    sdk_runs = (
        f"; the platform SDK (x4-x20 slower) runs in the first {min(args.sdk_repeat, args.repeat)} only"
        if args.sdk_repeat < args.repeat
        else ""
    )
    out(
        f"- {args.repeat} repetition(s){sdk_runs}; each repetition runs every contender once, in a rotated order; "
        f"page cache dropped before each timed run: {'yes' if cold else 'no (not permitted, or --no-drop-caches)'}"
    )
    out(
        "- every upload goes to a fresh prefix/alias and is checked by listing (file count and bytes); every download "
        "goes into a fresh empty folder and is checked (file count and bytes; the first repetition of each contender: sha256 of every file)"
    )
    out(
        "- platform session: "
        + (
            "not kept (`--no-session-cache`): every platform command logs in"
            if getattr(args, "no_session_cache", False)
            else "kept between commands; the first platform command of each data set logs in"
        )
    )
    out("")


def _main_table(out: Out, idx: Index, datasets: list[Dataset], contenders: list[str]) -> dict[str, Any]:
    out("## Wall time (median seconds; `x ref` = contender / wabucketref, above 1 is slower)")
    out("")
    out(
        "| dataset | op | contender | median s | min | max | MB/s | x ref | client CPU s | SeaweedFS CPU s | peak memory MB (tree PSS) |"
    )
    out("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    table: dict[str, Any] = {}
    for ds in datasets:
        for op in ("upload", "download"):
            ref = idx.med(ds.name, op, REFERENCE)
            for c in contenders:
                if idx.all(ds.name, op, c):
                    table[f"{ds.name}/{op}/{c}"] = _main_row(out, idx, ds, op, c, ref)
    out("")
    out("Contenders: " + "; ".join(f"**{c}**: {DESCRIPTIONS[c]}" for c in contenders))
    out("")
    return table


def _main_row(out: Out, idx: Index, ds: Dataset, op: str, c: str, ref: float | None) -> dict[str, Any]:
    m = idx.med(ds.name, op, c)
    if m is None:
        err = idx.error(ds.name, op, c)
        out(f"| {ds.name} | {op} | {c} | FAILED | | | | | | | {cell(err)} |")
        return {"error": err}
    good = idx.ok(ds.name, op, c)
    walls = [r.wall for r in good]
    cpu = median_of([r.user_cpu + r.sys_cpu for r in good])
    scpu = median_of([r.server_cpu for r in good])
    rss = max(r.peak_rss_tree for r in good)
    ratio = (m / ref) if ref else None
    out(
        f"| {ds.name} | {op} | {c} | {m:.2f} | {min(walls):.2f} | {max(walls):.2f} | {ds.total / m / 1e6:.0f} | "
        f"{fmt(ratio)} | {fmt(cpu, 1)} | {fmt(scpu, 1)} | {mb(rss)} |"
    )
    return {
        "median": m,
        "min": min(walls),
        "max": max(walls),
        "ratio_to_ref": ratio,
        "client_cpu": cpu,
        "server_cpu": scpu,
        "peak_rss_tree": rss,
    }


BOOKKEEPING_INTRO = (
    "`transfer` = the seconds in wabucketref's own summary line (`uploaded N files (...) in S s`: from the start of "
    "the byte transfer to the last file done, 0.1 s resolution); `outside` = wall - transfer (interpreter start, "
    "imports, platform login, listing, manifest, W&B), median over runs. **W&B cost** = outside(`wabucketref`, W&B "
    "online) - outside(`wabucketref-nowandb`, same platform bucket with `WANDB_MODE=disabled`): what W&B adds, with "
    "the run-to-run noise of the transfer itself removed. `wall diff` = the plain difference of median walls "
    "(noisier; it also catches W&B work that overlaps the transfer)."
)


def _outside(idx: Index, d: str, op: str, c: str) -> float | None:
    """Median of wall - transfer (None unless every run succeeded and printed its summary)."""
    rs = idx.ok(d, op, c)
    if not rs or len(rs) != len(idx.all(d, op, c)) or any(r.transfer_s is None for r in rs):
        return None
    return median_of([r.wall - r.transfer_s for r in rs])  # type: ignore[operator]


def _bookkeeping(out: Out, idx: Index, datasets: list[Dataset], contenders: list[str]) -> dict[str, Any]:
    book: dict[str, Any] = {}
    wab = [c for c in ("wabucketref", "wabucketref-s3", "wabucketref-nowandb") if c in contenders]
    if not wab:
        return book
    out("## Where wabucketref's time goes (W&B bookkeeping)")
    out("")
    out(BOOKKEEPING_INTRO)
    out("")
    out("| dataset | op | contender | wall s | transfer s | outside s | W&B cost s | W&B cost / wall | wall diff s |")
    out("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for ds in datasets:
        for op in ("upload", "download"):
            off_out = _outside(idx, ds.name, op, "wabucketref-nowandb")
            off_wall = idx.med(ds.name, op, "wabucketref-nowandb")
            for c in wab:
                m = idx.med(ds.name, op, c)
                if m is None:
                    continue
                tr = idx.med(ds.name, op, c, "transfer_s")
                o = _outside(idx, ds.name, op, c)
                is_ref = c == REFERENCE
                cost = (o - off_out) if (is_ref and o is not None and off_out is not None) else None
                wdiff = (m - off_wall) if (is_ref and off_wall is not None) else None
                share = f"{100 * cost / m:.0f}%" if cost is not None else "-"
                out(
                    f"| {ds.name} | {op} | {c} | {m:.2f} | {fmt(tr)} | {fmt(o)} | {fmt(cost)} | {share} | {fmt(wdiff)} |"
                )
                book[f"{ds.name}/{op}/{c}"] = {
                    "wall": m,
                    "transfer": tr,
                    "outside": o,
                    "wandb_cost": cost,
                    "wall_diff_to_disabled": wdiff,
                }
    out("")
    return book


def _startup(out: Out, runs: list[Run], help_times: list[float]) -> tuple[float | None, list[Run]]:
    """`wabucket --help` time and the memory of B's upload; returns the median and those uploads."""
    help_med = statistics.median(help_times) if help_times else None
    rss_runs = [r for r in runs if r.contender == REFERENCE and r.dataset == "B" and r.op == "upload" and r.ok]
    out("## Start-up and memory")
    out("")
    if help_times:
        out(
            f"- `wabucket --help`: median {help_med:.3f} s of {len(help_times)} runs (min {min(help_times):.3f}, max {max(help_times):.3f})"
        )
    if rss_runs:
        rss_tree = max(r.peak_rss_tree for r in rss_runs)
        rss_single = max(r.max_rss_single for r in rss_runs)
        rss_main = max(r.peak_rss_main for r in rss_runs)
        out(
            f"- peak memory of `wabucket upload` of dataset B (platform bucket, W&B online): whole process tree {mb(rss_tree)} MB "
            f"(sum of PSS sampled at 10 Hz: python + wandb-core service); the python process alone (VmHWM) {mb(rss_main)} MB; "
            f"largest single process (GNU time) {mb(rss_single)} MB"
        )
    out("")
    return help_med, rss_runs


def _judge(name: str, value: float | None, limit: float | None, shown: str, is_max: bool = True) -> dict[str, Any]:
    if value is None or limit is None:
        verdict = "n/a"
    else:
        verdict = "PASS" if (value <= limit if is_max else value < limit) else "FAIL"
    return {"target": name, "measured": shown, "verdict": verdict}


def _judged(section: list[Target]) -> list[dict[str, Any]]:
    return [_judge(*t) for t in section]


def _targets(
    idx: Index,
    datasets: list[Dataset],
    contenders: list[str],
    book: dict[str, Any],
    sections: list[Target],
    help_med: float | None,
    rss_runs: list[Run],
) -> list[dict[str, Any]]:
    targets = _peer_targets(idx, datasets, contenders)
    if (t := _wandb_target(book)) is not None:
        targets.append(t)
    targets += _judged(sections)
    if help_med is not None:
        targets.append(_judge("`wabucket --help` < 0.3 s", help_med, 0.3, f"{help_med:.3f} s", is_max=False))
    if rss_runs:
        rss_tree = max(r.peak_rss_tree for r in rss_runs)
        targets.append(
            _judge(
                "peak memory uploading B < 300 MB (whole process tree, PSS)",
                rss_tree / 1e6,
                300,
                f"{mb(rss_tree)} MB",
                is_max=False,
            )
        )
    return targets


def _peer_targets(idx: Index, datasets: list[Dataset], contenders: list[str]) -> list[dict[str, Any]]:
    targets = []
    for ds in datasets:
        for op in ("upload", "download"):
            ref = idx.med(ds.name, op, REFERENCE)
            peers = [p for p in (idx.med(ds.name, op, q) for q in PEERS if q in contenders) if p is not None]
            best = min(peers) if peers else None
            if best is not None:
                targets.append(
                    _judge(
                        f"{ds.name} {op} <= 1.1x the faster of s5cmd/rclone",
                        ref,
                        1.1 * best,
                        # 3 decimals: a ratio of 1.1007 must not read as "x1.10, limit = measured" next to FAIL
                        f"{fmt(ref)} s vs {fmt(best)} s (x{fmt(ref / best if ref else None, 3)}; limit {1.1 * best:.3f} s)",
                    )
                )
            sdk = idx.med(ds.name, op, "sdk") if ds.name == "A" and "sdk" in contenders else None
            if sdk is not None:
                targets.append(
                    _judge(
                        f"A {op} <= 1/5 of SDK {op}_dir",
                        ref,
                        sdk / 5,
                        f"{fmt(ref)} s vs SDK {fmt(sdk)} s (SDK is x{fmt(sdk / ref if ref else None, 1)} slower; limit {sdk / 5:.2f} s)",
                    )
                )
    return targets


def _wandb_target(book: dict[str, Any]) -> dict[str, Any] | None:
    a_up, a_down = book.get("A/upload/wabucketref", {}), book.get("A/download/wabucketref", {})
    if a_up.get("wandb_cost") is None or a_down.get("wandb_cost") is None:
        return None
    cost = a_up["wandb_cost"] + a_down["wandb_cost"]
    wdiff = a_up["wall_diff_to_disabled"] + a_down["wall_diff_to_disabled"]
    total = a_up["wall"] + a_down["wall"]
    # Judged by the larger: W&B work beside the transfer slows the transfer itself, which only
    # the plain wall difference sees (it also carries the transfer's run-to-run noise).
    return _judge(
        "W&B bookkeeping <= 10% of A's total (upload + download)",
        max(cost, wdiff),
        0.10 * total,
        f"{cost:.2f} s of {total:.2f} s = {100 * cost / total:.0f}% outside the transfer; "
        f"{wdiff:.2f} s = {100 * wdiff / total:.1f}% by plain wall difference (online vs `WANDB_MODE=disabled`)",
    )


def _targets_table(out: Out, targets: list[dict[str, Any]]) -> None:
    out("## Targets")
    out("")
    out("| target | measured | verdict |")
    out("|---|---|---|")
    for t in targets:
        out(f"| {t['target']} | {t['measured']} | **{t['verdict']}** |")
    out("")


def _footer(out: Out, args: argparse.Namespace, command: str) -> None:
    if args.small:
        out(
            "(`--small`: the data sets are scaled down for a smoke run; start-up costs weigh far more than at full size.)"
        )
        out("")
    out("## Reproduce")
    out("")
    out("```")
    out(command)
    out("```")
