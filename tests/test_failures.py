"""The failure classifier (wabucketref/failures.py) against real failures of the suite's servers.

Each case makes one real request that fails, through the tool's own storage classes, and checks
what the classifier makes of the client's exception: transient, permanent or usage, whether it
concerns the whole bucket, and the one line a user would see.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import timedelta

import pytest

from tests.servers.faultproxy import FaultProxy
from wabucketref.errors import UsageError, WaBucketError
from wabucketref.failures import PERMANENT, TRANSIENT, USAGE, classify, one_line
from wabucketref.retry import with_retries

S3_SERVERS = ["seaweed", "moto_s3", "rclone_s3"]
FAST = {"max_retries": 2, "retry_timeout": timedelta(seconds=5),
        "backoff": {"init_backoff": timedelta(milliseconds=10), "max_backoff": timedelta(milliseconds=50), "base": 2}}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _s3(server, bucket: str, *, endpoint: str | None = None, secret: str | None = None):
    from wabucketref.storage.s3 import S3Storage

    return S3Storage(
        bucket, uri=f"s3://{bucket}", endpoint=endpoint or server.endpoint_url, region="us-east-1",
        access_key_id=server.access_key_id, secret_access_key=secret or server.secret_access_key, retry_config=FAST,
    )


def _failure(storage, op):
    """(the classification with the bucket named, the exception) of one failing request."""
    async def run():
        try:
            await op(storage)
        except Exception as e:  # the failure under test
            return e
        raise AssertionError("the request did not fail")

    e = asyncio.run(run())
    return classify(e, storage.failures), e


def _get(key):
    return lambda st: st.get(key)


@pytest.mark.parametrize("name", S3_SERVERS)
def test_a_missing_bucket_is_permanent_and_named(request, name):
    server = request.getfixturevalue(name)
    failure, e = _failure(_s3(server, "no-such-bucket-here"), _get("k"))
    if name == "rclone_s3":  # rclone answers a GET in a missing bucket as a missing key
        assert failure.kind == PERMANENT and isinstance(e, FileNotFoundError), e
        return
    assert (failure.kind, failure.about, failure.missing) == (PERMANENT, "bucket", True), e
    assert failure.message.startswith("s3://no-such-bucket-here: no such bucket at http://127.0.0.1:"), failure
    assert "NoSuchBucket" in failure.message and "\n" not in failure.message


@pytest.mark.parametrize("name", ["seaweed", "rclone_s3"])  # moto accepts any key
def test_refused_credentials_are_permanent_and_say_where_keys_came_from(request, name):
    server = request.getfixturevalue(name)
    bucket = f"b-{name.replace('_', '-')}-creds"
    server.create_bucket(bucket)
    storage = _s3(server, bucket, secret="not-the-secret")
    failure, e = _failure(storage, _get("k"))
    assert (failure.kind, failure.about) == (PERMANENT, "bucket"), e
    assert f"s3://{bucket}: http://127.0.0.1:" in failure.message and "refused the request" in failure.message
    assert "SignatureDoesNotMatch" in failure.message or "AccessDenied" in failure.message, failure
    assert "not-the-secret" not in failure.message


@pytest.mark.parametrize("name", S3_SERVERS)
def test_a_missing_key_is_permanent_and_not_the_buckets_fault(request, name):
    server = request.getfixturevalue(name)
    bucket = f"b-{name.replace('_', '-')}-key"
    server.create_bucket(bucket)
    failure, e = _failure(_s3(server, bucket), _get("nope/missing.bin"))
    assert isinstance(e, FileNotFoundError), e
    assert (failure.kind, failure.about) == (PERMANENT, "request"), failure
    assert failure.message and "\n" not in failure.message


def test_a_refused_connection_is_transient_and_spends_the_clients_tries(seaweed):
    storage = _s3(seaweed, "anything", endpoint=f"http://127.0.0.1:{_closed_port()}")
    failure, e = _failure(storage, _get("k"))
    assert (failure.kind, failure.about) == (TRANSIENT, "bucket"), e
    assert failure.message.startswith("s3://anything: cannot connect to http://127.0.0.1:"), failure
    assert (failure.tries, failure.spent) == (3, True)  # obstore sent it 1 + max_retries times: budget spent


def test_server_errors_are_transient_and_retried_once_per_budget(seaweed):
    """503 SlowDown on every request: obstore tries 1 + max_retries times; with_retries sees the
    budget spent and fails at once with one line, instead of multiplying the tries."""
    seaweed.create_bucket("b-slow")
    with FaultProxy(seaweed.endpoint_url, error_rate=1.0, error_kinds=("slowdown",), max_consecutive=1000) as proxy:
        storage = _s3(seaweed, "b-slow", endpoint=proxy.url)
        failure, e = _failure(storage, _get("k"))
        assert (failure.kind, failure.tries, failure.spent) == (TRANSIENT, 3, True), (failure, e)
        assert failure.message.startswith("SlowDown"), failure

        async def fetch():
            return await with_retries(lambda: storage.get("k"), "download of k")

        with pytest.raises(WaBucketError, match=r"^download of k failed after 3 tries: SlowDown") as raised:
            asyncio.run(fetch())
        assert "\n" not in str(raised.value)
        # two budgets of three tries (the first request, then with_retries' one), not 4 x 3: the
        # proxy records a request after answering it, so the last may still be on its way
        deadline = time.monotonic() + 5
        while proxy.count("GET") < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.count("GET") == 6


def test_azure_failures_are_named_by_the_container(azurite):
    from tests.servers.azurite import ACCOUNT_KEY
    from wabucketref.storage.azure import AzureStorage

    missing = AzureStorage("no-such-container", uri="blob://cl/o/p/no-such-container", endpoint=azurite.endpoint,
                           account_key=ACCOUNT_KEY, retry_config=FAST)
    failure, e = _failure(missing, _get("k"))
    assert (failure.kind, failure.about, failure.missing) == (PERMANENT, "bucket", True), e
    assert "ContainerNotFound" in failure.message and failure.message.startswith("blob://cl/o/p/no-such-container:")

    azurite.create_container("c-creds")
    wrong = AzureStorage("c-creds", uri="blob://cl/o/p/c-creds", endpoint=azurite.endpoint,
                         account_key="d3Jvbmcta2V5LW5vdC10aGUtb25l", retry_config=FAST)
    failure, e = _failure(wrong, _get("k"))
    assert (failure.kind, failure.about) == (PERMANENT, "bucket"), e
    assert "AuthorizationFailure" in failure.message or "AuthenticationFailed" in failure.message, failure


def test_rclone_ignoring_ranges_is_learned_once(rclone_s3):
    """rclone serve s3 answers a ranged GET with the whole object: the storage learns it (one
    warning) and fetches whole objects from then on."""
    rclone_s3.create_bucket("b-ranges")
    storage = _s3(rclone_s3, "b-ranges")
    data = b"0123456789" * 1000

    async def run():
        await storage.put("obj", data)
        first = bytes(await storage.get("obj", size=len(data)))
        learned = storage.capabilities.ranged_gets
        second = bytes(await storage.get("obj", size=len(data)))
        return first, learned, second

    first, learned, second = asyncio.run(run())
    assert first == data == second
    assert learned is False and storage.capabilities.ranged_gets is False


@pytest.mark.parametrize("e, kind, about, message", [
    (UsageError("bad alias"), USAGE, "request", "bad alias"),
    (WaBucketError("already said"), PERMANENT, "request", "already said"),
    (OSError(28, "No space left on device", "/dl/f.bin"), PERMANENT, "disk", "No space left on device: /dl/f.bin"),
    (PermissionError(13, "Permission denied", "/dl"), PERMANENT, "request", "[Errno 13] Permission denied: '/dl'"),
    (ConnectionResetError(104, "Connection reset by peer"), TRANSIENT, "request", "[Errno 104] Connection reset by peer"),
    # obstore's text of a request it gave up on (captured from a server answering 503 to everything)
    (Exception("Generic S3 error: Error performing GET http://127.0.0.1:18999/b/x in 33.5ms, after 6 retries, "
               "max_retries: 6, retry_timeout: 120s  - Server returned non-2xx status code: 503 Service "
               "Unavailable: <Error><Code>SlowDown</Code><Message>slow</Message></Error>\n\nDebug source:\n..."),
     TRANSIENT, "request", "SlowDown: slow (GET http://127.0.0.1:18999/b/x)"),
])
def test_classification_table(e, kind, about, message):
    failure = classify(e)
    assert (failure.kind, failure.about, failure.message) == (kind, about, message)


@pytest.mark.parametrize("text, tries, spent", [
    # obstore gave up on a POST whose connection broke (it does not retry those): not its budget
    ("Generic S3 error: Error performing POST http://127.0.0.1:1/b?delete in 501.6ms, after 1 retries, "
     "max_retries: 10, retry_timeout: 120s  - HTTP error: error sending request", 2, False),
    ("Generic S3 error: Error performing GET http://127.0.0.1:1/b/k in 1.7s, after 10 retries, "
     "max_retries: 10, retry_timeout: 120s  - HTTP error: error sending request", 11, True),
    ("Generic S3 error: Error performing GET http://127.0.0.1:1/b/k in 121.2s, after 4 retries, "
     "max_retries: 10, retry_timeout: 120s  - Server returned non-2xx status code: 503", 5, True),
    ("Generic S3 error: Error performing GET http://127.0.0.1:1/b/k in 950µs - Server returned 500", 1, False),
])
def test_the_clients_own_tries_count_against_the_budget(text, tries, spent):
    failure = classify(Exception(text))
    assert (failure.kind, failure.tries, failure.spent) == (TRANSIENT, tries, spent)


def test_wandb_and_platform_exceptions_are_classified_by_their_own_types():
    import apolo_sdk
    import wandb

    assert classify(wandb.errors.UsageError("project name too long")).kind == USAGE
    secret = "eyJ0b2tlbiI6InNlY3JldC10b2tlbiJ9"
    failure = classify(apolo_sdk.ConfigError(f"Malformed passed config: {secret}"))
    assert failure.kind == PERMANENT and secret not in failure.message
    assert "passed config (APOLO_PASSED_CONFIG) is malformed" in failure.message
    assert one_line(Exception("\n  first real line\nsecond")) == "first real line"
