"""One test body against every bucket kind (local folder, s3:// on SeaweedFS, platform bucket through
the real apolo_sdk and a fake control plane), with W&B offline and online (a W&B-protocol backend)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import RawBucket, make_tree, online, outputs, tree_hashes, use_backend


def wandb_api(env, monkeypatch):
    """wandb.Api() in this process, configured like the test's CLI runs (never ~/.netrc or ~/.cache); the
    WANDB_* variables it needs are set in this process's environment until the end of the test only."""
    import wandb

    for k, v in env.vars.items():
        if k.startswith("WANDB_") and k != "WANDB_PROJECT":
            monkeypatch.setenv(k, v)
    return wandb.Api(api_key=env.vars["WANDB_API_KEY"], overrides={"base_url": env.vars["WANDB_BASE_URL"]})


def upload(env, src: Path, *args: str) -> dict[str, str]:
    proc = env.wabucket("upload", str(src), *args, check=True)
    return outputs(proc.stdout)


def test_roundtrip_offline(any_server_env, tmp_path):
    """Upload then download with W&B offline: the bucket's own manifests resolve the alias."""
    env = any_server_env
    src = make_tree(tmp_path / "src")
    out = upload(env, src, "-n", "mnist", "-t", "dataset", "-a", "first")
    assert out == {"artifact_name": "mnist", "artifact_type": "dataset", "artifact_alias": "first"}

    proc = env.wabucket("download", "dataset", "mnist", "first", check=True)
    dest = Path(env.cwd, proc.stdout.strip())
    assert dest == env.cwd / "dataset" / "mnist" / "first"
    assert tree_hashes(dest) == tree_hashes(src)
    # rclone answers a ranged GET with the whole object (HTTP allows it): files then come whole
    assert ("whole objects" in proc.stderr) == (env.kind == "s3-rclone"), proc.stderr

    # a plain `latest` offline picks the newest upload
    src2 = make_tree(tmp_path / "src2", seed=2, big=False)
    upload(env, src2, "-n", "mnist", "-t", "dataset", "-a", "second")
    proc = env.wabucket("download", "dataset", "mnist", "latest", "-d", str(tmp_path / "latest"), check=True)
    assert proc.stdout.strip() == str(tmp_path / "latest")
    assert tree_hashes(tmp_path / "latest") == tree_hashes(src2)
    # the offline run was recorded for `wandb sync`
    assert list((env.cwd / "wandb").glob("offline-run-*"))


def test_wandb_disabled_moves_bytes_without_wandb(env, tmp_path):
    """WANDB_MODE=disabled: the bucket round trip works, wandb is never imported and no run is recorded;
    --no-reff, which would store the files in W&B, is refused instead of silently storing nothing."""
    env.vars["WANDB_MODE"] = "disabled"
    src = make_tree(tmp_path / "src")
    dest = tmp_path / "dl"
    code = f"""
import sys
from wabucketref.cli import run
for argv in (["upload", {str(src)!r}, "-n", "ds", "-t", "dataset", "-a", "d1"],
             ["download", "dataset", "ds", "d1", "-d", {str(dest)!r}]):
    assert run(["--bucket", {env.bucket!r}, "--project-name", "proj", *argv]) == 0
print("wandb imported:", "wandb" in sys.modules)
"""
    proc = env.python(code)
    assert proc.stdout.strip().endswith("wandb imported: False"), proc.stdout + proc.stderr
    assert tree_hashes(dest) == tree_hashes(src)
    assert not (env.cwd / "wandb").exists()

    refused = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "d2", "--no-reff")
    assert refused.returncode == 2, refused.stderr
    assert "WANDB_MODE=disabled" in refused.stderr and "Traceback" not in refused.stderr


def test_sdk_records_in_the_scripts_own_run_whatever_wandb_mode_says(env, wandb_server, tmp_path, monkeypatch):
    """A script that starts its own online run records the artifact there, even with WANDB_MODE=disabled
    in its environment (wandb.init(mode=...) wins over the variable)."""
    env = online(env, wandb_server)
    env.vars["WANDB_MODE"] = "disabled"
    src = make_tree(tmp_path / "src", big=False)
    code = f"""
import wandb
from wabucketref import WaBucketRefAPI
run = wandb.init(mode="online", name="trainer", settings=wandb.Settings(console="off", silent=True))
with WaBucketRefAPI(bucket={env.bucket!r}, project_name={env.vars['WANDB_PROJECT']!r}) as api:
    api.upload_artifact({str(src)!r}, "ds", "dataset", "u1")
run.finish()
"""
    env.python(code)
    del env.vars["WANDB_MODE"]  # wandb_api copies WANDB_* into this process
    art = wandb_api(env, monkeypatch).artifact(f"{env.vars['WANDB_ENTITY']}/{env.vars['WANDB_PROJECT']}/ds:u1", type="dataset")
    assert art.logged_by().name == "trainer"


