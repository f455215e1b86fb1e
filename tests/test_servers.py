"""Prove the test servers: SeaweedFS S3 + fake Apolo control plane + REAL apolo_sdk.

Fixtures live here for now (session scoped, shadowing conftest's `seaweed` and
`platform` inside this module: this module needs an "artifacts" bucket and a
job, and it restarts SeaweedFS and rotates the platform token); move them to
conftest.py later.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import apolo_sdk
import pytest
from apolo_sdk import Factory
from yarl import URL

from tests.servers.platform import FakePlatform
from tests.servers.s3 import SeaweedS3

T = TypeVar("T")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as s3:
        yield s3


@pytest.fixture(scope="session")
def platform(seaweed: SeaweedS3) -> Iterator[FakePlatform]:
    with FakePlatform(seaweed) as fake:
        fake.add_bucket("artifacts")
        fake.add_job("job-0a1b2c", "train-mnist", "alice", ["team:vision", "exp:42"])
        yield fake


@pytest.fixture
def sdk(
    platform: FakePlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Callable[[apolo_sdk.Client], Awaitable[T]]], T]:
    """Run ``fn(client)`` with a real apolo_sdk Client logged in from
    APOLO_PASSED_CONFIG, on one event loop for the client's whole life."""
    monkeypatch.setenv("APOLO_PASSED_CONFIG", platform.passed_config())
    monkeypatch.delenv("NEURO_PASSED_CONFIG", raising=False)
    cfg = tmp_path / "apolo-cfg"

    def run(fn: Callable[[apolo_sdk.Client], Awaitable[T]]) -> T:
        async def main() -> T:
            async with await Factory(cfg).get() as client:
                return await fn(client)

        return asyncio.run(main())

    return run


