"""The SDK as scripts and notebooks use it: inside the caller's own W&B runs, with several aliases of
one content, after failures, and with the original tool's spellings. Real wandb against the W&B
backend; a local folder bucket (the transfer itself is covered per backend elsewhere)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import make_tree, online, tree_hashes, use_backend


@pytest.fixture
def sdk_online(env, request, tmp_path, wandb_server):
    return online(use_backend(env, "local", request, tmp_path), wandb_server)


def run_script(env, body: str, check: bool = True):
    """A Python script with `api(...)` (a WaBucketRefAPI on the test's bucket and project) at hand."""
    head = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import wandb
        import wabucketref
        from wabucketref import WaBucketRefAPI
        BUCKET, PROJECT = {env.bucket!r}, {env.vars['WANDB_PROJECT']!r}
        def api(**kw):
            return WaBucketRefAPI(bucket=BUCKET, project_name=PROJECT, quiet=True, **kw)
    """)
    return env.python(head + textwrap.dedent(body), check=check)


def test_overwriting_one_alias_keeps_the_other_aliases_of_that_content(sdk_online, tmp_path, wandb_server):
    """Same content under a1 and a2 is one W&B version whose reference names a1's folder. Overwriting
    a1 with new content must not break a2 or v0: each alias's own copy is found by its manifest."""
    env = sdk_online
    src = make_tree(tmp_path / "src", big=False)
    run_script(env, f"""
        src = Path({str(src)!r})
        with api() as a:
            a.upload_artifact(src, "ds", "dataset", "a1")
            a.upload_artifact(src, "ds", "dataset", "a2")
            (src / "a.txt").write_text("changed")
            a.upload_artifact(src, "ds", "dataset", "a1", overwrite=True)
    """)
    versions = {v["version"]: v["aliases"] for v in wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "ds")}
    assert "a2" in versions["v0"] and "a1" in versions["v1"], versions

    original = make_tree(tmp_path / "original", big=False)
    for alias in ("a2", "v0"):
        dest = tmp_path / f"dl-{alias}"
        env.wabucket("download", "dataset", "ds", alias, "-d", str(dest), check=True)
        assert tree_hashes(dest) == tree_hashes(original), alias
        env.wabucket("verify", "dataset", "ds", alias, check=True)
    env.wabucket("download", "dataset", "ds", "a1", "-d", str(tmp_path / "dl-a1"), check=True)
    assert (tmp_path / "dl-a1" / "a.txt").read_text() == "changed"


def test_a_download_w_and_b_refuses_leaves_nothing_behind(sdk_online, tmp_path):
    """The bucket's manifest lets the download start before W&B answers; when W&B then does not know
    the artifact, what was fetched is removed: a new folder is gone, an existing one is as it was."""
    env = sdk_online
    src = make_tree(tmp_path / "src", big=False)
    offline = {**env.vars, "WANDB_MODE": "offline"}  # in the bucket, unknown to the W&B server
    env.run("--bucket", env.bucket, "--project-name", env.vars["WANDB_PROJECT"], "upload", str(src), "-n", "ds",
            "-t", "dataset", "-a", "a", env=offline, check=True)

    fresh = tmp_path / "new" / "dest"
    proc = env.wabucket("download", "dataset", "ds", "a", "-d", str(fresh))
    assert proc.returncode == 1 and "not found in W&B" in proc.stderr, proc.stderr
    assert "wabucket: downloaded " not in proc.stderr  # what the prefetch brought was not W&B's: no summary
    assert not (tmp_path / "new").exists()

    existing = tmp_path / "existing"
    (existing / "mine").mkdir(parents=True)
    (existing / "mine" / "notes.txt").write_text("keep me")
    proc = env.wabucket("download", "dataset", "ds", "a", "-d", str(existing))
    assert proc.returncode == 1, proc.stderr
    assert tree_hashes(existing) == tree_hashes_of({"mine/notes.txt": b"keep me"}, tmp_path / "expected")


