"""action.yml: apolo-flow parses it, its expressions are valid, and calls render right.

Flows call the action as users do, `gh:neuro-inc/mlops-wandb-bucket-ref@vVERSION`: apolo-flow's
LiveRunner (dry run) resolves that reference to this checkout's action.yml (see flow_dryrun)."""

from __future__ import annotations

import shlex
import textwrap
import warnings
from pathlib import Path

import pytest
import yaml

from tests.flow_dryrun import (
    ACTION_FILE,
    PLATFORM_IMAGE,
    REPOSITORY,
    UnknownGitHubAction,
    action_ref,
    make_workspace,
    project_version,
    render_live,
    render_live_resolving,
    split_run_line,
    validate_live_action,
)

IMAGE = f"ghcr.io/neuro-inc/wabucketref:v{project_version()}"

SAMPLE_LIVE_TEMPLATE = """\
kind: live
id: demo
volumes:
  models:
    remote: storage:models
    mount: /mnt/models
jobs:
  shortest:
    action: @ACTION@
    args:
      type: model
      name: my-model
      path: /mnt/models/run-1
  upload_full:
    action: @ACTION@
    args:
      command: upload
      type: model
      name: my-model
      alias: best
      path: ${{ volumes.models.mount }}/run 1
      volume: ${{ volumes.models.ref_ro }}
      bucket: my-bucket
      project: wb-proj
      entity: my-team
      run_name: train-7
      job_type: training
      suffix: ckpt
      metadata: '{"epoch": 3, "note": "two words"}'
      extra_args: --overwrite --quiet
      preset: cpu-small
      image: registry.example/wabucketref:dev
      wandb_secret: secret:other-key
  download:
    action: @ACTION@
    args:
      command: download
      type: dataset
      name: imagenet
      alias: v3
      path: /mnt/models/data
      volume: ${{ volumes.models.ref_rw }}
      bucket: s3://bkt/prefix
      pass_config: ${{ False }}
      metadata: '{"ignored": 1}'
      suffix: ignored
  download_default_dest:
    action: @ACTION@
    args:
      command: download
      type: dataset
      name: imagenet
  link:
    action: @ACTION@
    args:
      command: link
      type: dataset
      name: imagenet
      path: blob://cl/org/proj/bkt/datasets/imagenet
      suffix: data
      metadata: '{"rows": 1000}'
  verify:
    action: @ACTION@
    args:
      command: verify
      type: dataset
      name: imagenet
      alias: v3
      path: /mnt/models/data
  ls:
    action: @ACTION@
    args:
      command: ls
      type: dataset
      name: imagenet
  ls_project:
    action: @ACTION@
    args:
      command: ls
      type: ""
      name: ""
      extra_args: --json
  diff:
    action: @ACTION@
    args:
      command: diff
      type: dataset
      name: imagenet
      alias: v3
      other: v4
      path: /mnt/models/ignored
      extra_args: --exit-code
  diff_local:
    action: @ACTION@
    args:
      command: diff
      type: dataset
      name: imagenet
      path: /mnt/models/data
  gc:
    action: @ACTION@
    args:
      command: gc
      type: dataset
      name: imagenet
      bucket: s3://bkt/prefix
      extra_args: --delete --older-than 12h
  download_shard:
    action: @ACTION@
    args:
      command: download
      type: dataset
      name: imagenet
      alias: v3
      path: /mnt/models/data
      shard: auto
  upload_part:
    action: @ACTION@
    args:
      command: upload
      type: dataset
      name: imagenet
      alias: merged
      path: /mnt/models/part-2
      part: 2/8
      shard: ignored
  commit:
    action: @ACTION@
    args:
      command: commit
      type: dataset
      name: imagenet
      alias: merged
      suffix: data
      metadata: '{"parts": 8}'
      part: ignored
  platform_image:
    action: @ACTION@
    args:
      command: download
      type: model
      name: my-model
      alias: best
      path: /mnt/models/restored
      volume: ${{ volumes.models.ref_rw }}
      image: image:wabucket
"""
SAMPLE_LIVE = SAMPLE_LIVE_TEMPLATE.replace("@ACTION@", action_ref())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("ws") / "demo_ws", {"live": SAMPLE_LIVE})


