"""The SDK example as users run it, artifacts written the way the original tool wrote them, and
platform job tags: against the real apolo_sdk, the fake control plane and the W&B backend."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, RawBucket, make_tree, online, outputs, tree_hashes, use_backend


@pytest.fixture
def platform_online(env, request, tmp_path, wandb_server):
    return online(use_backend(env, "platform", request, tmp_path), wandb_server)


@pytest.fixture(params=["platform", "platform-azure"])
def any_platform_online(env, request, tmp_path, wandb_server):
    """A platform bucket of each provider kind: apolo_sdk's own client and ours must agree on it."""
    return online(use_backend(env, request.param, request, tmp_path), wandb_server)


def test_sdk_example_offline_local(env):
    """examples/train.py (the README's SDK example) on the embedded default: local bucket, W&B offline."""
    proc = env.python(f"import runpy, sys; sys.argv=['train.py', '--bucket', {env.bucket!r}]; "
                      f"runpy.run_path({str(ROOT / 'examples' / 'train.py')!r}, run_name='__main__')")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(result["slope"] - 3) < 0.2 and abs(result["intercept"] - 2) < 0.3
    assert (Path(env.bucket) / "model" / "my-model" / ".wabucketref").is_dir()


def test_sdk_example_lineage(platform_online, wandb_server):
    """dataset -> training run -> model, recorded in W&B when the README's example runs as written."""
    env = platform_online
    env.python(textwrap.dedent(f"""
        import json, sys, tempfile
        from pathlib import Path
        import wandb
        from wabucketref import WaBucketRefAPI

        data = Path(tempfile.mkdtemp()) / "d"
        data.mkdir()
        (data / "rows.csv").write_text("x,y\\n1,2\\n")
        prep = WaBucketRefAPI(bucket={env.bucket!r}, project_name={env.vars['WANDB_PROJECT']!r})
        prep.upload_artifact(data, "name", "type", "version")
        prep.close()

        def do_train(artifact):
            model = Path(tempfile.mkdtemp()) / "m"
            model.mkdir()
            (model / "w.txt").write_text((Path(artifact) / "rows.csv").read_text().upper())
            return {{"loss": 0.5}}, model

        api = WaBucketRefAPI(bucket={env.bucket!r}, project_name={env.vars['WANDB_PROJECT']!r})
        folder = api.download_artifact("name", "type", "version")
        metrics, model_path = do_train(artifact=folder)
        wandb.run.log(metrics)
        api.upload_artifact(model_path, "my-model", "model")
        api.close()
    """))
    project = env.vars["WANDB_PROJECT"]
    dataset = wandb_server.artifact_versions(project, "name")[0]
    model = wandb_server.artifact_versions(project, "my-model")[0]
    assert model["logged_by"] in dataset["used_by"]
    runs = {r["id"]: r for r in wandb_server.runs()}
    assert runs[model["logged_by"]]["summary"].get("loss") == 0.5


SDK_UPLOAD = """
import asyncio, sys
from pathlib import Path
from yarl import URL
import apolo_sdk

async def main(src, bucket, prefix):
    async with await apolo_sdk.Factory().get() as client:
        b = await client.buckets.get(bucket)
        uri = b.uri / prefix
        await client.buckets.upload_dir(URL(Path(src).resolve().as_uri()), uri)
        print(str(uri))

asyncio.run(main(*sys.argv[1:]))
"""

LOG_LIKE_ORIGINAL = """
import sys, wandb
ref, name, alias = sys.argv[1:]
run = wandb.init(job_type="upload")
art = wandb.Artifact(name, type="dataset")
if ref != "-":
    art.add_reference(ref, name="platform_blob", checksum=False)
else:
    art.metadata = {"written_by": "an old wabucketref"}
run.log_artifact(art, aliases=[alias])
art.wait()
run.finish()
"""


def original_tool_upload(env, src: Path, name: str, alias: str, with_ref: bool = True) -> str:
    """Put data in the bucket with apolo_sdk's upload_dir and log the artifact the way the original tool did."""
    uri = env.python(SDK_UPLOAD.replace("sys.argv[1:]", repr([str(src), env.bucket, f"dataset/{name}/{alias}"]))).stdout.strip()
    env.python(LOG_LIKE_ORIGINAL.replace("sys.argv[1:]", repr([uri if with_ref else "-", name, alias])))
    return uri


def test_reads_original_tool_artifact_with_reference_only(any_platform_online, tmp_path):
    env = any_platform_online
    src = make_tree(tmp_path / "src", big=False)
    uri = original_tool_upload(env, src, "old", "a1")
    assert uri.startswith("blob://")
    proc = env.wabucket("download", "dataset", "old", "a1", "-d", str(tmp_path / "dl"), check=True)
    assert "no content manifest" in proc.stderr
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


