"""An HTTP/1.1 fault-injecting proxy on loopback, for putting in front of the S3 server.

    with FaultProxy(seaweed.endpoint_url, seed=7, error_rate=0.2, reset_rate=0.1) as proxy:
        env["AWS_ENDPOINT_URL"] = proxy.url
        ...
        assert proxy.faults  # what was injected, in order

Requests are relayed byte for byte (the Host header too, so SigV4 signatures made for the
proxy's address still verify upstream), each on a fresh upstream connection. On a share of
requests it answers instead:

* ``500`` InternalError, ``503`` ServiceUnavailable or ``503`` SlowDown (S3 XML bodies), after
  reading and discarding the request body (the request never reaches the server);
* ``reset``: the client connection is reset (RST) right after the request head arrived;
* ``reset_mid``: the request IS forwarded and applied, the response head and part of its body
  are relayed, then the client connection is reset (so a retry repeats an applied request).

Faults are decided by ``random.Random(seed)`` in the order requests arrive, bounded by
``max_faults`` in total and by ``max_consecutive`` on the same request (method + target), so a
client that retries always gets through. ``bandwidth`` (bytes/s, shared by all connections)
slows bodies down, to make a transfer last long enough to interrupt it.

``only`` limits the faults to the requests it accepts (the others are relayed untouched).

``gate`` (a :class:`CredentialGate`) turns the proxy into the enforcement point of temporary
credentials: each issued credential has its own key id, secret, session token and expiry; a
request signed with an expired, unknown or wrong credential gets ``403`` (ExpiredToken,
InvalidAccessKeyId, SignatureDoesNotMatch); a valid one is re-signed with the server's real
key pair (without the session token, which the server would not know) and forwarded.

Runs an asyncio server in a background thread; bound to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote, unquote, urlsplit

__all__ = ["FaultProxy", "CredentialGate", "IssuedCredential"]

ERROR_BODIES = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
}
RESET_KINDS = ("reset", "reset_mid")
CHUNK = 64 << 10


def _xml_error(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>faultproxy</RequestId></Error>"
    ).encode()


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def without(self, name: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]

    def replace(self, name: str, value: str) -> None:
        for i, (k, _) in enumerate(self.headers):
            if k.lower() == name.lower():
                self.headers[i] = (k, value)
                return
        self.headers.append((name, value))

    def head_bytes(self) -> bytes:
        lines = [f"{self.method} {self.target} {self.version}"] + [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Reject(Exception):
    """Raised by a gate: answer the request with this S3 error instead of forwarding it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


# ---------------------------------------------------------------- temporary credentials


@dataclass
class IssuedCredential:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expires: float  # time.time()


