"""The README's promises: its CLI reference matches the commands, its first command runs, its
flow snippet and platform-registry commands do what it says, and every repository it (and the
docs, examples, action, package metadata and image labels) names is the original tool's."""

from __future__ import annotations

import re
import runpy
import shlex
import shutil
import subprocess
import sys
import warnings

import pytest

from tests.conftest import ROOT, clean_environ, tree_hashes
from tests.flow_dryrun import (
    PLATFORM_IMAGE,
    REPOSITORY,
    action_ref,
    make_workspace,
    project_version,
    release_tag,
    render_live_resolving,
    split_run_line,
)

README = ROOT / "README.md"


def test_cli_reference_is_current():
    gen = runpy.run_path(str(ROOT / "scripts" / "cli_reference.py"))
    readme = (ROOT / "README.md").read_text()
    assert gen["updated"](readme) == readme, "README CLI reference is stale: run `python scripts/cli_reference.py`"
    for command in ("upload", "download", "link", "verify", "ls", "diff"):
        assert f"### `wabucket {command}`" in readme


def test_readme_first_command_runs(tmp_path):
    """The install-and-run line, minus `pip install .` (the package is installed here), in a fresh folder."""
    first = next(line.strip() for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("    pip install ."))
    command = re.sub(r"^pip install \. && ", "", first)
    assert "wabucket" in command and "upload" in command and "download" in command
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples")
    proc = subprocess.run(["bash", "-c", command], cwd=work, env=clean_environ(tmp_path / "home"),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "::set-output name=artifact_alias::first" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "dataset/demo-data/first"
    assert tree_hashes(work / "dataset/demo-data/first") == tree_hashes(work / "examples/data")


def test_readme_live_snippet_renders(tmp_path):
    """The README's live.yml snippet as is, through apolo-flow's own parser and dry-run renderer:
    gh:neuro-inc/mlops-wandb-bucket-ref@vVERSION is served from this checkout's action.yml."""
    readme = README.read_text()
    snippet = next(block for block in re.findall(r"```yaml\n(.*?)```", readme, re.S) if block.startswith("kind: live"))
    assert set(re.findall(r"action:\s*(\S+)", snippet)) == {action_ref()}
    ws = make_workspace(tmp_path / "readme_ws", {"live": snippet})
    rendered, resolved = render_live_resolving(ws, "upload_model")
    assert resolved == [f"gh:neuro-inc/mlops-wandb-bucket-ref@v{project_version()}"]
    line = split_run_line(rendered)
    assert line.image == f"ghcr.io/neuro-inc/wabucketref:v{project_version()}"
    assert line.args == ["--bucket", "my-bucket", "--project-name", "readme_ws",
                         "upload", "/mnt/models/run-1", "-n", "my-model", "-t", "model"]
    assert line.option_values("volume") == ["storage:models:/mnt/models:ro"]

    # `image: image:wabucket`: the image from the project's platform registry.
    line = split_run_line(render_live_resolving(ws, "download_model")[0])
    assert line.image == PLATFORM_IMAGE == "image:wabucket"
    assert line.args == ["--bucket", "my-bucket", "--project-name", "readme_ws",
                         "download", "model", "my-model", "best", "-d", "/mnt/models/restored"]
    assert line.option_values("volume") == ["storage:models:/mnt/models:rw"]
    assert line.has_flag("pass-config")


def _bash_commands(text: str) -> list[list[str]]:
    """Every command of the ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words:
                commands.append(words)
    return commands


def _parse_cli(args: list[str], environ: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    """(command, group params, command params) as the real `wabucket` CLI parses ARGS in ENV."""
    from wabucketref.cli import cli as group

    for var in ("WABUCKET_BUCKET", "WANDB_PROJECT", "WANDB_ENTITY", "WABUCKET_CONCURRENCY"):
        monkeypatch.delenv(var, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    with group.make_context("wabucket", list(args)) as ctx:
        with warnings.catch_warnings():  # protected_args: deprecated in click 8.2+
            warnings.simplefilter("ignore", DeprecationWarning)
            remaining = [*getattr(ctx, "protected_args", []), *ctx.args]
        name, sub, rest = group.resolve_command(ctx, remaining)
        with sub.make_context(name, rest, parent=ctx) as sub_ctx:
            assert not sub_ctx.args, sub_ctx.args
            return name, dict(ctx.params), dict(sub_ctx.params)


@pytest.mark.parametrize("doc", ["README.md", "docs/usage-image-action.md"])
def test_platform_registry_image_commands(doc, monkeypatch):
    """`apolo image push ... image:wabucket` and `neuro run`/`apolo run image:wabucket -- download ...`:
    pushed under the name that is run, and the words after `--` mean, to the real CLI, what
    the text says (the job's --env values supply the W&B project and the bucket)."""
    commands = _bash_commands((ROOT / doc).read_text())
    pushes = [c for c in commands if c[:3] == ["apolo", "image", "push"] and len(c) == 5]
    assert {c[4] for c in pushes} >= {f"image:wabucket:{release_tag()}"} and all(
        c[3] == f"wabucket:{release_tag()}" for c in pushes
    ), pushes
    builds = [c for c in commands if c[:2] == ["docker", "build"] and f"wabucket:{release_tag()}" in c]
    assert builds and all(f"VERSION={project_version()}" in c for c in builds), builds
    runs = [c for c in commands if c[1:2] == ["run"] and PLATFORM_IMAGE in c]
    programs = {c[0] for c in runs}
    assert programs == ({"neuro", "apolo"} if doc == "README.md" else {"apolo"}), runs
    for words in runs:
        sep = words.index("--")
        assert words[sep - 1] == "image:wabucket", words  # the image, right before the command
        options = words[2 : sep - 1]
        environ = dict(v.split("=", 1) for k, v in zip(options, options[1:]) if k == "--env")
        assert environ.pop("WANDB_API_KEY") == "secret:wandb-token"
        assert "--pass-config" in options
        args = words[sep + 1 :]
        assert args[0] == "download", words  # `IMAGE -- download ...`: the entrypoint is the CLI
        command, group_params, params = _parse_cli(args, environ, monkeypatch)
        assert command == "download"
        assert group_params["project_name"] == "my-project"
        assert group_params["bucket"] == "my-bucket"
        assert params["dest"].startswith("/mnt/") and params["alias"]
        [volume] = [v for k, v in zip(options, options[1:]) if k == "--volume"]
        assert params["dest"].startswith(volume.split(":")[2] + "/"), (volume, params)
    if doc == "README.md":  # the two spellings are one command
        assert [c[1:] for c in runs if c[0] == "neuro"] == [c[1:] for c in runs if c[0] == "apolo"]


GITHUB_NAME = re.compile(r"(?:github\.com[/:]|gh:|github:)([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?)(?:\.git)?(?=[/@\s\"')>`]|$)", re.M)


def test_every_repository_named_is_the_original_tools():
    files = [README, ROOT / "action.yml", ROOT / "pyproject.toml", ROOT / "Dockerfile",
             *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").glob("*.*"))]
    found = {(f.relative_to(ROOT).as_posix(), name) for f in files for name in GITHUB_NAME.findall(f.read_text())}
    assert {name for _, name in found} == {REPOSITORY} == {"neuro-inc/mlops-wandb-bucket-ref"}, found
    # Nor any other spelling of the old name (the image keeps its registry name, as the original's did).
    old = {(f.name, m) for f in files for m in re.findall(r"(?<!ghcr\.io/)neuro-inc/wabucketref\b", f.read_text())}
    assert not old, old
    named = {path for path, _ in found}
    for must in ("README.md", "pyproject.toml", "Dockerfile", "docs/usage-image-action.md", "examples/live.yml"):
        assert must in named, (must, found)


def test_package_urls_and_image_labels_name_the_repository():
    from dockerfile_parse import DockerfileParser

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    url = "https://github.com/neuro-inc/mlops-wandb-bucket-ref"
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert urls["Source"] == urls["Homepage"] == url
    assert urls["Issues"] == url + "/issues"
    parser = DockerfileParser(fileobj=open(ROOT / "Dockerfile", "rb"))
    assert parser.labels["org.opencontainers.image.source"] == url
    assert parser.labels["org.opencontainers.image.url"] == url


def test_readme_git_install_line(tmp_path):
    """The README's `pip install "wabucketref @ git+https://github.com/neuro-inc/mlops-wandb-bucket-ref.git@TAG"`:
    the same requirement, with the host replaced by a local git repository of this checkout's
    package files tagged vVERSION, builds this package through pip (no network)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.version import Version

    setuptools = Version(md.version("setuptools"))
    assert setuptools >= Version("77"), f"setuptools {setuptools} < 77: install the [test] extra (pip install -e '.[test]')"
    lines = [c for c in _bash_commands(README.read_text()) if c[:2] == ["pip", "install"] and "git+" in " ".join(c)]
    assert [c[2:] for c in lines] == [[f"wabucketref @ git+https://github.com/{REPOSITORY}.git@{release_tag()}"]], lines
    req = Requirement(lines[0][2])
    assert req.name == "wabucketref" and req.url == f"git+https://github.com/{REPOSITORY}.git@{release_tag()}"

    repo = tmp_path / "mlops-wandb-bucket-ref"
    repo.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "wabucketref", repo / "wabucketref", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "release"], ["tag", release_tag()]):
        subprocess.run([*git, *cmd], cwd=repo, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    local = req.url.replace(f"https://github.com/{REPOSITORY}.git", repo.as_uri())
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path / "wheels"), f"wabucketref @ {local}"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**clean_environ(tmp_path / "home"), "PIP_CONFIG_FILE": "/dev/null"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = [p.name for p in (tmp_path / "wheels").iterdir()]
    assert wheels == [f"wabucketref-{project_version()}-py3-none-any.whl"], wheels
    import zipfile

    with zipfile.ZipFile(tmp_path / "wheels" / wheels[0]) as whl:
        metadata = whl.read(f"wabucketref-{project_version()}.dist-info/METADATA").decode()
    assert f"Project-URL: Source, https://github.com/{REPOSITORY}" in metadata, metadata[:2000]


# Programs the tests start, by the distribution that ships them.
TEST_PROGRAMS = ("weed", "moto_server", "rclone", "s5cmd", "hadolint")


def _declared_test_requirements() -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate():
            names.add(canonicalize_name(req.name))
    return names


def test_every_test_dependency_is_declared():
    """What tests/, benchmarks/, scripts/ and examples/ import, and the programs the tests start,
    come from distributions named in [project].dependencies or the [test] extra (not by accident
    through another package): .ci/run installs only `.[test]`."""
    import ast
    import importlib.metadata as md

    from packaging.utils import canonicalize_name

    declared = _declared_test_requirements()
    test_extra = (ROOT / "pyproject.toml").read_text()
    assert "\"tomli>=2; python_version < '3.11'\"" in test_extra  # tomllib's stand-in on 3.10
    local = {"tests", "wabucketref", "benchmarks", "scripts", "wabench"}  # wabench: benchmarks/wabench/
    modules: dict[str, set[str]] = {}
    for folder in ("tests", "benchmarks", "scripts", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    tops = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    tops = [node.module.split(".")[0]]
                else:
                    continue
                for top in tops:
                    if top == "tomli" and sys.version_info >= (3, 11):
                        continue  # only imported on 3.10 (checked below)
                    if top not in sys.stdlib_module_names and top not in local:
                        modules.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    assert {"wandb", "apolo_flow", "boto3", "azure", "yaml", "docker"} <= set(modules), sorted(modules)
    by_module = md.packages_distributions()
    missing = {}
    for module, where in sorted(modules.items()):
        dists = {canonicalize_name(d) for d in by_module.get(module, [])}
        assert dists, f"module {module} (imported by {sorted(where)}) is not installed"
        if not dists & declared:
            missing[module] = (sorted(dists), sorted(where))
    shipped = {}
    for dist in md.distributions():
        for f in dist.files or []:
            if f.parent.name == "bin" and f.name in TEST_PROGRAMS:
                shipped.setdefault(f.name, set()).add(canonicalize_name(dist.metadata["Name"]))
    assert set(shipped) == set(TEST_PROGRAMS), shipped
    for program, dists in shipped.items():
        if not dists & declared:
            missing[program] = (sorted(dists), ["a program the tests start"])
    assert not missing, f"declare these in pyproject's [test] extra: {missing}"
