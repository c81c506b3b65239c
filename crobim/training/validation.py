"""Distributed validation: each rank scores its shard, the metric states are gathered and merged so
every rank computes the same global numbers (PIPELINE.md §7; protocol DATA_AND_EVAL.md §7-§8).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from crobim.training.data import forward_batch
from crobim.training.loop import in_process_group

__all__ = ["gather_metrics", "score_batch", "validate"]

logger = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def score_batch(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    metrics: Any,  # noqa: ANN401
    gated_metrics: Any | None = None,  # noqa: ANN401
) -> None:
    """Run one decoded batch through the model and add every sample to the metric accumulators.

    Args:
        model: CroBIM (or its DDP wrapper) in eval mode.
        batch: columns `image`, `input_ids`, `attention_mask`, `mask`, `no_target` on the model's device.
        metrics: `ReferringMetrics` fed with ungated masks (the benchmark protocol).
        gated_metrics: `ReferringMetrics` fed with presence-gated masks, when the presence head is on.
    """
    from crobim.inference import binary_mask, presence_probability

    out = forward_batch(model, batch)
    pred = binary_mask(out).cpu()  # (B, H, W) bool at the input size
    gt = batch["mask"].bool().cpu().numpy()
    no_target = batch["no_target"].bool().cpu().tolist()
    metrics.update(pred.numpy(), gt, no_target=no_target)
    if gated_metrics is not None:
        # binary_mask(out, gate_presence=True) without building the mask a second time
        present = presence_probability(out).cpu() >= model.config.presence.threshold  # (B,)
        gated_metrics.update((pred & present[:, None, None]).numpy(), gt, no_target=no_target)


def gather_metrics(metrics: Any) -> Any:  # noqa: ANN401
    """All-reduce (sum) a `ReferringMetrics` state over ranks; every rank ends with the global state."""
    if not in_process_group():
        return metrics
    ints, floats = metrics.state_arrays()
    t_int = torch.as_tensor(ints, dtype=torch.int64)
    t_float = torch.as_tensor(floats, dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":
        t_int, t_float = t_int.cuda(), t_float.cuda()
    torch.distributed.all_reduce(t_int)
    torch.distributed.all_reduce(t_float)
    metrics.load_arrays(t_int.cpu(), t_float.cpu())
    return metrics


def validate(
    model: torch.nn.Module,
    shard: Any,  # noqa: ANN401
    *,
    device: torch.device,
    precision: str,
    batch_size: int,
) -> dict[str, float]:
    """Score the rank's validation shard and return global metrics prefixed `val_`.

    Args:
        model: CroBIM or its DDP wrapper.
        shard: the rank's `DataIterator` (from `ray.train.get_dataset_shard("val")`), or any iterable of
            batches of torch tensors when `shard` has no `iter_torch_batches`.
        device: compute device.
        precision: the run's `schedule.precision`.
        batch_size: batch size (does not change any metric).

    Returns:
        `val_oIoU`, `val_mIoU`, `val_giou_gres`, `val_N_acc`, `val_T_acc`, `val_Pr@X`, `val_count`, ...
        (`crobim.metrics.ReferringMetrics.compute`, `-` written `_`), and `val_gated_*` (presence-gated
        masks) when the presence head is on.
    """
    from crobim.metrics import ReferringMetrics

    net = _unwrap(model)
    presence = net.config.presence.enabled
    metrics = ReferringMetrics()
    gated = ReferringMetrics() if presence else None
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if use_bf16
        else contextlib.nullcontext()
    )
    batches = (
        shard.iter_torch_batches(batch_size=batch_size, drop_last=False)
        if hasattr(shard, "iter_torch_batches")
        else shard
    )
    was_training = net.training
    net.eval()
    with torch.inference_mode(), autocast:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            # The unwrapped module: DDP's forward would wait for the other ranks' (uneven) shards.
            score_batch(net, batch, metrics, gated)
    net.train(was_training)
    merged = gather_metrics(metrics)
    out = {f"val_{k}": float(v) for k, v in _flatten(merged.compute()).items()}
    if gated is not None:
        out.update({f"val_gated_{k}": float(v) for k, v in _flatten(gather_metrics(gated).compute()).items()})
    return out


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}".replace("-", "_")] = float(value)
    return flat