def test_downloaded_files_follow_the_umask(env, tmp_path):
    """Files land with the mode any new file gets (0666 minus the umask), whatever their size."""
    import os
    import stat

    src = make_tree(tmp_path / "src")
    upload(env, src, "-n", "perm", "-t", "dataset", "-a", "p1")
    old = os.umask(0o002)  # group-writable, as on shared team folders; the CLI inherits it
    try:
        env.wabucket("download", "dataset", "perm", "p1", "-d", str(tmp_path / "dl"), check=True)
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path / "dl").as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in (tmp_path / "dl").rglob("*") if p.is_file()}
    assert modes["models/weights.bin"] == modes["nested/small.bin"] == modes["empty.bin"] == 0o664, modes


@pytest.fixture
def online_env(backend_env, wandb_server):
    return online(backend_env, wandb_server)


def test_roundtrip_online_with_lineage(online_env, tmp_path, monkeypatch):
    env = online_env
    src = make_tree(tmp_path / "src")
    out = upload(env, src, "-n", "mnist", "-t", "dataset", "-a", "v1data", "-m", "source=unit-test",
                 "-s", "train")
    assert out == {"artifact_name_train": "mnist", "artifact_type_train": "dataset", "artifact_alias_train": "v1data"}

    dest = tmp_path / "dl"
    proc = env.wabucket("--run-name", "consumer", "download", "dataset", "mnist", "latest", "-d", str(dest), check=True)
    assert proc.stdout.strip() == str(dest)
    assert tree_hashes(dest) == tree_hashes(src)
    # one summary, for the pass W&B confirmed (begun from the bucket's manifest before W&B answered)
    assert [line for line in proc.stderr.splitlines() if line.startswith("wabucket: downloaded ")] == [
        line for line in proc.stderr.splitlines() if line.startswith(f"wabucket: downloaded {len(tree_hashes(src))} files")
    ] and proc.stderr.count("wabucket: downloaded ") == 1, proc.stderr

    api = wandb_api(env, monkeypatch)
    art = api.artifact(f"{env.vars['WANDB_ENTITY']}/{env.vars['WANDB_PROJECT']}/mnist:v1data", type="dataset")
    assert "latest" in art.aliases
    assert art.metadata["source"] == "unit-test"
    ref = art.manifest.entries["platform_blob"].ref
    if env.kind == "s3":
        assert ref == f"s3://{env.extra['s3_bucket']}/some/prefix/dataset/mnist/v1data"
    elif env.kind.startswith("platform"):
        assert ref.startswith("blob://") and ref.endswith(f"/{env.bucket}/dataset/mnist/v1data")
    else:
        assert ref == (Path(env.bucket).resolve() / "dataset/mnist/v1data").as_uri()
    manifest_lines = Path(art.get_entry("wabucketref.manifest.jsonl").download(root=str(tmp_path / "m"))).read_text().splitlines()
    listed = {json.loads(line)["path"]: json.loads(line) for line in manifest_lines[1:]}
    assert {p: e["sha256"] for p, e in listed.items()} == tree_hashes(src)
    assert art.logged_by().job_type == "upload"
    assert [r.name for r in art.used_by()] == ["consumer"]


def test_version_follows_content(online_env, tmp_path, monkeypatch):
    """Same content under a new alias: no new version; changed content: a new one, `latest` moves."""
    env = online_env
    src = make_tree(tmp_path / "src", big=False)
    upload(env, src, "-n", "ds", "-t", "dataset", "-a", "one")
    upload(env, src, "-n", "ds", "-t", "dataset", "-a", "two")
    (src / "a.txt").write_text("changed")
    upload(env, src, "-n", "ds", "-t", "dataset", "-a", "three")
    api = wandb_api(env, monkeypatch)
    ent = env.vars["WANDB_ENTITY"]
    proj = env.vars["WANDB_PROJECT"]
    one, two, three = (api.artifact(f"{ent}/{proj}/ds:{a}") for a in ("one", "two", "three"))
    assert one.version == two.version == "v0"
    assert three.version == "v1"
    assert "latest" in three.aliases and "latest" not in one.aliases
    # and each alias downloads its own bytes
    env.wabucket("download", "dataset", "ds", "one", "-d", str(tmp_path / "one"), check=True)
    assert (tmp_path / "one" / "a.txt").read_text() == "hello 0\n"
    env.wabucket("download", "dataset", "ds", "three", "-d", str(tmp_path / "three"), check=True)
    assert (tmp_path / "three" / "a.txt").read_text() == "changed"


