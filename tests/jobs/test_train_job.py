"""jobs/train.py: flags, config errors, and a `ray job submit` run on a local `ray start --head` cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "jobs" / "train.py"


def test_help_lists_the_flags():
    proc = subprocess.run([sys.executable, str(TRAIN), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in (
        "--config",
        "--set",
        "--num-workers",
        "--use-gpu",
        "--storage-path",
        "--name",
        "--max-epochs",
        "--max-steps",
        "--address",
    ):
        assert flag in proc.stdout


def test_bad_override_is_a_config_error(capsys):
    from jobs.train import main

    assert main(["--config", str(REPO / "configs" / "synrs-tiny.yaml"), "--set", "schedule.epoch=2"]) == 2
    assert "schedule.epoch" in capsys.readouterr().err
    assert main(["--config", str(REPO / "configs" / "nope.yaml")]) == 2


def test_flags_map_onto_the_config():
    from crobim.training.config import load_train_config
    from jobs.train import _flag_overrides, build_parser

    args = build_parser().parse_args(
        [
            "--num-workers",
            "2",
            "--storage-path",
            "s3://bucket/runs",
            "--name",
            "n",
            "--max-epochs",
            "3",
            "--max-steps",
            "7",
            "--set",
            "schedule.batch_size=4",
            "--set",
            "model_overrides.optim.lr=2e-4",
        ]
    )
    cfg = load_train_config(REPO / "configs" / "synrs-tiny.yaml", _flag_overrides(args))
    assert (cfg.run.num_workers, cfg.run.storage_path, cfg.run.name) == (2, "s3://bucket/runs", "n")
    assert (cfg.schedule.epochs, cfg.schedule.max_steps, cfg.schedule.batch_size) == (3, 7, 4)
    assert cfg.model_overrides["optim.lr"] == 2e-4
    assert cfg.run.use_gpu is False


@pytest.mark.ray
def test_ray_job_submit_runs_to_completion_and_best_loads(tmp_path):
    from crobim import load_model
    from crobim.data.synrs.writer import write_dataset
    from tests.fixtures.ray_cluster import start_ray_cluster

    data = tmp_path / "synrs"
    write_dataset(data, seed=0, counts={"train": 24, "val": 8}, size=64, overwrite=True)
    runs = tmp_path / "runs"
    cluster = start_ray_cluster(head_cpus=2, worker_cpus=1)
    try:
        argv = [
            str(Path(sys.executable).parent / "ray"),
            "job",
            "submit",
            "--address",
            cluster.dashboard_url,
            "--",
            sys.executable,
            str(TRAIN),
            "--config",
            str(REPO / "configs" / "synrs-tiny.yaml"),
            "--data-root",
            str(data),
            "--storage-path",
            str(runs),
            "--name",
            "job",
            "--max-epochs",
            "1",
            "--set",
            "schedule.batch_size=4",
        ]
        proc = cluster.run(argv, timeout_s=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert "succeeded" in out.lower(), out[-4000:]
    finally:
        cluster.stop()
    model = load_model(runs / "job" / "best")
    assert model.config.input.size == (64, 64) and model.config.presence.enabled
    assert (runs / "job" / "metrics.csv").is_file() and (runs / "job" / "curves.png").is_file()
