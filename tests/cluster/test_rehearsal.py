"""Multi-node rehearsal (PIPELINE.md §8, §9): the real jobs on a two-node Ray cluster on loopback.

One head (`ray start --head`, 1 CPU, no custom resources) and one second node (`ray start --address`, 1 CPU,
advertising `inference: 1`). The region job runs with `--inference-resource inference`, so its inference actor can
only live on the second node; its single CPU is then taken by the actor, so every read task runs on the head. Which
node ran which stage is read from Ray's state API, and the outputs are compared byte for byte with a one-node run.
The object-store variants write to (and read from) a moto S3 server on loopback. The last test stops both nodes and
checks that none of their processes is left.

The tests of this module share one cluster and run in file order.
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from common import storage, storage_adapters
from tests.fixtures.ray_cluster import NODE_IP, LocalRayCluster, process_group_alive
from tests.fixtures.region_scenes import Scene, Square, write_scene

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
MODEL = "tests.fixtures.predictors:factory"
SQUARES = [
    Square("red", 40, 40, 20, 20),
    Square("red", 110, 60, 40, 20),  # crosses the chunk seam at grid row 128
    Square("blue", 180, 180, 20, 30),
]
QUERIES = ["red squares", "everything"]


@dataclass
class RegionInputs:
    scene: Scene
    catalog: str  # local ItemCollection JSON, COG href a local path
    s3_catalog: str  # the same item on S3, COG href s3://..., catalog itself on S3
    bucket: str


def _tree_hash(path: Path) -> str:
    """SHA-256 over every file under ``path`` (relative name + bytes), or over the file itself."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update((f.relative_to(path).as_posix() if path.is_dir() else f.name).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def _output_hashes(out: Path) -> dict[str, str]:
    return {name: _tree_hash(out / name) for name in ("masks.zarr", "polygons.parquet")}


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _region_argv(inputs: RegionInputs, catalog: str, out: str, *extra: str) -> list[str]:
    argv = ["--bbox", *map(str, inputs.scene.lonlat_bbox()), "--catalog", catalog, "--model", MODEL]
    for query in QUERIES:
        argv += ["--query", query]
    return [*argv, "--out", out, "--chunk-size", "128", "--batch-size", "4", "--no-progress", *extra]


def _cluster_flags(cluster: LocalRayCluster) -> list[str]:
    # One inference actor holding one CPU, on the node advertising `inference`.
    return ["--address", cluster.gcs_address, "--inference-resource", "inference", "--cpus-per-actor", "1"]


def _job_id(cluster: LocalRayCluster, marker: str) -> str:
    """The Ray job id of the driver whose command line contains ``marker`` (e.g. its --out)."""
    jobs = [j for j in cluster.list_state("jobs") if marker in (j.entrypoint or "")]
    assert len(jobs) == 1, [j.entrypoint for j in cluster.list_state("jobs")]
    return str(jobs[0].job_id)


def _stage_nodes(cluster: LocalRayCluster, job_id: str) -> dict[str, set[str]]:
    """Roles (head/worker) of the nodes that ran each region stage of one job, from Ray's state API."""
    tasks = cluster.list_state("tasks", [("job_id", "=", job_id)])
    actors = cluster.list_state("actors", [("job_id", "=", job_id)])
    finished = [t for t in tasks if t.state == "FINISHED" and t.node_id]
    return {
        "read": {cluster.node_role(t.node_id) for t in finished if "read_stage" in t.name},
        "inference_tasks": {cluster.node_role(t.node_id) for t in finished if "PredictorActor" in t.name},
        "inference_actors": {
            cluster.node_role(a.node_id) for a in actors if "PredictorActor" in a.class_name
        },
        "n_read_tasks": {str(sum("read_stage" in t.name for t in finished))},
    }


def _s3_client(env: dict[str, str]):  # noqa: ANN202 (boto3 client)
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )


@pytest.fixture(scope="module")
def rehearsal_bucket(moto_process) -> str:
    """A bucket on the loopback moto server for this module's inputs, outputs and training runs."""
    bucket = f"rehearsal-{uuid.uuid4().hex[:8]}"
    _s3_client(moto_process.env).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="module")