def test_action_parses_as_live_action() -> None:
    from apolo_flow import ast
    from apolo_flow.parser import parse_action

    action = parse_action(ACTION_FILE)
    assert isinstance(action, ast.LiveAction)
    assert action.kind == ast.ActionKind.LIVE
    raw = yaml.safe_load(ACTION_FILE.read_text())
    assert set(raw) == {"kind", "name", "author", "descr", "inputs", "job"}
    assert raw["name"] and raw["author"] and raw["descr"]
    inputs = action.inputs or {}
    for name in (
        "command", "type", "name", "alias", "path", "bucket", "project", "entity",
        "suffix", "metadata", "volume", "wandb_secret", "image", "preset", "pass_config",
    ):
        assert name in inputs, name
    for name, inp in inputs.items():
        assert raw["inputs"][name].get("descr", "").strip(), f"input {name} has no descr"
    required = {n for n, i in inputs.items() if i.default.pattern is None}
    assert required == {"type", "name"}, required
    assert inputs["pass_config"].type == ast.InputType.BOOL
    assert raw["inputs"]["wandb_secret"]["default"] == "secret:wandb-token"


def test_action_image_default_is_this_release() -> None:
    raw = yaml.safe_load(ACTION_FILE.read_text())
    assert raw["inputs"]["image"]["default"] == IMAGE


def test_action_expressions_are_valid() -> None:
    errors = validate_live_action(ACTION_FILE)
    assert not errors, [str(e) for e in errors]


def test_validation_catches_undefined_input(tmp_path: Path) -> None:
    text = ACTION_FILE.read_text().replace("inputs.entity)", "inputs.entitty)", 1)
    assert text != ACTION_FILE.read_text()
    bad = tmp_path / "action.yml"
    bad.write_text(text)
    errors = [str(e) for e in validate_live_action(bad)]
    assert any("Input 'entitty' is undefined" in e for e in errors), errors


def test_calls_resolve_the_released_action_from_this_checkout(workspace: Path) -> None:
    assert action_ref() == f"gh:neuro-inc/mlops-wandb-bucket-ref@v{project_version()}"
    rendered, resolved = render_live_resolving(workspace, "shortest")
    assert resolved == ["gh:neuro-inc/mlops-wandb-bucket-ref@v" + project_version()]
    assert rendered.startswith("apolo run ") and f" {IMAGE} -- " in rendered


@pytest.mark.parametrize(
    "ref",
    [
        f"gh:neuro-inc/wabucketref@v{project_version()}",  # not the repository users call
        f"gh:{REPOSITORY}@v0.0.0",  # not this release
        f"gh:{REPOSITORY}@{project_version()}",  # tags carry a leading v
    ],
    ids=["other-repository", "other-tag", "tag-without-v"],
)
def test_other_action_references_are_not_served(tmp_path: Path, ref: str) -> None:
    # The loader is strict, so a flow naming another repository or tag cannot render.
    flow = f"kind: live\njobs:\n  j:\n    action: {ref}\n    args: {{type: t, name: n}}\n"
    ws = make_workspace(tmp_path / "ws", {"live": flow})
    with pytest.raises(UnknownGitHubAction, match="the test loader serves only"):
        render_live(ws, "j")


def test_platform_registry_image(workspace: Path) -> None:
    """`image: image:wabucket` runs the image kept in the project's platform registry."""
    rendered = render_live(workspace, "platform_image")
    line = split_run_line(rendered)
    assert line.image == PLATFORM_IMAGE == "image:wabucket"
    assert rendered.split(" -- ")[0].endswith(" image:wabucket")
    assert line.args == [
        "--project-name", "demo_ws",
        "download", "model", "my-model", "best", "-d", "/mnt/models/restored",
    ]
    assert line.option_values("env") == ["WANDB_API_KEY=secret:wandb-token"]
    assert line.has_flag("pass-config")
    [volume] = line.option_values("volume")
    assert volume.endswith(":/mnt/models:rw")


def test_shortest_call(workspace: Path) -> None:
    line = split_run_line(render_live(workspace, "shortest"))
    assert line.image == IMAGE
    assert line.args == [
        "--project-name", "demo_ws",  # the flow's project id (workspace folder name)
        "upload", "/mnt/models/run-1", "-n", "my-model", "-t", "model",
    ]
    assert line.option_values("env") == ["WANDB_API_KEY=secret:wandb-token"]
    assert line.has_flag("pass-config")
    assert line.option_values("volume") == []
    assert line.option_values("preset") == []


def test_upload_full(workspace: Path) -> None:
    rendered = render_live(workspace, "upload_full")
    line = split_run_line(rendered)
    assert line.image == "registry.example/wabucketref:dev"
    assert line.args == [
        "--bucket", "my-bucket", "--project-name", "wb-proj", "--entity", "my-team",
        "--run-name", "train-7", "--job-type", "training",
        "upload", "/mnt/models/run 1", "-n", "my-model", "-t", "model", "-a", "best",
        "-s", "ckpt", "-m", "epoch=3", "-m", "note=two words", "--overwrite", "--quiet",
    ]
    assert line.option_values("env") == ["WANDB_API_KEY=secret:other-key"]
    assert line.option_values("preset") == ["cpu-small"]
    [volume] = line.option_values("volume")
    assert volume.endswith("/models:/mnt/models:ro") and volume.startswith("storage:")
    assert line.has_flag("pass-config")


