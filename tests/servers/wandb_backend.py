"""A W&B-protocol backend for tests.

The real ``wandb`` SDK (its Go ``wandb-core`` service for runs, and the Python
public API for ``wandb.Api()``) talks to this server over HTTP on loopback:

* ``POST /graphql``: every operation is parsed with graphql-core and answered by
  walking its own selection set (aliases, fragments, inline fragments,
  ``__typename``, ``@include``/``@skip``, variables with defaults) against an
  in-memory model.  No schema is needed: the response has exactly the shape the
  client asked for.  The backend is strict: a field, root field or operation
  it does not implement is recorded in :attr:`WandbBackend.unknown_fields`
  and the whole request is answered with GraphQL errors naming it (as a real
  GraphQL server rejects a document that does not validate), so the client
  fails; the suite's autouse fixture also fails the test that caused it.
  An HTTP route it does not implement is recorded the same way.
* ``PUT /_upload/{token}``: upload URLs handed out by CreateArtifactManifest,
  CreateArtifactFiles and CreateRunFiles.
* ``GET /_files/{kind}/{key}``, ``GET /artifacts/{entity}/{md5hex}``,
  ``GET /artifactsV2/.../{md5hex}/{name}``: downloads.
* ``POST /files/{entity}/{project}/{run}/file_stream``: run history/summary.

Modelled W&B semantics: entities/projects created on demand by run upserts;
runs (name, display name, job type, tags, config, summary, history, state);
artifact types and sequences per project; a version whose digest equals a
committed version of the same sequence is not created again (the existing
version gets the requested aliases); otherwise the commit gives ``vN`` and moves
``latest`` plus the requested aliases to it (an alias names at most one version
of a sequence); manifests and files are stored and served back; lineage
(``createdBy``, ``usedBy``, run input/output artifacts).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import itertools
import json
import logging
import re
import secrets
import shutil
import socket
import tempfile
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web
from graphql import parse
from graphql.language import ast as gast

log = logging.getLogger("wandb_backend")

__all__ = ["GraphQLError", "WandbBackend"]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


class GraphQLError(Exception):
    """Raised by a resolver: becomes an entry of the response's ``errors``."""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _gid(kind: str, num: int) -> str:
    # W&B ids are base64("Type:number"); the SDK treats them as opaque strings.
    return base64.b64encode(f"{kind}:{num}".encode()).decode()


def _parse_gid(gid: str | None) -> tuple[str, int] | None:
    if not gid:
        return None
    try:
        kind, num = base64.b64decode(gid.encode(), validate=True).decode().split(":", 1)
        return kind, int(num)
    except Exception:  # noqa: BLE001 - not an id of ours: no such object
        return None


def _json_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _json_obj(value: Any, default: Any) -> Any:
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return default
    return value


def _b64_to_hex(b64: str) -> str:
    return base64.b64decode(b64).hex()


def _hex_to_b64(hexs: str) -> str:
    return base64.b64encode(bytes.fromhex(hexs)).decode()


_counter = itertools.count(1)


def _next_id() -> int:
    return next(_counter)


# --------------------------------------------------------------------------- #
# the model: GraphQL objects
# --------------------------------------------------------------------------- #


class GObj:
    """A GraphQL object.  ``f_<field>(args)`` methods or plain attributes
    listed in ``FIELDS`` answer fields."""

    TYPENAME = "Object"
    INTERFACES: tuple[str, ...] = ()
    FIELDS: tuple[str, ...] = ()

    def typename(self) -> str:
        return self.TYPENAME

    def resolve(self, name: str, args: dict[str, Any], backend: WandbBackend) -> Any:
        meth = getattr(self, "f_" + name, None)
        if meth is not None:
            return meth(args, backend)
        if name in self.FIELDS:
            return getattr(self, re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower())
        backend._note_unknown(self.typename(), name)
        return None


class Plain(GObj):
    """An ad-hoc object: a typename and a dict of field values (or callables)."""

    def __init__(self, typename: str, **values: Any) -> None:
        self._typename = typename
        self._values = values

    def typename(self) -> str:
        return self._typename

    def resolve(self, name: str, args: dict[str, Any], backend: WandbBackend) -> Any:
        if name in self._values:
            v = self._values[name]
            return v(args) if callable(v) else v
        backend._note_unknown(self._typename, name)
        return None


def connection(
    items: list[Any],
    args: dict[str, Any] | None = None,
    edge_extra: Callable[[Any, int], dict[str, Any]] | None = None,
    typename: str = "Connection",
) -> Plain:
    """Relay-style connection with first/after cursors (cursor = index)."""
    args = args or {}
    start = 0
    after = args.get("after")
    if after not in (None, ""):
        try:
            start = int(after) + 1
        except ValueError:
            start = 0
    first = args.get("first")
    end = len(items) if first is None else min(len(items), start + int(first))
    page = items[start:end]
    edges = []
    for i, item in enumerate(page, start):
        extra = edge_extra(item, i) if edge_extra else {}
        edges.append(Plain("Edge", node=item, cursor=str(i), **extra))
    page_info = Plain(
        "PageInfo",
        endCursor=str(end - 1) if page else (after if after not in (None, "") else None),
        hasNextPage=end < len(items),
        startCursor=str(start) if page else None,
        hasPreviousPage=start > 0,
    )
    return Plain(
        typename,
        edges=edges,
        pageInfo=page_info,
        totalCount=len(items),
    )


@dataclass(eq=False)
class Entity(GObj):
    TYPENAME = "Entity"
    num: int
    name: str

    def f_id(self, a, b):
        return _gid("Entity", self.num)

    def f_name(self, a, b):
        return self.name

    def f_isTeam(self, a, b):
        return False

    def f_organization(self, a, b):
        return None

    def f_user(self, a, b):
        return None

    def f_project(self, a, b):
        return b._find_project(self.name, a.get("name"))

    def f_defaultAccess(self, a, b):
        return "PRIVATE"

    def f_readOnly(self, a, b):
        return False

    def f_codeSavingEnabled(self, a, b):
        return False

    def f_settings(self, a, b):
        return Plain("EntitySettings", storageBucketInfo=None)


@dataclass(eq=False)
class Project(GObj):
    TYPENAME = "Project"
    num: int
    entity: Entity
    name: str
    created_at: str = field(default_factory=_now)
    runs: dict[str, Run] = field(default_factory=dict)
    types: dict[str, ArtifactType] = field(default_factory=dict)
    sequences: dict[str, ArtifactSequence] = field(default_factory=dict)

    def f_id(self, a, b):
        return _gid("Project", self.num)

    def f_internalId(self, a, b):
        return _gid("Project", self.num)

    def f_name(self, a, b):
        return self.name

    def f_entityName(self, a, b):
        return self.entity.name

    def f_entity(self, a, b):
        return self.entity

    def f_createdAt(self, a, b):
        return self.created_at

    def f_readOnly(self, a, b):
        return False

    def f_access(self, a, b):
        return "PRIVATE"

    def f_isBenchmark(self, a, b):
        return False

    def f_description(self, a, b):
        return None

    def f_run(self, a, b):
        return self.runs.get(a.get("name"))

    def f_runCount(self, a, b):
        return len(self.runs)

    def f_runs(self, a, b):
        return connection(list(self.runs.values()), a, typename="RunConnection")

    def f_artifactType(self, a, b):
        return self.types.get(a.get("name"))

    def f_artifactTypes(self, a, b):
        return connection(list(self.types.values()), a, typename="ArtifactTypeConnection")

    def f_artifactCollection(self, a, b):
        return self.sequences.get(a.get("name"))

    f_artifactSequence = f_artifactCollection

    def f_artifactCollections(self, a, b):
        return connection(list(self.sequences.values()), a)

    def f_artifact(self, a, b):
        m = b._resolve_membership(self, a.get("name"))
        return m.artifact if m else None

    def f_artifactCollectionMembership(self, a, b):
        return b._resolve_membership(self, a.get("name"))


