"""Content manifests: every file of a version with its size and sha256, sorted by path.

The manifest is the unit of truth for a version: its digest decides the W&B version, it drives
the transfer plan (what the destination lacks), resume and verification, and the copy kept in
the bucket lets downloads work offline. It is never held whole: ManifestWriter takes entries and
writes sorted shards to local disk, Manifest streams them back (a few thousand entries at a
time), and two manifests meet as two sorted streams (merge_join, diff). stored.py has the forms
kept in W&B and in the bucket: one document up to settings.shard_files() files (format 1), an
index of shards above that (format 2).
"""

from .diff import Change, ManifestDiff, diff, merge_join
from .entry import NO_HASH, CaseFolds, FileEntry, Hashing, checker, entry_line, hashed, safe_relpath, sha256_file
from .reader import Index, Manifest
from .select import Selection
from .shards import ShardInfo, accept_shard
from .stored import FORMAT_2, Stored, format1_bytes, index_bytes, peek_header, read_stored
from .writer import FORMAT_1, ManifestWriter, write_manifest

__all__ = [
    "FORMAT_1",
    "FORMAT_2",
    "NO_HASH",
    "CaseFolds",
    "Change",
    "FileEntry",
    "Hashing",
    "Index",
    "Manifest",
    "ManifestDiff",
    "ManifestWriter",
    "Selection",
    "ShardInfo",
    "Stored",
    "accept_shard",
    "checker",
    "diff",
    "entry_line",
    "format1_bytes",
    "hashed",
    "index_bytes",
    "merge_join",
    "peek_header",
    "read_stored",
    "safe_relpath",
    "sha256_file",
    "write_manifest",
]