def test_a_failed_download_into_a_temporary_folder_removes_it(env, tmp_path):
    """Without dst_folder the caller never learns the folder's name, so nothing could resume into it:
    a failure removes it whole, verified files included."""
    src = make_tree(tmp_path / "src", big=False)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "a", check=True)
    last = "ünïcødé/данные 数据.json"  # fetched last, one file at a time: the others have landed
    stored = Path(env.bucket) / "dataset" / "ds" / "a" / last
    stored.write_bytes(stored.read_bytes()[::-1])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = run_script(env, f"""
        import tempfile
        tempfile.tempdir = {str(scratch)!r}
        with api(concurrency=1) as a:
            try:
                a.download_artifact("ds", "dataset", "a")
            except wabucketref.IntegrityError as e:
                print("failed:", e)
    """)
    assert "failed:" in proc.stdout and "sha256 differs" in proc.stdout, proc.stdout
    assert [p.name for p in scratch.iterdir() if p.name.startswith("wabucket-ds")] == []


def tree_hashes_of(files: dict[str, bytes], root: Path) -> dict[str, str]:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return tree_hashes(root)


def test_the_api_follows_the_callers_current_run(sdk_online, tmp_path, wandb_server):
    """A sweep-like loop (one wandb run after another) and two API objects sharing a run: each call
    is recorded in the run that is live at that moment, never in a finished one."""
    env = sdk_online
    src = make_tree(tmp_path / "src", big=False)
    out = run_script(env, f"""
        a = api()
        r1 = wandb.init(project=PROJECT)
        a.upload_artifact({str(src)!r}, "ds", "dataset", "a")
        r1.finish()
        r2 = wandb.init(project=PROJECT)
        a.download_artifact("ds", "dataset", "a", {str(tmp_path / "dl")!r})
        r2.finish()

        x, y = api(), api()
        x.download_artifact("ds", "dataset", "a", {str(tmp_path / "dl-x")!r})
        y.download_artifact("ds", "dataset", "a", {str(tmp_path / "dl-y")!r})
        shared = x.run.id
        x.close()  # finishes the run x started, which y joined
        y.upload_artifact({str(src)!r}, "ds2", "dataset", "b")
        print(json.dumps({{"r1": r1.id, "r2": r2.id, "shared": shared, "y": y.run.id}}))
        y.close()
    """).stdout
    ids = json.loads(out.strip().splitlines()[-1])
    project = env.vars["WANDB_PROJECT"]
    ds = wandb_server.artifact_versions(project, "ds")[0]
    assert ds["logged_by"] == ids["r1"] and ids["r2"] in ds["used_by"] and ids["shared"] in ds["used_by"]
    assert ids["y"] != ids["shared"]
    assert wandb_server.artifact_versions(project, "ds2")[0]["logged_by"] == ids["y"]


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_the_callers_offline_or_disabled_run_decides_the_mode(sdk_online, tmp_path, mode, wandb_server):
    """WANDB_MODE says online, but the script's run is offline (or disabled): the API works as that
    run does, instead of waiting for a server the run never talks to."""
    env = sdk_online
    src = make_tree(tmp_path / "src", big=False)
    requests_before = len(wandb_server.requests)
    run_script(env, f"""
        run = wandb.init(project=PROJECT, mode={mode!r})
        with api() as a:
            a.upload_artifact({str(src)!r}, "ds", "dataset", "a")
            a.download_artifact("ds", "dataset", "a", {str(tmp_path / "dl")!r})
        run.finish()
    """)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    meta = Path(env.bucket) / "dataset" / "ds" / ".wabucketref"
    assert (meta / "a.jsonl").is_file() and not (meta / "a.partial").exists()
    # the W&B server (online in the environment) received nothing: no request, no run, no version
    project = env.vars["WANDB_PROJECT"]
    assert wandb_server.requests[requests_before:] == []
    assert [r for r in wandb_server.runs() if r["project"] == project] == []
    assert wandb_server.artifact_versions(project, "ds") == []
    # an offline run keeps the upload for `wandb sync`; a disabled one records nothing anywhere
    offline_runs = list((env.cwd / "wandb").glob("offline-run-*/run-*.wandb"))
    if mode == "offline":
        [record] = offline_runs
        assert b"ds" in record.read_bytes() and b"dataset" in record.read_bytes()
    else:
        assert offline_runs == [] and not list(env.cwd.rglob("*.wandb"))


