"""Every command records in a named W&B project (the original tool's rule): without one it is a
usage error before anything moves; wandb's own settings file may name it; with W&B disabled none
is needed."""

from __future__ import annotations

import pytest

from tests.conftest import RawBucket, make_tree, online, outputs, tree_hashes, use_backend

UPLOAD = ["upload", "-n", "ds", "-t", "dataset", "-a", "a1"]


def _without_project(env):
    env.vars.pop("WANDB_PROJECT", None)
    return env


@pytest.mark.parametrize("kind", ["local", "s3"])
@pytest.mark.parametrize("command", ["upload", "download", "link", "verify"])
def test_no_project_is_a_usage_error_before_anything_moves(env, request, wandb_server, tmp_path, kind, command):
    env = _without_project(online(use_backend(env, kind, request, tmp_path), wandb_server))
    src = make_tree(tmp_path / "src", big=False)
    args = {
        "upload": ["upload", str(src), "-n", "ds", "-t", "dataset", "-a", "a1"],
        "download": ["download", "dataset", "ds", "a1", "-d", str(tmp_path / "dl")],
        "link": ["link", "raw/x", "-n", "ds", "-t", "dataset", "-a", "a1"],
        "verify": ["verify", "dataset", "ds", "a1"],
    }[command]
    runs = len(wandb_server.runs())
    proc = env.run("--bucket", env.bucket, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no W&B project" in lines[0] and "--project-name" in lines[0], proc.stderr
    assert "WANDB_PROJECT" in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert RawBucket(env).keys() == []  # a fresh bucket: nothing was written
    assert not (tmp_path / "dl").exists()
    assert len(wandb_server.runs()) == runs  # and W&B was told nothing


def test_the_project_wandb_init_named_is_used(env, wandb_server, tmp_path):
    """`wandb init` writes ./wandb/settings: the artifact goes to the project it names."""
    env = _without_project(online(env, wandb_server))
    (env.cwd / "wandb").mkdir()
    (env.cwd / "wandb" / "settings").write_text("[default]\nproject = from-settings\nentity = ignored\n")
    src = make_tree(tmp_path / "src", big=False)
    up = env.run("--bucket", env.bucket, "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "s1")
    assert up.returncode == 0, up.stderr
    assert outputs(up.stdout)["artifact_alias"] == "s1"
    versions = wandb_server.artifact_versions("from-settings", "ds")
    assert len(versions) == 1 and "s1" in versions[0]["aliases"]
    dl = env.run("--bucket", env.bucket, "download", "dataset", "ds", "s1", "-d", str(tmp_path / "dl"))
    assert dl.returncode == 0, dl.stderr
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


def test_with_wandb_disabled_no_project_is_needed(env, tmp_path):
    env = _without_project(env)
    env.vars["WANDB_MODE"] = "disabled"
    src = make_tree(tmp_path / "src", big=False)
    up = env.run("--bucket", env.bucket, *UPLOAD[:1], str(src), *UPLOAD[1:])
    assert up.returncode == 0, up.stderr
    dl = env.run("--bucket", env.bucket, "download", "dataset", "ds", "a1", "-d", str(tmp_path / "dl"))
    assert dl.returncode == 0, dl.stderr
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


def test_the_sdk_asks_for_a_project_when_a_command_runs(env, tmp_path):
    """The SDK: a bucket alone constructs, but a command without a project is refused (UsageError)."""
    env = _without_project(env)
    src = make_tree(tmp_path / "src", big=False)
    proc = env.python(
        "from wabucketref import WaBucketRefAPI, UsageError\n"
        f"api = WaBucketRefAPI(bucket={env.bucket!r})\n"
        "try:\n"
        f"    api.upload_artifact({str(src)!r}, 'ds', 'dataset', 'a1')\n"
        "except UsageError as e:\n"
        "    print('refused:', e)\n"
        "api.close()\n"
    )
    assert "refused: no W&B project" in proc.stdout, proc.stdout + proc.stderr
    assert RawBucket(env).keys() == []