# ---------------------------------------------------------------- helpers
def tree_digest(root: Path) -> dict[str, str]:
    """relative posix path -> sha256 for every file (dirs implied)."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[path.relative_to(root).as_posix()] = hashlib.sha256(
                path.read_bytes()
            ).hexdigest()
    return out


def make_tree(root: Path) -> dict[str, str]:
    (root / "train" / "images" / "deep").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "README.md").write_text("# mnist\n")
    (root / "train" / "labels.csv").write_text("id,label\n1,7\n2,3\n")
    (root / "train" / "images" / "deep" / "0001.bin").write_bytes(os.urandom(4096))
    (root / "test" / "empty.txt").write_bytes(b"")
    (root / "test" / "naïve file ünï 数据.txt").write_text("unicode + spaces\n")
    (root / "big.bin").write_bytes(os.urandom(6 * 2**20))
    return tree_digest(root)


def _get(url: str, token: str | None) -> tuple[int, Any]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with NO_PROXY.open(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


# ------------------------------------------------------------------ S3
def test_seaweed_auth_empty_object_and_restart(seaweed: SeaweedS3) -> None:
    import boto3
    from botocore.exceptions import ClientError

    bad = boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint_url,
        aws_access_key_id="nobody",
        aws_secret_access_key="wrong",
        region_name="us-east-1",
    )
    with pytest.raises(ClientError) as err:
        bad.list_buckets()
    assert err.value.response["Error"]["Code"] in {"InvalidAccessKeyId", "AccessDenied"}

    seaweed.create_bucket("quirk-check")
    client = seaweed.client()
    sent_expect: list[Any] = []
    client.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: sent_expect.append(request.headers.get("Expect")),
    )
    # the assertion client never sends Expect: 100-continue (SeaweedFS quirk),
    # and the request after an empty PUT must not stall: a stalled one would time out and be sent again
    client.put_object(Bucket="quirk-check", Key="dir/empty", Body=b"")
    client.put_object(Bucket="quirk-check", Key="dir/full", Body=b"x" * 10)
    assert seaweed.list_keys("quirk-check", "dir/") == ["dir/empty", "dir/full"]
    assert sent_expect == [None, None]  # each PUT sent once

    env = seaweed.env()
    assert env["AWS_ENDPOINT_URL_S3"] == env["AWS_S3_ENDPOINT_URL"] == seaweed.endpoint_url
    assert env["AWS_ACCESS_KEY_ID"] == seaweed.access_key_id

    # crash + restart on the same ports and data dir keeps the data
    endpoint, old_pid = seaweed.endpoint_url, seaweed.pid
    seaweed.restart()
    assert seaweed.endpoint_url == endpoint and seaweed.pid != old_pid
    body = seaweed.client().get_object(Bucket="quirk-check", Key="dir/full")["Body"]
    assert body.read() == b"x" * 10


# ------------------------------------------------------- control plane
def test_platform_requires_bearer_token(platform: FakePlatform) -> None:
    api = platform.api_url
    status, body = _get(f"{api}/buckets/buckets?org_name=org&project_name=proj", None)
    assert status == 401 and "error" in body
    status, _ = _get(f"{api}/jobs/job-0a1b2c", "not-the-token")
    assert status == 401
    status, body = _get(f"{api}/jobs/job-0a1b2c", platform.token)
    assert status == 200 and body["tags"] == ["team:vision", "exp:42"]

    status, unauth = _get(f"{api}/config", None)
    assert status == 200 and "authorized" not in unauth and "clusters" not in unauth
    assert {"auth_url", "token_url", "logout_url", "client_id", "audience"} <= unauth.keys()
    status, auth = _get(f"{api}/config", platform.token)
    assert status == 200 and auth["authorized"] is True
    assert auth["clusters"][0]["name"] == "default"
    assert auth["projects"] == [
        {"name": "proj", "cluster_name": "default", "org_name": "org", "role": "admin"}
    ]
    passed = json.loads(base64.b64decode(platform.passed_config()))
    assert passed == {
        "token": platform.token,
        "cluster": "default",
        "url": api,
        "org_name": "org",
        "project_name": "proj",
    }


def test_sdk_bucket_get_and_credentials(sdk: Any, platform: FakePlatform, seaweed: SeaweedS3) -> None:
    platform.clear_calls()

    async def fn(client: apolo_sdk.Client) -> Any:
        login_calls = list(platform.calls)
        platform.clear_calls()
        by_name = await client.buckets.get("artifacts")
        by_id = await client.buckets.get(by_name.id)
        creds = await client.buckets.request_tmp_credentials(by_name.id)
        async with client.buckets.list() as it:
            names = [b.name async for b in it]
        return login_calls, by_name, by_id, creds, names, client.config

    login_calls, by_name, by_id, creds, names, config = sdk(fn)
    assert login_calls == [("GET", "/api/v1/config")]
    assert (config.cluster_name, config.org_name, config.project_name) == ("default", "org", "proj")
    assert by_name == by_id
    assert by_name.id == platform.bucket("artifacts").id and by_name.id.startswith("bucket-")
    assert str(by_name.uri) == "blob://default/org/proj/artifacts"
    assert by_name.provider == apolo_sdk.Bucket.Provider.AWS
    assert by_name.owner == "alice"
    assert creds.bucket_id == by_name.id
    assert creds.credentials == {
        "bucket_name": platform.backing_bucket("artifacts"),
        "access_key_id": seaweed.access_key_id,
        "secret_access_key": seaweed.secret_access_key,
        "endpoint_url": seaweed.endpoint_url,
        "region_name": "us-east-1",
    }
    assert "artifacts" in names
    b = "/api/v1/buckets/buckets"
    assert platform.calls == [
        ("GET", f"{b}/artifacts"),
        ("GET", f"{b}/{by_name.id}"),
        ("POST", f"{b}/{by_name.id}/make_tmp_credentials"),
        ("GET", b),
    ]
    assert all(r["query"] == {"org_name": "org", "project_name": "proj"} for r in platform.requests)


def test_sdk_bucket_create_and_delete(sdk: Any, platform: FakePlatform, seaweed: SeaweedS3) -> None:
    async def create(client: apolo_sdk.Client) -> apolo_sdk.Bucket:
        return await client.buckets.create("scratch")

    bucket = sdk(create)
    backing = platform.backing_bucket("scratch")
    assert backing in {b["Name"] for b in seaweed.client().list_buckets()["Buckets"]}

    async def rm(client: apolo_sdk.Client) -> None:
        await client.buckets.rm(bucket.id)
        with pytest.raises(apolo_sdk.ResourceNotFound):
            await client.buckets.get("scratch")

    sdk(rm)
    assert backing not in {b["Name"] for b in seaweed.client().list_buckets()["Buckets"]}


def test_sdk_upload_download_roundtrip(
    sdk: Any, platform: FakePlatform, seaweed: SeaweedS3, tmp_path: Path
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    expected = make_tree(src)
    timings: dict[str, float] = {}

    async def fn(client: apolo_sdk.Client) -> None:
        bucket = await client.buckets.get("artifacts")
        prefix = bucket.uri / "dataset/mnist/v1"
        t0 = time.monotonic()
        await client.buckets.upload_dir(URL(src.as_uri()), prefix)
        timings["upload"] = time.monotonic() - t0
        platform.clear_calls()
        t0 = time.monotonic()
        await client.buckets.download_dir(prefix, URL(dst.as_uri()))
        timings["download"] = time.monotonic() - t0

    sdk(fn)
    assert tree_digest(dst) == expected
    assert (dst / "test" / "empty.txt").stat().st_size == 0
    # one URI-based operation = find/by_path then make_tmp_credentials
    b = "/api/v1/buckets/buckets"
    bucket_id = platform.bucket("artifacts").id
    assert platform.calls == [
        ("GET", f"{b}/find/by_path"),
        ("POST", f"{b}/{bucket_id}/make_tmp_credentials"),
    ]
    assert platform.requests[0]["query"] == {"path": "org/proj/artifacts/dataset/mnist/v1"}
    keys = seaweed.list_keys(platform.backing_bucket("artifacts"), "dataset/mnist/v1/")
    files = {k for k in keys if not k.endswith("/")}
    assert files == {f"dataset/mnist/v1/{rel}" for rel in expected}  # raw, unencoded keys
    # upload_dir also writes a 0-byte "folder/" marker for the prefix and every folder
    markers = {k for k in keys if k.endswith("/")}
    assert markers == {
        "dataset/mnist/v1/",
        "dataset/mnist/v1/train/",
        "dataset/mnist/v1/train/images/",
        "dataset/mnist/v1/train/images/deep/",
        "dataset/mnist/v1/test/",
    }
    print(f"\nupload_dir {timings['upload']:.2f}s download_dir {timings['download']:.2f}s")


def test_sdk_prefix_with_space_is_stored_percent_encoded(
    sdk: Any, platform: FakePlatform, seaweed: SeaweedS3, tmp_path: Path
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub dir").mkdir(parents=True)
    (src / "sub dir" / "ä b.txt").write_text("payload")

    async def fn(client: apolo_sdk.Client) -> None:
        bucket = await client.buckets.get("artifacts")
        prefix = bucket.uri / "enc" / "a b"
        await client.buckets.upload_dir(URL(src.as_uri()), prefix)
        await client.buckets.download_dir(prefix, URL(dst.as_uri()))

    sdk(fn)
    keys = seaweed.list_keys(platform.backing_bucket("artifacts"), "enc/")
    # the prefix went through yarl (str(uri)) -> encoded; names below it did not
    assert "enc/a%20b/sub dir/ä b.txt" in keys
    assert not any(k.startswith("enc/a b") for k in keys)
    assert (dst / "sub dir" / "ä b.txt").read_text() == "payload"


def test_sdk_job_tags(sdk: Any) -> None:
    async def fn(client: apolo_sdk.Client) -> apolo_sdk.JobDescription:
        with pytest.raises(apolo_sdk.ResourceNotFound):
            await client.jobs.status("job-missing")
        return await client.jobs.status("job-0a1b2c")

    job = sdk(fn)
    assert list(job.tags) == ["team:vision", "exp:42"]
    assert job.name == "train-mnist" and job.owner == "alice"
    assert job.status == apolo_sdk.JobStatus.RUNNING
    assert str(job.uri) == "job://default/org/proj/job-0a1b2c"


def test_sdk_signed_url(sdk: Any, platform: FakePlatform, seaweed: SeaweedS3) -> None:
    seaweed.client().put_object(
        Bucket=platform.backing_bucket("artifacts"), Key="signed/blob.txt", Body=b"signed!"
    )

    async def fn(client: apolo_sdk.Client) -> URL:
        bucket = await client.buckets.get("artifacts")
        return await client.buckets.make_signed_url(bucket.uri / "signed/blob.txt", 60)

    url = sdk(fn)
    with NO_PROXY.open(str(url), timeout=10) as resp:
        assert resp.read() == b"signed!"


def test_sdk_wrong_token_is_an_auth_error(
    platform: FakePlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # login with a bad token: GET /config answers the unauthenticated shape
    monkeypatch.setenv("APOLO_PASSED_CONFIG", platform.passed_config(token="bogus"))

    async def login() -> None:
        async with await Factory(tmp_path / "bad").get():
            pass

    with pytest.raises(apolo_sdk.AuthError, match="Cannot authorize user"):
        asyncio.run(login())

    # a client whose token is later revoked gets 401 -> AuthenticationError
    monkeypatch.setenv("APOLO_PASSED_CONFIG", platform.passed_config())
    good_token = platform.token

    async def revoked() -> None:
        async with await Factory(tmp_path / "good").get() as client:
            platform.token = "rotated-" + good_token
            try:
                await client.buckets.get("artifacts")
            finally:
                platform.token = good_token

    with pytest.raises(apolo_sdk.AuthenticationError):
        asyncio.run(revoked())


def test_fault_injection_and_expiring_credentials(
    sdk: Any, platform: FakePlatform, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.txt").write_text(str(i))

    async def fn(client: apolo_sdk.Client) -> dict[str, Any]:
        bucket = await client.buckets.get("artifacts")
        platform.fail_next("make_tmp_credentials", times=1, status=503)
        with pytest.raises(apolo_sdk.ServerNotAvailable):
            await client.buckets.request_tmp_credentials(bucket.id)
        creds = await client.buckets.request_tmp_credentials(bucket.id)  # fault used up
        platform.credentials_ttl = 60.0  # < botocore's 10 min mandatory refresh window
        try:
            platform.clear_calls()
            await client.buckets.upload_dir(URL(src.as_uri()), bucket.uri / "ttl")
            refreshes = len(platform.calls_matching("make_tmp_credentials"))
            expiring = await client.buckets.request_tmp_credentials(bucket.id)
        finally:
            platform.credentials_ttl = None
        return {"creds": creds, "refreshes": refreshes, "expiring": expiring}

    out = sdk(fn)
    assert "expiration" not in out["creds"].credentials
    assert {"expiration", "session_token"} <= out["expiring"].credentials.keys()
    # every S3 request re-fetched credentials (initial + refreshes)
    assert out["refreshes"] > 3
    print(f"\nmake_tmp_credentials calls for a 3-file upload with ttl=60s: {out['refreshes']}")


OBSTORE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import obstore as obs
    from obstore.store import S3Store
    c = json.loads(sys.argv[1])
    store = S3Store(
        c["bucket_name"], endpoint=c["endpoint_url"], access_key_id=c["access_key_id"],
        secret_access_key=c["secret_access_key"], region=c["region_name"],
        client_options={"allow_http": True}, virtual_hosted_style_request=False,
    )
    obs.put(store, "obstore/dir/hello.txt", b"hello obstore")
    obs.put(store, "obstore/dir/empty", b"")
    listed = sorted(m["path"] for m in obs.list(store, prefix="obstore/").collect())
    body = bytes(obs.get(store, "obstore/dir/hello.txt").bytes()).decode()
    print(json.dumps({"listed": listed, "body": body}), flush=True)
    sys.stdout.flush()
    os._exit(0)  # obstore 0.12 can abort during interpreter shutdown
    """
)


