"""One classifier of failures: what a client's exception means and the one line a user sees.

Every client (obstore for the bytes, apolo_sdk for the platform, wandb, the OS) says what went
wrong in its own words; this module is the only place that reads them. A failure is

- transient: another try may succeed (a 5xx, a reset connection, a timeout);
- permanent: another try cannot fix it (a missing bucket or key, refused credentials, a full disk);
- usage: the user's input is wrong (exit status 2).

It also names what a server cannot do (answer a ranged GET with part of an object, take a
conditional write, copy an object inside a bucket), so that storage can learn it once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import NotFoundError, UsageError, WaBucketError

TRANSIENT, PERMANENT, USAGE = "transient", "permanent", "usage"

# S3 and Azure error codes that another try cannot fix (whatever exception type carries them)
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "InvalidBucketName", "ContainerNotFound"})
REFUSED_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",  # S3
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",  # Azure
    }
)
# What S3-compatible servers without If-None-Match/If-Match support answer a PUT carrying them.
CONDITIONAL_WRITE_REFUSALS = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest", "NotSupported"})
# What servers that cannot copy inside a bucket answer a copy (S3 CopyObject, Azure Copy Blob).
COPY_REFUSALS = frozenset({"NotImplemented", "NotSupported", "CannotVerifyCopySource", "FeatureNotSupported"})


@dataclass(frozen=True)
class Failure:
    kind: str  # TRANSIENT, PERMANENT or USAGE
    message: str  # one line, fit to show a user
    about: str = "request"  # "request"; "bucket": the whole bucket; "disk": the local disk; "platform"
    tries: int = 1  # how many times the client itself sent the request
    spent: bool = False  # the client retried it until its budget ran out: not to be tried again
    missing: bool = False  # what was asked for does not exist

    def error(self) -> WaBucketError:
        if self.kind == USAGE:
            return UsageError(self.message)
        return NotFoundError(self.message) if self.missing else WaBucketError(self.message)


@dataclass(frozen=True)
class Bucket:
    """What a bucket-wide message names: the bucket, its server, where its credentials came from."""

    uri: str
    endpoint: str = ""  # obstore hides URLs that carry a SAS token
    credentials_hint: str = ""


def classify(e: BaseException, bucket: Bucket | None = None) -> Failure:
    """What `e` means, and how to say it in one line (naming `bucket` for bucket-wide failures)."""
    if isinstance(e, UsageError):
        return Failure(USAGE, str(e))
    if isinstance(e, WaBucketError):
        return Failure(PERMANENT, str(e))
    found = _bucket_failure(e, bucket) if bucket is not None else None
    if found is not None:
        return found
    platform = _platform_failure(e)  # before the OS's errors: aiohttp's are OSErrors too
    if platform is not None:
        return platform
    if _is_missing(e) or _is_refused(e):
        return Failure(PERMANENT, one_line(e))
    if isinstance(e, OSError) and not isinstance(e, (ConnectionError, TimeoutError)):
        # the local disk (full, read-only, a folder in the way): another try cannot fix it
        path = e.filename2 or e.filename
        return Failure(PERMANENT, (e.strerror or str(e)) + (f": {path}" if path else ""), about="disk")
    if type(e).__module__.startswith("wandb") and type(e).__name__ == "UsageError":
        return Failure(USAGE, f"W&B: {first_line(e)}")
    return Failure(TRANSIENT, one_line(e), **_client_tries(e))


def _is_missing(e: BaseException) -> bool:
    from obstore.exceptions import NotFoundError

    return isinstance(e, (NotFoundError, FileNotFoundError))


def _is_refused(e: BaseException) -> bool:
    from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

    code = s3_error(e)[0]
    return isinstance(e, (PermissionDeniedError, UnauthenticatedError, PermissionError)) or code in (
        MISSING_BUCKET_CODES | REFUSED_CODES
    )


def _bucket_failure(e: BaseException, bucket: Bucket) -> Failure | None:
    """A failure of the whole bucket (missing, refused credentials, no connection), naming it."""
    text = str(e)
    code, message = s3_error(e)
    server = server_of(e) or bucket.endpoint or "the server"
    if code in MISSING_BUCKET_CODES:
        said = f"{bucket.uri}: no such bucket at {server} ({code})"
        return Failure(PERMANENT, said, about="bucket", missing=True)
    if code in REFUSED_CODES:
        hint = f" ({bucket.credentials_hint})" if bucket.credentials_hint else ""
        said = f"{bucket.uri}: {server} refused the request: {code}: {message}{hint}"
        return Failure(PERMANENT, said, about="bucket")
    if code is not None:
        return None
    if re.search(r"/latest/(api/token|meta-data/)", text):  # no keys: EC2 instance metadata was asked
        said = f"{bucket.uri}: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        return Failure(PERMANENT, said, about="bucket")
    if re.search(r"\bkind: Timeout\b", text):  # connected, then no answer in time
        took = re.search(r"elapsed: ([\d.]+)s", text)
        said = f"{bucket.uri}: no answer from {server}" + (f" in {float(took.group(1)):.0f} s" if took else "")
        return Failure(TRANSIENT, said, about="bucket", **_client_tries(e))
    if untrusted := re.search(r"InvalidCertificate\(\s*(\w+)", text):
        said = (
            f"{bucket.uri}: the certificate of {server} is not trusted ({untrusted.group(1)}): "
            "name its CA in SSL_CERT_FILE, REQUESTS_CA_BUNDLE or AWS_CA_BUNDLE"
        )
        return Failure(PERMANENT, said, about="bucket")
    if re.search(r"\bkind: Connect\b", text):  # obstore's debug text of a failed connect
        reasons = re.findall(r'message: "([^"]+)"', text)
        said = f"{bucket.uri}: cannot connect to {server}" + (f" ({reasons[-1]})" if reasons else "")
        return Failure(TRANSIENT, said, about="bucket", **_client_tries(e))
    return None


def _platform_failure(e: BaseException) -> Failure | None:
    """apolo_sdk's login failures and an unreachable control plane."""
    name, module = type(e).__name__, type(e).__module__
    if module.startswith("apolo_sdk") and name == "ConfigError":
        # its message may quote the passed config, which holds the token: never show that part
        passed = "passed config" in str(e).lower()
        reason = "the passed config (APOLO_PASSED_CONFIG) is malformed" if passed else str(e)
        said = f"no platform login ({reason}): run `apolo login`, or start the job with pass_config: true"
        return Failure(PERMANENT, said, about="platform")
    if isinstance(e, RuntimeError) and "project org" in str(e):
        # apolo_sdk, logging in from a passed config, refuses to change the org .apolo.toml sets
        said = (
            "no platform login: apolo_sdk cannot log in from the passed config while .apolo.toml sets "
            "[job] org-name; remove org-name from .apolo.toml in jobs started with pass_config"
        )
        return Failure(PERMANENT, said, about="platform")
    if module.startswith("aiohttp") and "Connect" in name:
        return Failure(TRANSIENT, f"cannot reach the platform ({e})", about="platform")
    return None


