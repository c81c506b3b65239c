"""AdamW parameter groups built from ``named_parameters()`` and the per-iteration poly schedule (MODEL.md §6;
keys `optim.*`).

Groups are built from every trainable parameter, so new modules can never be left out of the optimizer (the
LAVT/RMSIN hand-built groups silently skip them); ``check_group_coverage`` proves it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from crobim.config import CroBIMConfig, OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "check_group_coverage", "parameter_groups", "poly_lr_lambda"]

#: Parameters without weight decay besides the name keywords: CAPM prompts and the scale embedding.
_NO_DECAY_SUFFIXES = ("capm.prompts", "capm.scale_embed")


def _no_decay(name: str, param: nn.Parameter, optim: OptimConfig) -> bool:
    lowered = name.lower()
    return (
        param.ndim
        <= 1  # biases, norm scales (LayerNorm, BatchNorm, GroupNorm, InstanceNorm), learned scalars
        or name.endswith(".bias")
        or name.endswith(_NO_DECAY_SUFFIXES)
        or any(keyword.lower() in lowered for keyword in optim.no_decay_keywords)
    )


def parameter_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """Two AdamW groups, ``decay`` and ``no_decay``, covering every parameter with ``requires_grad=True``."""
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _no_decay(name, param, optim):
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    return [
        {"name": "decay", "params": decay, "param_names": decay_names, "weight_decay": optim.weight_decay},
        {"name": "no_decay", "params": no_decay, "param_names": no_decay_names, "weight_decay": 0.0},
    ]


def check_group_coverage(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Raise ``ValueError`` unless every trainable parameter is in exactly one group and no frozen one is in any."""
    seen: dict[int, int] = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            seen[id(param)] = seen.get(id(param), 0) + 1
    names = {id(p): n for n, p in model.named_parameters()}
    twice = [names.get(k, "?") for k, count in seen.items() if count > 1]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and id(p) in seen]
    if twice or missing or frozen:
        raise ValueError(
            f"optimizer groups do not cover the model exactly: in two groups {twice[:10]}, missing trainable "
            f"{missing[:10]}, frozen but optimised {frozen[:10]}"
        )


def build_optimizer(model: nn.Module, config: CroBIMConfig) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups`` with ``optim.lr``, ``betas``, ``eps``, ``amsgrad``."""
    cfg = config.optim
    optimizer = torch.optim.AdamW(
        parameter_groups(model, cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, amsgrad=cfg.amsgrad
    )
    check_group_coverage(model, optimizer)
    return optimizer


def poly_lr_lambda(total_iters: int, power: float = 0.9, warmup_iters: int = 0) -> Callable[[int], float]:
    """Multiplier (1 - t / total_iters) ** power for iteration t (clamped at 0 after the end), times a linear
    warmup (t + 1) / warmup_iters over the first ``warmup_iters`` iterations (0 = none, the paper's recipe)."""
    if total_iters <= 0:
        raise ValueError(f"total_iters = {total_iters} must be positive (iters_per_epoch * epochs)")
    if warmup_iters < 0:
        raise ValueError(f"warmup_iters = {warmup_iters} must be >= 0")

    def factor(step: int) -> float:
        poly = max(0.0, 1.0 - min(step, total_iters) / total_iters) ** power
        return poly * min(1.0, (step + 1) / warmup_iters) if warmup_iters else poly

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_iters: int, optim: OptimConfig | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration poly schedule with ``optim.poly_power`` and ``optim.warmup_iters`` (defaults without
    ``optim``); call ``scheduler.step()`` after every optimizer step."""
    optim = optim or OptimConfig()
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_lr_lambda(total_iters, optim.poly_power, optim.warmup_iters)
    )
