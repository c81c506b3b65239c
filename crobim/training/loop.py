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
from typing import Any

import numpy as np
import torch

from crobim.training.checkpoint import TrainerState, load_checkpoint, save_checkpoint
from crobim.training.data import forward_batch, train_dataset_name

__all__ = [
    "broadcast_buffers",
    "epoch_seed",
    "in_process_group",
    "iters_per_epoch",
    "seed_everything",
    "train_loop_per_worker",
]

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


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def in_process_group() -> bool:
    """True inside an initialised `torch.distributed` process group (a Ray Train worker)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    """Average floats over ranks (identity without a process group)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if in_process_group():
        torch.distributed.all_reduce(t)
        t /= torch.distributed.get_world_size()
    return t.tolist()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank (no-op without a process group).

    DDP runs with `broadcast_buffers=False`: its per-forward buffer broadcast is one more collective every step, and
    on a CPU node each collective waits for the slowest rank. The ranks' running statistics drift apart during an
    epoch (training-mode forwards use batch statistics, so the losses are unaffected) and become rank 0's again here,
    before validation and the checkpoint: rank 0's are the ones DDP would have broadcast.
    """
    if not in_process_group() or torch.distributed.get_world_size() == 1:
        return
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer, src=0)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point (`TorchTrainer(train_loop_per_worker=...)`).

    Args:
        loop_config: `{"train": TrainConfig.to_dict(), "model": CroBIMConfig.to_dict(),
            "num_train": int, "tokenizer_dir": str | None}` built by `crobim.training.trainer`.
    """
    import ray.train
    import ray.train.torch

    from crobim import build_model
    from crobim.config import CroBIMConfig
    from crobim.losses import CroBIMLoss
    from crobim.optim import build_optimizer, build_scheduler
    from crobim.training.config import TrainConfig
    from crobim.training.validation import validate

    if not logging.getLogger("crobim").handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("crobim").addHandler(handler)
        logging.getLogger("crobim").setLevel(logging.INFO)
        logging.getLogger("crobim").propagate = False  # Ray's root handler would print every line twice
    cfg = TrainConfig.from_dict(loop_config["train"])
    model_cfg = CroBIMConfig.from_dict(loop_config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    sched = cfg.schedule
    if cfg.run.threads_per_worker:
        torch.set_num_threads(cfg.run.threads_per_worker)

    # Model init is seeded identically on every rank.
    seed_everything(sched.seed)
    model = build_model(model_cfg)
    if cfg.init_weights:
        from crobim.weights import load_checkpoint as load_pretrained

        model.load_state_dict(load_pretrained(cfg.init_weights).state_dict(), strict=True)
    loss_fn = CroBIMLoss(model_cfg)
    optimizer = build_optimizer(model, model_cfg)
    ipe = iters_per_epoch(loop_config["num_train"], world, cfg.micro_batch_size, sched.grad_accum_steps)
    if ipe < 1:
        raise ValueError(
            f"{loop_config['num_train']} training samples give no full optimizer step per epoch with "
            f"batch_size={sched.batch_size} on {world} workers; lower schedule.batch_size"
        )
    total_iters = ipe * sched.epochs if sched.max_steps is None else min(ipe * sched.epochs, sched.max_steps)
    scheduler = build_scheduler(optimizer, total_iters, model_cfg.optim)

    state = TrainerState(train_config=cfg.to_dict())
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_checkpoint(ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler)
        if rank == 0:
            logger.info("resuming after epoch %d (step %d)", state.epochs_done, state.global_step)

    state.starts.append(state.epochs_done)

    if device.type == "cuda" and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # MODEL.md §6: SyncBN under DDP
    ddp_model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
    net = model  # the unwrapped module (for checkpoints)
    if device.type != "cpu":
        # prepare_model moved the parameters; the optimizer state must follow them.
        for st in optimizer.state.values():
            for key, value in st.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    st[key] = value.to(device)

    val_shard = ray.train.get_dataset_shard("val")
    micro = cfg.micro_batch_size
    accum = sched.grad_accum_steps
    model_config_json = model_cfg.to_json()
    stop = state.global_step >= total_iters

    for epoch in range(state.epochs_done, sched.epochs):
        if stop:
            break
        seed_everything(epoch_seed(sched.seed, epoch, rank))
        ddp_model.train()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        loss_sum, loss_parts_sum, n_micro, n_samples = 0.0, {}, 0, 0
        steps_this_epoch = 0
        micro_in_group = 0
        optimizer.zero_grad(set_to_none=True)
        train_shard = ray.train.get_dataset_shard(train_dataset_name(epoch))
        batches = train_shard.iter_torch_batches(batch_size=micro, drop_last=True, prefetch_batches=2)
        first_batch_at: float | None = None
        for batch in batches:
            if steps_this_epoch >= ipe:
                break  # every rank runs exactly `ipe` steps, whatever its shard holds
            if first_batch_at is None:
                first_batch_at = time.perf_counter()
            batch = _to_device(batch, device)
            masks = batch["mask"].float()
            has_target = ~batch["no_target"].bool()
            sync = micro_in_group == accum - 1
            no_sync = (
                ddp_model.no_sync()
                if (not sync and hasattr(ddp_model, "no_sync"))
                else contextlib.nullcontext()
            )
            with no_sync:
                with _autocast(device, sched.precision):
                    out = forward_batch(ddp_model, batch)
                loss = loss_fn(out, masks, has_target)
                (loss.total / accum).backward()
            loss_sum += float(loss.total.detach())
            for name, value in loss.parts.items():
                loss_parts_sum[name] = loss_parts_sum.get(name, 0.0) + float(value)
            n_micro += 1
            n_samples += masks.shape[0]
            micro_in_group += 1
            if micro_in_group < accum:
                continue
            micro_in_group = 0
            if sched.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), sched.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            steps_this_epoch += 1
            if rank == 0 and state.global_step % sched.log_every_steps == 0:
                logger.info(
                    "epoch %d step %d/%d loss %.4f lr %.3g",
                    epoch + 1,
                    state.global_step,
                    total_iters,
                    loss_sum / max(n_micro, 1),
                    optimizer.param_groups[0]["lr"],
                )
            if state.global_step >= total_iters:
                stop = True
                break
        end = time.perf_counter()
        # Throughput from the first batch on: the epoch's data pipeline start-up is reported on its own.
        first = first_batch_at if first_batch_at is not None else end
        startup = first - t0
        part_names = sorted(loss_parts_sum)
        cpu_time = time.process_time() - cpu0
        reduced = _all_reduce_mean(
            [loss_sum / max(n_micro, 1), n_samples / max(end - first, 1e-9), cpu_time, startup]
            + [loss_parts_sum[k] / max(n_micro, 1) for k in part_names],
            device,
        )
        broadcast_buffers(net)
        val_metrics = validate(
            ddp_model, val_shard, device=device, precision=sched.precision, batch_size=sched.val_batch_size
        )
        state.epochs_done = epoch + 1
        metrics: dict[str, float] = {
            "epoch": float(epoch + 1),
            "step": float(state.global_step),
            "loss": reduced[0],
            "lr": float(optimizer.param_groups[0]["lr"]),
            "train_samples_per_s": reduced[1] * world,
            "data_startup_s": reduced[3],
            "epoch_time_s": time.perf_counter() - t0,
        }
        # CPU seconds of the training processes (summed over workers): load-independent cost of the epoch.
        metrics["train_cpu_s"] = reduced[2] * world
        metrics.update({f"loss_{k}": v for k, v in zip(part_names, reduced[4:], strict=True)})
        metrics.update(val_metrics)
        metrics = {
            k: (float(v) if not isinstance(v, float) or math.isfinite(v) else float("nan"))
            for k, v in metrics.items()
        }
        state.history.append(dict(metrics))
        metrics["worker_pid"] = float(os.getpid())  # reported, not kept in the history
        if rank == 0:
            logger.info(
                "epoch %d/%d done: loss %.4f val_oIoU %.4f val_mIoU %.4f (%.1f s)",
                epoch + 1,
                sched.epochs,
                metrics["loss"],
                metrics.get("val_oIoU", float("nan")),
                metrics.get("val_mIoU", float("nan")),
                metrics["epoch_time_s"],
            )
            with tempfile.TemporaryDirectory(prefix="crobim-ckpt-") as tmp:
                save_checkpoint(
                    tmp,
                    model=net,
                    model_config_json=model_config_json,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    state=state,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)
