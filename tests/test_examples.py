"""examples/live.yml and examples/batch.yml: parsed, validated and rendered offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.flow_dryrun import (
    PLATFORM_IMAGE,
    ROOT,
    action_ref,
    load_batch,
    make_workspace,
    project_version,
    render_batch_task,
    render_live,
    render_live_resolving,
    split_run_line,
)

EXAMPLES = ROOT / "examples"
LIVE = EXAMPLES / "live.yml"
BATCH = EXAMPLES / "batch.yml"
IMAGE = f"ghcr.io/neuro-inc/wabucketref:v{project_version()}"


def _command_index(args: list[str], command: str) -> int:
    """Index of the CLI command word (not a value like `--job-type download`)."""
    for i, word in enumerate(args):
        if word == command and (i == 0 or not args[i - 1].startswith("--")):
            return i
    raise AssertionError(f"{command} not in {args}")


@pytest.fixture(scope="module")
def live_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The example as is: its gh:neuro-inc/mlops-wandb-bucket-ref@vVERSION references are served
    # from this checkout's action.yml (flow_dryrun), any other reference fails to render.
    return make_workspace(tmp_path_factory.mktemp("ex") / "example_ws", {"live": LIVE.read_text()})


def test_live_example_parses_as_is() -> None:
    from apolo_flow import ast
    from apolo_flow.parser import parse_live

    flow = parse_live(ROOT, LIVE)
    assert isinstance(flow, ast.LiveFlow)
    assert {"upload_model", "download_model", "download_registry_image"} <= set(flow.jobs)


def test_live_example_uses_this_release() -> None:
    refs = re.findall(r"action:\s*(\S+)", LIVE.read_text())
    assert len(refs) == 5
    assert set(refs) == {f"gh:neuro-inc/mlops-wandb-bucket-ref@v{project_version()}"} == {action_ref()}, refs


def test_live_example_upload(live_ws: Path) -> None:
    rendered, resolved = render_live_resolving(live_ws, "upload_model")
    assert resolved == [action_ref()]
    line = split_run_line(rendered)
    assert line.image == IMAGE
    assert line.args == [
        "--project-name", "example_ws",
        "upload", "/mnt/models/run-1", "-n", "my-model", "-t", "model",
    ]
    [volume] = line.option_values("volume")
    assert volume.endswith(":/mnt/models:ro")
    assert line.option_values("env") == ["WANDB_API_KEY=secret:wandb-token"]
    assert line.has_flag("pass-config")


def test_live_example_upload_best(live_ws: Path) -> None:
    line = split_run_line(render_live(live_ws, "upload_best"))
    assert line.args == [
        "--bucket", "my-bucket", "--project-name", "my-wandb-project", "--entity", "my-team",
        "upload", "/mnt/models/run-1", "-n", "my-model", "-t", "model", "-a", "best",
        "-s", "best", "-m", "epoch=12", "-m", "val_loss=0.031",
    ]
    assert line.option_values("preset") == ["cpu-small"]


def test_live_example_download(live_ws: Path) -> None:
    line = split_run_line(render_live(live_ws, "download_model"))
    assert line.args == [
        "--bucket", "my-bucket", "--project-name", "my-wandb-project", "--entity", "my-team",
        "download", "model", "my-model", "best", "-d", "/mnt/models/restored",
    ]
    [volume] = line.option_values("volume")
    assert volume.endswith(":/mnt/models:rw")


def test_live_example_platform_registry_image(live_ws: Path) -> None:
    line = split_run_line(render_live(live_ws, "download_registry_image"))
    assert line.image == PLATFORM_IMAGE == "image:wabucket"
    assert line.args == [
        "--bucket", "my-bucket", "--project-name", "my-wandb-project",
        "download", "model", "my-model", "best", "-d", "/mnt/models/restored",
    ]
    assert line.has_flag("pass-config")
    assert line.option_values("env") == ["WANDB_API_KEY=secret:wandb-token"]
    [volume] = line.option_values("volume")
    assert volume.endswith(":/mnt/models:rw")


def test_live_example_link(live_ws: Path) -> None:
    line = split_run_line(render_live(live_ws, "link_dataset"))
    assert line.args[:4] == ["--project-name", "my-wandb-project", "link",
                             "blob://my-cluster/my-org/my-project/my-bucket/datasets/imagenet-subset"]


# ---- batch ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(
        tmp_path_factory.mktemp("ex") / "batch_ws", {"batch": BATCH.read_text()}
    )


def test_batch_example_parses_and_validates(batch_ws: Path) -> None:
    from apolo_flow import ast
    from apolo_flow.parser import parse_batch

    assert isinstance(parse_batch(ROOT, BATCH), ast.BatchFlow)
    flow = load_batch(batch_ws, "batch")  # cycles, local deps, expressions
    assert dict(flow.graph) == {"upload": {}, "download": {"upload": ast.NeedsLevel.COMPLETED}}


def test_batch_example_upload_task(batch_ws: Path) -> None:
    task = render_batch_task(batch_ws, "batch", "upload")
    assert task.image == IMAGE
    assert task.pass_config
    assert task.env["WANDB_API_KEY"] == "secret:wandb-token"
    args = task.cmd.split()
    assert args[_command_index(args, "upload") + 1] == "/mnt/data/model"
    assert args[args.index("-n") + 1] == "my-model"
    assert args[args.index("-t") + 1] == "model"
    assert any(v.endswith(":/mnt/data:ro") for v in task.volumes)


def test_batch_example_passes_upload_outputs_to_download(batch_ws: Path) -> None:
    # What the upload task's stdout would give (see `wabucket upload`'s ::set-output lines).
    outputs = {"artifact_name": "my-model", "artifact_type": "model", "artifact_alias": "v7"}
    task = render_batch_task(batch_ws, "batch", "download", {"upload": outputs})
    args = task.cmd.split()
    i = _command_index(args, "download")
    assert args[i + 1 : i + 4] == ["model", "my-model", "v7"]
    assert args[args.index("-d") + 1] == "/mnt/data/restored/v7"
    assert any(v.endswith(":/mnt/data:rw") for v in task.volumes)


def test_batch_example_uses_this_release() -> None:
    refs = re.findall(r"ghcr\.io/neuro-inc/wabucketref:\S+", BATCH.read_text())
    assert refs and set(refs) == {IMAGE}, refs


def test_batch_validation_catches_bad_needs(tmp_path: Path) -> None:
    from apolo_flow.expr import EvalError, MultiError

    text = BATCH.read_text().replace(
        "needs.upload.outputs.artifact_alias }}\n", "needs.uplaod.outputs.artifact_alias }}\n", 1
    )
    assert text != BATCH.read_text()
    ws = make_workspace(tmp_path / "bad_ws", {"batch": text})
    with pytest.raises(MultiError) as exc_info:
        load_batch(ws, "batch")
    errors = exc_info.value.errors
    assert any(
        isinstance(e, EvalError) and "Task 'uplaod' is not available under needs context" in str(e)
        for e in errors
    ), exc_info.value


def test_release_version_is_consistent() -> None:
    """The image tags / action refs appear in several files: all must be this release."""
    version = project_version()
    files = [ROOT / "action.yml", LIVE, BATCH, ROOT / "docs" / "usage-image-action.md", ROOT / "README.md"]
    found = []
    tag = r"(?:wabucketref:|mlops-wandb-bucket-ref(?:\.git)?@|wabucket:)v([0-9][0-9A-Za-z.+-]*[0-9A-Za-z])"
    for f in files:
        found += [(f.name, v) for v in re.findall(tag, f.read_text())]
    assert {name for name, _ in found} == {f.name for f in files}, found
    assert {v for _, v in found} == {version}, found
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^ARG VERSION={re.escape(version)}$", dockerfile, re.M)


def test_train_example_runs_offline(env) -> None:
    """examples/train.py against the embedded default: a local folder bucket, W&B offline."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "train.py"), "--bucket", env.bucket, "--project", "proj"],
        env={**env.vars, "TMPDIR": str(env.cwd)}, cwd=env.cwd, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(result["slope"] - 3) < 0.1 and abs(result["intercept"] - 2) < 0.2
    bucket = Path(env.bucket)
    assert list(bucket.glob("dataset/toy-regression/*/train.csv"))
    assert list(bucket.glob("model/my-model/*/model.json"))
    # The dataset came back through the bucket (not from the generated temp folder).
    assert (Path(result["dataset_folder"]) / "train.csv").exists()


