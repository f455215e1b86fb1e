"""A fake Apolo (ex Neu.ro) platform control plane for tests.

The real ``apolo_sdk`` client talks to it unchanged: login (``GET /config``),
buckets (get/list/create/delete/find-by-path/make_tmp_credentials/
sign_blob_url) and ``GET /jobs/{id}``.  Bucket bytes live in a
:class:`~tests.servers.s3.SeaweedS3` server; ``make_tmp_credentials`` hands out that
server's S3 key pair with provider ``"aws"`` (or whatever was passed to
:meth:`FakePlatform.add_bucket`).  A bucket added with ``provider="azure"`` lives in the
:class:`~tests.servers.azurite.Azurite` server set as :attr:`FakePlatform.azure`, and its
credentials are what the platform gives for Azure: ``storage_endpoint`` plus a container
``sas_token`` and its ``expiry`` (or, with ``azure_account_key = True``, the account key as
``credential``).

Runs as an aiohttp app on its own event loop in a background thread, bound to
127.0.0.1 on a free port.

Behaviour worth knowing:

* Every request except ``GET /config`` needs ``Authorization: Bearer <token>``
  and gets ``401 {"error": ...}`` otherwise (apolo_sdk raises
  ``AuthenticationError``).  ``GET /config`` without a valid token answers the
  *unauthenticated* shape (auth endpoints only, no ``authorized``) like the
  real platform, which makes ``Factory.login_with_token`` / passed-config
  login raise ``apolo_sdk.AuthError("Cannot authorize user")``.  Set
  ``config_rejects_bad_token = True`` to answer 401 there instead (the SDK then
  raises ``RuntimeError("Unable to get server configuration: 401")``).
* ``credentials_ttl``: when set, ``make_tmp_credentials`` adds
  ``expiration`` (now + ttl, ISO 8601 UTC) and ``session_token: ""`` (the SDK
  requires the key once ``expiration`` is present; SeaweedFS rejects any
  non-empty token it did not issue, and botocore omits an empty one).  Expiry
  is NOT enforced by the S3 server: the same static key pair keeps working.
  Note that botocore refreshes credentials that expire within 10 minutes on
  every request, so a small ttl makes the SDK call ``make_tmp_credentials``
  before each S3 request; that is observable in :attr:`FakePlatform.calls`.
* ``fail_next(substr, times, status)`` makes the next ``times`` requests whose
  path contains ``substr`` fail with ``status`` (before the auth check).
* ``persistent_credentials`` endpoints are not implemented (404).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

from .s3 import SeaweedS3

__all__ = ["FakePlatform", "PlatformBucket"]


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class PlatformBucket:
    id: str
    name: str | None
    owner: str
    org_name: str
    project_name: str
    provider: str
    backing_name: str  # bucket (container, for azure) name inside the storage server
    created_at: str = field(default_factory=_now_iso)
    imported: bool = False
    public: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "owner": self.owner,
            "created_at": self.created_at,
            "provider": self.provider,
            "org_name": self.org_name,
            "project_name": self.project_name,
            "imported": self.imported,
            "public": self.public,
        }
        if self.name is not None:
            data["name"] = self.name
        return data


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class FakePlatform:
    API_PREFIX = "/api/v1"

    def __init__(
        self,
        s3: SeaweedS3,
        cluster: str = "default",
        org: str = "org",
        project: str = "proj",
        user: str = "alice",
        *,
        token: str | None = None,
        credentials_ttl: float | None = None,
    ) -> None:
        self.s3 = s3
        self.azure: Any = None  # an Azurite server, for provider="azure" buckets
        self.azure_account_key = False
        self.cluster = cluster
        self.org = org
        self.project = project
        self.user = user
        self.token = token or "fake-platform-token-" + secrets.token_hex(16)
        self.credentials_ttl = credentials_ttl
        self.config_rejects_bad_token = False
        self.calls: list[tuple[str, str]] = []
        #: richer log: method, path, query, auth ok, status
        self.requests: list[dict[str, Any]] = []
        self.buckets: dict[str, PlatformBucket] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.extra_projects: list[tuple[str, str]] = []  # (org, project)
        self._faults: list[list[Any]] = []  # [substr, remaining, status]
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._tmpdirs: list[tempfile.TemporaryDirectory[str]] = []

    # ------------------------------------------------------------ addresses
    @property
    def base_url(self) -> str:
        assert self.port is not None, "FakePlatform not started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + self.API_PREFIX

    @property
    def buckets_url(self) -> str:
        """Cluster ``buckets_url``; the SDK appends ``/buckets``."""
        return self.api_url + "/buckets"

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "FakePlatform":
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="FakePlatform", daemon=True)
        self._thread.start()
        ready.wait()
        fut = asyncio.run_coroutine_threadsafe(self._start_site(), loop)
        self.port = fut.result(timeout=15)
        return self

    async def _start_site(self) -> int:
        app = web.Application(middlewares=[self._middleware])
        p = self.API_PREFIX
        b = p + "/buckets/buckets"
        app.router.add_get(p + "/config", self._h_config)
        app.router.add_get(p + "/jobs/{job_id}", self._h_job)
        app.router.add_get(b, self._h_bucket_list)
        app.router.add_post(b, self._h_bucket_create)
        app.router.add_get(b + "/find/by_path", self._h_bucket_find)
        app.router.add_get(b + "/{bucket}", self._h_bucket_get)
        app.router.add_patch(b + "/{bucket}", self._h_bucket_patch)
        app.router.add_delete(b + "/{bucket}", self._h_bucket_delete)
        app.router.add_post(b + "/{bucket}/make_tmp_credentials", self._h_tmp_creds)
        app.router.add_post(b + "/{bucket}/sign_blob_url", self._h_sign_url)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            try:
                fut.result(timeout=15)
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
        self._loop = self._thread = self._runner = None
        for tmp in self._tmpdirs:
            tmp.cleanup()
        self._tmpdirs.clear()

    def __enter__(self) -> "FakePlatform":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------- test helpers
    def add_bucket(
        self,
        name: str,
        *,
        provider: str = "aws",
        org: str | None = None,
        project: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Create a backing S3 bucket and register a platform bucket; return its id."""
        bucket = self._new_bucket(name, provider, org, project, owner)
        if provider == "azure":
            self.azure.create_container(bucket.backing_name)
        else:
            self.s3.create_bucket(bucket.backing_name)
        with self._lock:
            self.buckets[bucket.id] = bucket
        return bucket.id

    def _new_bucket(
        self,
        name: str | None,
        provider: str = "aws",
        org: str | None = None,
        project: str | None = None,
        owner: str | None = None,
    ) -> PlatformBucket:
        uid = uuid.uuid4()
        return PlatformBucket(
            id=f"bucket-{uid}",
            name=name,
            owner=owner or self.user,
            org_name=org or self.org,
            project_name=project or self.project,
            provider=provider,
            backing_name=f"apolo-{uid.hex[:24]}",
        )

    def bucket(self, id_or_name: str) -> PlatformBucket:
        for b in self.buckets.values():
            if id_or_name in (b.id, b.name):
                return b
        raise KeyError(id_or_name)

    def backing_bucket(self, id_or_name: str) -> str:
        """Name of the S3 bucket that holds a platform bucket's bytes."""
        return self.bucket(id_or_name).backing_name

    def add_project(self, project: str, org: str | None = None) -> None:
        self.extra_projects.append((org or self.org, project))

    def add_job(
        self,
        job_id: str,
        name: str | None,
        owner: str,
        tags: list[str],
        *,
        status: str = "running",
    ) -> None:
        now = _now_iso()
        job: dict[str, Any] = {
            "id": job_id,
            "owner": owner,
            "cluster_name": self.cluster,
            "org_name": self.org,
            "project_name": self.project,
            "namespace": "",
            "status": status,
            "history": {
                "status": status,
                "reason": "",
                "description": "",
                "created_at": now,
                "started_at": now,
                "restarts": 0,
            },
            "statuses": [{"status": status, "transition_time": now}],
            "container": {
                "image": "ghcr.io/neuro-inc/wabucketref:latest",
                "resources": {"cpu": 0.5, "memory": 512 * 2**20},
                "env": {},
            },
            "scheduler_enabled": False,
            "preemptible_node": False,
            "pass_config": True,
            "uri": f"job://{self.cluster}/{self.org}/{self.project}/{job_id}",
            "total_price_credits": "0",
            "price_credits_per_hour": "0",
            "tags": list(tags),
            "restart_policy": "never",
        }
        if name is not None:
            job["name"] = name
        with self._lock:
            self.jobs[job_id] = job

    def passed_config(self, token: str | None = None) -> str:
        data = {
            "token": token if token is not None else self.token,
            "cluster": self.cluster,
            "url": self.api_url,
            "org_name": self.org,
            "project_name": self.project,
        }
        return base64.b64encode(json.dumps(data).encode()).decode()

    def env(self, config_dir: Path | None = None) -> dict[str, str]:
        """Env for a subprocess using apolo_sdk's ``Factory()`` with no ~/.apolo.

        ``APOLO_CONFIG``/``NEUROMATION_CONFIG`` point at ``config_dir`` (a fresh
        empty folder when None) so an existing ``~/.apolo/db`` cannot win over
        the passed config.  Note: a ``.apolo.toml`` in the cwd or a parent
        still overrides cluster/org/project.
        """
        if config_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="fake-apolo-cfg-")
            self._tmpdirs.append(tmp)
            config_dir = Path(tmp.name) / "apolo"
        passed = self.passed_config()
        return {
            "APOLO_PASSED_CONFIG": passed,
            "NEURO_PASSED_CONFIG": passed,
            "APOLO_CONFIG": str(config_dir),
            "NEUROMATION_CONFIG": str(config_dir),
        }

    def fail_next(self, path_substring: str, times: int = 1, status: int = 503) -> None:
        with self._lock:
            self._faults.append([path_substring, times, status])

    def clear_calls(self) -> None:
        with self._lock:
            self.calls.clear()
            self.requests.clear()

    def calls_matching(self, substring: str, method: str | None = None) -> list[tuple[str, str]]:
        return [
            c for c in list(self.calls) if substring in c[1] and (method is None or c[0] == method)
        ]

    # ------------------------------------------------------------ plumbing
    def _take_fault(self, path: str) -> int | None:
        with self._lock:
            for fault in self._faults:
                if fault[0] in path and fault[1] > 0:
                    fault[1] -= 1
                    status = int(fault[2])
                    self._faults = [f for f in self._faults if f[1] > 0]
                    return status
        return None

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.token}"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        authorized = self._authorized(request)
        entry = {
            "method": request.method,
            "path": path,
            "query": dict(request.query),
            "authorized": authorized,
            "status": None,
        }
        with self._lock:
            self.calls.append((request.method, path))
            self.requests.append(entry)
        status = self._take_fault(path)
        if status is not None:
            entry["status"] = status
            return _error(status, f"injected fault for {path}")
        is_config = path == self.API_PREFIX + "/config"
        if not authorized and not is_config:
            entry["status"] = 401
            return _error(401, "Invalid or missing bearer token")
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            entry["status"] = exc.status
            if exc.status >= 400:
                return _error(exc.status, exc.reason)
            raise
        entry["status"] = resp.status
        return resp

    def _cluster_json(self) -> dict[str, Any]:
        api = self.api_url
        return {
            "name": self.cluster,
            "orgs": sorted({self.org, *(o for o, _ in self.extra_projects)}),
            "registry_url": f"http://127.0.0.1:{self.port}/registry",
            "storage_url": api + "/storage",
            "users_url": api + "/users",
            "monitoring_url": api + "/jobs",
            "secrets_url": api + "/secrets",
            "disks_url": api + "/disk",
            "buckets_url": self.buckets_url,
            "resource_pool_types": [
                {
                    "name": "cpu",
                    "min_size": 0,
                    "max_size": 1,
                    "cpu": 2.0,
                    "memory": 4 * 2**30,
                    "disk_size": 20 * 2**30,
                }
            ],
            "resource_presets": [
                {
                    "name": "cpu-small",
                    "credits_per_hour": "0",
                    "cpu": 0.5,
                    "memory": 512 * 2**20,
                    "resource_pool_names": ["cpu"],
                }
            ],
        }

    async def _h_config(self, request: web.Request) -> web.Response:
        base = self.base_url
        data: dict[str, Any] = {
            "auth_url": base + "/oauth/authorize",
            "token_url": base + "/oauth/token",
            "logout_url": base + "/oauth/logout",
            "client_id": "fake-client-id",
            "audience": base,
            "headless_callback_url": base + "/oauth/show-code",
            "callback_urls": ["http://127.0.0.1:54540"],
        }
        has_header = "Authorization" in request.headers
        if has_header and not self._authorized(request) and self.config_rejects_bad_token:
            return _error(401, "Invalid token")
        if self._authorized(request):
            data["authorized"] = True
            data["clusters"] = [self._cluster_json()]
            projects = [(self.org, self.project), *self.extra_projects]
            data["projects"] = [
                {"name": p, "cluster_name": self.cluster, "org_name": o, "role": "admin"}
                for o, p in projects
            ]
        return web.json_response(data)

    async def _h_job(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return _error(404, f"no such job {request.match_info['job_id']}")
        return web.json_response(job)

    def _scope(self, request: web.Request) -> tuple[str, str]:
        org = request.query.get("org_name") or self.org
        project = request.query.get("project_name") or self.project
        return org, project

    def _lookup(self, request: web.Request) -> PlatformBucket | None:
        key = request.match_info["bucket"]
        org, project = self._scope(request)
        for b in list(self.buckets.values()):
            if b.id == key:
                return b  # ids are global
        for b in list(self.buckets.values()):
            if b.name == key and b.org_name == org and b.project_name == project:
                return b
        return None

    async def _h_bucket_list(self, request: web.Request) -> web.StreamResponse:
        org, project = self._scope(request)
        items = [
            b.to_json()
            for b in list(self.buckets.values())
            if b.org_name == org and b.project_name == project
        ]
        if "application/x-ndjson" in request.headers.get("Accept", ""):
            body = "".join(json.dumps(i) + "\n" for i in items)
            return web.Response(body=body.encode(), content_type="application/x-ndjson")
        return web.json_response(items)

    async def _h_bucket_create(self, request: web.Request) -> web.Response:
        data = await request.json()
        name = data.get("name")
        org = data.get("org_name") or self.org
        project = data.get("project_name") or self.project
        if name is not None:
            for b in list(self.buckets.values()):
                if b.name == name and b.org_name == org and b.project_name == project:
                    return _error(409, f"bucket {name} already exists")
        bucket = self._new_bucket(name, org=org, project=project)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.s3.create_bucket, bucket.backing_name)
        with self._lock:
            self.buckets[bucket.id] = bucket
        return web.json_response(bucket.to_json(), status=201)

    async def _h_bucket_get(self, request: web.Request) -> web.Response:
        bucket = self._lookup(request)
        if bucket is None:
            return _error(404, f"bucket {request.match_info['bucket']} not found")
        return web.json_response(bucket.to_json())

    async def _h_bucket_patch(self, request: web.Request) -> web.Response:
        bucket = self._lookup(request)
        if bucket is None:
            return _error(404, f"bucket {request.match_info['bucket']} not found")
        data = await request.json()
        if "public" in data:
            bucket.public = bool(data["public"])
        return web.json_response(bucket.to_json())

    def _drop_backing(self, backing: str) -> None:
        client = self.s3.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=backing):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=backing, Delete={"Objects": keys})
        client.delete_bucket(Bucket=backing)

    async def _h_bucket_delete(self, request: web.Request) -> web.Response:
        bucket = self._lookup(request)
        if bucket is None:
            return _error(404, f"bucket {request.match_info['bucket']} not found")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._drop_backing, bucket.backing_name)
        with self._lock:
            self.buckets.pop(bucket.id, None)
        return web.Response(status=204)

    async def _h_bucket_find(self, request: web.Request) -> web.Response:
        path = request.query.get("path", "").strip("/")
        parts = path.split("/")
        # <org>/<project>/<bucket>/<key...>; also tolerate <project>/<bucket>/...
        candidates: list[tuple[str | None, str, str]] = []
        if len(parts) >= 3:
            candidates.append((parts[0], parts[1], parts[2]))
        if len(parts) >= 2:
            candidates.append((None, parts[0], parts[1]))
        for org, project, ident in candidates:
            for b in list(self.buckets.values()):
                if (
                    (org is None or b.org_name == org)
                    and b.project_name == project
                    and ident in (b.id, b.name)
                ):
                    return web.json_response(b.to_json())
        return _error(404, f"no bucket for path {path!r}")

    async def _h_tmp_creds(self, request: web.Request) -> web.Response:
        bucket = self._lookup(request)
        if bucket is None:
            return _error(404, f"bucket {request.match_info['bucket']} not found")
        if bucket.provider == "azure":
            creds = self._azure_creds(bucket)
        else:
            creds = self._s3_creds(bucket)
        return web.json_response(
            {
                "bucket_id": bucket.id,
                "provider": bucket.provider,
                "read_only": False,
                "credentials": creds,
            }
        )

    def _azure_creds(self, bucket: PlatformBucket) -> dict[str, str]:
        from .azurite import ACCOUNT_KEY

        creds = {"bucket_name": bucket.backing_name, "storage_endpoint": self.azure.endpoint}
        if self.azure_account_key:
            creds["credential"] = ACCOUNT_KEY
        else:
            creds["sas_token"], creds["expiry"] = self.azure.container_sas(
                bucket.backing_name, self.credentials_ttl or 3600
            )
        return creds

    def _s3_creds(self, bucket: PlatformBucket) -> dict[str, str]:
        creds: dict[str, str] = {
            "bucket_name": bucket.backing_name,
            "access_key_id": self.s3.access_key_id,
            "secret_access_key": self.s3.secret_access_key,
            "endpoint_url": self.s3.endpoint_url,
            "region_name": self.s3.region,
        }
        if self.credentials_ttl is not None:
            expires = datetime.now(timezone.utc) + timedelta(seconds=self.credentials_ttl)
            creds["expiration"] = expires.isoformat()
            creds["session_token"] = ""
        return creds

    async def _h_sign_url(self, request: web.Request) -> web.Response:
        bucket = self._lookup(request)
        if bucket is None:
            return _error(404, f"bucket {request.match_info['bucket']} not found")
        data = await request.json()
        key = data["key"]
        expires = int(data.get("expires_in_sec", 3600))

        def sign() -> str:
            return str(
                self.s3.client().generate_presigned_url(
                    "get_object",
                    Params={"Bucket": bucket.backing_name, "Key": key},
                    ExpiresIn=expires,
                )
            )

        url = await asyncio.get_running_loop().run_in_executor(None, sign)
        return web.json_response({"url": url})