def test_reads_original_tool_artifact_without_reference(platform_online, tmp_path):
    env = platform_online
    src = make_tree(tmp_path / "src", seed=3, big=False)
    original_tool_upload(env, src, "older", "b1", with_ref=False)
    proc = env.wabucket("download", "dataset", "older", "latest", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src), proc.stderr


def test_reads_percent_encoded_prefix(any_platform_online, tmp_path):
    """apolo_sdk stores a prefix built as `bucket.uri / "a b"` encoded (a%20b); files keep raw names."""
    env = any_platform_online
    src = make_tree(tmp_path / "src", seed=4, big=False)
    original_tool_upload(env, src, "enc", "a b")
    keys = RawBucket(env).keys("dataset/enc/")
    assert any(k.startswith("dataset/enc/a%20b/") for k in keys)
    env.wabucket("download", "dataset", "enc", "a b", "-d", str(tmp_path / "dl"), check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)


def test_original_tool_reads_our_reference(any_platform_online, tmp_path):
    """What the original tool did to download: the platform_blob ref + apolo_sdk download_dir."""
    env = any_platform_online
    src = make_tree(tmp_path / "src", seed=5, big=False)
    if env.kind == "platform-azure":
        # apolo_sdk asks Azure for the range `offset=0-` even of an empty blob, which Azure (and
        # Azurite) refuse with 416 InvalidRange: its download_dir cannot fetch empty files there.
        (src / "empty.bin").unlink()
    env.wabucket("upload", str(src), "-n", "fresh", "-t", "dataset", "-a", "c1", check=True)
    env.python(textwrap.dedent(f"""
        import asyncio, wandb
        from pathlib import Path
        from yarl import URL
        import apolo_sdk
        run = wandb.init(job_type="old-download")
        ref = run.use_artifact("fresh:c1").manifest.entries["platform_blob"].ref
        async def main():
            async with await apolo_sdk.Factory().get() as client:
                await client.buckets.download_dir(URL(ref), URL(Path({str(tmp_path / 'old')!r}).as_uri()))
        asyncio.run(main())
        run.finish()
    """))
    assert tree_hashes(tmp_path / "old") == tree_hashes(src)


def test_platform_job_tags(platform_online, wandb_server, tmp_path):
    env = platform_online
    plat = env.extra["platform"]
    plat.add_job("job-7f3a", name="train-big", owner="alice", tags=["team:vision", "exp:42"])
    src = make_tree(tmp_path / "src", big=False)
    job_env = {"NEURO_JOB_ID": "job-7f3a", "NEURO_JOB_NAME": "train-big", "NEURO_JOB_OWNER": "alice"}
    env.wabucket("--run-name", "tagged", "upload", str(src), "-n", "ds", "-t", "dataset", check=True, env=job_env)
    run = next(r for r in wandb_server.runs() if r["name"] == "tagged")
    assert {"job_id:job-7f3a", "job_name:train-big", "owner:alice", "team:vision", "exp:42"} <= set(run["tags"])

    # a job the platform does not know: a warning, and the command still succeeds
    proc = env.wabucket("--run-name", "tagged2", "upload", str(src), "-n", "ds", "-t", "dataset", check=True,
                        env={"APOLO_JOB_ID": "job-unknown"})
    assert "could not read tags of platform job job-unknown" in proc.stderr
    run = next(r for r in wandb_server.runs() if r["name"] == "tagged2")
    assert "job_id:job-unknown" in run["tags"]
    assert outputs(proc.stdout)["artifact_name"] == "ds"


