"""The network between the tool and its servers, on loopback: TLS in front of a plain server, with a
certificate authority made for the test, and a forward HTTP proxy that records what it carried.

Usage::

    ca = CertificateAuthority(tmp_path / "ca")            # ca.pem: what REQUESTS_CA_BUNDLE / SSL_CERT_FILE name
    with TLSFront(seaweed.s3_port, *ca.issue(tmp_path / "srv")) as tls:
        ...  # https://127.0.0.1:{tls.port} is SeaweedFS behind a certificate for 127.0.0.1 and localhost

    with ForwardProxy() as proxy:                          # HTTP_PROXY=HTTPS_PROXY=proxy.url
        ...
        proxy.count("127.0.0.1:9000")                     # requests (or CONNECT tunnels) it carried there

Both run on their own event loop in a background thread and bind 127.0.0.1 only. The proxy
carries traffic to loopback hosts only; anything else is refused (403) and listed in
:attr:`ForwardProxy.refused`, so a test can also prove that nothing tried to leave the machine.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit

from tests.servers.faultproxy import LoopServer

__all__ = ["CertificateAuthority", "ForwardProxy", "TLSFront"]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
CHUNK = 1 << 16


class CertificateAuthority:
    """A private CA (EC P-256): `pem` is its certificate; `issue` signs server certificates."""

    def __init__(self, folder: Path, name: str = "wabucketref test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.folder / "ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[Path, Path]:
        """(certificate file, key file) of a server certificate for these hosts, signed by this CA."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        certfile, keyfile = folder / "server.pem", folder / "server.key"
        certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keyfile.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return certfile, keyfile


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass


async def _relay(a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    """Bytes both ways until either side closes; then both are closed."""
    tasks = [asyncio.ensure_future(_pipe(a[0], b[1])), asyncio.ensure_future(_pipe(b[0], a[1]))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (a[1], b[1]):
            try:
                w.close()
            except Exception:  # noqa: BLE001 - already gone
                pass


class TLSFront:
    """https://127.0.0.1:PORT in front of a plain TCP server on 127.0.0.1 (TLS terminated here).

    `handshakes` counts connections whose TLS handshake succeeded; `failed` those whose handshake
    did not (a client that does not trust the certificate). A thread per connection: the handshake
    is done before any byte is read, whatever the client sends first."""

    def __init__(self, upstream_port: int, certfile: Path, keyfile: Path) -> None:
        self.upstream_port = upstream_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile, keyfile)
        self.handshakes = 0
        self.failed = 0
        self.port: int | None = None
        self._sock: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> TLSFront:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, name="TLSFront", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with self._lock:
            live = list(self._open)
        for s in live:
            _shut(s)

    def __enter__(self) -> TLSFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            with self._lock:
                self.failed += 1
            conn.close()
            return
        with self._lock:
            self.handshakes += 1
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        except OSError:
            _shut(tls)
            return
        tls.settimeout(None)
        upstream.settimeout(None)
        with self._lock:
            self._open.update((tls, upstream))
        back = threading.Thread(target=_pump, args=(upstream, tls), daemon=True)
        back.start()
        _pump(tls, upstream)
        back.join()
        with self._lock:
            self._open.difference_update((tls, upstream))


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Bytes from src to dst until either side closes; then both are shut."""
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _shut(src)
        _shut(dst)


class ForwardProxy(LoopServer):
    """An HTTP forward proxy: CONNECT tunnels and absolute-form requests (`GET http://host:port/...`).

    `log` holds (method, "host:port") for every request it carried (a CONNECT tunnel counts once);
    each plain request gets a connection of its own upstream (`Connection: close`), so every
    request is seen. Hosts other than loopback are refused (403) and recorded in `refused`."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str]] = []
        self.refused: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, authority: str | None = None, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, a in self.log if (authority is None or a == authority) and (method is None or m == method))

    def authorities(self) -> set[str]:
        with self._lock:
            return {a for _, a in self.log}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            path = None
        else:
            u = urlsplit(target)
            host, port = u.hostname or "", str(u.port or 80)
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        host = host.strip("[]")
        authority = f"{host}:{port}"
        if host not in LOOPBACK:
            with self._lock:
                self.refused.append(authority)
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        try:
            upstream = await asyncio.open_connection("127.0.0.1" if host == "localhost" else host, int(port), limit=1 << 20)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        with self._lock:
            self.log.append((method, authority))
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            headers = [h for h in lines[1:] if h and h.split(":", 1)[0].strip().lower()
                       not in ("connection", "proxy-connection", "proxy-authorization", "keep-alive")]
            upstream[1].write(("\r\n".join([f"{method} {path} {version}", *headers, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
            await upstream[1].drain()
        await _relay((reader, writer), upstream)
