"""Hostile or odd content: crafted manifests, bucket listings and W&B artifacts must not write outside DEST;
symlinks in SRC_DIR; secrets never show up in output, logs, run dirs or W&B."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.conftest import Env, make_tree, one_error_line, online, tree_hashes, use_backend
from tests.servers.faultproxy import CredentialGate, FaultProxy, IssuedCredential, issuing_platform

FORMAT = "wabucketref-manifest/1"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(entries: list[tuple[str, bytes]], **info) -> bytes:
    lines = [json.dumps({"format": FORMAT, **info})]
    lines += [json.dumps({"path": p, "size": len(d), "sha256": sha(d)}) for p, d in entries]
    return ("\n".join(lines) + "\n").encode()


def files_outside(tmp_path: Path, allowed: list[Path], before: set[Path]) -> list[Path]:
    """Files under tmp_path that appeared since `before`, outside the allowed folders (and wandb's own)."""
    allowed = [*allowed, tmp_path / "home", tmp_path / "work" / "wandb", tmp_path / "wandb", tmp_path / "wandb-cache"]
    out = []
    for p in tmp_path.rglob("*"):
        if p in before or p.is_dir():
            continue
        if not any(a == p or a in p.parents for a in allowed):
            out.append(p)
    return out


def snapshot(tmp_path: Path) -> set[Path]:
    return set(tmp_path.rglob("*"))


# ------------------------------------------------------------------ crafted manifests in the bucket (offline)


BAD_PATHS = {
    "absolute": ["/tmp/wabucket-evil-abs.txt"],
    "dotdot": ["../evil.txt"],
    "dotdot-deep": ["sub/../../evil.txt"],
    "dot": ["./evil.txt"],
    "backslash": ["..\\evil.txt"],
    "backslash-abs": ["\\evil.txt"],
    "drive": ["C:evil.txt"],
    "empty-segment": ["sub//evil.txt"],
    "nul": ["evil\u0000.txt"],
    "case-collision": ["Readme.txt", "README.txt"],
    "case-collision-folder": ["Data/x.txt", "data/x.txt"],
}


@pytest.mark.parametrize("kind", list(BAD_PATHS))
def test_crafted_bucket_manifest_offline(env, tmp_path, kind):
    """A bucket's .wabucketref/ALIAS.jsonl naming unsafe paths: download refuses it and writes nothing anywhere."""
    bucket = Path(env.bucket)
    data_root = bucket / "dataset" / "evil" / "x1"
    data_root.mkdir(parents=True)
    entries = [(p, b"pwned " + p.encode()) for p in BAD_PATHS[kind]]
    for i, (p, d) in enumerate(entries):
        (data_root / f"plain{i}.txt").write_bytes(d)  # something to copy if the tool went ahead
    meta = bucket / "dataset" / "evil" / ".wabucketref" / "x1.jsonl"
    meta.parent.mkdir(parents=True)
    meta.write_bytes(manifest_bytes(entries, root="dataset/evil/x1", alias="x1", name="evil", type="dataset"))
    before = snapshot(tmp_path)
    dest = tmp_path / "deep" / "dest"
    proc = env.wabucket("download", "dataset", "evil", "x1", "-d", str(dest))
    assert proc.returncode == 1, proc.stderr
    one_error_line(proc, "unsafe path" if "collision" not in kind else "collide")
    assert proc.stdout == ""
    assert files_outside(tmp_path, [dest], before) == []
    assert not dest.exists() or not [p for p in dest.rglob("*") if p.is_file()]
    assert not Path("/tmp/wabucket-evil-abs.txt").exists()


@pytest.mark.parametrize("root", ["../outside", "/etc", "dataset/evil/../../../outside"])
def test_crafted_bucket_manifest_root_outside_bucket(env, tmp_path, root):
    """The manifest's `root` pointing out of the bucket must not read files from outside it."""
    bucket = Path(env.bucket)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(b"secret outside the bucket")
    meta = bucket / "dataset" / "evil" / ".wabucketref" / "x1.jsonl"
    meta.parent.mkdir(parents=True)
    meta.write_bytes(manifest_bytes([("passwd", b"secret outside the bucket")], root=root))
    dest = tmp_path / "dest"
    proc = env.wabucket("download", "dataset", "evil", "x1", "-d", str(dest))
    assert proc.returncode == 1, proc.stderr
    one_error_line(proc)
    assert not (dest / "passwd").exists()


def test_dest_symlinks_are_not_followed_outside(env, tmp_path):
    """A DEST that already holds symlinks to outside: the download never writes through them."""
    src = make_tree(tmp_path / "src", big=False)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "s1", check=True)
    outside = tmp_path / "outside"
    (outside / "deeper").mkdir(parents=True)
    (outside / "victim.txt").write_text("keep me")
    dest = tmp_path / "dest"
    (dest / "nested").mkdir(parents=True)
    (dest / "a.txt").symlink_to(outside / "victim.txt")  # a file the artifact has
    (dest / "nested" / "deeper").symlink_to(outside / "deeper")  # a folder the artifact has
    before = {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    proc = env.wabucket("download", "dataset", "ds", "s1", "-d", str(dest))
    assert "Traceback" not in proc.stderr
    assert {p: p.read_bytes() for p in outside.rglob("*") if p.is_file()} == before
    if proc.returncode == 0:  # replacing the links by the artifact's files is fine too
        assert tree_hashes(dest) == tree_hashes(src) and not (dest / "a.txt").is_symlink()
    else:
        assert proc.returncode == 1
        one_error_line(proc)


@pytest.mark.parametrize("in_the_way", ["file-for-folder", "folder-for-file"])
def test_dest_entries_in_the_way(env, tmp_path, in_the_way):
    """A DEST holding a file where the artifact needs a folder, or a folder where it needs a file: one line
    naming it, at once (a local conflict is not retried), and that entry left as it was."""
    src = make_tree(tmp_path / "src", big=False)
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "w1", check=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    if in_the_way == "file-for-folder":
        (dest / "nested").write_text("mine")
        says = ["nested: a file is in the way of the folder nested/"]
    else:
        (dest / "a.txt").mkdir()
        (dest / "a.txt" / "mine.txt").write_text("mine")
        says = ["download of a.txt failed: Is a directory", "a.txt"]
    proc = env.wabucket("download", "dataset", "ds", "w1", "-d", str(dest))
    assert proc.returncode == 1 and proc.stdout == ""
    one_error_line(proc, *says)
    assert "retrying" not in proc.stderr
    assert (dest / "nested").read_text() == "mine" if in_the_way == "file-for-folder" else \
        (dest / "a.txt" / "mine.txt").read_text() == "mine"


# ------------------------------------------------------------------ crafted W&B artifacts (online)


CRAFT = """
import json, sys, wandb
from wandb.sdk.artifacts.artifact_manifest_entry import ArtifactManifestEntry
spec = json.loads(sys.argv[1])
run = wandb.init(project=spec["project"], job_type="craft", settings=wandb.Settings(console="off", silent=True))
art = wandb.Artifact(spec["name"], type="dataset")
if spec.get("ref"):
    art.manifest.add_entry(ArtifactManifestEntry(path="platform_blob", ref=spec["ref"], digest="d" * 32, size=1))
if spec.get("manifest"):
    art.add_file(spec["manifest"], name="wabucketref.manifest.jsonl")
for name, local in spec.get("files", {}).items():
    art.add_file(local, name="placeholder")
    entry = art.manifest.entries.pop("placeholder")
    entry.path = name
    art.manifest.entries[name] = entry
run.log_artifact(art, aliases=[spec["alias"]])
art.wait()
run.finish()
"""


def craft(env: Env, tmp_path: Path, **spec) -> None:
    import subprocess
    import sys

    script = tmp_path / "craft.py"
    script.write_text(CRAFT)
    spec.setdefault("project", env.vars["WANDB_PROJECT"])
    proc = subprocess.run([sys.executable, str(script), json.dumps(spec)], env=env.vars, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def online_env(env, wandb_server) -> Env:
    return online(env, wandb_server)


@pytest.mark.parametrize("paths", [["../evil.txt"], ["/tmp/wabucket-evil-abs2.txt"], ["a\\..\\..\\evil.txt"],
                                   ["Same.txt", "same.txt"]], ids=["dotdot", "absolute", "backslash", "case"])
def test_crafted_wandb_manifest(online_env, tmp_path, paths):
    """A W&B artifact whose content manifest names unsafe paths, referring to real bucket data."""
    env = online_env
    data = Path(env.bucket) / "dataset" / "evil" / "x1"
    data.mkdir(parents=True)
    entries = [(p, b"pwned") for p in paths]
    for i, (_, d) in enumerate(entries):
        (data / f"f{i}.txt").write_bytes(d)
    mpath = tmp_path / "m.jsonl"
    mpath.write_bytes(manifest_bytes(entries))
    craft(env, tmp_path, name="evil", alias="x1", ref=data.resolve().as_uri(), manifest=str(mpath))
    before = snapshot(tmp_path)
    dest = tmp_path / "dest"
    proc = env.wabucket("download", "dataset", "evil", "x1", "-d", str(dest))
    assert proc.returncode == 1, proc.stderr
    one_error_line(proc)
    assert files_outside(tmp_path, [dest], before) == []
    assert not [p for p in dest.rglob("*") if p.is_file()]
    assert not Path("/tmp/wabucket-evil-abs2.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "sub/../../evil.txt"])
def test_crafted_wandb_files_artifact(online_env, tmp_path, name):
    """An artifact stored in W&B itself (--no-reff kind) with an entry named to escape DEST."""
    env = online_env
    payload = tmp_path / "payload.txt"
    payload.write_bytes(b"pwned")
    good = tmp_path / "good.txt"
    good.write_bytes(b"fine")
    craft(env, tmp_path, name="evilfiles", alias="x1", files={name: str(payload), "ok.txt": str(good)})
    work = tmp_path / "w"
    dest = work / "a" / "dest"
    dest.parent.mkdir(parents=True)
    proc = env.wabucket("download", "dataset", "evilfiles", "x1", "-d", str(dest))
    assert "Traceback" not in proc.stderr
    escaped = [p for p in work.rglob("*") if p.is_file() and dest not in p.parents]
    assert escaped == [], f"written outside DEST: {escaped}"
    assert proc.returncode == 1, proc.stderr
    one_error_line(proc, name)


# Keys the storage can hold. SeaweedFS refuses keys with `.` or `..` segments (InvalidRequest) and folds `//`,
# so those reach the tool only through a manifest (tests above); a local folder can hold backslashes.
HOSTILE_KEYS = {
    "local": {"bs": ["..\\escape.txt"], "bs2": ["sub\\..\\..\\escape.txt"], "cs": ["File.txt", "file.txt"]},
    "s3": {"cs": ["File.txt", "file.txt"], "cs2": ["Dir/a.txt", "dir/a.txt"]},
}


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_hostile_keys_in_bucket_listing(request, env, tmp_path, wandb_server, kind):
    """Objects whose names hold backslashes or collide when case-folded: `link` refuses to register them and an
    old-style artifact (a bare reference, listed at download time) is refused, writing nothing outside DEST."""
    env = online(use_backend(env, kind, request, tmp_path), wandb_server)
    if kind == "s3":
        seaweed = request.getfixturevalue("seaweed")
        client = seaweed.client()

        def put(key: str, data: bytes) -> None:
            client.put_object(Bucket=env.extra["s3_bucket"], Key="some/prefix/" + key, Body=data)

        def ref(folder: str) -> str:
            return f"s3://{env.extra['s3_bucket']}/some/prefix/dataset/{folder}/x1"
    else:
        def put(key: str, data: bytes) -> None:
            p = Path(env.bucket) / key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)

        def ref(folder: str) -> str:
            return (Path(env.bucket).resolve() / "dataset" / folder / "x1").as_uri()

    before = snapshot(tmp_path)
    for folder, keys in HOSTILE_KEYS[kind].items():
        put(f"dataset/{folder}/x1/ok.txt", b"ok")
        for key in keys:
            put(f"dataset/{folder}/x1/{key}", b"pwned")
        proc = env.wabucket("link", f"dataset/{folder}/x1", "-n", f"l{folder}", "-t", "dataset", "-a", "x1")
        assert proc.returncode in (1, 2), proc.stderr
        one_error_line(proc)
        assert wandb_server.artifact_versions(env.vars["WANDB_PROJECT"], f"l{folder}") == []
        craft(env, tmp_path, name=f"old{folder}", alias="x1", ref=ref(folder))
        dest = tmp_path / "dests" / folder
        proc = env.wabucket("download", "dataset", f"old{folder}", "x1", "-d", str(dest))
        assert proc.returncode == 1, proc.stderr
        one_error_line(proc)
        assert not [p for p in dest.rglob("*") if p.is_file() and p.read_bytes() == b"pwned"]
    assert not list(tmp_path.rglob("escape.txt"))
    assert files_outside(tmp_path, [tmp_path / "dests", tmp_path / "craft.py", Path(env.bucket)], before) == []


# ------------------------------------------------------------------ symlinks in SRC_DIR


@pytest.fixture
def linked_src(tmp_path) -> tuple[Path, Path]:
    src = make_tree(tmp_path / "src", big=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"OUTSIDE-SECRET-BYTES")
    return src, outside


def test_symlinks_inside_are_followed(env, linked_src):
    src, _ = linked_src
    (src / "link-to-file.txt").symlink_to("a.txt")
    (src / "abs-link.bin").symlink_to(src / "nested" / "small.bin")
    (src / "link-to-dir").symlink_to("nested/deeper")
    env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "l1", check=True)
    stored = Path(env.bucket) / "dataset" / "ds" / "l1"
    assert (stored / "link-to-file.txt").read_bytes() == (src / "a.txt").read_bytes()
    assert (stored / "link-to-dir" / "deepest" / "data.csv").read_bytes() == (src / "nested/deeper/deepest/data.csv").read_bytes()
    assert not [p for p in stored.rglob("*") if p.is_symlink()]
    dest = env.cwd.parent / "dl"
    env.wabucket("download", "dataset", "ds", "l1", "-d", str(dest), check=True)
    want = {**tree_hashes(src), **{f"link-to-dir/{k}": v for k, v in tree_hashes(src / "nested" / "deeper").items()}}
    assert tree_hashes(dest) == want  # the links' content, as plain files
    assert not [p for p in dest.rglob("*") if p.is_symlink()]


@pytest.mark.parametrize("link,target", [
    ("evil.txt", "outside/secret.txt"),
    ("nested/evil-dir", "outside"),
    ("up", ".."),
    ("nested/abs", "/etc/hostname"),
    ("dangling", "outside/nope.txt"),
], ids=["file-outside", "dir-outside", "parent", "absolute-outside", "dangling"])
def test_symlinks_outside_are_refused(env, linked_src, tmp_path, link, target):
    src, _outside = linked_src
    dst = tmp_path / target if not target.startswith(("/", "..")) else target
    (src / link).symlink_to(dst)
    proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "l1")
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc, link)
    bucket = Path(env.bucket)
    assert not [p for p in bucket.rglob("*") if p.is_file()]  # nothing uploaded, not even the marker