@dataclass(eq=False)
class Run(GObj):
    TYPENAME = "Run"
    num: int
    project: Project
    name: str  # the run id
    display_name: str | None = None
    job_type: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    state: str = "running"
    notes: str | None = None
    description: str | None = None
    host: str | None = None
    program: str | None = None
    commit: str | None = None
    sweep_name: str | None = None
    created_at: str = field(default_factory=_now)
    heartbeat_at: str = field(default_factory=_now)
    exitcode: int | None = None
    stopped: bool = False
    inputs: list[Artifact] = field(default_factory=list)
    outputs: list[Artifact] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # name -> object key
    output_log: list[str] = field(default_factory=list)

    def f_id(self, a, b):
        return _gid("Run", self.num)

    def f_name(self, a, b):
        return self.name

    def f_displayName(self, a, b):
        return self.display_name or self.name

    def f_projectId(self, a, b):
        return self.project.num

    def f_project(self, a, b):
        return self.project

    def f_entity(self, a, b):
        return self.project.entity

    def f_state(self, a, b):
        return self.state

    def f_config(self, a, b):
        return json.dumps(self.config)

    def f_tags(self, a, b):
        return list(self.tags)

    def f_tagColors(self, a, b):
        return []

    def f_jobType(self, a, b):
        return self.job_type

    def f_group(self, a, b):
        return self.group

    def f_groupName(self, a, b):
        return self.group

    def f_notes(self, a, b):
        return self.notes

    def f_description(self, a, b):
        return self.description

    def f_commit(self, a, b):
        return self.commit

    def f_host(self, a, b):
        return self.host

    def f_sweepName(self, a, b):
        return self.sweep_name

    def f_sweep(self, a, b):
        return None

    def f_readOnly(self, a, b):
        return False

    def f_createdAt(self, a, b):
        return self.created_at

    def f_heartbeatAt(self, a, b):
        return self.heartbeat_at

    def f_systemMetrics(self, a, b):
        return "{}"

    def f_summaryMetrics(self, a, b):
        return json.dumps(self.summary)

    def f_historyKeys(self, a, b):
        keys: dict[str, Any] = {}
        for row in self.history:
            for k, v in row.items():
                keys.setdefault(k, {"typeCounts": [{"type": type(v).__name__, "count": 0}]})
                keys[k]["typeCounts"][0]["count"] += 1
        return {"lastStep": len(self.history) - 1, "keys": keys}

    def f_historyLineCount(self, a, b):
        return len(self.history)

    def f_eventsLineCount(self, a, b):
        return 0

    def f_logLineCount(self, a, b):
        return len(self.output_log)

    def f_history(self, a, b):
        rows = [
            r for i, r in enumerate(self.history)
            if (a.get("minStep") is None or r.get("_step", i) >= int(a["minStep"]))
            and (a.get("maxStep") is None or r.get("_step", i) < int(a["maxStep"]))
        ]
        samples = a.get("samples")
        rows = rows if samples is None else rows[: int(samples)]
        return [json.dumps(r) for r in rows]

    def f_parquetHistory(self, a, b):
        # No parquet exports here: the whole history is "live" data (the rows not yet exported on W&B),
        # each row cut to the asked keys (and its step).
        keys = a.get("liveKeys") or []
        rows = [
            {k: v for k, v in r.items() if not keys or k in keys or k == "_step"}
            for r in self.history
        ]
        return Plain("RunParquetHistory", parquetUrls=[], liveData=rows)

    def f_sampledHistory(self, a, b):
        out = []
        for spec in a.get("specs") or []:
            spec = _json_obj(spec, {})
            keys = spec.get("keys") or []
            rows = [
                {k: r[k] for k in keys if k in r}
                for r in self.history
                if all(k in r for k in keys if k != "_step")
            ]
            out.append(rows)
        return out

    def f_user(self, a, b):
        return b._viewer()

    def f_stopped(self, a, b):
        return self.stopped

    def f_bucketName(self, a, b):
        return self.name

    def f_inputArtifacts(self, a, b):
        return connection(list(self.inputs), a, typename="InputArtifactConnection")

    def f_outputArtifacts(self, a, b):
        return connection(list(self.outputs), a, typename="ArtifactConnection")

    def f_files(self, a, b):
        names = a.get("names")
        items = [
            b._run_file(self, n) for n in sorted(self.files) if not names or n in names
        ]
        return connection(items, a, typename="FileConnection")


@dataclass(eq=False)
class ArtifactType(GObj):
    TYPENAME = "ArtifactType"
    num: int
    project: Project
    name: str
    created_at: str = field(default_factory=_now)

    def f_id(self, a, b):
        return _gid("ArtifactType", self.num)

    def f_name(self, a, b):
        return self.name

    def f_description(self, a, b):
        return None

    def f_createdAt(self, a, b):
        return self.created_at

    def f_project(self, a, b):
        return self.project

    def _seqs(self) -> list[ArtifactSequence]:
        return [s for s in self.project.sequences.values() if s.type is self]

    def f_artifactCollection(self, a, b):
        s = self.project.sequences.get(a.get("name"))
        return s if s is not None and s.type is self else None

    f_artifactSequence = f_artifactCollection

    def f_artifactCollections(self, a, b):
        return connection(self._seqs(), a, typename="ArtifactCollectionConnection")

    f_artifactSequences = f_artifactCollections

    def f_artifact(self, a, b):
        m = b._resolve_membership(self.project, a.get("name"))
        return m.artifact if m and m.artifact.type is self else None


