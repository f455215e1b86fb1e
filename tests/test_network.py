"""The network a user's machine puts between the tool and its servers, all on loopback: an HTTPS
S3 endpoint signed by a private CA, HTTP(S)_PROXY and NO_PROXY, the choice among the S3 endpoint
variables, and cloud metadata endpoints that must never be asked outside loopback."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import (
    Env,
    closed_port,
    make_tree,
    metadata_environ,
    one_error_line,
    online,
    tree_hashes,
    use_backend,
)
from tests.servers.faultproxy import FaultProxy
from tests.servers.netproxy import CertificateAuthority, ForwardProxy, TLSFront

ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT_URL")
# Where clients look for trusted CAs besides the system store (this machine's environment sets several)
CA_VARS = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE")
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


def endpoint(env: Env, url: str | None) -> Env:
    """Point every S3 endpoint variable at url (None: unset them all)."""
    for var in ENDPOINT_VARS:
        env.vars.pop(var, None)
        if url is not None:
            env.vars[var] = url
    return env


def trust(env: Env, ca_pem: Path | None, *names: str) -> Env:
    """Only these variables name a CA file (ca_pem); none does when names is empty."""
    for var in CA_VARS:
        env.vars.pop(var, None)
    for var in names:
        env.vars[var] = str(ca_pem)
    return env


@pytest.fixture
def s3_env(env, request, tmp_path) -> Env:
    return use_backend(env, "s3", request, tmp_path)


# ------------------------------------------------------------------ HTTPS with a private CA


@pytest.fixture
def tls_s3(seaweed, tmp_path):
    """SeaweedFS behind TLS, with a certificate for 127.0.0.1 and localhost from a CA made here."""
    ca = CertificateAuthority(tmp_path / "ca")
    with TLSFront(seaweed.s3_port, *ca.issue(tmp_path / "server")) as tls:
        tls.ca = ca
        yield tls


@pytest.mark.parametrize("ca_var", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "AWS_CA_BUNDLE"])
def test_https_endpoint_with_a_private_ca(s3_env, tls_s3, tmp_path, ca_var):
    """An s3:// bucket behind https:// whose certificate a private CA signed: with the CA named in
    the environment every command works, over TLS; the bytes are the source's."""
    env = trust(endpoint(s3_env, tls_s3.url), tls_s3.ca.pem, ca_var)
    src = make_tree(tmp_path / "src")
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "tls1", check=True)
    env.wabucket("verify", "dataset", "ds", "tls1", check=True)
    env.wabucket("download", "dataset", "ds", "tls1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    assert tls_s3.handshakes >= 3 and tls_s3.failed == 0  # every command went through TLS, and trusted it


def test_https_endpoint_without_the_ca_fails_in_one_line(s3_env, tls_s3, tmp_path):
    """The same endpoint without the CA: the certificate is not trusted; one clear line, exit 1,
    nothing written (the TLS front never completed a handshake)."""
    env = trust(endpoint(s3_env, tls_s3.url), None)
    src = make_tree(tmp_path / "src", big=False)
    proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "tls2", timeout=120)
    assert proc.returncode == 1, proc.stderr
    one_error_line(proc, tls_s3.url)
    assert proc.stdout == ""
    assert tls_s3.handshakes == 0 and tls_s3.failed >= 1
    assert env.extra["s3"].list_keys(env.extra["s3_bucket"], "") == []


def test_https_endpoint_without_the_ca_says_the_certificate_is_not_trusted(s3_env, tls_s3, tmp_path):
    env = trust(endpoint(s3_env, tls_s3.url), None)
    src = make_tree(tmp_path / "src", big=False)
    proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "tls3", timeout=120)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc, tls_s3.url)
    assert "certificate" in line.lower() and "not trusted" in line and "SSL_CERT_FILE" in line, line


@pytest.mark.parametrize("ca_vars", [
    pytest.param(("SSL_CERT_FILE",), id="SSL_CERT_FILE"),
    pytest.param(("REQUESTS_CA_BUNDLE",), id="REQUESTS_CA_BUNDLE"),
    pytest.param(("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"), id="both"),
])
def test_wandb_behind_https_with_a_private_ca(env, wandb_server, tmp_path, ca_vars):
    """W&B (a server of one's own) at an https:// URL whose certificate a private CA signed: with
    the CA named, the tool's check, wandb's service and its Python API all trust it; the upload is
    registered and the download resolves it."""
    env = online(env, wandb_server)
    ca = CertificateAuthority(tmp_path / "ca")
    with TLSFront(wandb_server.port, *ca.issue(tmp_path / "server")) as tls:
        env.vars["WANDB_BASE_URL"] = tls.url
        trust(env, ca.pem, *ca_vars)
        src = make_tree(tmp_path / "src", big=False)
        env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "w1", check=True, timeout=180)
        env.wabucket("verify", "dataset", "ds", "w1", check=True, timeout=180)
        env.wabucket("download", "dataset", "ds", "w1", "-d", str(tmp_path / "dl"), check=True, timeout=180)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    [version] = wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds")
    assert "w1" in version["aliases"] and len(version["used_by"]) == 1
    assert tls.handshakes >= 3 and tls.failed == 0


