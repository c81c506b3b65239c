"""The per-worker training loop run by Ray Train (PIPELINE.md §7, MODEL.md §6).

Every worker: builds the model from the config (same seed on every rank, so the DDP broadcast is a
no-op), restores the latest checkpoint if Ray Train hands one over, wraps the model with
`prepare_model` (DDP), then per epoch trains on its `get_dataset_shard(train_dataset_name(epoch))`, validates on its
share of `get_dataset_shard("val")` with the metric state all-gathered (identical `val_oIoU` on every
rank) and calls `ray.train.report` -- every rank, every epoch; rank 0 attaches the checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crobim.config import CroBIMConfig
from crobim.losses import CroBIMLoss
from crobim.optim import build_optimizer, build_scheduler
from crobim.precision import autocast
from crobim.scoring import forward_batch
from crobim.training.checkpoint import TrainerState, load_training_state, save_training_state
from crobim.training.collectives import all_reduce_mean, broadcast_buffers
from crobim.training.config import TrainConfig
from crobim.training.data import train_dataset_name
from crobim.training.validation import validate

__all__ = ["epoch_seed", "iters_per_epoch", "seed_everything", "train_loop_per_worker"]

logger = logging.getLogger(__name__)


def iters_per_epoch(num_train: int, num_workers: int, micro_batch: int, grad_accum: int) -> int:
    """Optimizer steps per epoch: the equal shard per worker, full micro-batches, full accumulation groups."""
    return ((num_train // num_workers) // micro_batch) // grad_accum


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed for (run seed, epoch, rank), independent of how the run was interrupted."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed `random`, numpy's legacy global RNG and torch (CPU and CUDA)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class _Worker:
    """One rank's run: what the setup built and every epoch uses.

    Attributes:
        net: the unwrapped model (checkpoints, validation); `ddp_model` is its DDP wrapper (training forwards).
        ipe: optimizer steps per epoch; `total_iters` the steps of the whole run (the poly decay's span).
    """

    cfg: TrainConfig
    model_config_json: str
    rank: int
    world: int
    device: torch.device
    net: torch.nn.Module
    ddp_model: Any  # DistributedDataParallel (or the model itself in a single process)
    loss_fn: CroBIMLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: TrainerState
    ipe: int
    total_iters: int


@dataclass
class _EpochTotals:
    """Running sums of one epoch on one rank, and its clocks."""

    t0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)
    first_batch_at: float | None = None
    end: float = 0.0
    loss_sum: float = 0.0
    loss_parts_sum: dict[str, float] = field(default_factory=dict)
    n_micro: int = 0
    n_samples: int = 0
    steps: int = 0
    stop: bool = False


def _configure_logging() -> None:
    """One handler for the `crobim` loggers in the worker process."""
    root = logging.getLogger("crobim")
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False  # Ray's root handler would print every line twice


def _total_iters(cfg: TrainConfig, num_train: int, world: int) -> tuple[int, int]:
    """(steps per epoch, steps of the run); refuses a run with no full optimizer step per epoch."""
    sched = cfg.schedule
    ipe = iters_per_epoch(num_train, world, cfg.micro_batch_size, sched.grad_accum_steps)
    if ipe < 1:
        raise ValueError(
            f"{num_train} training samples give no full optimizer step per epoch with "
            f"batch_size={sched.batch_size} on {world} workers; lower schedule.batch_size"
        )
    return ipe, ipe * sched.epochs if sched.max_steps is None else min(ipe * sched.epochs, sched.max_steps)


def _build_model(cfg: TrainConfig, model_cfg: CroBIMConfig) -> torch.nn.Module:
    """The model, seeded identically on every rank, with `init_weights` loaded strictly when set."""
    from crobim import build_model
    from crobim.weights import WEIGHTS_NAME, build_and_load

    seed_everything(cfg.schedule.seed)
    if cfg.init_weights:
        return build_and_load(model_cfg, os.path.join(cfg.init_weights, WEIGHTS_NAME))
    return build_model(model_cfg)


def _wrap_ddp(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, world: int
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(unwrapped model, DDP model) on the worker's device, with the optimizer state moved along."""
    import ray.train.torch

    if device.type == "cuda" and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # MODEL.md §6: SyncBN under DDP
    ddp_model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
    if device.type != "cpu":
        # prepare_model moved the parameters; the optimizer state must follow them.
        for st in optimizer.state.values():
            for key, value in st.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    st[key] = value.to(device)
    return model, ddp_model


def _setup_worker(loop_config: dict[str, Any]) -> _Worker:
    """Build (or restore) the rank's model, loss, optimizer, scheduler and progress."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.from_dict(loop_config["train"])
    model_cfg = CroBIMConfig.from_dict(loop_config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if cfg.run.threads_per_worker:
        torch.set_num_threads(cfg.run.threads_per_worker)
    model = _build_model(cfg, model_cfg)
    loss_fn = CroBIMLoss(model_cfg)
    optimizer = build_optimizer(model, model_cfg)
    ipe, total_iters = _total_iters(cfg, loop_config["num_train"], world)
    scheduler = build_scheduler(optimizer, total_iters, model_cfg.optim)
    state = TrainerState(train_config=cfg.to_dict())
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_training_state(ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler)
        if rank == 0:
            logger.info("resuming after epoch %d (step %d)", state.epochs_done, state.global_step)
    state.starts.append(state.epochs_done)
    net, ddp_model = _wrap_ddp(model, optimizer, device, world)
    return _Worker(
        cfg,
        model_cfg.to_json(),
        rank,
        world,
        device,
        net,
        ddp_model,
        loss_fn,
        optimizer,
        scheduler,
        state,
        ipe,
        total_iters,
    )


def _micro_step(w: _Worker, batch: dict[str, torch.Tensor], sync: bool, totals: _EpochTotals) -> None:
    """Forward and backward of one micro-batch; gradients are all-reduced only when `sync`."""
    batch = {k: v.to(w.device, non_blocking=True) for k, v in batch.items()}
    masks = batch["mask"].float()
    has_target = ~batch["no_target"].bool()
    no_sync = (
        w.ddp_model.no_sync() if (not sync and hasattr(w.ddp_model, "no_sync")) else contextlib.nullcontext()
    )
    with no_sync:
        with autocast(w.device, w.cfg.schedule.precision):
            out = forward_batch(w.ddp_model, batch)
        loss = w.loss_fn(out, masks, has_target)
        (loss.total / w.cfg.schedule.grad_accum_steps).backward()
    totals.loss_sum += float(loss.total.detach())
    for name, value in loss.parts.items():
        totals.loss_parts_sum[name] = totals.loss_parts_sum.get(name, 0.0) + float(value)
    totals.n_micro += 1
    totals.n_samples += masks.shape[0]


def _optimizer_step(w: _Worker) -> None:
    """Clip, step the optimizer and the poly schedule, clear the gradients, count the step."""
    if w.cfg.schedule.grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(w.ddp_model.parameters(), w.cfg.schedule.grad_clip_norm)
    w.optimizer.step()
    w.scheduler.step()
    w.optimizer.zero_grad(set_to_none=True)
    w.state.global_step += 1


def _train_epoch(w: _Worker, epoch: int) -> _EpochTotals:
    """Exactly `ipe` optimizer steps (fewer when the run's step cap is reached) on the rank's epoch dataset."""
    import ray.train

    sched = w.cfg.schedule
    seed_everything(epoch_seed(sched.seed, epoch, w.rank))
    w.ddp_model.train()
    totals = _EpochTotals()
    micro_in_group = 0
    w.optimizer.zero_grad(set_to_none=True)
    shard = ray.train.get_dataset_shard(train_dataset_name(epoch))
    for batch in shard.iter_torch_batches(
        batch_size=w.cfg.micro_batch_size, drop_last=True, prefetch_batches=2
    ):
        if totals.steps >= w.ipe:
            break  # every rank runs exactly `ipe` steps, whatever its shard holds
        if totals.first_batch_at is None:
            totals.first_batch_at = time.perf_counter()
        _micro_step(w, batch, micro_in_group == sched.grad_accum_steps - 1, totals)
        micro_in_group += 1
        if micro_in_group < sched.grad_accum_steps:
            continue
        micro_in_group = 0
        _optimizer_step(w)
        totals.steps += 1
        if w.rank == 0 and w.state.global_step % sched.log_every_steps == 0:
            logger.info(
                "epoch %d step %d/%d loss %.4f lr %.3g",
                epoch + 1,
                w.state.global_step,
                w.total_iters,
                totals.loss_sum / max(totals.n_micro, 1),
                w.optimizer.param_groups[0]["lr"],
            )
        if w.state.global_step >= w.total_iters:
            totals.stop = True
            break
    totals.end = time.perf_counter()
    return totals


def _reduce_epoch(w: _Worker, totals: _EpochTotals) -> dict[str, float]:
    """The epoch's training metrics averaged (or summed) over ranks."""
    # Throughput from the first batch on: the epoch's data pipeline start-up is reported on its own.
    first = totals.first_batch_at if totals.first_batch_at is not None else totals.end
    part_names = sorted(totals.loss_parts_sum)
    cpu_time = time.process_time() - totals.cpu0
    n = max(totals.n_micro, 1)
    reduced = all_reduce_mean(
        [totals.loss_sum / n, totals.n_samples / max(totals.end - first, 1e-9), cpu_time, first - totals.t0]
        + [totals.loss_parts_sum[k] / n for k in part_names],
        w.device,
    )
    metrics = {
        "loss": reduced[0],
        "train_samples_per_s": reduced[1] * w.world,
        "data_startup_s": reduced[3],
        # CPU seconds of the training processes (summed over workers): load-independent cost of the epoch.
        "train_cpu_s": reduced[2] * w.world,
    }
    metrics.update({f"loss_{k}": v for k, v in zip(part_names, reduced[4:], strict=True)})
    return metrics


def _epoch_metrics(
    w: _Worker, epoch: int, totals: _EpochTotals, train: dict[str, float], val: dict[str, float]
) -> dict[str, float]:
    """The reported metrics of an epoch, non-finite values written as NaN."""
    metrics: dict[str, float] = {
        "epoch": float(epoch + 1),
        "step": float(w.state.global_step),
        "loss": train["loss"],
        "lr": float(w.optimizer.param_groups[0]["lr"]),
        "train_samples_per_s": train["train_samples_per_s"],
        "data_startup_s": train["data_startup_s"],
        "epoch_time_s": time.perf_counter() - totals.t0,
        "train_cpu_s": train["train_cpu_s"],
    }
    metrics.update({k: v for k, v in train.items() if k.startswith("loss_")})
    metrics.update(val)
    return {
        k: (float(v) if not isinstance(v, float) or math.isfinite(v) else float("nan"))
        for k, v in metrics.items()
    }


def _report(w: _Worker, epoch: int, metrics: dict[str, float]) -> None:
    """`ray.train.report` on every rank (a barrier); rank 0 logs the epoch and attaches the checkpoint."""
    import ray.train

    w.state.history.append(dict(metrics))
    metrics = metrics | {"worker_pid": float(os.getpid())}  # reported, not kept in the history
    if w.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    logger.info(
        "epoch %d/%d done: loss %.4f val_oIoU %.4f val_mIoU %.4f (%.1f s)",
        epoch + 1,
        w.cfg.schedule.epochs,
        metrics["loss"],
        metrics.get("val_oIoU", float("nan")),
        metrics.get("val_mIoU", float("nan")),
        metrics["epoch_time_s"],
    )
    with tempfile.TemporaryDirectory(prefix="crobim-ckpt-") as tmp:
        save_training_state(
            tmp,
            model=w.net,
            model_config_json=w.model_config_json,
            optimizer=w.optimizer,
            scheduler=w.scheduler,
            state=w.state,
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _run_epoch(w: _Worker, epoch: int, val_shard: Any) -> bool:  # noqa: ANN401
    """Train, validate, checkpoint and report one epoch; True when the run's step cap was reached."""
    totals = _train_epoch(w, epoch)
    train = _reduce_epoch(w, totals)
    broadcast_buffers(w.net)
    sched = w.cfg.schedule
    val = validate(
        w.ddp_model, val_shard, device=w.device, precision=sched.precision, batch_size=sched.val_batch_size
    )
    w.state.epochs_done = epoch + 1
    _report(w, epoch, _epoch_metrics(w, epoch, totals, train, val))
    return totals.stop


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point (`TorchTrainer(train_loop_per_worker=...)`).

    Batches arrive decoded and tokenised (`crobim.training.data`; the trainer points the decode stage at
    `<init_weights>/tokenizer` when the run starts from a saved model), so the worker needs no tokenizer.

    Args:
        loop_config: `{"train": TrainConfig.to_dict(), "model": CroBIMConfig.to_dict(), "num_train": int}`,
            built by `crobim.training.trainer.build_trainer`.
    """
    import ray.train

    _configure_logging()
    w = _setup_worker(loop_config)
    val_shard = ray.train.get_dataset_shard("val")
    stop = w.state.global_step >= w.total_iters
    for epoch in range(w.state.epochs_done, w.cfg.schedule.epochs):
        if stop:
            break
        stop = _run_epoch(w, epoch, val_shard)