@dataclass(eq=False)
class ArtifactSequence(GObj):
    TYPENAME = "ArtifactSequence"
    INTERFACES = ("ArtifactCollection",)
    num: int
    project: Project
    name: str
    type: ArtifactType
    description: str | None = None
    created_at: str = field(default_factory=_now)
    versions: list[Artifact] = field(default_factory=list)  # committed, by index
    aliases: dict[str, Artifact] = field(default_factory=dict)
    pending: list[Artifact] = field(default_factory=list)

    def set_alias(self, alias: str, art: Artifact) -> None:
        """An alias names at most one version of a collection."""
        self.aliases[alias] = art

    def aliases_of(self, art: Artifact) -> list[str]:
        return [al for al, x in self.aliases.items() if x is art]

    def live(self) -> list[Artifact]:
        """Committed, not deleted versions, oldest first."""
        return [a for a in self.versions if a.state == "COMMITTED"]

    def latest(self) -> Artifact | None:
        live = self.live()
        return self.aliases.get("latest") or (live[-1] if live else None)

    def find(self, ref: str) -> Artifact | None:
        m = re.fullmatch(r"v(\d+)", ref)
        if m:
            i = int(m.group(1))
            art = self.versions[i] if i < len(self.versions) else None
            return art if art is not None and art.state == "COMMITTED" else None
        if ref in self.aliases:
            return self.aliases[ref]
        for art in self.live():  # W&B also resolves a version by its digest
            if art.digest == ref:
                return art
        return None

    def f_id(self, a, b):
        return _gid("ArtifactCollection", self.num)

    def f_name(self, a, b):
        return self.name

    def f_description(self, a, b):
        return self.description

    def f_createdAt(self, a, b):
        return self.created_at

    def f_updatedAt(self, a, b):
        return self.created_at

    def f_project(self, a, b):
        return self.project

    def f_type(self, a, b):
        return self.type

    f_defaultArtifactType = f_type
    f_artifactType = f_type

    def f_state(self, a, b):
        return "READY"

    def f_tags(self, a, b):
        return connection([], a)

    def f_latestArtifact(self, a, b):
        return self.latest()

    def f_artifacts(self, a, b):
        items = list(reversed(self.live()))  # newest first, like W&B
        return connection(
            items,
            a,
            edge_extra=lambda art, i: {"version": f"v{art.version_index}"},
            typename="VersionedArtifactConnection",
        )

    def f_artifactMemberships(self, a, b):
        items = [Membership(self, art) for art in reversed(self.live())]
        return connection(items, a)

    def f_artifactMembership(self, a, b):
        art = self.find(a.get("aliasName") or "latest")
        return Membership(self, art) if art else None

    def f_aliases(self, a, b):
        items = [Alias(self, al) for al in self.aliases]
        return connection(items, a)


@dataclass(eq=False)
class Alias(GObj):
    TYPENAME = "ArtifactAlias"
    seq: ArtifactSequence
    alias: str

    def f_id(self, a, b):
        return _gid("ArtifactAlias", hash((self.seq.num, self.alias)) & 0xFFFFFFF)

    def f_alias(self, a, b):
        return self.alias

    def f_artifactCollection(self, a, b):
        return self.seq

    f_artifactCollectionName = lambda self, a, b: self.seq.name


@dataclass(eq=False)
class Membership(GObj):
    TYPENAME = "ArtifactCollectionMembership"
    seq: ArtifactSequence
    artifact: Artifact

    def f_id(self, a, b):
        return _gid("ArtifactCollectionMembership", self.artifact.num)

    def f_versionIndex(self, a, b):
        return self.artifact.version_index

    def f_createdAt(self, a, b):
        return self.artifact.created_at

    def f_aliases(self, a, b):
        return [Alias(self.seq, al) for al in self.seq.aliases_of(self.artifact)]

    def f_artifactCollection(self, a, b):
        return self.seq

    def f_artifact(self, a, b):
        return self.artifact

    def f_files(self, a, b):
        return self.artifact.f_files(a, b)


@dataclass(eq=False)
class ArtifactFile:
    name: str
    md5_b64: str
    mimetype: str | None
    storage_path: str
    size: int | None = None


@dataclass(eq=False)
class Artifact(GObj):
    TYPENAME = "Artifact"
    num: int
    seq: ArtifactSequence
    type: ArtifactType
    digest: str
    state: str = "PENDING"
    version_index: int | None = None
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    requested_aliases: list[str] = field(default_factory=list)
    created_by: Run | None = None
    used_by: list[Run] = field(default_factory=list)
    files: dict[str, ArtifactFile] = field(default_factory=dict)
    manifest: Manifest | None = None
    client_id: str | None = None
    sequence_client_id: str | None = None
    history_step: int | None = None
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    def aliases(self) -> list[str]:
        return self.seq.aliases_of(self)

    def manifest_json(self, backend: WandbBackend) -> dict[str, Any] | None:
        if self.manifest is None or not self.manifest.uploaded:
            return None
        return json.loads(backend._read_object("manifest", self.manifest.key))

    def f_id(self, a, b):
        return _gid("Artifact", self.num)

    def f_artifactSequence(self, a, b):
        return self.seq

    f_artifactCollection = f_artifactSequence

    def f_artifactCollections(self, a, b):
        return connection([self.seq], a)

    def f_artifactMemberships(self, a, b):
        return connection([Membership(self.seq, self)], a)

    def f_versionIndex(self, a, b):
        return self.version_index

    def f_artifactType(self, a, b):
        return self.type

    def f_description(self, a, b):
        return self.description

    def f_metadata(self, a, b):
        return json.dumps(self.metadata)

    def f_ttlDurationSeconds(self, a, b):
        return -1

    def f_ttlIsInherited(self, a, b):
        return True

    def f_tags(self, a, b):
        return []

    def f_historyStep(self, a, b):
        return self.history_step

    def f_state(self, a, b):
        return self.state

    def f_size(self, a, b):
        return sum(f.size or 0 for f in self.files.values())

    def f_digest(self, a, b):
        return self.digest

    def f_digestAlgorithm(self, a, b):
        return "MANIFEST_MD5"

    def f_commitHash(self, a, b):
        return None

    def f_fileCount(self, a, b):
        return len(self.files)

    def f_createdAt(self, a, b):
        return self.created_at

    def f_updatedAt(self, a, b):
        return self.updated_at

    def f_aliases(self, a, b):
        return [Alias(self.seq, al) for al in self.aliases()]

    def f_labels(self, a, b):
        return "[]"

    def f_currentManifest(self, a, b):
        return self.manifest

    def f_createdBy(self, a, b):
        return self.created_by

    def f_usedBy(self, a, b):
        return connection(list(self.used_by), a, typename="RunConnection")

    def f_files(self, a, b):
        names = a.get("names")
        items = [
            b._artifact_file(self, f)
            for n, f in sorted(self.files.items())
            if not names or n in names
        ]
        return connection(items, a, typename="FileConnection")


@dataclass(eq=False)
class Manifest(GObj):
    TYPENAME = "ArtifactManifest"
    num: int
    artifact: Artifact
    name: str
    digest: str | None
    mtype: str | None
    key: str
    uploaded: bool = False

    def f_id(self, a, b):
        return _gid("ArtifactManifest", self.num)

    def f_type(self, a, b):
        return self.mtype

    def f_digest(self, a, b):
        return self.digest

    def f_file(self, a, b):
        url = f"{b.base_url}/_files/manifest/{self.key}"
        return Plain(
            "File",
            id=_gid("File", self.num),
            name=self.name,
            displayName=self.name,
            url=url,
            directUrl=url,
            uploadUrl=b._upload_url(("manifest", self.num)),
            uploadHeaders=[],
        )


# --------------------------------------------------------------------------- #
# GraphQL execution by walking selection sets
# --------------------------------------------------------------------------- #


