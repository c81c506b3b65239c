"""Driver side of a training run: datasets, `TorchTrainer` wiring, and export of the best checkpoint.

PIPELINE.md §7. `run_training(cfg)` builds the reference datasets, starts Ray Train with
`CheckpointConfig(num_to_keep, checkpoint_score_attribute="val_oIoU", checkpoint_score_order="max")`
and `FailureConfig(max_failures)`, and after `fit()` exports the best checkpoint with
`crobim.save_model` to `<storage_path>/<name>/best/`, with `metrics.csv` and `curves.png` beside it.
Re-running with the same storage path and name resumes from the latest checkpoint (Train V2).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import storage
from crobim.errors import CheckpointError
from crobim.training.config import TrainConfig, build_model_config
from crobim.training.data import (
    SampleSource,
    build_reference_set,
    epoch_indices,
    to_dataset,
    train_dataset_name,
)
from crobim.training.export import TrainingSummary, export_best

__all__ = ["build_data_config", "build_run_config", "build_trainer", "export_run", "run_training"]

logger = logging.getLogger(__name__)


def _pin_train_v2() -> None:
    """Pin Ray Train V2 (resume by storage path + name; the default since Ray 2.51). Ray reads the variable when
    `ray.train` is first imported, so every function here that imports it calls this first; the trainer
    propagates it to the controller and the workers."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def _local_dir(uri: str) -> Path:
    """A local `storage_path` as an absolute folder (`~` expanded, `file://` dropped, symlinks resolved)."""
    _, path = storage.get_fs(os.path.expanduser(uri))
    return Path(path).resolve()


def _run_uri(cfg: TrainConfig) -> str:
    """`<storage_path>/<name>`: a URI on object stores, an absolute folder for local storage (as Ray Train sees it)."""
    if storage.is_remote(cfg.run.storage_path):
        return storage.join(cfg.run.storage_path, cfg.run.name)
    return str(_local_dir(cfg.run.storage_path) / cfg.run.name)


def build_data_config(
    source: SampleSource, train_indices: Callable[[int, int, int], np.ndarray], epochs: int, **decode: Any
) -> Any:  # noqa: ANN401
    """`DataConfig` giving every rank its own training dataset per epoch and a share of `val`.

    Args:
        source: the training split.
        train_indices: `(epoch, rank, world_size) -> reader indices` (see `crobim.training.data.epoch_indices`);
            called when the worker group starts (again after a restart), so the split follows the actual world
            size.
        epochs: number of epochs (one dataset per epoch and rank, named by `train_dataset_name`).
        **decode: keyword arguments of `to_dataset` (model config, tokenizer, decode CPUs).

    `val` is split without the equal-size truncation, so every validation sample is scored once; its shards
    follow the workers' nodes (`DataConfig(enable_shard_locality=True)`, Ray's default).
    """
    _pin_train_v2()
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    class _TrainValDataConfig(DataConfig):
        def __init__(self, enable_shard_locality: bool = True) -> None:
            super().__init__(enable_shard_locality=enable_shard_locality)
            self.shard_locality = enable_shard_locality  # kept here: DataConfig has no public getter

        def configure(  # noqa: ANN202
            self,
            datasets: dict[str, Any],
            world_size: int,
            worker_handles: Any,  # noqa: ANN401
            worker_node_ids: Any,  # noqa: ANN401
            **kwargs: Any,  # noqa: ANN401
        ):
            options = ExecutionOptions(preserve_order=True)
            out: list[dict[str, Any]] = [{} for _ in range(world_size)]
            for rank in range(world_size):
                for epoch in range(epochs):
                    # Lazy: decoded when the rank iterates it.
                    ds = to_dataset(source, train_indices(epoch, rank, world_size), **decode)
                    ds.context.execution_options = options
                    out[rank][train_dataset_name(epoch)] = ds.iterator()
            hints = worker_node_ids if self.shard_locality else None
            for name, ds in datasets.items():
                if name in out[0]:
                    continue
                ds = ds.copy(ds)
                ds.context.execution_options = options
                for i, split in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                    out[i][name] = split
            return out

    return _TrainValDataConfig()


def build_run_config(cfg: TrainConfig, callbacks: list[Any] | None = None) -> Any:  # noqa: ANN401
    """`RunConfig` with the checkpoint policy (best by `val_oIoU` + latest) and worker-failure retries."""
    _pin_train_v2()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    kwargs: dict[str, Any] = {}
    if storage.is_remote(cfg.run.storage_path):
        from common.storage_adapters import arrow_fs

        fs, path = arrow_fs(cfg.run.storage_path)
        kwargs = {"storage_path": path, "storage_filesystem": fs}
    else:
        kwargs = {"storage_path": str(_local_dir(cfg.run.storage_path))}
    return RunConfig(
        name=cfg.run.name,
        failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.run.num_to_keep,
            checkpoint_score_attribute="val_oIoU",
            checkpoint_score_order="max",
        ),
        callbacks=callbacks or [],
        **kwargs,
    )


def _progress_callback() -> Any:  # noqa: ANN401
    _pin_train_v2()
    from ray.train import UserCallback

    class _Progress(UserCallback):
        """Prints one line per reported epoch on the driver console."""

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:  # noqa: ANN401
            m = metrics[0] if metrics else {}
            logger.info(
                "epoch %d step %d | loss %.4f | val oIoU %.2f mIoU %.2f gIoU %.2f N-acc %.2f T-acc %.2f | %.0f samples/s",
                int(m.get("epoch", 0)),
                int(m.get("step", 0)),
                m.get("loss", float("nan")),
                100 * m.get("val_oIoU", float("nan")),
                100 * m.get("val_mIoU", float("nan")),
                100 * m.get("val_giou_gres", float("nan")),
                100 * m.get("val_N_acc", float("nan")),
                100 * m.get("val_T_acc", float("nan")),
                m.get("train_samples_per_s", float("nan")),
            )

    return _Progress()


