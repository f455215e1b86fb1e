"""Platform sessions kept between commands (wabucketref/storage/session_cache.py).

A second command on the same platform bucket asks the platform nothing; a session that the
bucket refuses, that belongs to another login, or whose credentials are about to expire is not
used; WABUCKET_CACHE=0 turns it off. All through the real apolo_sdk, fake control plane and
SeaweedFS.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import RawBucket, make_tree, tree_hashes, use_backend


@pytest.fixture
def plat_env(env, request, tmp_path):
    return use_backend(env, "platform", request, tmp_path)


def sessions(env) -> list[Path]:
    return sorted((Path(env.vars["HOME"]) / ".cache" / "wabucketref" / "platform").glob("*.json"))


def upload(env, tmp_path, alias="a1") -> Path:
    src = make_tree(tmp_path / f"src-{alias}", big=False)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", alias, check=True)
    return src


def download(env, tmp_path, alias="a1", name="dl") -> Path:
    dest = tmp_path / name
    env.wabucket("download", "dataset", "ds", alias, "-d", str(dest), check=True)
    return dest


def new_login(env) -> None:
    """What a new `apolo login` does to the session's stamp: apolo_sdk rewrites its db."""
    db = Path(env.vars["APOLO_CONFIG"]) / "db"
    st = db.stat()
    os.utime(db, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_second_command_asks_the_platform_nothing(plat_env, tmp_path):
    env, plat = plat_env, plat_env.extra["platform"]
    src = upload(env, tmp_path)
    [session] = sessions(env)
    assert stat.S_IMODE(session.stat().st_mode) == 0o600
    assert stat.S_IMODE(session.parent.stat().st_mode) == 0o700

    plat.clear_calls()
    dest = download(env, tmp_path)
    assert tree_hashes(dest) == tree_hashes(src)
    assert plat.calls == []  # no config, no bucket lookup, no credentials


def test_sessions_too_old_to_use_are_removed(plat_env, tmp_path):
    env = plat_env
    upload(env, tmp_path)
    [session] = sessions(env)
    stale = session.with_name("0" * 40 + ".json")  # e.g. another blob:// prefix, an hour ago
    stale.write_text(session.read_text())
    old = session.stat().st_mtime - 3600
    os.utime(stale, (old, old))
    new_login(env)  # the next command logs in and saves a fresh session
    download(env, tmp_path)
    assert not stale.exists()
    assert len(sessions(env)) == 1


def test_refused_session_falls_back_to_the_platform(plat_env, tmp_path):
    env, plat = plat_env, plat_env.extra["platform"]
    src = upload(env, tmp_path)
    [session] = sessions(env)
    data = json.loads(session.read_text())
    data["session"]["credentials"]["secret_access_key"] = "not-the-secret"
    session.write_text(json.dumps(data))

    plat.clear_calls()
    dest = download(env, tmp_path)
    assert tree_hashes(dest) == tree_hashes(src)
    assert plat.calls_matching("make_tmp_credentials", "POST")
    fixed = json.loads(session.read_text())["session"]["credentials"]["secret_access_key"]
    assert fixed == plat.s3.secret_access_key


@pytest.mark.parametrize("damage", ["not json", "wrong keys"])
def test_damaged_session_file_is_ignored(plat_env, tmp_path, damage):
    env, plat = plat_env, plat_env.extra["platform"]
    src = upload(env, tmp_path)
    [session] = sessions(env)
    if damage == "not json":
        session.write_text("{truncated")
    else:
        data = json.loads(session.read_text())
        del data["session"]["uri"]
        session.write_text(json.dumps(data))
    plat.clear_calls()
    assert tree_hashes(download(env, tmp_path)) == tree_hashes(src)
    assert plat.calls_matching("make_tmp_credentials", "POST")


def test_another_login_starts_afresh(plat_env, tmp_path):
    env, plat = plat_env, plat_env.extra["platform"]
    upload(env, tmp_path)
    new_login(env)

    plat.clear_calls()
    download(env, tmp_path)
    assert plat.calls_matching("make_tmp_credentials", "POST")
    plat.clear_calls()
    download(env, tmp_path, name="dl2")
    assert plat.calls == []

    # a project config in the working folder can name another cluster, org or project
    (env.cwd / ".apolo.toml").write_text('[job]\nlife-span = "1d"\n')
    plat.clear_calls()
    download(env, tmp_path, name="dl3")
    assert plat.calls_matching("make_tmp_credentials", "POST")


def test_cache_can_be_turned_off(plat_env, tmp_path):
    env, plat = plat_env, plat_env.extra["platform"]
    env.vars["WABUCKET_CACHE"] = "0"
    upload(env, tmp_path)
    assert sessions(env) == []
    plat.clear_calls()
    download(env, tmp_path)
    assert plat.calls_matching("make_tmp_credentials", "POST")


def test_commands_started_together_in_a_job_log_in_one_at_a_time(plat_env, tmp_path):
    """A job's first commands, started at once, all log in from the passed config: apolo_sdk
    writing one config folder from several processes was seen to pick another project. Another
    project of the same login has a bucket of the same name: a command that picked that project
    would succeed, into the wrong bucket."""
    import subprocess
    import sys
    import uuid

    env, plat = plat_env, plat_env.extra["platform"]
    raw = RawBucket(env)  # before the decoy exists: the test's own bucket
    ours = plat.bucket(env.bucket)
    other = f"other-{uuid.uuid4().hex[:6]}"
    plat.add_project(other)  # a project to pick by mistake
    decoy = plat.bucket(plat.add_bucket(env.bucket, project=other))
    env.vars.update(WABUCKET_CACHE="0", WANDB_MODE="disabled")
    src = make_tree(tmp_path / "src", big=False)
    failures, aliases = [], []
    plat.clear_calls()
    for round_ in range(4):
        config = tmp_path / f"apolo-{round_}"  # a fresh job: an empty config folder
        config.mkdir()
        env.vars.update(APOLO_CONFIG=str(config), NEUROMATION_CONFIG=str(config))
        aliases += [f"r{round_}j{j}" for j in range(6)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "wabucketref", "--bucket", env.bucket, "--project-name", "p", "-q", "upload",
                 str(src), "-n", "ds", "-t", "dataset", "-a", alias],
                env=env.vars, cwd=env.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for alias in aliases[-6:]
        ]
        failures += [p.communicate(timeout=120)[1] for p in procs if p.wait(timeout=120) != 0]
    assert not failures, failures
    # every upload is whole in the test's bucket; the other project's bucket of the same name is untouched
    keys = raw.keys()
    for alias in aliases:
        assert f"dataset/ds/.wabucketref/{alias}.jsonl" in keys, (alias, keys)
        got = {k.split(f"dataset/ds/{alias}/", 1)[1] for k in keys if k.startswith(f"dataset/ds/{alias}/")}
        assert got == set(tree_hashes(src)), alias
    assert raw.read(f"dataset/ds/{aliases[-1]}/a.txt") == (src / "a.txt").read_bytes()
    assert plat.s3.client().list_objects_v2(Bucket=decoy.backing_name).get("KeyCount") == 0
    # what each command asked the platform: credentials of the test's bucket, in the test's project
    bucket_requests = [r for r in plat.requests if "/buckets" in r["path"]]
    assert {r["query"].get("project_name") for r in bucket_requests} == {plat.project}, bucket_requests
    assert not [r for r in bucket_requests if decoy.id in r["path"]], bucket_requests
    creds = [r for r in bucket_requests if r["path"].endswith("/make_tmp_credentials")]
    assert len(creds) >= len(aliases) and all(
        r["method"] == "POST" and r["status"] == 200 and r["authorized"]
        and r["path"].split("/")[-2] in (ours.id, ours.name) for r in creds), creds