def region_inputs(
    tmp_path_factory: pytest.TempPathFactory, moto_process, rehearsal_bucket: str
) -> RegionInputs:
    root = tmp_path_factory.mktemp("rehearsal-scene")
    scene = write_scene(root / "cogs", lambda p: str(p), squares=SQUARES, nodata_cols=16)
    catalog = root / "items.json"
    catalog.write_text(json.dumps({"type": "FeatureCollection", "features": [scene.item]}))
    # The same scene in a bucket: the COG (read by GDAL's /vsis3/) and the catalog (read through fsspec).
    bucket = rehearsal_bucket
    s3 = _s3_client(moto_process.env)
    s3.put_object(Bucket=bucket, Key="cogs/scene.tif", Body=scene.path.read_bytes())
    s3_item = json.loads(json.dumps(scene.item))
    s3_item["assets"]["visual"]["href"] = f"s3://{bucket}/cogs/scene.tif"
    body = json.dumps({"type": "FeatureCollection", "features": [s3_item]}).encode()
    s3.put_object(Bucket=bucket, Key="catalog/items.json", Body=body)
    return RegionInputs(scene, str(catalog), f"s3://{bucket}/catalog/items.json", bucket)


@pytest.fixture(scope="module")
def single_node_outputs(ray_local, region_inputs: RegionInputs, tmp_path_factory) -> dict:
    """The reference: the same region job on the session's one-node local runtime, no custom resource."""
    from jobs.infer_region import main

    out = tmp_path_factory.mktemp("single-node") / "out"
    assert main(_region_argv(region_inputs, region_inputs.catalog, str(out))) == 0
    return {**_output_hashes(out), "dir": out}


def test_cluster_has_two_loopback_nodes(ray_cluster: LocalRayCluster) -> None:
    nodes = {n.node_id: n for n in ray_cluster.list_state("nodes")}
    head, worker = nodes[ray_cluster.head.node_id], nodes[ray_cluster.worker.node_id]
    assert head.is_head_node and not worker.is_head_node
    assert head.node_ip == worker.node_ip == NODE_IP  # loopback, not the machine's address
    assert head.resources_total["CPU"] == 1 and "inference" not in head.resources_total
    assert worker.resources_total["CPU"] == 1 and worker.resources_total["inference"] == 1


def test_region_job_reads_on_one_node_and_infers_on_the_other(
    ray_cluster: LocalRayCluster, region_inputs: RegionInputs, single_node_outputs: dict, tmp_path
) -> None:
    out = tmp_path / "multi-node-out"
    argv = _region_argv(region_inputs, region_inputs.catalog, str(out), *_cluster_flags(ray_cluster))
    result = ray_cluster.run([sys.executable, "jobs/infer_region.py", *argv])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    stages = _stage_nodes(ray_cluster, _job_id(ray_cluster, str(out)))
    assert stages["read"] == {"head"}, stages
    assert stages["inference_actors"] == {"worker"}, stages
    assert stages["inference_tasks"] == {"worker"}, stages
    run = json.loads((out / "run.json").read_text())
    assert stages["n_read_tasks"] == {str(run["counts"]["chunks"]["done_this_run"])}

    assert _output_hashes(out) == {k: single_node_outputs[k] for k in ("masks.zarr", "polygons.parquet")}


def test_region_job_reads_and_writes_s3(
    ray_cluster: LocalRayCluster, region_inputs: RegionInputs, single_node_outputs: dict, tmp_path
) -> None:
    out = f"s3://{region_inputs.bucket}/runs/region-1"
    argv = _region_argv(region_inputs, region_inputs.s3_catalog, out, *_cluster_flags(ray_cluster))
    result = ray_cluster.run([sys.executable, "jobs/infer_region.py", *argv])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    # Everything is in the bucket, nothing needed a local output folder.
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ray_cluster.env.items():
            if key.startswith("AWS_"):
                mp.setenv(key, value)
        names = set(storage.listdir(out))
        assert {"masks.zarr", "polygons.parquet", "run.json", "quicklook.png", "inputs", "_state"} <= names
        run = storage.read_json(storage.join(out, "run.json"))
        done = storage.listdir(storage.join(out, "_state", "done"))
        local = tmp_path / "download"
        storage_adapters.download_dir(storage.join(out, "masks.zarr"), local / "masks.zarr")
        (local / "polygons.parquet").write_bytes(storage.read_bytes(storage.join(out, "polygons.parquet")))
    assert run["status"] == "complete" and run["items"][0]["asset_hrefs"]["visual"].startswith("s3://")
    assert len(done) == run["counts"]["chunks"]["done"] > 0
    # Same pixels, polygons and metadata as the one-node run from local files. The one difference is the run
    # fingerprint in the Zarr attributes: it hashes the frozen items, whose COG href is s3:// here.
    assert _tree_hash(local / "polygons.parquet") == single_node_outputs["polygons.parquet"]
    reference = single_node_outputs["dir"] / "masks.zarr"
    assert _files(local / "masks.zarr") == _files(reference)
    metadata = {".zattrs", ".zmetadata"}  # the group attributes hold the run fingerprint (also consolidated)
    for rel in _files(reference):
        if rel not in metadata:
            assert (local / "masks.zarr" / rel).read_bytes() == (reference / rel).read_bytes(), rel
    got, want = (json.loads((d / ".zattrs").read_text()) for d in (local / "masks.zarr", reference))
    assert got.pop("crobim:fingerprint") != want.pop("crobim:fingerprint")
    assert got == want
    got, want = (
        json.loads((d / ".zmetadata").read_text())["metadata"] for d in (local / "masks.zarr", reference)
    )
    assert got[".zattrs"].pop("crobim:fingerprint") != want[".zattrs"].pop("crobim:fingerprint")
    assert got == want

    # A rerun into the same s3:// output resumes: every chunk is already done.
    again = ray_cluster.run([sys.executable, "jobs/infer_region.py", *argv])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"0 this run, {len(done)} resumed" in again.stdout