def _client_tries(e: BaseException) -> dict[str, Any]:
    """How many times obstore sent the request, and whether it stopped because its retry budget
    (max_retries, retry_timeout) ran out rather than because it does not retry such a failure
    (a POST whose connection broke)."""
    text = str(e)
    found = re.search(
        r" in ([\d.]+)(ns|µs|us|ms|s), after (\d+) retries, max_retries: (\d+), retry_timeout: ([\d.]+)s", text
    )
    if not found:
        return {"tries": 1, "spent": False}
    elapsed = float(found.group(1)) * _UNITS[found.group(2)]
    retries, most, window = int(found.group(3)), int(found.group(4)), float(found.group(5))
    return {"tries": retries + 1, "spent": retries >= most or (retries > 0 and elapsed >= window)}


_UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def ignores_ranges(e: BaseException) -> bool:
    """obstore's refusal of a 200 answer to a ranged GET (some servers, e.g. rclone's, send the
    whole object instead of a 206; HTTP allows a server to ignore Range)."""
    return "non-partial response" in str(e)


def refuses_conditional_writes(e: BaseException) -> bool:
    return s3_error(e)[0] in CONDITIONAL_WRITE_REFUSALS


def refuses_copies(e: BaseException) -> bool:
    """A server's refusal to copy an object inside a bucket (the caller sends the bytes instead)."""
    from obstore.exceptions import NotSupportedError

    return isinstance(e, (NotSupportedError, NotImplementedError)) or s3_error(e)[0] in COPY_REFUSALS


def s3_error(e: BaseException) -> tuple[str | None, str]:
    """The code and message of the S3 (or Azure) XML error body carried in an exception's text."""
    raw = str(e)
    code, message = re.search(r"<Code>([^<]*)</Code>", raw), re.search(r"<Message>([^<]*)</Message>", raw)
    # Azure appends RequestId and Time lines to the message
    return (code.group(1) if code else None), (message.group(1).strip().split("\n")[0] if message else "")


def failed_request(e: BaseException) -> tuple[str, str] | None:
    """(method, URL without its query) of the request an obstore error names."""
    found = re.search(r"Error performing (\w+) (https?://[^\s?]+)", str(e))
    return (found.group(1), found.group(2)) if found else None


def server_of(e: BaseException) -> str | None:
    """scheme://host[:port] of the request an obstore error names."""
    request = failed_request(e)
    found = re.match(r"https?://[^/]+", request[1]) if request else None
    return found.group(0) if found else None


def one_line(e: BaseException) -> str:
    """An error as one line: an S3 refusal's code, message and request; else the first line."""
    code, message = s3_error(e)
    if code:
        request = failed_request(e)
        where = f" ({request[0]} {request[1]})" if request else ""
        return ((f"{code}: {message}" if message else code) + where)[:300]
    return re.sub(r"\s*<\?xml[^>]*\?>", "", first_line(e))[:300]


def first_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(e).__name__