# ---- scale out: parts, commit, shards ----------------------------------------------------

SCALEOUT = EXAMPLES / "scaleout.yml"
PARTS = 4


@pytest.fixture(scope="module")
def scaleout_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("ex") / "scaleout_ws", {"scaleout": SCALEOUT.read_text()})


def test_scaleout_example_parses_and_waits_for_every_part(scaleout_ws: Path) -> None:
    from apolo_flow import ast
    from apolo_flow.parser import parse_batch

    assert isinstance(parse_batch(ROOT, SCALEOUT), ast.BatchFlow)
    graph = dict(load_batch(scaleout_ws, "scaleout").graph)
    parts = {f"part_{i}" for i in range(PARTS)}
    assert set(graph["commit"]) == parts  # the commit waits for every part
    assert all(dict(graph[f"train_{i}"]) == {"commit": ast.NeedsLevel.COMPLETED} for i in range(PARTS))
    assert all(not graph[p] for p in parts)  # the parts run side by side
    assert re.findall(r"ghcr\.io/neuro-inc/wabucketref:\S+", SCALEOUT.read_text()) == [IMAGE]


def scaleout_commands(ws: Path, bucket: str, project: str, data: Path) -> tuple[list[list[str]], list[str], list[list[str]]]:
    """The CLI arguments of the flow's tasks, as apolo-flow renders them, pointed at this test's bucket,
    project and data folder (the volume's mount)."""

    def args(task_id: str, needs: dict | None = None) -> list[str]:
        task = render_batch_task(ws, "scaleout", task_id, needs)
        words = task.cmd.split()
        words[words.index("--bucket") + 1] = bucket
        words[words.index("--project-name") + 1] = project
        return [w.replace("/mnt/data", str(data)) for w in words]

    parts = [args(f"part_{i}") for i in range(PARTS)]
    commit = args("commit", {f"part_{i}": {} for i in range(PARTS)})
    outputs = {"commit": {"artifact_name": "imagenet-prepared", "artifact_type": "dataset", "artifact_alias": "prepared"}}
    trains = [args(f"train_{i}", outputs) for i in range(PARTS)]
    return parts, commit, trains