def test_existing_alias_needs_overwrite(any_server_env, tmp_path):
    env = any_server_env
    src = make_tree(tmp_path / "src", big=False)
    upload(env, src, "-n", "ds", "-t", "dataset", "-a", "fixed")
    (src / "a.txt").write_text("new")
    (src / "empty.bin").unlink()
    proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "fixed")
    assert proc.returncode == 1
    assert "already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    upload(env, src, "-n", "ds", "-t", "dataset", "-a", "fixed", "--overwrite")
    env.wabucket("download", "dataset", "ds", "fixed", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)  # the removed file is gone from the bucket too

    # The new content has a folder where the old had a file, and a file where the old had a
    # folder: where keys are paths on a disk (rclone, a local folder) the old ones are in the way.
    (src / "a.txt").unlink()
    (src / "a.txt").mkdir()
    (src / "a.txt" / "inner").write_text("now a folder")
    shutil.rmtree(src / "nested")
    (src / "nested").write_text("now a file")
    upload(env, src, "-n", "ds", "-t", "dataset", "-a", "fixed", "--overwrite")
    env.wabucket("download", "dataset", "ds", "fixed", "-d", str(tmp_path / "dl2"), check=True)
    assert tree_hashes(tmp_path / "dl2") == tree_hashes(src)


def test_default_alias_is_uuid4_and_run_config_hash(env, tmp_path):
    import uuid

    src = make_tree(tmp_path / "src", big=False)
    alias = upload(env, src, "-n", "ds", "-t", "dataset")["artifact_alias"]
    assert uuid.UUID(alias).version == 4
    alias = upload(env, src, "-n", "ds", "-t", "dataset", "-a", "!run-config-hash", "-m", "lr=0.1", "-m", "epochs=3")[
        "artifact_alias"
    ]
    assert alias == hashlib.sha256(b"epochs=3 lr=0.1").hexdigest()  # the original tool's formula


