"""Collectives over the Ray Train process group: averages, buffer broadcast and metric gathering (PIPELINE.md §7).

Every function is a no-op (or the identity) outside an initialised `torch.distributed` process group, so the same
code runs in a single process.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["all_reduce_mean", "broadcast_buffers", "gather_metrics", "in_process_group"]


def in_process_group() -> bool:
    """True inside an initialised `torch.distributed` process group (a Ray Train worker)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
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