def _ast_value(node: gast.ValueNode, variables: dict[str, Any]) -> Any:
    if isinstance(node, gast.VariableNode):
        return variables.get(node.name.value)
    if isinstance(node, gast.NullValueNode):
        return None
    if isinstance(node, gast.IntValueNode):
        return int(node.value)
    if isinstance(node, gast.FloatValueNode):
        return float(node.value)
    if isinstance(node, (gast.StringValueNode, gast.EnumValueNode)):
        return node.value
    if isinstance(node, gast.BooleanValueNode):
        return node.value
    if isinstance(node, gast.ListValueNode):
        return [_ast_value(v, variables) for v in node.values]
    if isinstance(node, gast.ObjectValueNode):
        return {f.name.value: _ast_value(f.value, variables) for f in node.fields}
    raise GraphQLError(f"unsupported value {node!r}")


class _Executor:
    def __init__(self, backend: WandbBackend, doc: gast.DocumentNode, variables: dict[str, Any]):
        self.backend = backend
        self.variables = variables
        self.fragments = {
            d.name.value: d for d in doc.definitions if isinstance(d, gast.FragmentDefinitionNode)
        }

    def _included(self, node: Any) -> bool:
        for d in node.directives or ():
            args = {a.name.value: _ast_value(a.value, self.variables) for a in d.arguments or ()}
            if d.name.value == "include" and not args.get("if"):
                return False
            if d.name.value == "skip" and args.get("if"):
                return False
        return True

    def _applies(self, type_cond: gast.NamedTypeNode | None, obj: GObj) -> bool:
        if type_cond is None:
            return True
        name = type_cond.name.value
        return name == obj.typename() or name in obj.INTERFACES

    def _collect(
        self, obj: GObj, sel_sets: list[gast.SelectionSetNode], out: dict[str, list[gast.FieldNode]]
    ) -> None:
        for sel_set in sel_sets:
            for sel in sel_set.selections:
                if not self._included(sel):
                    continue
                if isinstance(sel, gast.FieldNode):
                    key = sel.alias.value if sel.alias else sel.name.value
                    out.setdefault(key, []).append(sel)
                elif isinstance(sel, gast.InlineFragmentNode):
                    if self._applies(sel.type_condition, obj):
                        self._collect(obj, [sel.selection_set], out)
                elif isinstance(sel, gast.FragmentSpreadNode):
                    frag = self.fragments.get(sel.name.value)
                    if frag is None:
                        raise GraphQLError(f"Unknown fragment {sel.name.value}")
                    if self._applies(frag.type_condition, obj):
                        self._collect(obj, [frag.selection_set], out)

    def complete(self, value: Any, sel_sets: list[gast.SelectionSetNode]) -> Any:
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return [self.complete(v, sel_sets) for v in value]
        if not isinstance(value, GObj):
            # a scalar, or a JSON blob asked with a selection (should not happen)
            return value
        fields: dict[str, list[gast.FieldNode]] = {}
        self._collect(value, sel_sets, fields)
        result: dict[str, Any] = {}
        for key, nodes in fields.items():
            node = nodes[0]
            name = node.name.value
            if name == "__typename":
                result[key] = value.typename()
                continue
            args = {a.name.value: _ast_value(a.value, self.variables) for a in node.arguments or ()}
            resolved = value.resolve(name, args, self.backend)
            subs = [n.selection_set for n in nodes if n.selection_set is not None]
            result[key] = self.complete(resolved, subs) if subs else _scalar(resolved)
        return result


def _scalar(value: Any) -> Any:
    if isinstance(value, GObj):
        return None
    return value


# --------------------------------------------------------------------------- #
# root objects
# --------------------------------------------------------------------------- #


class QueryRoot(GObj):
    TYPENAME = "Query"

    def resolve(self, name, args, backend):
        meth = getattr(backend, "q_" + name, None)
        if meth is None:
            backend._note_unknown("Query", name)
            return None
        return meth(args)


class MutationRoot(GObj):
    TYPENAME = "Mutation"

    def resolve(self, name, args, backend):
        meth = getattr(backend, "m_" + name, None)
        if meth is None:
            backend._note_unknown("Mutation", name)
            raise GraphQLError(f'Cannot query field "{name}" on type "Mutation".')
        return meth(args)


# --------------------------------------------------------------------------- #
# the backend
# --------------------------------------------------------------------------- #