@dataclass
class CredentialGate:
    """Temporary credentials that really expire: issued by a fake control plane, enforced by the proxy."""

    real_access_key_id: str
    real_secret_access_key: str
    ttl: float
    issued: dict[str, IssuedCredential] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)  # key id -> requests let through
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (code, key id)

    def issue(self) -> IssuedCredential:
        cred = IssuedCredential(
            access_key_id="TMP" + secrets.token_hex(8).upper(),
            secret_access_key=secrets.token_urlsafe(30),
            session_token="SESSION-" + secrets.token_urlsafe(24),
            expires=time.time() + self.ttl,
        )
        self.issued[cred.access_key_id] = cred
        return cred

    def __call__(self, req: Request) -> None:
        auth = req.header("authorization") or ""
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            raise Reject(403, "AccessDenied", "anonymous requests are not allowed here")
        fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
        akid, scope = fields["Credential"].split("/", 1)
        cred = self.issued.get(akid)
        if cred is None:
            self.rejected.append(("InvalidAccessKeyId", akid))
            raise Reject(403, "InvalidAccessKeyId", "The access key ID you provided does not exist in our records.")
        if time.time() >= cred.expires:
            self.rejected.append(("ExpiredToken", akid))
            raise Reject(400, "ExpiredToken", "The provided token has expired.")
        if req.header("x-amz-security-token") != cred.session_token:
            self.rejected.append(("InvalidToken", akid))
            raise Reject(400, "InvalidToken", "The provided token is malformed or otherwise invalid.")
        signed = fields["SignedHeaders"].split(";")
        if sigv4_signature(req, signed, scope, cred.secret_access_key) != fields["Signature"]:
            self.rejected.append(("SignatureDoesNotMatch", akid))
            raise Reject(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")
        # Re-sign for the server with its real key pair, without the session token.
        req.without("x-amz-security-token")
        signed = [h for h in signed if h != "x-amz-security-token"]
        signature = sigv4_signature(req, signed, scope, self.real_secret_access_key)
        req.replace(
            "Authorization",
            f"AWS4-HMAC-SHA256 Credential={self.real_access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={signature}",
        )
        self.accepted[akid] = self.accepted.get(akid, 0) + 1


def _aws_quote(s: str) -> str:
    return quote(s, safe="-_.~")


def sigv4_signature(req: Request, signed_headers: list[str], scope: str, secret: str) -> str:
    """The SigV4 signature of an S3 request (payload hash taken from x-amz-content-sha256)."""
    parts = urlsplit(req.target)
    pairs = []
    for item in parts.query.split("&") if parts.query else []:
        k, _, v = item.partition("=")
        pairs.append((_aws_quote(unquote(k)), _aws_quote(unquote(v))))
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted(pairs))
    values: dict[str, list[str]] = {}
    for k, v in req.headers:
        values.setdefault(k.lower(), []).append(" ".join(v.split()))
    canonical_headers = "".join(f"{h}:{','.join(values.get(h, []))}\n" for h in signed_headers)
    payload = req.header("x-amz-content-sha256") or "UNSIGNED-PAYLOAD"
    canonical = "\n".join([req.method, parts.path or "/", canonical_query, canonical_headers, ";".join(signed_headers), payload])
    amz_date = req.header("x-amz-date") or ""
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- the proxy