def test_download(workspace: Path) -> None:
    line = split_run_line(render_live(workspace, "download"))
    assert line.image == IMAGE
    assert line.args == [
        "--bucket", "s3://bkt/prefix", "--project-name", "demo_ws",
        "download", "dataset", "imagenet", "v3", "-d", "/mnt/models/data",
    ]
    assert not line.has_flag("pass-config")
    [volume] = line.option_values("volume")
    assert volume.endswith(":/mnt/models:rw")


def test_download_default_destination_and_alias(workspace: Path) -> None:
    line = split_run_line(render_live(workspace, "download_default_dest"))
    assert line.args == [
        "--project-name", "demo_ws", "download", "dataset", "imagenet", "latest",
    ]


def test_link(workspace: Path) -> None:
    line = split_run_line(render_live(workspace, "link"))
    assert line.args == [
        "--project-name", "demo_ws",
        "link", "blob://cl/org/proj/bkt/datasets/imagenet",
        "-n", "imagenet", "-t", "dataset", "-s", "data", "-m", "rows=1000",
    ]


def test_verify(workspace: Path) -> None:
    line = split_run_line(render_live(workspace, "verify"))
    assert line.args == [
        "--project-name", "demo_ws",
        "verify", "dataset", "imagenet", "v3", "--local", "/mnt/models/data",
    ]


def test_gc(workspace: Path) -> None:
    line = split_run_line(render_live(workspace, "gc"))
    assert line.args == [
        "--bucket", "s3://bkt/prefix", "--project-name", "demo_ws",
        "gc", "-t", "dataset", "-n", "imagenet", "--delete", "--older-than", "12h",
    ]


def test_shard_part_and_commit(workspace: Path) -> None:
    assert split_run_line(render_live(workspace, "download_shard")).args == [
        "--project-name", "demo_ws", "download", "dataset", "imagenet", "v3", "-d", "/mnt/models/data",
        "--shard", "auto",
    ]
    assert split_run_line(render_live(workspace, "upload_part")).args == [
        "--project-name", "demo_ws", "upload", "/mnt/models/part-2", "-n", "imagenet", "-t", "dataset",
        "-a", "merged", "--part", "2/8",
    ]
    assert split_run_line(render_live(workspace, "commit")).args == [
        "--project-name", "demo_ws", "commit", "-t", "dataset", "-n", "imagenet", "-a", "merged", "-s", "data",
        "-m", "parts=8",
    ]


def test_rendered_line_is_shell_safe(workspace: Path) -> None:
    # The dry-run line round-trips through shlex (values with spaces stay one word).
    rendered = render_live(workspace, "upload_full")
    assert shlex.join(shlex.split(rendered)) == rendered


# ---- broken calls fail with apolo-flow's own messages ---------------------------------


def _broken(tmp_path: Path, job_body: str) -> Path:
    live = "kind: live\njobs:\n  broken:\n" + textwrap.indent(textwrap.dedent(job_body), "    ")
    return make_workspace(tmp_path / "ws", {"live": live})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("args:\n  type: model\n  path: /x\n", r"Required input\(s\): name"),
        ("", r"Required input\(s\): name,type"),
        ("args:\n  type: model\n  name: n\n  bukket: b\n", r"Unsupported input\(s\): bukket"),
        ('args:\n  type: model\n  name: n\n  pass_config: "false"\n', r"Type of argument 'pass_config' do not match"),
    ],
    ids=["missing-required-input", "missing-args-section", "unknown-input", "bool-given-as-string"],
)
def test_bad_action_args(tmp_path: Path, args: str, message: str) -> None:
    from apolo_flow.expr import EvalError

    ws = _broken(tmp_path, f"action: {action_ref()}\n" + args)
    with pytest.raises(EvalError, match=message):
        render_live(ws, "broken")


def test_unknown_key_in_action_call(tmp_path: Path) -> None:
    from apolo_flow.parser import parse_live
    from yaml.constructor import ConstructorError

    ws = _broken(tmp_path, f"""\
        action: {action_ref()}
        image: ubuntu
        args: {{}}
        """)
    with pytest.raises(ConstructorError, match="image are not allowed in action call"):
        parse_live(ws, ws / ".neuro" / "live.yml")