def _train_argv(
    cluster: LocalRayCluster, data_root: Path, storage_path: str, name: str, epochs: int
) -> list[str]:
    # Tiny model, a handful of SynRS samples; 0.75 CPU per worker on 1-CPU nodes: two workers cannot share a node,
    # and 0.25 CPU per node stays free for the data decoding tasks.
    return [
        sys.executable, "jobs/train.py", "--address", cluster.gcs_address,
        "--num-workers", "2", "--storage-path", storage_path, "--name", name, "--max-epochs", str(epochs),
        "--data-root", str(data_root),
        "--set", "model=crobim-tiny", "--set", "model_overrides.input.size=[64, 64]", "--set", "data.dataset=synrs",
        "--set", "data.max_train_samples=8", "--set", "data.max_val_samples=4", "--set", "data.decode_cpus=0.25",
        "--set", "schedule.batch_size=4", "--set", "schedule.val_batch_size=4", "--set", "schedule.log_every_steps=1",
        "--set", "run.cpus_per_worker=0.75",
    ]  # fmt: skip


def _summary(stdout: str) -> dict:
    """The JSON summary jobs/train.py prints last."""
    return json.loads(stdout[stdout.rfind("\n{") + 1 :])  # the summary may also be all of stdout


@pytest.mark.timeout(1200)
def test_training_runs_across_both_nodes_and_resumes_from_s3(
    ray_cluster: LocalRayCluster, synrs_small: Path, rehearsal_bucket: str
) -> None:
    storage_path = f"s3://{rehearsal_bucket}/train"
    name = "tiny-two-nodes"
    first = ray_cluster.run(
        _train_argv(ray_cluster, synrs_small, storage_path, name, epochs=1), timeout_s=540
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-6000:]
    summary = _summary(first.stdout)
    assert summary["epochs_done"] == 1 and summary["run"] == f"{storage_path}/{name}"

    # One training worker on each node, from Ray's state API.
    job_id = _job_id(ray_cluster, f"--name {name}")
    actors = ray_cluster.list_state("actors", [("job_id", "=", job_id)])
    workers = [a for a in actors if "TrainWorker" in a.class_name]
    assert len(workers) == 2, [a.class_name for a in actors]
    assert {ray_cluster.node_role(a.node_id) for a in workers} == {"head", "worker"}

    # Checkpoints and the exported best model are in the bucket.
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ray_cluster.env.items():
            if key.startswith("AWS_"):
                mp.setenv(key, value)
        run_uri = storage.join(storage_path, name)
        checkpoints = [
            n for n in storage.listdir(run_uri) if n.startswith("checkpoint_") and not n.endswith(".json")
        ]
        best = storage.listdir(storage.join(run_uri, "best"))
    assert len(checkpoints) == 1, checkpoints
    assert {"config.json", "model.safetensors"} <= set(best)

    # Same storage path and name, one more epoch: the run resumes from the checkpoint in S3.
    second = ray_cluster.run(
        _train_argv(ray_cluster, synrs_small, storage_path, name, epochs=2), timeout_s=540
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-6000:]
    resumed = _summary(second.stdout)
    assert "resuming after epoch 1" in second.stdout + second.stderr
    assert resumed["epochs_done"] == 2
    assert resumed["global_step"] == 2 * summary["global_step"]


def test_stopping_the_cluster_leaves_no_node_process(ray_cluster: LocalRayCluster) -> None:
    # Runs last in this module; the fixture's own teardown is then a no-op.
    pgids = [node.process.pid for node in ray_cluster.nodes]
    assert all(process_group_alive(pgid) for pgid in pgids)
    ray_cluster.stop()
    assert not any(process_group_alive(pgid) for pgid in pgids)
    assert not ray_cluster.temp_dir.exists()