class WandbBackend:
    """An in-process W&B server model for tests (see module docstring)."""

    # Every backend started in this process: tests/conftest.py checks their records after each test.
    started: ClassVar[list[WandbBackend]] = []

    def __init__(self, workdir: Path | None = None, entity: str = "test-entity") -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="wandb-backend-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "objects").mkdir(exist_ok=True)
        self.entity = entity
        self.username = entity
        self.api_key = "local-" + secrets.token_hex(24)  # 54 chars
        self.port: int | None = None
        self.base_url = ""
        self.requests: list[str] = []
        # What a client asked for and this backend does not implement, one entry per request that
        # asked ("Type.field", "operation Name", "HTTP METHOD /path"); the request was answered with errors.
        self.unknown_fields: list[str] = []
        self.strict = True  # False: answer unknown fields with null (still recorded)
        self.errors: list[str] = []  # GraphQL errors returned
        self.queries: list[tuple[str, str, dict[str, Any]]] = []  # (op, text, variables)
        self.require_auth = True
        self._faults: dict[str, list[int]] = {}
        self._lock = threading.RLock()
        self._executing: list[str] | None = None  # unknown fields met by the request being answered
        self._entities: dict[str, Entity] = {}
        self._projects: dict[tuple[str, str], Project] = {}
        self._artifacts: dict[int, Artifact] = {}
        self._manifests: dict[int, Manifest] = {}
        self._runs_by_num: dict[int, Run] = {}
        self._uploads: dict[str, tuple] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ life
    def start(self) -> WandbBackend:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as e:  # noqa: BLE001  # pragma: no cover - startup failure, raised by start()
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="wandb-backend", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        if not self.port:
            raise RuntimeError("wandb backend did not start")
        WandbBackend.started.append(self)
        return self

    async def _serve(self) -> None:
        app = web.Application(client_max_size=1024**3)
        app.router.add_post("/graphql", self._h_graphql)
        app.router.add_put("/_upload/{token}", self._h_upload)
        app.router.add_get("/_files/{kind}/{key:.+}", self._h_download)
        app.router.add_get("/artifacts/{entity}/{hexhash}", self._h_artifact_file)
        app.router.add_get("/artifactsV2/{rest:.+}", self._h_artifact_file)
        app.router.add_post("/files/{entity}/{project}/{run}/file_stream", self._h_file_stream)
        # The SDK probes for an OpenTelemetry proxy; 404 tells it there is none.
        app.router.add_route("*", "/sdk/otel/{tail:.*}", self._h_no_otel)
        app.router.add_route("*", "/{tail:.*}", self._h_unknown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)
            self._thread = None
            self._loop = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> WandbBackend:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment that points a (sub)process's wandb at this backend."""
        wd = self.workdir / "client"
        return {
            "WANDB_BASE_URL": self.base_url,
            "WANDB_API_KEY": self.api_key,
            "WANDB_ENTITY": self.entity,
            "WANDB_MODE": "online",
            "WANDB_SILENT": "true",
            "WANDB_CONSOLE": "off",
            "WANDB_DISABLE_GIT": "true",
            "WANDB_DISABLE_CODE": "true",
            "WANDB_X_DISABLE_STATS": "true",
            "WANDB_X_DISABLE_MACHINE_INFO": "true",
            "WANDB_X_SAVE_REQUIREMENTS": "false",
            "WANDB_ERROR_REPORTING": "false",
            "WANDB_DISABLE_SENTRY": "true",
            "WANDB_INIT_TIMEOUT": "60",
            "WANDB__SERVICE_WAIT": "60",
            # hermetic: no ~/.netrc, ~/.config/wandb or ~/.cache/wandb
            "WANDB_CONFIG_DIR": str(wd / "config"),
            "WANDB_CACHE_DIR": str(wd / "cache"),
            "WANDB_DATA_DIR": str(wd / "data"),
            "WANDB_ARTIFACT_DIR": str(wd / "artifacts"),
            "NETRC": str(wd / "netrc-none"),
        }

    # ------------------------------------------------------------ introspection
    def runs(self) -> list[dict]:
        with self._lock:
            out = []
            for r in self._runs_by_num.values():
                out.append(
                    {
                        "id": r.name,
                        "name": r.display_name or r.name,
                        "project": r.project.name,
                        "entity": r.project.entity.name,
                        "job_type": r.job_type,
                        "group": r.group,
                        "tags": list(r.tags),
                        "config": _user_config(r.config),
                        "raw_config": json.loads(json.dumps(r.config)),
                        "summary": dict(r.summary),
                        "history": list(r.history),
                        "state": r.state,
                        "exitcode": r.exitcode,
                        "inputs": [self._art_label(x) for x in r.inputs],
                        "outputs": [self._art_label(x) for x in r.outputs],
                    }
                )
            return out

    def artifact_versions(self, project: str, name: str, entity: str | None = None) -> list[dict]:
        with self._lock:
            proj = self._projects.get((entity or self.entity, project))
            seq = proj.sequences.get(name) if proj else None
            if seq is None:
                return []
            out = []
            for art in seq.live():
                manifest = art.manifest_json(self) or {}
                out.append(
                    {
                        "version": f"v{art.version_index}",
                        "version_index": art.version_index,
                        "id": _gid("Artifact", art.num),
                        "type": art.type.name,
                        "digest": art.digest,
                        "state": art.state,
                        "aliases": sorted(art.aliases()),
                        "metadata": dict(art.metadata),
                        "description": art.description,
                        "manifest": manifest,
                        "entries": manifest.get("contents", {}),
                        "files": {n: f.md5_b64 for n, f in art.files.items()},
                        "logged_by": art.created_by.name if art.created_by else None,
                        "used_by": [r.name for r in art.used_by],
                    }
                )
            return out

    def pending_artifacts(self) -> list[dict]:
        """Artifacts created but never committed (e.g. after a failed log)."""
        with self._lock:
            return [
                {"name": a.seq.name, "project": a.seq.project.name, "digest": a.digest, "state": a.state}
                for a in self._artifacts.values()
                if a.state == "PENDING"
            ]

    def fail_operation(self, operation_name: str, times: int = 1, status: int = 500) -> None:
        """The next ``times`` GraphQL requests named ``operation_name`` get HTTP ``status``.

        Besides GraphQL operation names, three pseudo-operations are known:
        ``"upload"`` (PUTs to handed-out upload URLs), ``"download"`` (GETs of
        manifests and artifact files) and ``"file_stream"`` (run file stream).
        """
        with self._lock:
            self._faults.setdefault(operation_name, []).extend([status] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, name: str) -> int | None:
        with self._lock:
            faults = self._faults.get(name)
            if faults:
                status = faults.pop(0)
                log.info("wandb backend: injected HTTP %s for %s", status, name)
                return status
            return None

    def operations(self) -> list[str]:
        """GraphQL operation names seen, in order (``requests`` also has paths)."""
        with self._lock:
            return [r[4:] for r in self.requests if r.startswith("gql ")]

    @staticmethod
    def _art_label(a: Artifact) -> str:
        v = f"v{a.version_index}" if a.version_index is not None else "pending"
        return f"{a.seq.name}:{v}"

    # ------------------------------------------------------------ model helpers
    @property
    def unknown(self) -> list[str]:
        """The distinct entries of :attr:`unknown_fields`, in order."""
        return list(dict.fromkeys(self.unknown_fields))

    def _note_unknown(self, typename: str, fieldname: str) -> None:
        key = f"{typename}.{fieldname}" if fieldname else typename
        with self._lock:
            self.unknown_fields.append(key)
            if self._executing is not None:
                self._executing.append(key)
        log.warning("wandb backend: %s is not implemented", key)

    def _entity(self, name: str | None) -> Entity:
        name = name or self.entity
        ent = self._entities.get(name)
        if ent is None:
            ent = self._entities[name] = Entity(_next_id(), name)
        return ent

    def _find_project(self, entity: str | None, name: str | None) -> Project | None:
        return self._projects.get((entity or self.entity, name or "uncategorized"))

    def _project(self, entity: str | None, name: str | None) -> Project:
        ent = self._entity(entity)
        key = (ent.name, name or "uncategorized")
        proj = self._projects.get(key)
        if proj is None:
            proj = self._projects[key] = Project(_next_id(), ent, key[1])
        return proj

    def _run(self, proj: Project, name: str) -> Run:
        run = proj.runs.get(name)
        if run is None:
            run = proj.runs[name] = Run(_next_id(), proj, name)
            self._runs_by_num[run.num] = run
        return run

    def _artifact_by_gid(self, gid: str | None) -> Artifact | None:
        parsed = _parse_gid(gid)
        if not parsed or parsed[0] != "Artifact":
            return None
        return self._artifacts.get(parsed[1])

    def _resolve_membership(self, proj: Project, ref: str | None) -> Membership | None:
        if not ref:
            return None
        name, _, alias = ref.partition(":")
        seq = proj.sequences.get(name)
        if seq is None:
            return None
        art = seq.find(alias or "latest")
        return Membership(seq, art) if art else None

    def _viewer(self) -> Plain:
        ent = self._entity(self.entity)
        return Plain(
            "User",
            id=_gid("User", 1),
            name=self.username,
            username=self.username,
            email=f"{self.username}@example.invalid",
            entity=ent.name,
            admin=False,
            flags="{}",
            photoUrl=None,
            apiKey=None,
            accountType="USER",
            userInfo=None,
            defaultEntity=ent,
            teams=connection([ent]),
            organizations=[],
            apiKeys=connection([]),
            limits=None,
        )

    def _upload_url(self, target: tuple) -> str:
        token = secrets.token_urlsafe(12)
        self._uploads[token] = target
        return f"{self.base_url}/_upload/{token}"

    def _object_path(self, kind: str, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        return self.workdir / "objects" / kind / safe

    def _read_object(self, kind: str, key: str) -> bytes:
        return self._object_path(kind, key).read_bytes()

    def _artifact_file(self, art: Artifact, f: ArtifactFile) -> Plain:
        hexhash = _b64_to_hex(f.md5_b64)
        url = f"{self.base_url}/_files/blob/{hexhash}"
        present = self._object_path("blob", hexhash).exists()
        return Plain(
            "File",
            id=_gid("File", hash((art.num, f.name)) & 0xFFFFFFF),
            name=f.name,
            displayName=f.name,
            url=url,
            directUrl=url,
            sizeBytes=f.size or 0,
            storagePath=f.storage_path,
            mimetype=f.mimetype,
            updatedAt=art.updated_at,
            digest=f.md5_b64,
            md5=f.md5_b64,
            state="finished" if present else "pending",
            artifact=art,
        )

    def _run_file(self, run: Run, name: str) -> Plain:
        key = run.files[name]
        url = f"{self.base_url}/_files/run/{key}"
        p = self._object_path("run", key)
        return Plain(
            "File",
            id=_gid("File", hash((run.num, name)) & 0xFFFFFFF),
            name=name,
            displayName=name,
            url=url,
            directUrl=url,
            sizeBytes=p.stat().st_size if p.exists() else 0,
            mimetype=None,
            md5=None,
            digest=None,
            updatedAt=run.heartbeat_at,
            storagePath=None,
        )

    # ------------------------------------------------------------ Query fields
    def q_viewer(self, a):
        return self._viewer()

    def q_serverInfo(self, a):
        return Plain(
            "ServerInfo",
            features=[],  # no optional server features: the SDK uses fallbacks
            cliVersionInfo="{}",
            latestLocalVersionInfo=None,
            availableBucketProviders=[],
            defaultCloudRegion=Plain("CloudRegion", id="default", region="default", provider="LOCAL"),
            frontendHost=None,
            isCloud=False,
        )

    def q_entity(self, a):
        name = a.get("name") or self.entity
        return self._entities.get(name) or (self._entity(name) if name == self.entity else None)

    def q_project(self, a):
        return self._find_project(a.get("entityName"), a.get("name"))

    q_model = q_project

    def q_artifact(self, a):
        return self._artifact_by_gid(a.get("id"))

    def q_artifactCollection(self, a):
        parsed = _parse_gid(a.get("id"))
        if not parsed:
            return None
        for proj in self._projects.values():
            for s in proj.sequences.values():
                if s.num == parsed[1]:
                    return s
        return None

    def q_run(self, a):
        parsed = _parse_gid(a.get("id"))
        return self._runs_by_num.get(parsed[1]) if parsed else None

    def q_organization(self, a):
        return None

    # --------------------------------------------------------- Mutation fields
    def m_upsertBucket(self, a):
        inp = a.get("input") or {}
        proj = self._project(inp.get("entityName"), inp.get("modelName"))
        run = None
        if inp.get("id"):
            parsed = _parse_gid(inp["id"])
            run = self._runs_by_num.get(parsed[1]) if parsed else None
        name = inp.get("name") or (run.name if run else secrets.token_hex(4))
        inserted = run is None and name not in proj.runs
        if run is None:
            run = self._run(proj, name)
        for key, attr in (
            ("displayName", "display_name"),
            ("jobType", "job_type"),
            ("groupName", "group"),
            ("notes", "notes"),
            ("description", "description"),
            ("host", "host"),
            ("jobProgram", "program"),
            ("commit", "commit"),
            ("sweep", "sweep_name"),
        ):
            if inp.get(key) is not None:
                setattr(run, attr, inp[key])
        if inp.get("tags") is not None:
            run.tags = list(inp["tags"])
        if inp.get("config") is not None:
            run.config = _json_obj(inp["config"], {})
        if inp.get("summaryMetrics") is not None:
            run.summary.update(_json_obj(inp["summaryMetrics"], {}))
        if inp.get("state") is not None:
            run.state = inp["state"]
        run.heartbeat_at = _now()
        return Plain("UpsertBucketPayload", bucket=run, inserted=inserted, updateAvailable=False)

    def m_createArtifactType(self, a):
        inp = a.get("input") or {}
        proj = self._project(inp.get("entityName"), inp.get("projectName"))
        t = self._artifact_type(proj, inp.get("name"))
        return Plain("CreateArtifactTypePayload", artifactType=t)

    def _artifact_type(self, proj: Project, name: str | None) -> ArtifactType:
        if not name:
            raise GraphQLError("artifact type name is required")
        t = proj.types.get(name)
        if t is None:
            t = proj.types[name] = ArtifactType(_next_id(), proj, name)
        return t

    def m_createArtifact(self, a):
        inp = a.get("input") or {}
        proj = self._project(inp.get("entityName"), inp.get("projectName"))
        type_name = inp.get("artifactTypeName")
        names = inp.get("artifactCollectionNames") or (
            [inp["artifactCollectionName"]] if inp.get("artifactCollectionName") else []
        )
        if not names:
            raise GraphQLError("artifactCollectionNames is required")
        if not inp.get("digest"):
            raise GraphQLError("digest is required")
        seq_name = names[0]
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", seq_name):
            raise GraphQLError(f"invalid artifact name {seq_name!r}")
        seq = proj.sequences.get(seq_name)
        if seq is None:
            atype = self._artifact_type(proj, type_name)
            seq = proj.sequences[seq_name] = ArtifactSequence(_next_id(), proj, seq_name, atype)
        elif type_name and seq.type.name != type_name:
            raise GraphQLError(
                f"artifact {seq_name} already exists with type {seq.type.name}; cannot create another with type {type_name}"
            )
        run = None
        if inp.get("runName"):
            run = self._run(proj, inp["runName"])
        aliases = [
            al["alias"] if isinstance(al, dict) else al
            for al in inp.get("aliases") or []
            if (not isinstance(al, dict)) or al.get("artifactCollectionName", seq_name) == seq_name
        ]
        for al in aliases:
            if "/" in al or ":" in al:
                raise GraphQLError(f"invalid alias {al!r}")
        previous_latest = seq.latest()
        # Deduplication: same digest as a committed version of this sequence.
        dedupe = inp.get("enableDigestDeduplication") is not False
        for art in seq.live() if dedupe else ():
            if art.digest == inp["digest"] and art.state == "COMMITTED":
                for al in aliases:
                    seq.set_alias(al, art)
                if run is not None and art not in run.outputs:
                    run.outputs.append(art)
                art.updated_at = _now()
                break
        else:
            art = Artifact(
                _next_id(),
                seq,
                seq.type,
                inp["digest"],
                description=inp.get("description"),
                metadata=_json_obj(inp.get("metadata"), {}) or {},
                requested_aliases=aliases,
                created_by=run,
                client_id=inp.get("clientID"),
                sequence_client_id=inp.get("sequenceClientID"),
                history_step=inp.get("historyStep"),
            )
            self._artifacts[art.num] = art
            seq.pending.append(art)
            if run is not None:
                run.outputs.append(art)
        seq_view = Plain(
            "ArtifactSequence",
            id=_gid("ArtifactCollection", seq.num),
            name=seq.name,
            latestArtifact=previous_latest,
            project=proj,
        )
        return Plain("CreateArtifactPayload", artifact=_ArtifactView(art, seq_view))

    def m_createArtifactManifest(self, a):
        inp = a.get("input") or {}
        art = self._artifact_by_gid(inp.get("artifactID"))
        if art is None:
            raise GraphQLError("artifact not found")
        m = art.manifest
        if m is None:  # the SDK asks twice (without, then with an upload URL)
            num = _next_id()
            m = Manifest(num, art, inp.get("name") or "wandb_manifest.json", None, None, f"m{num}")
            self._manifests[num] = m
            art.manifest = m
        m.digest = inp.get("digest") or m.digest
        m.mtype = inp.get("type") or m.mtype
        return Plain("CreateArtifactManifestPayload", artifactManifest=m)

    def m_updateArtifactManifest(self, a):
        inp = a.get("input") or {}
        parsed = _parse_gid(inp.get("artifactManifestID"))
        m = self._manifests.get(parsed[1]) if parsed else None
        if m is None:
            raise GraphQLError("manifest not found")
        if inp.get("digest"):
            m.digest = inp["digest"]
        return Plain("UpdateArtifactManifestPayload", artifactManifest=m)

    def m_createArtifactFiles(self, a):
        inp = a.get("input") or {}
        nodes = []
        for spec in inp.get("artifactFiles") or []:
            art = self._artifact_by_gid(spec.get("artifactID"))
            if art is None:
                raise GraphQLError("artifact not found")
            md5 = spec.get("md5") or ""
            hexhash = _b64_to_hex(md5)
            f = ArtifactFile(
                spec["name"],
                md5,
                spec.get("mimetype"),
                storage_path=f"wandb_artifacts/{art.num}/{hexhash}/{spec['name']}",
            )
            existing = self._object_path("blob", hexhash)
            if existing.exists():
                f.size = existing.stat().st_size
            art.files[f.name] = f
            # A file whose bytes the server already holds needs no upload.
            upload = None if existing.exists() else self._upload_url(("blob", hexhash, art.num, f.name))
            nodes.append(
                Plain(
                    "File",
                    id=_gid("File", _next_id()),
                    name=f.name,
                    displayName=f.name,
                    storagePath=f.storage_path,
                    uploadUrl=upload,
                    uploadHeaders=[],
                    uploadMultipartUrls=None,
                    artifact=art,
                )
            )
        return Plain("CreateArtifactFilesPayload", files=connection(nodes))

    def m_commitArtifact(self, a):
        inp = a.get("input") or {}
        art = self._artifact_by_gid(inp.get("artifactID"))
        if art is None:
            raise GraphQLError("artifact not found")
        if art.state == "COMMITTED":
            return Plain("CommitArtifactPayload", artifact=art)
        if art.manifest is None or not art.manifest.uploaded:
            raise GraphQLError("cannot commit artifact: manifest was not uploaded")
        for name, f in art.files.items():
            if not self._object_path("blob", _b64_to_hex(f.md5_b64)).exists():
                raise GraphQLError(f"cannot commit artifact: file {name} was not uploaded")
        seq = art.seq
        # The same content may have been committed meanwhile: dedupe at commit.
        for other in seq.live():
            if other.digest == art.digest:
                for al in art.requested_aliases:
                    seq.set_alias(al, other)
                art.state = "DELETED"
                if art in seq.pending:
                    seq.pending.remove(art)
                return Plain("CommitArtifactPayload", artifact=other)
        art.state = "COMMITTED"
        art.version_index = len(seq.versions)
        art.updated_at = _now()
        seq.versions.append(art)
        if art in seq.pending:
            seq.pending.remove(art)
        seq.set_alias("latest", art)
        for al in art.requested_aliases:
            seq.set_alias(al, art)
        return Plain("CommitArtifactPayload", artifact=art)

    def m_useArtifact(self, a):
        inp = a.get("input") or {}
        art = self._artifact_by_gid(inp.get("artifactID"))
        if art is None:
            raise GraphQLError("artifact not found")
        proj = self._project(inp.get("entityName"), inp.get("projectName"))
        run = self._run(proj, inp.get("runName") or "")
        if art not in run.inputs:
            run.inputs.append(art)
        if run not in art.used_by:
            art.used_by.append(run)
        return Plain("UseArtifactPayload", artifact=art)

    def m_updateArtifact(self, a):
        inp = a.get("input") or {}
        art = self._artifact_by_gid(inp.get("artifactID"))
        if art is None:
            raise GraphQLError("artifact not found")
        if "description" in inp and inp["description"] is not None:
            art.description = inp["description"]
        if inp.get("metadata") is not None:
            art.metadata = _json_obj(inp["metadata"], {})
        for al in inp.get("aliases") or []:
            art.seq.set_alias(al["alias"] if isinstance(al, dict) else al, art)
        art.updated_at = _now()
        return Plain("UpdateArtifactPayload", artifact=art)

    def m_deleteArtifact(self, a):
        inp = a.get("input") or {}
        art = self._artifact_by_gid(inp.get("artifactID"))
        if art is None or art.state == "DELETED":
            raise GraphQLError("artifact not found")
        seq = art.seq
        if art.aliases():
            if not inp.get("deleteAliases"):
                raise GraphQLError(
                    "cannot delete artifact with aliases; remove its aliases first or pass deleteAliases"
                )
            had_latest = seq.aliases.get("latest") is art
            for al in art.aliases():
                del seq.aliases[al]
            art.state = "DELETED"
            live = seq.live()
            if had_latest and live:  # `latest` falls back to the newest remaining version
                seq.set_alias("latest", live[-1])
        art.state = "DELETED"
        if art in seq.pending:
            seq.pending.remove(art)
        return Plain("DeleteArtifactPayload", artifact=art)

    def m_addAliases(self, a):
        inp = a.get("input") or {}
        art = self._artifact_by_gid(inp.get("artifactID"))
        if art is None:
            raise GraphQLError("artifact not found")
        for al in inp.get("aliases") or []:
            art.seq.set_alias(al["alias"] if isinstance(al, dict) else al, art)
        return Plain("AddAliasesPayload", success=True)

    def m_deleteAliases(self, a):
        inp = a.get("input") or {}
        art = self._artifact_by_gid(inp.get("artifactID"))
        if art is None:
            raise GraphQLError("artifact not found")
        for al in inp.get("aliases") or []:
            al = al["alias"] if isinstance(al, dict) else al
            if art.seq.aliases.get(al) is art:
                del art.seq.aliases[al]
        return Plain("DeleteAliasesPayload", success=True)

    def m_createRunFiles(self, a):
        inp = a.get("input") or {}
        proj = self._project(inp.get("entityName"), inp.get("projectName"))
        run = self._run(proj, inp.get("runName") or "")
        files = []
        for name in inp.get("files") or []:
            key = f"r{run.num}-{name}"
            run.files.setdefault(name, key)
            files.append(Plain("File", name=name, uploadUrl=self._upload_url(("run", key))))
        return Plain(
            "CreateRunFilesPayload",
            runID=_gid("Run", run.num),
            uploadHeaders=[],
            files=files,
        )

    def m_markRunFilesUploaded(self, a):
        return Plain("MarkRunFilesUploadedPayload", success=True)

    def m_stopRun(self, a):
        return Plain("StopRunPayload", success=True)

    # ------------------------------------------------------------ HTTP handlers
    def _check_auth(self, request: web.Request) -> bool:
        if not self.require_auth:
            return True
        h = request.headers.get("Authorization", "")
        if h.startswith("Basic "):
            try:
                _user, _, pw = base64.b64decode(h[6:]).decode().partition(":")
            except Exception:  # noqa: BLE001 - a malformed header is a failed login
                return False
            return pw == self.api_key
        if h.startswith("Bearer "):
            return h[7:] == self.api_key
        return False

    async def _body(self, request: web.Request) -> bytes:
        raw = await request.read()
        enc = request.headers.get("Content-Encoding", "")
        if enc == "gzip":
            raw = gzip.decompress(raw)
        elif enc == "deflate":
            raw = zlib.decompress(raw)
        return raw

    async def _h_graphql(self, request: web.Request) -> web.Response:
        body = json.loads(await self._body(request) or b"{}")
        if isinstance(body, list):  # batched
            self.requests.append("gql batch")
            return web.json_response([self._graphql_one(b)[1] for b in body])
        status, payload = self._graphql_one(body, auth_ok=self._check_auth(request))
        return web.json_response(payload, status=status)

    def _graphql_one(self, body: dict[str, Any], auth_ok: bool = True) -> tuple[int, dict[str, Any]]:
        text = body.get("query") or ""
        variables = dict(body.get("variables") or {})
        try:
            doc = parse(text)
        except Exception as e:  # noqa: BLE001 - graphql-core's syntax errors, answered as a client error
            self.requests.append("gql <unparsable>")
            return 400, {"errors": [{"message": f"Syntax Error: {e}"}]}
        ops = [d for d in doc.definitions if isinstance(d, gast.OperationDefinitionNode)]
        op_name = body.get("operationName")
        op = None
        if op_name:
            op = next((o for o in ops if o.name and o.name.value == op_name), None)
        elif ops:
            op = ops[0]
            op_name = op.name.value if op.name else "<anonymous>"
        with self._lock:
            self.requests.append(f"gql {op_name}")
            self.queries.append((op_name or "", text, variables))
            status = self._take_fault(op_name or "")
            if status is not None:
                return status, {"errors": [{"message": f"injected failure ({status}) for {op_name}"}]}
        if not auth_ok:
            return 401, {"errors": [{"message": "permission denied: invalid API key"}]}
        if op is None:
            self._note_unknown(f"operation {op_name}", "")
            return 400, {"errors": [{"message": f"Unknown operation named {op_name!r}"}]}
        for vd in op.variable_definitions or ():
            vname = vd.variable.name.value
            if vname not in variables and vd.default_value is not None:
                variables[vname] = _ast_value(vd.default_value, {})
        root: GObj = MutationRoot() if op.operation.value == "mutation" else QueryRoot()
        with self._lock:
            ex = _Executor(self, doc, variables)
            self._executing = unknown = []
            try:
                data = ex.complete(root, [op.selection_set])
                if unknown and self.strict:
                    raise GraphQLError("; ".join(
                        f'Cannot query field "{k.split(".", 1)[1]}" on type "{k.split(".", 1)[0]}" '
                        "(not implemented by the test W&B backend)" for k in dict.fromkeys(unknown)))
            except GraphQLError as e:
                msg = str(e)
                self.errors.append(f"{op_name}: {msg}")
                log.info("wandb backend: %s -> error %s", op_name, msg)
                return 200, {"data": None, "errors": [{"message": msg, "path": []}]}
            except Exception as e:  # a bug in this backend: make it visible
                log.exception("wandb backend: crash answering %s", op_name)
                self.errors.append(f"{op_name}: internal {e!r}")
                return 500, {"errors": [{"message": f"internal error: {e!r}"}]}
            finally:
                self._executing = None
        return 200, {"data": data}

    async def _h_upload(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        token = request.match_info["token"]
        with self._lock:
            self.requests.append(f"PUT {request.path}")
            status = self._take_fault("upload")
            if status is not None:
                return web.Response(status=status, text="injected failure")
            target = self._uploads.get(token)
            if target is None:
                return web.Response(status=404, text="unknown upload url")
            kind = target[0]
            if kind == "manifest":
                m = self._manifests[target[1]]
                p = self._object_path("manifest", m.key)
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
                m.uploaded = True
            elif kind == "blob":
                _, hexhash, art_num, name = target
                if hashlib.md5(data).hexdigest() != hexhash:
                    return web.Response(status=400, text="md5 mismatch")
                p = self._object_path("blob", hexhash)
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
                art = self._artifacts.get(art_num)
                if art is not None and name in art.files:
                    art.files[name].size = len(data)
            elif kind == "run":
                p = self._object_path("run", target[1])
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
        return web.Response(status=200)

    async def _h_download(self, request: web.Request) -> web.StreamResponse:
        kind, key = request.match_info["kind"], request.match_info["key"]
        self.requests.append(f"GET {request.path}")
        status = self._take_fault("download")
        if status is not None:
            return web.Response(status=status, text="injected failure")
        p = self._object_path(kind, key)
        if not p.exists():
            return web.Response(status=404, text="not found")
        return web.Response(body=p.read_bytes())

    async def _h_artifact_file(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"GET {request.path}")
        status = self._take_fault("download")
        if status is not None:
            return web.Response(status=status, text="injected failure")
        if not self._check_auth(request):
            return web.Response(status=401, text="unauthorized")
        parts = request.path.strip("/").split("/")
        hexhash = parts[-1] if parts[0] == "artifacts" else (parts[-2] if len(parts) >= 2 else "")
        p = self._object_path("blob", hexhash)
        if not re.fullmatch(r"[0-9a-f]{32}", hexhash) or not p.exists():
            return web.Response(status=404, text="not found")
        return web.Response(body=p.read_bytes())

    async def _h_file_stream(self, request: web.Request) -> web.Response:
        body = json.loads(await self._body(request) or b"{}")
        info = request.match_info
        with self._lock:
            self.requests.append(f"POST {request.path}")
            status = self._take_fault("file_stream")
            if status is not None:
                return web.json_response({"error": "injected"}, status=status)
            proj = self._project(info["entity"], info["project"])
            run = self._run(proj, info["run"])
            for fname, chunk in (body.get("files") or {}).items():
                lines = chunk.get("content") or []
                offset = int(chunk.get("offset") or 0)
                if fname == "wandb-history.jsonl":
                    rows = [json.loads(x) for x in lines]
                    run.history[offset:] = rows
                elif fname == "wandb-summary.json":
                    if lines:
                        run.summary = json.loads(lines[-1])
                elif fname == "output.log":
                    run.output_log[offset:] = lines
            run.heartbeat_at = _now()
            if body.get("complete"):
                run.exitcode = body.get("exitcode")
                run.state = "finished" if not run.exitcode else "failed"
        return web.json_response({"exitcode": None, "limits": {}})

    async def _h_no_otel(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path}")
        return web.Response(status=404, text="no telemetry proxy here")

    async def _h_unknown(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path} (unhandled)")
        self._note_unknown(f"HTTP {request.method} {request.path}", "")
        log.warning("wandb backend: unhandled %s %s", request.method, request.path)
        return web.Response(status=404, text="not found")


class _ArtifactView(GObj):
    """An artifact as answered by createArtifact: its sequence's
    ``latestArtifact`` is the latest version *before* this call."""

    TYPENAME = "Artifact"

    def __init__(self, art: Artifact, seq_view: Plain) -> None:
        self.art = art
        self.seq_view = seq_view

    def resolve(self, name, args, backend):
        if name in ("artifactSequence", "artifactCollection"):
            return self.seq_view
        return self.art.resolve(name, args, backend)


def _user_config(config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        if k == "_wandb":
            continue
        out[k] = v["value"] if isinstance(v, dict) and "value" in v else v
    return out