def test_sdk_errors_are_wabucketref_errors_raised_before_bytes_move(env, tmp_path):
    env.vars["WANDB_MODE"] = "disabled"
    src = make_tree(tmp_path / "src", big=False)
    (tmp_path / "a-file").write_text("x")
    out = run_script(env, f"""
        from wabucketref import UsageError, WaBucketError
        def outcome(fn):
            try:
                fn()
            except WaBucketError as e:
                return type(e).__name__ + ": " + str(e)
            return "no error"
        results = {{
            "bucket is a file": outcome(lambda: WaBucketRefAPI(bucket={str(tmp_path / 'a-file')!r}, project_name="p").upload_artifact({str(src)!r}, "ds", "dataset", "a")),
            "concurrency 0": outcome(lambda: api(concurrency=0)),
            "metadata not JSON": outcome(lambda: api().upload_artifact({str(src)!r}, "ds", "dataset", "m", {{"o": object()}})),
            "link ..": outcome(lambda: api().link("../elsewhere", "ds", "dataset", "l")),
            "alias with #": outcome(lambda: api().upload_artifact({str(src)!r}, "ds", "dataset", "a#1")),
            "parse_meta": outcome(lambda: wabucketref.parse_meta(["novalue"])),
        }}
        print(json.dumps(results))
    """).stdout
    results = json.loads(out.strip().splitlines()[-1])
    assert results["bucket is a file"].startswith("WaBucketError: cannot use"), results
    for case in ("concurrency 0", "metadata not JSON", "link ..", "alias with #", "parse_meta"):
        assert results[case].startswith("UsageError: "), (case, results[case])
    assert not (Path(env.bucket) / "dataset" / "ds" / "m").exists()  # refused before any byte moved


def test_s3_without_keys_says_so(env, seaweed, tmp_path):
    """No AWS keys: obstore asks the instance metadata service (here a closed port on loopback);
    the error says which keys to set, in one line."""
    from tests.servers.s3 import free_port

    env.vars.update(WANDB_MODE="disabled", AWS_ENDPOINT_URL=seaweed.endpoint_url,
                    AWS_METADATA_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    proc = env.run("--bucket", "s3://nokeys/p", "--project-name", "p", "upload", str(make_tree(tmp_path / "s", big=False)),
                   "-n", "ds", "-t", "dataset")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "no credentials found: set AWS_ACCESS_KEY_ID" in proc.stderr, proc.stderr


def test_original_tool_spellings(sdk_online, tmp_path, wandb_server):
    """What scripts and flows written for the original tool pass: --destination-folder, --run_args
    with a YAML file, as_refference=, retries=, wandb_start_run(w_run_name=...), a leading `wabucket`
    word (the original image ran a whole command), and its !run-config-hash formula."""
    env = sdk_online
    src = make_tree(tmp_path / "src", big=False)
    out = run_script(env, f"""
        a = api()
        a.wandb_start_run(w_run_name="legacy-run", w_job_type="prep", run_args={{"lr": 0.1, "epochs": 3}})
        alias = a.upload_artifact(Path({str(src)!r}), "ds", "dataset", "!run-config-hash", as_refference=True)
        a.download_artifact("ds", "dataset", alias, Path({str(tmp_path / "dl-sdk")!r}), 2)
        print(json.dumps({{"alias": alias, "run": a.run.name}}))
        a.close()
    """).stdout
    got = json.loads(out.strip().splitlines()[-1])
    import hashlib
    assert got == {"alias": hashlib.sha256(b"epochs=3 lr=0.1").hexdigest(), "run": "legacy-run"}
    assert tree_hashes(tmp_path / "dl-sdk") == tree_hashes(src)

    (tmp_path / "cfg.yaml").write_text("seed:\n  value: 7\n")  # wandb's config-defaults.yaml form
    dest = tmp_path / "dl-cli"
    proc = env.run("wabucket", "--bucket", env.bucket, "--project-name", env.vars["WANDB_PROJECT"], "download",
                   "dataset", "ds", got["alias"], "--destination-folder", str(dest), "--run_args", str(tmp_path / "cfg.yaml"),
                   check=True)
    assert proc.stdout.strip() == str(dest) and tree_hashes(dest) == tree_hashes(src)
    runs = [r for r in wandb_server.runs() if r["project"] == env.vars["WANDB_PROJECT"] and r["job_type"] == "download"]
    assert any(r["config"].get("seed") == 7 for r in runs), runs


def test_download_names_another_projects_artifact(sdk_online, tmp_path, wandb_server):
    """project/name and entity/project/name read an artifact of another project; the bucket folder is
    TYPE/name as usual, and the reading run is recorded as its user."""
    env = sdk_online
    src = make_tree(tmp_path / "src", big=False)
    producer = env.vars["WANDB_PROJECT"]
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "a", check=True)
    consumer = {**env.vars, "WANDB_PROJECT": producer + "-other"}
    for i, name in enumerate([f"{producer}/ds", f"{wandb_server.entity}/{producer}/ds"]):
        dest = tmp_path / f"dl{i}"
        env.run("--bucket", env.bucket, "download", "dataset", name, "a", "-d", str(dest), env=consumer, check=True)
        assert tree_hashes(dest) == tree_hashes(src)
    used_by = wandb_server.artifact_versions(producer, "ds")[0]["used_by"]
    consumer_runs = {r["id"] for r in wandb_server.runs() if r["project"] == producer + "-other"}
    assert len(consumer_runs & set(used_by)) == 2
    bad = env.wabucket("download", "dataset", "a/b/c/ds", "a")
    assert bad.returncode == 2 and "at most entity/project/name" in bad.stderr