class LoopServer:
    """An asyncio server on 127.0.0.1, in its own thread (the proxies of this folder): subclasses
    handle each connection in `_handle`."""

    def __init__(self) -> None:
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._lock = threading.Lock()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def start(self):
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=type(self).__name__, daemon=True)
        self._thread.start()

        async def listen() -> int:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20)
            return self._server.sockets[0].getsockname()[1]

        self.port = asyncio.run_coroutine_threadsafe(listen(), loop).result(10)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        except Exception:  # noqa: BLE001 - best effort
            pass
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        loop.close()
        self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FaultProxy(LoopServer):
    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        error_rate: float = 0.0,
        reset_rate: float = 0.0,
        error_kinds: tuple[str, ...] = ("500", "503", "slowdown"),
        reset_kinds: tuple[str, ...] = RESET_KINDS,
        max_faults: int | None = None,
        max_consecutive: int = 2,
        bandwidth: float | None = None,
        gate: CredentialGate | None = None,
        only: Callable[[Request], bool] | None = None,
    ) -> None:
        u = urlsplit(upstream if "://" in upstream else f"http://{upstream}")
        self.upstream_host = u.hostname or "127.0.0.1"
        self.upstream_port = u.port or 80
        self.rng = random.Random(seed)
        self.error_rate = error_rate
        self.reset_rate = reset_rate
        self.error_kinds = tuple(error_kinds)
        self.reset_kinds = tuple(reset_kinds)
        self.max_faults = max_faults
        self.max_consecutive = max_consecutive
        self.bandwidth = bandwidth
        self.gate = gate
        super().__init__()
        self.only = only  # faults only for the requests this accepts
        self.faults: list[tuple[str, str, str]] = []  # (kind, method, target)
        self.log: list[tuple[str, str, int | None]] = []  # (method, target, status relayed)
        self._consecutive: dict[str, int] = {}
        self._next_send = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ introspection
    def count(self, method: str | None = None, status: int | tuple[int, ...] | None = None) -> int:
        """Requests relayed with this method and status (or any of these statuses)."""
        statuses = (status,) if isinstance(status, int) else status
        with self._lock:
            return sum(1 for m, _, s in self.log if (method is None or m == method) and (statuses is None or s in statuses))

    def fault_kinds(self) -> set[str]:
        with self._lock:
            return {k for k, _, _ in self.faults}

    # ------------------------------------------------------------ decisions
    def _decide(self, req: Request) -> str | None:
        if self.only is not None and not self.only(req):
            return None
        with self._lock:
            key = f"{req.method} {req.target}"
            r = self.rng.random()
            kind = None
            if r < self.error_rate and self.error_kinds:
                kind = self.rng.choice(self.error_kinds)
            elif r < self.error_rate + self.reset_rate and self.reset_kinds:
                kind = self.rng.choice(self.reset_kinds)
            if kind is not None and (
                (self.max_faults is not None and len(self.faults) >= self.max_faults)
                or self._consecutive.get(key, 0) >= self.max_consecutive
            ):
                kind = None
            if kind is None:
                self._consecutive.pop(key, None)
            else:
                self._consecutive[key] = self._consecutive.get(key, 0) + 1
                self.faults.append((kind, req.method, req.target))
            return kind

    async def _throttle(self, n: int) -> None:
        """Wait as long as n bytes take at the bandwidth. A response body's chunk waits before it
        is relayed, so that a download is over (for a client counting requests in flight) as soon
        as its last byte is sent; a request body's chunk after (the upstream server sees the
        request's head together with its first bytes, as a client sends them)."""
        if not self.bandwidth:
            return
        now = time.monotonic()
        self._next_send = max(self._next_send, now) + n / self.bandwidth
        delay = self._next_send - now
        if delay > 0:
            await asyncio.sleep(delay)

    # ------------------------------------------------------------ relaying
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                req = _parse_request(head)
                keep = await self._one(req, reader, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            _reset(writer)
        except asyncio.CancelledError:
            _reset(writer)
            raise
        finally:
            if not writer.is_closing():
                writer.close()

    async def _one(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Handle one request; return whether the client connection stays open."""
        kind = self._decide(req)
        if kind == "reset":
            self._record(req, None)
            _reset(writer)
            return False
        if kind in ERROR_BODIES:
            await _drain_body(req, reader)
            status, code, message = ERROR_BODIES[kind]
            await self._answer(writer, status, code, message)
            self._record(req, status)
            return False
        if self.gate is not None:
            try:
                self.gate(req)
            except Reject as e:
                await _drain_body(req, reader)
                await self._answer(writer, e.status, e.code, e.message)
                self._record(req, e.status)
                return False
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port, limit=1 << 20)
        except OSError:
            self._record(req, None)
            _reset(writer)  # the server is down: the client sees its connection die
            return False
        try:
            up_writer.write(req.head_bytes())
            expect = (req.header("expect") or "").lower() == "100-continue"
            if expect:
                interim = await up_reader.readuntil(b"\r\n\r\n")
                writer.write(interim)
                await writer.drain()
                if not interim.split(b" ", 2)[1].startswith(b"1"):
                    await _relay_body(_parse_response_headers(interim), up_reader, writer, self, req.method)
                    return False
            await _relay_request_body(req, reader, up_writer, self)
            while True:
                rhead = await up_reader.readuntil(b"\r\n\r\n")
                status = int(rhead.split(b" ", 2)[1])
                writer.write(rhead)
                if 100 <= status < 200:
                    await writer.drain()
                    continue
                break
            headers = _parse_response_headers(rhead)
            if kind == "reset_mid":
                await writer.drain()
                await _relay_body(headers, up_reader, writer, self, req.method, limit=CHUNK // 4)
                self._record(req, None)
                _reset(writer)
                return False
            complete = await _relay_body(headers, up_reader, writer, self, req.method)
            await writer.drain()
            self._record(req, status)
            conn = (headers.get("connection", "") + "," + (req.header("connection") or "")).lower()
            return complete and "close" not in conn
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            self._record(req, None)
            _reset(writer)
            return False
        finally:
            up_writer.close()

    def _record(self, req: Request, status: int | None) -> None:
        with self._lock:
            self.log.append((req.method, req.target, status))

    async def _answer(self, writer: asyncio.StreamWriter, status: int, code: str, message: str) -> None:
        body = _xml_error(code, message)
        reason = {400: "Bad Request", 403: "Forbidden", 500: "Internal Server Error", 501: "Not Implemented",
                  503: "Service Unavailable"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode() + body
        )
        await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


def _parse_request(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
    return Request(method, target, version, headers)


def _parse_response_headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    lines = head.decode("latin-1").split("\r\n")
    out[":status"] = lines[0].split(" ", 2)[1]
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            out[k.strip().lower()] = v.strip()
    return out


async def _drain_body(req: Request, reader: asyncio.StreamReader) -> None:
    if (req.header("expect") or "").lower() == "100-continue":
        return  # the client has not sent it yet; we answer and close
    await _relay_request_body(req, reader, None, None)


async def _relay_request_body(req: Request, reader, writer, proxy: FaultProxy | None) -> None:
    if "chunked" in (req.header("transfer-encoding") or "").lower():
        await _relay_chunked(reader, writer, proxy)
    else:
        await _relay_length(int(req.header("content-length") or 0), reader, writer, proxy)
    if writer is not None:
        await writer.drain()


async def _relay_length(n: int, reader, writer, proxy, limit: int | None = None, response: bool = False) -> bool:
    left = n if limit is None else min(n, limit)
    while left > 0:
        data = await reader.readexactly(min(CHUNK, left))
        left -= len(data)
        if proxy is not None and response:
            await proxy._throttle(len(data))
        if writer is not None:
            writer.write(data)
            await writer.drain()
        if proxy is not None and not response:
            await proxy._throttle(len(data))
    return limit is None or n <= limit


async def _relay_chunked(reader, writer, proxy, limit: int | None = None, response: bool = False) -> bool:
    sent = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";")[0].strip(), 16)
        if writer is not None:
            writer.write(line)
        if size == 0:
            while True:  # trailers, then the blank line
                trailer = await reader.readuntil(b"\r\n")
                if writer is not None:
                    writer.write(trailer)
                if trailer == b"\r\n":
                    break
            if writer is not None:
                await writer.drain()
            return True
        data = await reader.readexactly(size + 2)
        if proxy is not None and response:
            await proxy._throttle(size)
        if writer is not None:
            writer.write(data)
            await writer.drain()
        if proxy is not None and not response:
            await proxy._throttle(size)
        sent += size
        if limit is not None and sent >= limit:
            return False


async def _relay_body(headers: dict[str, str], reader, writer, proxy: FaultProxy, method: str, limit: int | None = None) -> bool:
    """Relay a response body; return False when the connection must close afterwards."""
    status = int(headers[":status"])
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return True
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _relay_chunked(reader, writer, proxy, limit, response=True)
    if "content-length" in headers:
        return await _relay_length(int(headers["content-length"]), reader, writer, proxy, limit, response=True)
    sent = 0
    while data := await reader.read(CHUNK):  # until the server closes
        await proxy._throttle(len(data))
        writer.write(data)
        await writer.drain()
        sent += len(data)
        if limit is not None and sent >= limit:
            break
    return False


def issuing_platform(seaweed: Any, gate: CredentialGate, proxy: FaultProxy) -> Any:
    """A FakePlatform whose make_tmp_credentials issues the gate's expiring credentials, pointed at the proxy."""
    from aiohttp import web

    from .platform import FakePlatform

    class IssuingPlatform(FakePlatform):
        issued: list[IssuedCredential] = []

        async def _h_tmp_creds(self, request: web.Request) -> web.Response:
            bucket = self._lookup(request)
            if bucket is None:
                return web.json_response({"error": "not found"}, status=404)
            cred = gate.issue()
            self.issued.append(cred)
            from datetime import datetime, timezone

            return web.json_response({
                "bucket_id": bucket.id, "provider": bucket.provider, "read_only": False,
                "credentials": {
                    "bucket_name": bucket.backing_name,
                    "access_key_id": cred.access_key_id,
                    "secret_access_key": cred.secret_access_key,
                    "session_token": cred.session_token,
                    "expiration": datetime.fromtimestamp(cred.expires, timezone.utc).isoformat(),
                    "endpoint_url": proxy.url,
                    "region_name": self.s3.region,
                },
            })

    plat = IssuingPlatform(seaweed)
    plat.issued = []
    return plat