# What the real `wabucket` CLI makes of each rendered call: (command, the group's options, the
# command's parameters). Parameters not listed must have their defaults (None, False or ()).
CLI_PARSE = {
    "shortest": ("upload", {"project_name": "demo_ws"},
                 {"src_dir": Path("/mnt/models/run-1"), "name": "my-model", "type_": "model", "reff": True}),
    "upload_full": ("upload",
                    {"bucket": "my-bucket", "project_name": "wb-proj", "entity": "my-team",
                     "run_name": "train-7", "job_type": "training"},
                    {"src_dir": Path("/mnt/models/run 1"), "name": "my-model", "type_": "model",
                     "alias": "best", "suffix": "ckpt", "metadata": ("epoch=3", "note=two words"),
                     "reff": True, "overwrite": True, "quiet": True}),
    "download": ("download", {"bucket": "s3://bkt/prefix", "project_name": "demo_ws"},
                 {"type_": "dataset", "name": "imagenet", "alias": "v3", "dest": "/mnt/models/data"}),
    "download_default_dest": ("download", {"project_name": "demo_ws"},
                              {"type_": "dataset", "name": "imagenet", "alias": "latest"}),
    "link": ("link", {"project_name": "demo_ws"},
             {"bucket_path": "blob://cl/org/proj/bkt/datasets/imagenet", "name": "imagenet",
              "type_": "dataset", "suffix": "data", "metadata": ("rows=1000",)}),
    "verify": ("verify", {"project_name": "demo_ws"},
               {"type_": "dataset", "name": "imagenet", "alias": "v3", "local": Path("/mnt/models/data")}),
    "ls": ("ls", {"project_name": "demo_ws"}, {"type_": "dataset", "name": "imagenet"}),
    "ls_project": ("ls", {"project_name": "demo_ws"}, {"as_json": True}),
    "diff": ("diff", {"project_name": "demo_ws"},
             {"type_": "dataset", "name": "imagenet", "a": "v3", "b": "v4", "exit_code": True}),
    "diff_local": ("diff", {"project_name": "demo_ws"},
                   {"type_": "dataset", "name": "imagenet", "a": "latest", "local": Path("/mnt/models/data")}),
    "gc": ("gc", {"bucket": "s3://bkt/prefix", "project_name": "demo_ws"},
           {"type_": "dataset", "name": "imagenet", "delete": True, "older_than": "12h"}),
    "download_shard": ("download", {"project_name": "demo_ws"},
                       {"type_": "dataset", "name": "imagenet", "alias": "v3", "dest": "/mnt/models/data",
                        "shard": "auto"}),
    "upload_part": ("upload", {"project_name": "demo_ws"},
                    {"src_dir": Path("/mnt/models/part-2"), "name": "imagenet", "type_": "dataset", "alias": "merged",
                     "part": "2/8", "reff": True}),
    "commit": ("commit", {"project_name": "demo_ws"},
               {"name": "imagenet", "type_": "dataset", "alias": "merged", "suffix": "data",
                "metadata": ("parts=8",)}),
    "platform_image": ("download", {"project_name": "demo_ws"},
                       {"type_": "model", "name": "my-model", "alias": "best", "dest": "/mnt/models/restored"}),
}


def _non_default(params: dict) -> dict:
    return {k: v for k, v in params.items() if v not in (None, False, ())}


@pytest.mark.parametrize("job", list(CLI_PARSE))
def test_rendered_args_are_accepted_by_the_cli(
    workspace: Path, job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container args the action renders parse with the real `wabucket` CLI, as intended."""
    from wabucketref.cli import cli as group  # a broken CLI fails here, it is not skipped

    for var in ("WABUCKET_BUCKET", "WANDB_PROJECT", "WANDB_ENTITY", "WABUCKET_CONCURRENCY"):
        monkeypatch.delenv(var, raising=False)  # only the rendered args may set options
    command, group_params, params = CLI_PARSE[job]
    args = split_run_line(render_live(workspace, job)).args
    with group.make_context("wabucket", list(args), resilient_parsing=False) as ctx:
        with warnings.catch_warnings():  # protected_args: deprecated in click 8.2+, gone in 9
            warnings.simplefilter("ignore", DeprecationWarning)
            remaining = [*getattr(ctx, "protected_args", []), *ctx.args]
        name, sub, rest = group.resolve_command(ctx, remaining)
        assert name == command
        assert sub is group.commands[command]
        assert {k: v for k, v in _non_default(ctx.params).items() if k != "concurrency"} == group_params
        [concurrency] = [p for p in group.params if p.name == "concurrency"]
        assert ctx.params["concurrency"] == concurrency.default  # the action does not set it
        with sub.make_context(name, rest, parent=ctx) as sub_ctx:
            assert not sub_ctx.args, sub_ctx.args  # nothing left over
            assert _non_default(sub_ctx.params) == params
