"""Distributed validation: each rank scores its shard, the metric states are gathered and merged so
every rank computes the same global numbers (PIPELINE.md §7; protocol DATA_AND_EVAL.md §7-§8).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from crobim.metrics import ReferringMetrics
from crobim.scoring import BatchMasks, score_batches
from crobim.training.collectives import gather_metrics

__all__ = ["validate"]

logger = logging.getLogger(__name__)


def _unwrap(model: torch.nn.Module) -> Any:  # noqa: ANN401 - the CroBIM inside a DDP wrapper
    return model.module if hasattr(model, "module") else model


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}".replace("-", "_")] = float(value)
    return flat


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
    net = _unwrap(model)
    metrics = ReferringMetrics()
    gated = ReferringMetrics() if net.config.presence.enabled else None

    def consume(batch: dict[str, torch.Tensor], masks: BatchMasks) -> None:
        gt = batch["mask"].bool().cpu().numpy()
        no_target = batch["no_target"].bool().cpu().tolist()
        metrics.update(masks.masks.numpy(), gt, no_target=no_target)
        if gated is not None and masks.gated is not None:
            gated.update(masks.gated.numpy(), gt, no_target=no_target)

    batches = (
        shard.iter_torch_batches(batch_size=batch_size, drop_last=False)
        if hasattr(shard, "iter_torch_batches")
        else shard
    )
    # The unwrapped module: DDP's forward would wait for the other ranks' (uneven) shards.
    score_batches(net, batches, consume, device=device, precision=precision)
    out = {f"val_{k}": float(v) for k, v in _flatten(gather_metrics(metrics).compute()).items()}
    if gated is not None:
        out.update({f"val_gated_{k}": float(v) for k, v in _flatten(gather_metrics(gated).compute()).items()})
    return out