def test_a_cache_folder_that_cannot_be_made_only_costs_speed(plat_env, tmp_path):
    """XDG_CACHE_HOME names a file (or HOME is /dev/null): commands work, nothing is cached."""
    env, plat = plat_env, plat_env.extra["platform"]
    (tmp_path / "a-file").write_text("not a folder")
    env.vars["XDG_CACHE_HOME"] = str(tmp_path / "a-file")
    upload(env, tmp_path)
    plat.clear_calls()
    download(env, tmp_path)
    assert plat.calls_matching("make_tmp_credentials", "POST")


def test_org_name_in_apolo_toml_with_a_passed_config_says_what_to_change(plat_env, tmp_path):
    """apolo_sdk refuses to log in from a passed config while .apolo.toml pins an org (a RuntimeError):
    one line saying what to remove, not the SDK's exception."""
    (plat_env.cwd / ".apolo.toml").write_text('[job]\norg-name = "other-org"\n')
    src = make_tree(tmp_path / "src", big=False)
    proc = plat_env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "a1", env={"WABUCKET_CACHE": "0"})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("remove org-name from .apolo.toml in jobs started with pass_config")
    assert "RuntimeError" not in proc.stderr and "Traceback" not in proc.stderr


def test_credentials_about_to_expire_are_not_reused(plat_env, tmp_path):
    env, plat = plat_env, plat_env.extra["platform"]
    plat.credentials_ttl = 120.0  # under the 5 minutes a cached session must have left
    try:
        upload(env, tmp_path)
        plat.clear_calls()
        download(env, tmp_path)
        assert plat.calls_matching("make_tmp_credentials", "POST")
    finally:
        plat.credentials_ttl = None