@pytest.mark.parametrize("kind", ["local", "s3", "platform"])
@pytest.mark.parametrize("mode", ["online", "offline"])
def test_scaleout_example_runs_as_concurrent_jobs(scaleout_ws, env, request, wandb_server, tmp_path, kind, mode):
    """The rendered commands run as the flow runs them: the parts at once, then the commit, then the
    shares at once; the shares are the committed version, each file once."""
    import subprocess
    import sys

    from tests.conftest import online, outputs, tree_hashes, use_backend, write_tree

    env = use_backend(env, kind, request, tmp_path)
    if mode == "online":
        env = online(env, wandb_server)
    data = tmp_path / "mnt-data"
    for i in range(PARTS):
        write_tree(data / "prepared" / str(i), {f"class{c}/img{i}-{c}-{n}.jpg": f"{i}{c}{n}".encode() * (n + 1)
                                                for c in range(3) for n in range(5)})
    parts, commit, trains = scaleout_commands(scaleout_ws, env.bucket, env.vars["WANDB_PROJECT"], data)

    def run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
        procs = [subprocess.Popen([sys.executable, "-m", "wabucketref", *c], env=env.vars, cwd=env.cwd,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in commands]
        done = [(p, *p.communicate(timeout=300)) for p in procs]
        return [subprocess.CompletedProcess(c, p.returncode, out, err) for c, (p, out, err) in zip(commands, done)]

    sent = run_all(parts)
    assert all(r.returncode == 0 for r in sent), [r.stderr for r in sent]
    [committed] = run_all([commit])
    assert committed.returncode == 0, committed.stderr
    assert outputs(committed.stdout) == {"artifact_name": "imagenet-prepared", "artifact_type": "dataset",
                                         "artifact_alias": "prepared"}
    got = run_all(trains)
    assert all(r.returncode == 0 for r in got), [r.stderr for r in got]
    shares = [tree_hashes(data / "shards" / str(i)) if (data / "shards" / str(i)).exists() else {} for i in range(PARTS)]
    union = {p: h for s in shares for p, h in s.items()}
    assert union == {p: h for i in range(PARTS) for p, h in tree_hashes(data / "prepared" / str(i)).items()}
    assert sum(map(len, shares)) == len(union) and all(shares)
    if mode == "online":
        [version] = wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "imagenet-prepared")
        assert "prepared" in version["aliases"] and len(version["metadata"]["wabucketref_parts"]) == PARTS