def test_link_registers_existing_folder(any_server_env, tmp_path):
    env = any_server_env
    src = make_tree(tmp_path / "src", big=False)
    upload(env, src, "-n", "raw", "-t", "dataset", "-a", "orig")
    out = outputs(env.wabucket("link", "dataset/raw/orig", "-n", "linked", "-t", "dataset", "-a", "l1", "-s", "x",
                               check=True).stdout)
    assert out == {"artifact_name_x": "linked", "artifact_type_x": "dataset", "artifact_alias_x": "l1"}
    env.wabucket("download", "dataset", "linked", "l1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)

    # an alias with a record or folder in the bucket is replaced only with --overwrite, as for upload
    taken = env.wabucket("link", "dataset/raw/orig", "-n", "raw", "-t", "dataset", "-a", "orig")
    assert taken.returncode == 1 and "already exists" in taken.stderr and "--overwrite" in taken.stderr, taken.stderr
    again = env.wabucket("link", "dataset/raw/orig", "-n", "linked", "-t", "dataset", "-a", "l1")
    assert again.returncode == 1 and "already exists" in again.stderr, again.stderr
    env.wabucket("link", "dataset/raw/orig", "-n", "linked", "-t", "dataset", "-a", "l1", "--overwrite", check=True)

    missing = env.wabucket("link", "no/such/folder", "-n", "linked", "-t", "dataset")
    assert missing.returncode == 1 and "does not exist" in missing.stderr and missing.stdout == ""
    a_file = env.wabucket("link", "dataset/raw/orig/a.txt", "-n", "linked", "-t", "dataset")
    assert a_file.returncode == 2 and "not a folder" in a_file.stderr
    # a folder holding artifacts (their .wabucketref records) is not data: it could never verify
    own = env.wabucket("link", "dataset/raw", "-n", "linked", "-t", "dataset")
    assert own.returncode == 2 and "holds wabucketref's own records" in own.stderr, own.stderr


def test_link_of_a_folder_outside_the_bucket_says_offline_cannot_find_it(env, tmp_path):
    """A full URI outside --bucket: W&B records it, but the bucket keeps no record of it, so an
    offline download cannot resolve the alias. The link says so."""
    elsewhere = make_tree(tmp_path / "elsewhere", big=False)
    proc = env.wabucket("link", elsewhere.as_uri(), "-n", "ext", "-t", "dataset", "-a", "e1", check=True)
    assert "outside --bucket" in proc.stderr and "offline downloads cannot resolve ext:e1" in proc.stderr, proc.stderr
    offline = env.wabucket("download", "dataset", "ext", "e1", "-d", str(tmp_path / "dl"))
    assert offline.returncode == 1 and "no manifest for dataset/ext:e1" in offline.stderr, offline.stderr


@pytest.mark.parametrize("kind", ["s3", "s3-moto"])  # rclone keeps keys as paths on disk: no `dir/` objects
def test_link_skips_the_objects_of_empty_folders(env, request, tmp_path, kind):
    """S3 consoles' "Create folder" and apolo_sdk's upload_dir write `dir/` objects; obstore lists
    them as `dir`, which cannot be read. They are folders, not files; a real empty object stays."""
    use_backend(env, kind, request, tmp_path)
    raw = RawBucket(env)
    files = {"raw/mk/": b"", "raw/mk/d1/": b"", "raw/mk/d1/f.txt": b"f", "raw/mk/empty-folder/": b"",
             "raw/mk/top.txt": b"top", "raw/mk/empty-file": b""}
    for key, data in files.items():
        raw.write(key, data)
    env.wabucket("link", "raw/mk", "-n", "mk", "-t", "dataset", "-a", "m1", check=True)
    env.wabucket("download", "dataset", "mk", "m1", "-d", str(tmp_path / "mk"), check=True)
    want = {k.removeprefix("raw/mk/"): hashlib.sha256(v).hexdigest() for k, v in files.items() if not k.endswith("/")}
    assert tree_hashes(tmp_path / "mk") == want


def test_download_detects_tampering(any_server_env, tmp_path):
    """A byte changed in the bucket: download fails naming the file and leaves no file under its name."""
    env = any_server_env
    src = make_tree(tmp_path / "src", big=False)
    upload(env, src, "-n", "ds", "-t", "dataset", "-a", "t1")
    tamper(env, "dataset/ds/t1/nested/small.bin")
    dest = tmp_path / "dl"
    proc = env.wabucket("download", "dataset", "ds", "t1", "-d", str(dest))
    assert proc.returncode == 1
    assert "nested/small.bin" in proc.stderr and "Traceback" not in proc.stderr
    assert "wabucket: downloaded " not in proc.stderr  # no summary of success before the error
    assert not (dest / "nested" / "small.bin").exists()
    assert not [p for p in dest.rglob("*") if p.name.endswith(".wabucket-part")]


def tamper(env, key: str) -> None:
    """Flip one byte of an object, keeping its size, straight in the storage (not through the tool)."""
    raw = RawBucket(env)
    data = bytearray(raw.read(key))
    data[0] ^= 0xFF
    raw.write(key, bytes(data))


def test_download_prefetch_of_another_version_is_discarded(env, wandb_server, tmp_path):
    """Downloads start from the bucket's newest manifest while W&B resolves `latest`; when W&B names
    another version, what was fetched for the wrong one is removed and the right bytes land."""
    env = online(env, wandb_server)
    one = make_tree(tmp_path / "one", seed=1, big=False)
    upload(env, one, "-n", "ds", "-t", "dataset", "-a", "one")
    two = make_tree(tmp_path / "two", seed=2, big=False)
    (two / "only-in-two.txt").write_text("not part of version one")
    # recorded in the bucket's manifests, but not (yet) in W&B
    env.wabucket("upload", str(two), "-n", "ds", "-t", "dataset", "-a", "two", check=True, env={"WANDB_MODE": "offline"})
    dest = tmp_path / "dl"
    env.wabucket("download", "dataset", "ds", "latest", "-d", str(dest), check=True)
    assert tree_hashes(dest) == tree_hashes(one)


def test_longest_file_names_round_trip(env, tmp_path):
    """A 250-byte name (near the file system's 255) downloads: its part file is named by a digest,
    and a part file such a name left behind by a killed run is cleaned up."""
    from wabucketref.landing import PART_SUFFIX
    from wabucketref.landing import part_stem as _part_stem

    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    long_name = "n" * 246 + ".bin"
    (src / "deep" / long_name).write_bytes(os.urandom(5 << 20))  # a ranged download, through a part file
    (src / ("é" * 125)).write_bytes(b"250 bytes of name")
    upload(env, src, "-n", "ds", "-t", "dataset", "-a", "long")
    dest = tmp_path / "dl"
    left = dest / "deep" / f".{_part_stem(long_name)}.0123abcd{PART_SUFFIX}"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"from a killed run")
    env.wabucket("download", "dataset", "ds", "long", "-d", str(dest), check=True)
    assert tree_hashes(dest) == tree_hashes(src)