def test_symlink_loop_is_refused(env, linked_src):
    src, _ = linked_src
    (src / "nested" / "loop").symlink_to("..")
    proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "l1")
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc, "nested/loop")


def test_fifo_beside_files_does_not_hang(env, tmp_path):
    src = make_tree(tmp_path / "src", big=False)
    os.mkfifo(src / "nested" / "pipe")
    proc = env.wabucket("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "f1", timeout=60, check=True)
    assert "Traceback" not in proc.stderr
    assert not (Path(env.bucket) / "dataset/ds/f1/nested/pipe").exists()
    env.wabucket("download", "dataset", "ds", "f1", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


# ------------------------------------------------------------------ secrets


def _grep_tree(root: Path, secrets: dict[str, str]) -> list[str]:
    hits = []
    if not root.exists():
        return hits
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                data = p.read_bytes()
            except OSError:
                continue
            hits += [f"{what} in {p}" for what, value in secrets.items() if value.encode() in data]
    return hits


def test_secrets_never_leak(env, wandb_server, seaweed, tmp_path):
    """Every command, successful or failing, with known secrets: none of them appears in stdout, stderr, the
    files the commands leave (wandb run dirs and debug logs included), or the runs' config and tags in W&B."""
    env = online(env, wandb_server)
    env.vars.pop("WANDB_X_DISABLE_MACHINE_INFO", None)  # let wandb record what it records for users
    runs_before = {r["id"] for r in wandb_server.runs()}
    gate = CredentialGate(seaweed.access_key_id, seaweed.secret_access_key, ttl=600)
    static = IssuedCredential("AKIASTATIC" + os.urandom(5).hex().upper(), "s3-secret-" + os.urandom(12).hex(),
                              "s3-session-" + os.urandom(12).hex(), expires=float("inf"))
    gate.issued[static.access_key_id] = static
    results = []
    with FaultProxy(seaweed.endpoint_url, gate=gate) as proxy:
        plat = issuing_platform(seaweed, gate, proxy).start()
        try:
            pbucket = "b-sec" + os.urandom(4).hex()
            plat.add_bucket(pbucket)
            s3_bucket = "b-sec3" + os.urandom(4).hex()
            seaweed.create_bucket(s3_bucket)
            env.vars.update(plat.env(config_dir=tmp_path / "apolo-config"))
            env.vars.update(AWS_ACCESS_KEY_ID=static.access_key_id, AWS_SECRET_ACCESS_KEY=static.secret_access_key,
                            AWS_SESSION_TOKEN=static.session_token, AWS_REGION="us-east-1", AWS_ENDPOINT_URL=proxy.url)
            src = make_tree(tmp_path / "src", big=False)

            def run(*args, bucket=None, **kw):
                env.bucket = bucket or pbucket
                results.append((args, env.wabucket(*args, **kw)))
                return results[-1][1]

            for bucket, name in ((pbucket, "dsp"), (f"s3://{s3_bucket}/p", "dss")):
                run("upload", str(src), "-n", name, "-t", "dataset", "-a", "s1", "-m", "lr=0.1", bucket=bucket, check=True)
                run("download", "dataset", name, "s1", "-d", str(tmp_path / "dl" / bucket[-6:]), bucket=bucket, check=True)
                run("verify", "dataset", name, "s1", bucket=bucket, check=True, env={"WABUCKET_CACHE": "0"})  # fresh credentials
                run("link", f"dataset/{name}/s1", "-n", name + "-linked", "-t", "dataset", "-a", "k1", bucket=bucket, check=True)
                # failures
                assert run("upload", str(src), "-n", name, "-t", "dataset", "-a", "s1", bucket=bucket).returncode == 1
                assert run("download", "dataset", name, "nope", bucket=bucket).returncode == 1
            assert run("upload", str(src), "-n", "dsp", "-t", "dataset", "-a", "s2", bucket="no-such-bucket").returncode == 1
            assert run("download", "dataset", "dsp", "s1", "-d", str(tmp_path / "dl" / "offline"),
                       env={"WANDB_MODE": "offline"}).returncode == 0
            static.expires = 0  # expired credentials: the S3 server refuses them
            assert run("upload", str(src), "-n", "dss", "-t", "dataset", "-a", "s3", bucket=f"s3://{s3_bucket}/p").returncode == 1
            assert run("verify", "dataset", "dss", "s1", bucket=f"s3://{s3_bucket}/p").returncode == 1
            assert run("upload", str(src), "-n", "ds", "-t", "dataset", "-a", "s4",
                       env={"WANDB_API_KEY": "local-" + "0" * 48}).returncode == 1  # a wrong W&B key
            # a passed config without its url: the SDK's error quotes it whole, token included
            malformed = base64.b64encode(json.dumps({"token": plat.token, "cluster": "c"}).encode()).decode()
            fresh = str(tmp_path / "apolo-fresh")
            assert run("verify", "dataset", "dsp", "s1", env={
                "APOLO_PASSED_CONFIG": malformed, "NEURO_PASSED_CONFIG": malformed, "APOLO_CONFIG": fresh,
                "NEUROMATION_CONFIG": fresh, "WABUCKET_CACHE": "0"}).returncode == 1
        finally:
            plat.stop()

    secrets = {
        "WANDB_API_KEY": wandb_server.api_key,
        "platform token": plat.token,
        "platform passed config": plat.passed_config(),
        "malformed passed config": malformed,
        "S3 access key secret": seaweed.secret_access_key,
        "static S3 secret": static.secret_access_key,
        "static S3 session token": static.session_token,
    }
    for i, cred in enumerate(plat.issued):
        secrets[f"platform tmp secret {i}"] = cred.secret_access_key
        secrets[f"platform tmp session token {i}"] = cred.session_token
    assert len(plat.issued) >= 2
    assert len(gate.accepted) >= 3  # the platform's and the static credentials really were used

    leaks = []
    for args, proc in results:
        for what, value in secrets.items():
            if value in proc.stdout or value in proc.stderr:
                leaks.append(f"{what} in the output of {args[:2]}")
    leaks += _grep_tree(env.cwd, secrets)  # wandb/run-*/ and offline-run-*/: debug logs, .wandb files
    leaks += _grep_tree(tmp_path / "wandb-cache", secrets)
    leaks += _grep_tree(tmp_path / "dl", secrets)
    leaks += _grep_tree(wandb_server.workdir, secrets)  # what the runs uploaded: metadata, config, logs
    for run in wandb_server.runs():
        if run["id"] in runs_before:
            continue
        blob = json.dumps([run["raw_config"], run["tags"], run["summary"]])
        leaks += [f"{what} in run {run['id']} config/tags" for what, v in secrets.items() if v in blob]
    assert leaks == []
    # and the runs are there to look at: the check above looked at something
    assert len([r for r in wandb_server.runs() if r["id"] not in runs_before]) >= 6
    assert list(env.cwd.glob("wandb/run-*/logs/debug-internal.log")) or list(env.cwd.glob("wandb/*/logs/debug*.log"))