def test_obstore_with_handed_out_credentials(sdk: Any, seaweed: SeaweedS3, platform: FakePlatform) -> None:
    async def fn(client: apolo_sdk.Client) -> apolo_sdk.BucketCredentials:
        return await client.buckets.request_tmp_credentials("artifacts")

    creds = sdk(fn).credentials
    proc = subprocess.run(
        [sys.executable, "-c", OBSTORE_SCRIPT, json.dumps(dict(creds))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "listed": ["obstore/dir/empty", "obstore/dir/hello.txt"],
        "body": "hello obstore",
    }
    # the bytes really are in the platform bucket's backing S3 bucket
    got = seaweed.client().get_object(
        Bucket=platform.backing_bucket("artifacts"), Key="obstore/dir/hello.txt"
    )
    assert got["Body"].read() == b"hello obstore"


SUBPROCESS_SCRIPT = textwrap.dedent(
    """
    import asyncio, hashlib, json, sys
    from pathlib import Path
    from yarl import URL
    import apolo_sdk

    async def main():
        async with await apolo_sdk.Factory().get() as client:
            bucket = await client.buckets.get("artifacts")
            creds = await client.buckets.request_tmp_credentials(bucket.id)
            src = Path(sys.argv[1])
            await client.buckets.upload_dir(URL(src.as_uri()), bucket.uri / "sub/proc")
            job = await client.jobs.status(sys.argv[2])
            return {
                "uri": str(bucket.uri),
                "bucket_name": creds.credentials["bucket_name"],
                "tags": list(job.tags),
                "config_path": str(client.config._path),
            }

    print(json.dumps(asyncio.run(main())))
    """
)


def test_subprocess_with_only_passed_config(
    platform: FakePlatform, seaweed: SeaweedS3, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.pt").write_bytes(b"weights" * 1000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APOLO_", "NEURO_", "AWS_"))}
    env.update(platform.env(tmp_path / "apolo-home"))
    env["HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, str(src), "job-0a1b2c"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["uri"] == "blob://default/org/proj/artifacts"
    assert out["bucket_name"] == platform.backing_bucket("artifacts")
    assert out["tags"] == ["team:vision", "exp:42"]
    assert out["config_path"] == str(tmp_path / "apolo-home")
    body = seaweed.client().get_object(
        Bucket=platform.backing_bucket("artifacts"), Key="sub/proc/model.pt"
    )["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(b"weights" * 1000).hexdigest()