def test_no_reff_stores_the_files_in_wandb(env, wandb_server, tmp_path):
    """--no-reff (the original tool's option): the files go to W&B storage with the manifest; the
    bucket is untouched; download brings them back verified, and verify --local checks a copy."""
    env = online(env, wandb_server)
    src = make_tree(tmp_path / "src", big=False)
    out = upload(env, src, "-n", "ds", "-t", "dataset", "-a", "n1", "--no-reff")
    assert out["artifact_alias"] == "n1"
    assert not Path(env.bucket).exists() or not any(Path(env.bucket).rglob("*"))
    env.wabucket("download", "dataset", "ds", "n1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    env.wabucket("verify", "dataset", "ds", "n1", "--local", str(tmp_path / "dl"), check=True)
    (tmp_path / "dl" / "a.txt").write_text("changed")
    bad = env.wabucket("verify", "dataset", "ds", "n1", "--local", str(tmp_path / "dl"))
    assert bad.returncode == 1 and "a.txt: content in" in bad.stderr, bad.stderr


def _wandb_script(env, body: str) -> None:
    """A user's own wandb script against the test's W&B backend and project."""
    env.python(f"import wandb\nrun = wandb.init(project={env.vars['WANDB_PROJECT']!r}, "
               f"settings=wandb.Settings(silent=True))\n{body}\nrun.finish()\n")


def test_plain_wandb_artifacts_download_complete_or_fail(env, wandb_server, tmp_path):
    """An artifact made by wandb alone (no bucket, no wabucketref manifest): its files come through
    wandb, and each one W&B lists must arrive (wandb only warns when it cannot write one)."""
    env = online(env, wandb_server)
    src = make_tree(tmp_path / "src", big=False)
    _wandb_script(env, f"art = wandb.Artifact('plain', 'dataset')\nart.add_dir({str(src)!r})\nrun.log_artifact(art)")
    env.wabucket("download", "dataset", "plain", "latest", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    (tmp_path / "blocked" / "a.txt").mkdir(parents=True)  # a folder where a file must go
    bad = env.wabucket("download", "dataset", "plain", "latest", "-d", str(tmp_path / "blocked"))
    assert bad.returncode == 1 and "a.txt: W&B did not bring it as a file" in bad.stderr, bad.stderr


def test_files_added_in_wandb_to_a_bucket_version_come_too(env, wandb_server, tmp_path):
    """A version of a wabucketref artifact edited in W&B (a draft with a file added): download brings
    the bucket's files and the one W&B stores; verify checks the bucket's and says W&B checks the other."""
    env = online(env, wandb_server)
    src = make_tree(tmp_path / "src", big=False)
    upload(env, src, "-n", "ds", "-t", "dataset", "-a", "first")
    notes = tmp_path / "notes.txt"
    notes.write_text("added in W&B")
    _wandb_script(env, f"d = run.use_artifact('ds:first').new_draft()\nd.add_file({str(notes)!r}, name='notes.txt')\n"
                       "run.log_artifact(d, aliases=['edited'])")
    proc = env.wabucket("download", "dataset", "ds", "edited", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == {**tree_hashes(src), "notes.txt": hashlib.sha256(b"added in W&B").hexdigest()}
    assert "stored in W&B itself" in proc.stderr, proc.stderr
    checked = env.wabucket("verify", "dataset", "ds", "edited", check=True)
    assert "1 file(s) stored in W&B itself" in checked.stderr, checked.stderr
    env.wabucket("verify", "dataset", "ds", "edited", "--local", str(tmp_path / "dl"), check=True)
