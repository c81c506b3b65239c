"""The bf16 autocast choice shared by every forward pass (training, validation, evaluation, region prediction)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "autocast"]

#: Accepted precision names: "auto" = bf16 autocast on CUDA and fp32 elsewhere; "bf16" forces autocast; "fp32" none.
PRECISIONS = ("auto", "bf16", "fp32")


def autocast(device: torch.device | str, precision: str = "auto") -> contextlib.AbstractContextManager[Any]:
    """The autocast context for a forward pass on ``device``.

    Args:
        device: Torch device (or its name) the forward runs on.
        precision: One of :data:`PRECISIONS`.

    Returns:
        ``torch.autocast(device.type, dtype=torch.bfloat16)`` for "bf16", and for "auto" on CUDA; otherwise a
        no-op context (fp32).

    Raises:
        ValueError: If ``precision`` is not one of :data:`PRECISIONS`.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    device_type = torch.device(device).type
    if precision == "bf16" or (precision == "auto" and device_type == "cuda"):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