def test_deleted_bucket_is_reported_not_served_from_the_cache(plat_env, tmp_path):
    env, plat = plat_env, plat_env.extra["platform"]
    upload(env, tmp_path)
    plat._drop_backing(plat.backing_bucket(env.bucket))
    plat.buckets.pop(plat.bucket(env.bucket).id)
    proc = env.wabucket("download", "dataset", "ds", "a1", "-d", str(tmp_path / "dl"))
    assert proc.returncode != 0
    assert "platform bucket not found" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ Azure platform buckets (Azurite)


@pytest.fixture
def azure_env(env, request, tmp_path):
    return use_backend(env, "platform-azure", request, tmp_path)


def test_azure_bucket_with_the_account_key(azure_env, tmp_path):
    """Some Azure buckets come with the account key as `credential` instead of a SAS token."""
    from tests.servers.azurite import ACCOUNT_KEY

    env, plat = azure_env, azure_env.extra["platform"]
    plat.azure_account_key = True
    try:
        src = make_tree(tmp_path / "src")
        up = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "k1", check=True)
        down = env.wabucket("download", "dataset", "ds", "k1", "-d", str(tmp_path / "dl"), check=True)
    finally:
        plat.azure_account_key = False
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    assert plat.calls_matching("make_tmp_credentials")
    for proc in (up, down):
        assert ACCOUNT_KEY not in proc.stdout + proc.stderr


def test_azure_sas_tokens_are_renewed(azure_env, tmp_path):
    """SAS tokens that live 2 s (Azurite enforces the expiry) and a transfer that outlives them: the
    upload is paused (SIGSTOP) mid-transfer until every token it was given has expired, then goes on
    and asks the platform for new ones; the next command does not trust the cached, expired one."""
    import signal
    import subprocess
    import sys
    import time

    env, plat = azure_env, azure_env.extra["platform"]
    src = tmp_path / "src"
    for i in range(1200):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i}.txt").write_text(f"file {i}\n" * 100)
    container = plat.azure.container(plat.backing_bucket(env.bucket))

    def stored() -> int:
        return sum(1 for _ in container.list_blobs(name_starts_with="dataset/ds/r1/"))

    plat.credentials_ttl = 2
    plat.clear_calls()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wabucketref", "--bucket", env.bucket, "--project-name", env.vars["WANDB_PROJECT"],
             "--concurrency", "1", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "r1"],
            env=env.vars, cwd=env.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            while stored() == 0 and proc.poll() is None:  # under way, with its first token
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGSTOP)
            stored_at_pause = stored()
            tokens_before_pause = len(plat.calls_matching("make_tmp_credentials"))
            time.sleep(plat.credentials_ttl + 1)  # every token issued so far has expired
            os.kill(proc.pid, signal.SIGCONT)
            _out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        uploads = len(plat.calls_matching("make_tmp_credentials"))
        dest = download(env, tmp_path, alias="r1")
    finally:
        plat.credentials_ttl = None
    assert proc.returncode == 0, err
    assert 0 < stored_at_pause < 1200, stored_at_pause  # paused mid-transfer
    assert tree_hashes(dest) == tree_hashes(src)
    assert uploads > tokens_before_pause >= 1  # new tokens after the pause
    assert len(plat.calls_matching("make_tmp_credentials")) > uploads


@pytest.mark.parametrize("endpoint, account", [
    ("https://mlteam.blob.core.windows.net", "mlteam"),
    ("https://mlteam.blob.core.windows.net/", "mlteam"),
    ("http://127.0.0.1:10000/devstoreaccount1", "devstoreaccount1"),
])
def test_azure_account_from_endpoint(endpoint, account):
    from wabucketref.storage.azure import account_of as _azure_account

    assert _azure_account(endpoint) == account