def test_an_api_of_another_project_finds_what_it_logged_in_the_callers_run(sdk_online, tmp_path, wandb_server):
    """The caller's run is in project B, the API is told project A: W&B logs the upload in B (the
    run's project); the same API's download finds it there after looking in A, and says so once."""
    env = sdk_online
    src = make_tree(tmp_path / "src", big=False)
    other = env.vars["WANDB_PROJECT"] + "-b"
    proc = run_script(env, f"""
        run = wandb.init(project={other!r})
        a = api()
        a.upload_artifact({str(src)!r}, "mdl", "model", "r1")
        a.download_artifact("mdl", "model", "r1", {str(tmp_path / "dl")!r})
        run.finish()
    """)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    assert wandb_server.artifact_versions(other, "mdl") and not wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], "mdl")
    assert proc.stderr.count(f"recording in the running W&B run of project {other}") == 1, proc.stderr


def test_the_clis_runs_record_only_the_command_and_the_sdks_keep_wandbs_defaults(sdk_online, tmp_path):
    """The CLI's run ends with its command: wandb collects no machine info, system metrics, git,
    code or installed packages for it (tracking.COMMAND_RUN_SETTINGS). A run the SDK starts may become the caller's
    training run: it keeps what wandb collects by default."""
    env = sdk_online
    for name in (
        "WANDB_X_DISABLE_STATS",
        "WANDB_X_DISABLE_MACHINE_INFO",
        "WANDB_DISABLE_GIT",
        "WANDB_DISABLE_CODE",
        "WANDB_X_SAVE_REQUIREMENTS",
    ):
        env.vars.pop(name)  # the suite's W&B backend turns these off for every run
    src = make_tree(tmp_path / "src", big=False)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "a", check=True)
    (cli_run,) = (env.cwd / "wandb").glob("run-*")
    assert (cli_run / "files" / "config.yaml").exists()
    assert not (cli_run / "files" / "wandb-metadata.json").exists()  # machine info: os, cpu, disk, git, ...
    assert not (cli_run / "files" / "requirements.txt").exists()  # the installed packages

    out = run_script(env, f"""
        a = api()
        a.download_artifact("ds", "dataset", "a", {str(tmp_path / "dl")!r})
        s = a.run.settings
        print(json.dumps({{"dir": a.run.dir, "off": [s.x_disable_stats, s.x_disable_machine_info, s.disable_git]}}))
        a.close()
    """).stdout
    sdk = json.loads(out.strip().splitlines()[-1])
    assert sdk["off"] == [False, False, False]
    assert (Path(sdk["dir"]) / "wandb-metadata.json").exists()
    assert (Path(sdk["dir"]) / "requirements.txt").exists()