def _with_absolute_init_weights(cfg: TrainConfig) -> TrainConfig:
    """``init_weights`` as an absolute path (workers do not share the driver's working directory), checked here
    so that a wrong path fails before any worker starts."""
    if not cfg.init_weights:
        return cfg
    path = Path(cfg.init_weights).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"init_weights {cfg.init_weights!r} ({path}) is not a checkpoint folder: config.json is missing "
            "(a folder written by crobim.save_model, e.g. <storage-path>/<name>/best)"
        )
    return dataclasses.replace(cfg, init_weights=str(path))


def build_trainer(cfg: TrainConfig, *, callbacks: list[Any] | None = None) -> Any:  # noqa: ANN401
    """Build the `TorchTrainer` for a run (datasets of references, loop config, scaling, run config)."""
    _pin_train_v2()
    import ray.data
    from ray.data import DataContext
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from crobim.training.loop import train_loop_per_worker

    cfg = _with_absolute_init_weights(cfg)
    model_cfg = build_model_config(cfg)
    keep_negatives = bool(model_cfg.presence.enabled and cfg.data.negatives)
    train_refs = build_reference_set(
        cfg.data, cfg.data.train_split, limit=cfg.data.max_train_samples, keep_no_target=keep_negatives
    )
    val_refs = build_reference_set(
        cfg.data, cfg.data.val_split, limit=cfg.data.max_val_samples, keep_no_target=True
    )
    logger.info(
        "train: %d samples (%d no-target), val: %d samples (%d no-target); global batch %d = %d workers x %d x %d accum",
        len(train_refs),
        train_refs.num_no_target,
        len(val_refs),
        val_refs.num_no_target,
        cfg.schedule.batch_size,
        cfg.run.num_workers,
        cfg.micro_batch_size,
        cfg.schedule.grad_accum_steps,
    )
    # Per-operator progress bars from every worker's split would drown the per-epoch progress lines.
    DataContext.get_current().enable_progress_bars = False
    tokenizer_dir = str(Path(cfg.init_weights) / "tokenizer") if cfg.init_weights else None
    decode = {
        "model_config_json": model_cfg.to_json(),
        "tokenizer_dir": tokenizer_dir,
        "decode_cpus": cfg.data.decode_cpus,
        "decode_concurrency": cfg.data.decode_concurrency,
    }
    shuffle_seed = cfg.schedule.seed if cfg.data.shuffle else None
    step_rows = cfg.run.num_workers * cfg.micro_batch_size  # one global micro-step, whatever the world size

    def train_indices(epoch: int, rank: int, world_size: int) -> np.ndarray:
        return epoch_indices(
            train_refs,
            epoch=epoch,
            seed=shuffle_seed,
            step_rows=step_rows,
            rank=rank,
            world_size=world_size,
            group_by_image=cfg.data.group_by_image,
        )

    # Train V2 serves only the names passed here; configure() builds each epoch's per-rank datasets itself, so
    # the epochs' entries share one single-row stand-in that is never read.
    stand_in = ray.data.from_items([{"stand_in": 0}])
    datasets = {train_dataset_name(e): stand_in for e in range(cfg.schedule.epochs)}
    datasets["val"] = to_dataset(val_refs.source, val_refs.indices, **decode)
    loop_config = {
        "train": cfg.to_dict(),
        "model": model_cfg.to_dict(),
        "num_train": len(train_refs),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.run.num_workers,
            use_gpu=cfg.run.use_gpu,
            resources_per_worker={"CPU": cfg.run.cpus_per_worker} | ({"GPU": 1} if cfg.run.use_gpu else {}),
        ),
        run_config=build_run_config(cfg, callbacks=[_progress_callback(), *(callbacks or [])]),
        datasets=datasets,
        dataset_config=build_data_config(train_refs.source, train_indices, cfg.schedule.epochs, **decode),
    )


def _best_checkpoint(result: Any) -> Any:  # noqa: ANN401
    best = [(c, m) for c, m in (result.best_checkpoints or []) if "val_oIoU" in m]
    if not best:
        if result.checkpoint is None:
            raise RuntimeError("the run reported no checkpoint; nothing to export")
        return result.checkpoint
    return max(best, key=lambda cm: (cm[1]["val_oIoU"], cm[1].get("epoch", 0)))[0]


def export_run(result: Any, cfg: TrainConfig) -> TrainingSummary:  # noqa: ANN401
    """Export the best checkpoint with `crobim.save_model`, plus `metrics.csv` and `curves.png`."""
    run_uri = _run_uri(cfg)
    best = _best_checkpoint(result)
    latest = result.checkpoint or best
    with best.as_directory() as best_dir, latest.as_directory() as latest_dir:
        return export_best(Path(best_dir), Path(latest_dir), run_uri)


def run_training(cfg: TrainConfig) -> TrainingSummary:
    """Train (or resume) a run and export its best checkpoint.

    Args:
        cfg: the run configuration.

    Returns:
        The summary (paths, best metrics, history).

    Raises:
        ray.train.TrainingFailedError: when workers fail more often than `run.max_failures`.
    """
    trainer = build_trainer(cfg)
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return export_run(result, cfg)
