"""Scale out, the reference only, on data set A: A sent as 4 parts by 4 processes at once, then
committed, against one upload of A; A downloaded as 4 shares by 4 processes at once, against one
full download. Each row is one measured run of its processes together (wall, CPU, memory of the
whole process tree); this machine has 2 CPUs, so the ratio is reported with what bounds it, not
held to a speed-up."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import REFERENCE
from .contenders import Contenders
from .datasets import Dataset, tree_hashes
from .fmt import cell, fmt, mb
from .measure import Run
from .steps import not_run, progress, timed
from .tally import Index, Out

N = 4
OPS = {
    # op: what the row measures
    "upload-4-parts": f"{N} `upload --part I/{N}` processes at once, each a quarter of A's folders",
    "commit": f"`commit` of those {N} parts: checked, merged, one W&B version",
    "download-4-shards": f"{N} `download --shard I/{N}` processes at once, into {N} folders",
}
# Runs the commands given as JSON at once; exits with the worst status (the measured process).
TOGETHER = (
    "import json, subprocess, sys; ps = [subprocess.Popen(c) for c in json.loads(sys.argv[1])]; "
    "sys.exit(max(p.wait() for p in ps))"
)


def together(commands: list[list[str]]) -> list[str]:
    return [sys.executable, "-c", TOGETHER, json.dumps(commands)]


def bench_scaleout(ds: Dataset, cs: Contenders, work: Path, args: argparse.Namespace, runs: list[Run]) -> None:
    """Per repetition, into a fresh artifact: the parts, the commit, then the shares of what it committed."""
    parts = split_tree(ds.path, [work / "data" / f"{ds.name}-parts" / str(i) for i in range(N)])
    wab = cs.wab(REFERENCE)
    for rep in range(args.repeat):
        art = f"bench-{ds.name}-parts-r{rep}"
        sends = [
            [*wab, "upload", str(p), "-n", art, "-t", "dataset", "-a", "whole", "--part", f"{i}/{N}"]
            for i, p in enumerate(parts)
        ]
        sent = timed(cs, together(sends), Run(ds.name, "upload-4-parts", REFERENCE, rep), work / "logs", args)
        runs.append(sent)
        progress(sent)
        commit = Run(ds.name, "commit", REFERENCE, rep)
        if not sent.ok:
            not_run(commit, f"the parts failed: {sent.error}", runs)
            continue
        runs.append(timed(cs, [*wab, "commit", "-n", art, "-t", "dataset", "-a", "whole"], commit, work / "logs", args))
        progress(runs[-1])
        shares = Run(ds.name, "download-4-shards", REFERENCE, rep)
        if not runs[-1].ok:
            not_run(shares, f"the commit failed: {runs[-1].error}", runs)
            continue
        runs.append(_shares(cs, ds, art, shares, work, args))
        progress(runs[-1])
    shutil.rmtree(work / "data" / f"{ds.name}-parts", ignore_errors=True)


def split_tree(src: Path, folders: list[Path]) -> list[Path]:
    """src's files as hard links in these folders: runs of files in path order, one per folder, of
    equal counts (a part per job, none empty while there are files enough). Made untimed."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    for k, rel in enumerate(files):
        dst = folders[k * len(folders) // len(files)] / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src / rel, dst)
    return folders


def _shares(cs: Contenders, ds: Dataset, art: str, run: Run, work: Path, args: argparse.Namespace) -> Run:
    dests = [work / "dl" / f"{ds.name}-share{i}-r{run.rep}" for i in range(N)]
    for d in dests:
        shutil.rmtree(d, ignore_errors=True)
    wab = cs.wab(REFERENCE)
    gets = [
        [*wab, "download", "dataset", art, "whole", "--shard", f"{i}/{N}", "-d", str(d)] for i, d in enumerate(dests)
    ]
    run = timed(cs, together(gets), run, work / "logs", args)
    if run.ok:  # the shares are the version, each file once
        got: dict[str, str] = {}
        count = 0
        for d in dests:
            hashes = tree_hashes(d) if d.exists() else {}
            count += len(hashes)
            got.update(hashes)
        if got != ds.hashes or count != len(ds.hashes):
            run.ok, run.error = False, f"the shares hold {count} files, not A's {len(ds.hashes)} once each"
        else:
            run.verified = "sha256"
    for d in dests:
        shutil.rmtree(d, ignore_errors=True)
    return run


def scaleout_section(out: Out, idx: Index, datasets: list[Dataset], memory: Callable[[Run], int]) -> dict[str, Any]:
    """The rows, and the ratios to one process doing the same (the table's reference rows)."""
    a = next((d for d in datasets if d.name == "A"), None)
    if a is None or not idx.all("A", "upload-4-parts", REFERENCE):
        return {}
    out("")
    out(f"### Scale out: A in {N} parts, then {N} shares (`wabucketref`, platform bucket, W&B online)")
    out("")
    out(__doc__.split("\n\n", 1)[0].replace("\n", " "))
    out("")
    out("| op | what | median s | peak MB (tree) | vs one process |")
    out("|---|---|---:|---:|---:|")
    one = {
        "upload-4-parts": idx.med("A", "upload", REFERENCE),
        "download-4-shards": idx.med("A", "download", REFERENCE),
    }
    doc: dict[str, Any] = {}
    parts = idx.med("A", "upload-4-parts", REFERENCE)
    commit = idx.med("A", "commit", REFERENCE)
    for op, what in OPS.items():
        m = idx.med("A", op, REFERENCE)
        peak = max((memory(r) for r in idx.ok("A", op, REFERENCE)), default=None)
        base = one.get(op)
        if op == "commit" and parts is not None:
            ratio = f"{commit / (parts + commit):.0%} of parts + commit" if commit is not None else "-"
        else:
            ratio = f"x{m / base:.2f}" if m is not None and base else "-"
        out(f"| {op} | {what} | {cell(fmt(m))} | {mb(peak) if peak else '-'} | {ratio} |")
        doc[op] = {"median": m, "peak": peak, "one_process": base}
    if parts is not None and commit is not None and one["upload-4-parts"]:
        out("")
        out(
            f"Parts + commit: {parts + commit:.2f} s against one upload's {one['upload-4-parts']:.2f} s "
            f"(x{(parts + commit) / one['upload-4-parts']:.2f}); on 2 CPUs shared with SeaweedFS the parts "
            "contend for the same cores and the same server, so no speed-up is expected here: the gain of "
            "parts is machines."
        )
    return doc