def test_bucket_defaults_to_project_and_accepts_blob_uri(env, request, tmp_path, wandb_server):
    """No --bucket: the platform bucket named like the project (the original tool's default)."""
    env = online(use_backend(env, "platform", request, tmp_path), wandb_server)
    plat = env.extra["platform"]
    project = env.vars["WANDB_PROJECT"]
    plat.add_bucket(project)
    src = make_tree(tmp_path / "src", big=False)
    env.run("--project_name", project, "--run_name", "r1", "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "p1",
            check=True)
    assert any(k.startswith("dataset/ds/p1/") for k in plat.s3.list_keys(plat.backing_bucket(project)))
    # the same bucket as a blob:// URI with a prefix inside it
    blob = f"blob://{plat.cluster}/{plat.org}/{plat.project}/{project}/team-a"
    env.run("--bucket", blob, "--project-name", project, "upload", str(src), "-n", "ds", "-t", "dataset", "-a", "p2",
            check=True)
    assert any(k.startswith("team-a/dataset/ds/p2/") for k in plat.s3.list_keys(plat.backing_bucket(project)))
    env.run("--bucket", blob, "--project-name", project, "download", "dataset", "ds", "p2", "-d", str(tmp_path / "dl"),
            check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    assert "r1" in {r["name"] for r in wandb_server.runs()}


def test_reads_first_version_s3_references(env, request, tmp_path, wandb_server):
    """The original tool's first version let W&B reference every object under s3://…/TYPE/NAME/ALIAS
    (W&B's own S3 handler, one entry per object). wabucketref fetches those bytes itself, checking
    sizes, without boto3 (which W&B would need and the image does not have)."""
    env = online(use_backend(env, "s3", request, tmp_path), wandb_server)
    src = make_tree(tmp_path / "src", seed=6, big=False)
    raw = RawBucket(env)
    for path in tree_hashes(src):
        raw.write(f"dataset/first/s1/{path}", (src / path).read_bytes())
    env.python(LOG_LIKE_ORIGINAL.replace("sys.argv[1:]", repr([f"s3://{env.extra['s3_bucket']}/some/prefix/dataset/first/s1", "first", "s1"]))
               .replace(', name="platform_blob", checksum=False', ""))  # W&B lists the folder through boto3
    no_boto3 = tmp_path / "no-boto3" / "boto3"
    no_boto3.mkdir(parents=True)
    (no_boto3 / "__init__.py").write_text("raise ImportError('boto3 is not installed')\n")
    without_boto3 = {"PYTHONPATH": os.pathsep.join(filter(None, [str(no_boto3.parent), os.environ.get("PYTHONPATH")]))}

    proc = env.wabucket("download", "dataset", "first", "s1", "-d", str(tmp_path / "dl"), env=without_boto3, check=True)
    assert tree_hashes(tmp_path / "dl") == tree_hashes(src)
    assert "sizes and ETags are checked" in proc.stderr
    verify = env.wabucket("verify", "dataset", "first", "s1", env=without_boto3)
    assert verify.returncode == 1 and "no content manifest" in verify.stderr

    # the version is the objects W&B named: one added to the folder since is not part of it
    raw.write("dataset/first/s1/added-later.txt", b"not in this version")
    env.wabucket("download", "dataset", "first", "s1", "-d", str(tmp_path / "dl-added"), env=without_boto3, check=True)
    assert tree_hashes(tmp_path / "dl-added") == tree_hashes(src)

    same_size = bytes(reversed((src / "a.txt").read_bytes()))
    assert same_size != (src / "a.txt").read_bytes()
    raw.write("dataset/first/s1/a.txt", same_size)
    changed = env.wabucket("download", "dataset", "first", "s1", "-d", str(tmp_path / "dl2"), env=without_boto3)
    assert changed.returncode == 1 and "a.txt: changed in" in changed.stderr and "ETag differs" in changed.stderr, changed.stderr
    raw.write("dataset/first/s1/a.txt", b"a different size")
    bad = env.wabucket("download", "dataset", "first", "s1", "-d", str(tmp_path / "dl3"), env=without_boto3)
    assert bad.returncode == 1 and "a.txt" in bad.stderr and "Traceback" not in bad.stderr


def test_first_version_references_are_read_only_when_they_are_one_folder(tmp_path):
    from types import SimpleNamespace as Entry

    from wabucketref.errors import IntegrityError
    from wabucketref.tracking import _s3_references

    def refs(entries):
        return _s3_references(entries, tmp_path / f"m{len(list(tmp_path.iterdir()))}")

    root, manifest, _ = refs({"c": Entry(ref="s3://bk/p/c", size=1), "a/b.txt": Entry(ref="s3://bk/p/a/b.txt", size=3)})
    assert root == "s3://bk/p" and [(f.path, f.size) for f in manifest] == [("a/b.txt", 3), ("c", 1)]
    assert not manifest.verified
    assert refs({"a": Entry(ref="s3://bk/p/a", size=1), "b": Entry(ref="s3://bk/q/b", size=1)}) is None
    assert refs({"a": Entry(ref="s3://bk/p/x", size=1)}) is None  # a name that is not its key's tail
    assert refs({"a": Entry(ref="blob://c/o/p/b/a", size=1)}) is None
    with pytest.raises(IntegrityError, match="unsafe path"):
        refs({"..": Entry(ref="s3://bk/p/..", size=1)})


@pytest.mark.parametrize("uri, key", [
    ("blob://cl/org/mnist/mnist/dataset/mnist/a1", "dataset/mnist/a1"),  # project and folder named like the bucket
    ("blob://cl/org/mnist/bucket-1/mnist/x", "mnist/x"),  # by id
    ("blob://cl/org/mnist/mnist", ""),
    ("blob://cl/someone/mnist/k", "k"),  # another spelling (an owner instead of org/project): after the name
])
def test_key_after_bucket_when_names_repeat(uri, key):
    """A bucket named like its project (the default: the bucket is the W&B project's name) and
    folders named like it: the key is what follows the bucket's own URI, as apolo_sdk computes it."""
    from datetime import datetime, timezone

    from apolo_sdk import Bucket
    from yarl import URL

    from wabucketref.storage.platform import _key_after_bucket

    bucket = Bucket(id="bucket-1", owner="me", cluster_name="cl", org_name="org", project_name="mnist",
                    provider=Bucket.Provider.AWS, created_at=datetime.now(timezone.utc), imported=False, name="mnist")
    assert _key_after_bucket(URL(uri), bucket) == key