# ------------------------------------------------------------------ HTTP(S)_PROXY and NO_PROXY


def proxied(env: Env, proxy: ForwardProxy, no_proxy: str | None) -> Env:
    for var in PROXY_VARS:
        env.vars.pop(var, None)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.vars[var] = proxy.url
    if no_proxy is not None:
        env.vars["NO_PROXY"] = env.vars["no_proxy"] = no_proxy
    return env


@pytest.mark.parametrize("no_proxy", ["none", "s3", "wandb"])
def test_proxy_variables_are_honoured(s3_env, seaweed, wandb_server, tmp_path, no_proxy):
    """README: HTTP(S)_PROXY and NO_PROXY are honoured by W&B and the storage clients. The S3 server
    is named `localhost` and W&B `127.0.0.1`, so NO_PROXY can cover one and not the other. A
    counting server in front of SeaweedFS sees every S3 request: through the proxy, all of them
    arrive by it; with the S3 host in NO_PROXY, none does. W&B's traffic (the tool's own check
    and wandb's Python API) follows the same rule. (wandb-core, wandb's Go service, never sends
    loopback addresses through a proxy, by Go's rule: its requests here go direct whatever is set.)"""
    env = online(s3_env, wandb_server)
    src = make_tree(tmp_path / "src", big=False)
    with FaultProxy(seaweed.endpoint_url) as s3_counter, ForwardProxy() as proxy:
        s3_host = f"localhost:{s3_counter.port}"
        wandb_host = wandb_server.base_url.split("//", 1)[1]
        endpoint(env, f"http://{s3_host}")
        proxied(env, proxy, {"none": None, "s3": "localhost", "wandb": "127.0.0.1"}[no_proxy])
        env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "px", check=True)
        env.wabucket("verify", "dataset", "ds", "px", check=True)
        env.wabucket("download", "dataset", "ds", "px", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    s3_requests = len(s3_counter.log)
    assert s3_requests > 0
    assert proxy.refused == []
    assert proxy.authorities() <= {s3_host, wandb_host}, proxy.log
    if no_proxy == "s3":
        assert proxy.count(s3_host) == 0
    else:
        assert proxy.count(s3_host) == s3_requests, (proxy.count(s3_host), s3_requests)  # every one of them
    if no_proxy == "wandb":
        assert proxy.count(wandb_host) == 0
    else:
        assert proxy.count(wandb_host) > 0


# ------------------------------------------------------------------ which S3 endpoint variable wins


@pytest.mark.parametrize("given", [ENDPOINT_VARS, ENDPOINT_VARS[1:], ENDPOINT_VARS[2:]],
                         ids=["all three", "URL and W&B's", "W&B's only"])
def test_s3_endpoint_variables_in_order(s3_env, seaweed, tmp_path, given):
    """README: the endpoint comes from AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or W&B's
    AWS_S3_ENDPOINT_URL, in that order. Each variable names its own server in front of the S3
    server: only the first one set is spoken to, by every command."""
    env = s3_env
    env.vars["WANDB_MODE"] = "disabled"
    src = make_tree(tmp_path / "src", big=False)
    with FaultProxy(seaweed.endpoint_url) as a, FaultProxy(seaweed.endpoint_url) as b, FaultProxy(seaweed.endpoint_url) as c:
        servers = dict(zip(ENDPOINT_VARS, (a, b, c)))
        endpoint(env, None)
        for var in given:
            env.vars[var] = servers[var].url
        env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "e1", check=True)
        env.wabucket("download", "dataset", "ds", "e1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    used = {var for var, server in servers.items() if server.log}
    assert used == {given[0]}, {var: len(server.log) for var, server in servers.items()}


# ------------------------------------------------------------------ cloud metadata endpoints stay on loopback


def test_metadata_endpoints_point_at_a_closed_loopback_port():
    """Every test's environment, and pytest's own, sends the credential chains' metadata requests
    to a loopback port where nothing listens."""
    port = closed_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    for key, value in metadata_environ().items():
        assert os.environ[key] == value
        if key != "AWS_EC2_METADATA_DISABLED":
            assert value.removeprefix("http://").startswith(f"127.0.0.1:{port}"), (key, value)


def test_s3_without_keys_fails_fast_with_our_message(env, seaweed, tmp_path):
    """No AWS keys: obstore asks the EC2 instance metadata service, here the closed loopback port,
    which refuses at once. The command fails in seconds (a metadata address that does not answer
    would cost obstore's connect timeouts, retried for up to 2 minutes) with the tool's own line."""
    assert "AWS_ACCESS_KEY_ID" not in env.vars and env.vars["AWS_METADATA_ENDPOINT"] == f"http://127.0.0.1:{closed_port()}"
    env.vars.update(WANDB_MODE="disabled", AWS_ENDPOINT_URL=seaweed.endpoint_url)
    src = make_tree(tmp_path / "src", big=False)
    t0 = time.monotonic()
    proc = env.run("--bucket", "s3://nokeys/p", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "k1", timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    one_error_line(proc, "s3://nokeys: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    assert took < 30, took


class _Listener:
    """A loopback TCP server that records the first line of each request and closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.lines.append(conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
                except OSError:
                    pass


def test_the_metadata_variable_is_the_one_obstore_asks(env, seaweed, tmp_path):
    """The proof above holds only if obstore reads AWS_METADATA_ENDPOINT: pointed at a listening
    loopback server instead, it is asked there (IMDSv2's token request) and the line is the same."""
    listener = _Listener()
    try:
        env.vars.update(WANDB_MODE="disabled", AWS_ENDPOINT_URL=seaweed.endpoint_url,
                        AWS_METADATA_ENDPOINT=f"http://127.0.0.1:{listener.port}")
        src = make_tree(tmp_path / "src", big=False)
        proc = env.run("--bucket", "s3://nokeys/p", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "k1", timeout=120)
    finally:
        listener.sock.close()
    assert proc.returncode == 1, proc.stderr
    one_error_line(proc, "no credentials found")
    assert any(line.startswith("PUT /latest/api/token ") for line in listener.lines), listener.lines


def test_in_process_clients_use_the_loopback_endpoints(monkeypatch, seaweed):
    """Clients inside pytest's process: boto3 is told not to ask the instance metadata service (and
    where it would be: the closed port), so without keys it fails at once; google-auth's metadata
    server is the closed port."""
    import boto3
    import botocore.exceptions
    import botocore.session
    from botocore.config import Config

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    session = botocore.session.Session()
    assert session.get_config_variable("ec2_metadata_service_endpoint") == f"http://127.0.0.1:{closed_port()}/"
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    assert session.get_credentials() is None
    client = boto3.session.Session().client("s3", endpoint_url=seaweed.endpoint_url, region_name="us-east-1",
                                            config=Config(retries={"max_attempts": 1}))
    with pytest.raises(botocore.exceptions.NoCredentialsError):
        client.list_buckets()

    from google.auth.compute_engine import _metadata

    for root in (_metadata._get_metadata_root(False), _metadata._get_metadata_ip_root(False)):
        assert root.startswith(f"http://127.0.0.1:{closed_port()}"), root


# ------------------------------------------------------------------ HTTP(S)_PROXY with a platform bucket


def _platform_through_a_proxy(env: Env, seaweed, tmp_path):
    """Upload and download a platform bucket with HTTP(S)_PROXY set (no NO_PROXY); returns
    (forward proxy, S3 request counter, platform), all stopped."""
    from tests.test_claims import ProxiedPlatform

    src = make_tree(tmp_path / "src", big=False)
    with FaultProxy(seaweed.endpoint_url) as s3_counter, ForwardProxy() as proxy:
        plat = ProxiedPlatform(seaweed)
        plat.s3_url = s3_counter.url
        plat.start()
        try:
            env.bucket = f"b-{os.urandom(5).hex()}"
            plat.add_bucket(env.bucket)
            env.vars.update(plat.env(config_dir=tmp_path / "apolo-config"))
            env.vars.update(WANDB_MODE="disabled", WABUCKET_CACHE="0")
            proxied(env, proxy, None)
            plat.clear_calls()
            env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "pp", check=True)
            env.wabucket("download", "dataset", "ds", "pp", "-d", str(tmp_path / "dl"), check=True)
        finally:
            plat.stop()
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    assert proxy.refused == []
    return proxy, s3_counter, plat


def test_proxy_carries_a_platform_buckets_bytes(env, seaweed, tmp_path):
    """A platform bucket's bytes (obstore, with the platform's temporary credentials) go through
    HTTP(S)_PROXY like an s3:// bucket's: every request the S3 server saw came by the proxy."""
    proxy, s3_counter, _ = _platform_through_a_proxy(env, seaweed, tmp_path)
    s3_host = s3_counter.url.split("//", 1)[1]
    assert len(s3_counter.log) > 0 and proxy.count(s3_host) == len(s3_counter.log)


def test_the_platform_control_plane_goes_direct(env, seaweed, tmp_path):
    """README: a platform bucket's lookup and credential requests do not follow HTTP(S)_PROXY
    (apolo_sdk makes its aiohttp session without trust_env). If apolo_sdk starts honouring the
    proxy, this fails: then the README's limitation goes."""
    proxy, _, plat = _platform_through_a_proxy(env, seaweed, tmp_path)
    plat_host = plat.base_url.split("//", 1)[1]
    assert len(plat.requests) > 0
    assert proxy.count(plat_host) == 0, (proxy.count(plat_host), len(plat.requests))
