"""Train with a dataset artifact and log the model as an artifact, with wabucketref's SDK.

The bytes live in a bucket (a platform bucket, s3://, or - by default here - a local
folder); W&B keeps the versions, aliases and lineage (dataset -> run -> model).

Runs as is, with no account and no network:

    WANDB_MODE=offline python examples/train.py

It first uploads a small generated dataset (skip with --no-prepare when the dataset
artifact already exists), then does the part below, which is all a real script needs:

    api = WaBucketRefAPI(bucket="bucket-name", project_name="my-w&b-project")
    folder = api.download_artifact("name", "type", "version")
    metrics, model_path = do_train(artifact=folder)
    if wandb.run:  # None with WANDB_MODE=disabled, which starts no run
        wandb.run.log(metrics)
    api.upload_artifact(model_path, "my-model", "model")
    api.close()

With W&B offline, the download resolves the alias from the manifests kept in the bucket;
`wandb sync wandb/offline-run-*` pushes the runs and artifacts to W&B later. Online, set
WANDB_API_KEY and pass a platform bucket name (--bucket my-bucket) or s3://bucket/prefix.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

import wandb

from wabucketref import WaBucketRefAPI


def make_dataset(folder: Path, rows: int = 200, seed: int = 0) -> Path:
    """A toy regression set: y = 3x + 2 + noise, as CSV."""
    rnd = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["x,y"]
    for _ in range(rows):
        x = rnd.uniform(-5, 5)
        lines.append(f"{x:.6f},{3 * x + 2 + rnd.gauss(0, 0.5):.6f}")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    (folder / "README.txt").write_text("toy regression data: y = 3x + 2 + N(0, 0.5)\n")
    return folder


def do_train(artifact: Path) -> tuple[dict[str, float], Path]:
    """Least-squares line fit; returns metrics and a folder holding the model."""
    xs, ys = [], []
    for line in (Path(artifact) / "train.csv").read_text().splitlines()[1:]:
        x, y = map(float, line.split(","))
        xs.append(x)
        ys.append(y)
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=False)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    mse = sum((slope * x + intercept - y) ** 2 for x, y in zip(xs, ys, strict=False)) / n
    model_dir = Path(tempfile.mkdtemp(prefix="wabucket-model-"))
    (model_dir / "model.json").write_text(json.dumps({"slope": slope, "intercept": intercept}))
    return {"mse": mse, "slope": slope, "intercept": intercept, "rows": float(n)}, model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bucket",
        default=os.environ.get("WABUCKET_EXAMPLE_BUCKET", str(Path.cwd() / "wabucket-example-bucket")),
        help="bucket spec (default: a local folder ./wabucket-example-bucket)",
    )
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT", "wabucketref-example"))
    parser.add_argument("--dataset", default="toy-regression", help="dataset artifact name")
    parser.add_argument("--dataset-alias", default="latest")
    parser.add_argument("--model", default="my-model", help="model artifact name")
    parser.add_argument("--no-prepare", action="store_true", help="do not upload the dataset first")
    args = parser.parse_args()

    if not args.no_prepare:
        # Producer side: log the dataset artifact (in its own W&B run).
        with tempfile.TemporaryDirectory() as tmp:
            data = make_dataset(Path(tmp) / "data")
            prep = WaBucketRefAPI(bucket=args.bucket, project_name=args.project, job_type="prepare-data")
            prep.upload_artifact(data, args.dataset, "dataset")
            prep.close()

    # Consumer side: the example proper.
    api = WaBucketRefAPI(bucket=args.bucket, project_name=args.project, job_type="train")
    folder = api.download_artifact(args.dataset, "dataset", args.dataset_alias)
    metrics, model_path = do_train(artifact=folder)
    if wandb.run:  # None with WANDB_MODE=disabled, which starts no run
        wandb.run.log(metrics)
    api.upload_artifact(model_path, args.model, "model")
    api.close()
    print(json.dumps({"dataset_folder": str(folder), "model_path": str(model_path), **metrics}))


if __name__ == "__main__":
    main()
