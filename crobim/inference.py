"""Turning CroBIM outputs into probabilities and masks (MODEL.md §4.2 "Inference"). The channel axis is -3."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from crobim.modeling.model import CroBIMOutput

__all__ = ["binary_mask", "foreground_probability", "gate_by_presence", "presence_probability"]


def _presence_logit(output: CroBIMOutput) -> Tensor:
    if output.presence_logit is None:
        raise ValueError("this output has no presence logit; build the model with presence.enabled = true")
    return output.presence_logit


def foreground_probability(logits: Tensor) -> Tensor:
    """Foreground probability in [0, 1] from mask logits (..., C, H, W) -> (..., H, W).

    Sigmoid for C = 1; softmax foreground (channel 1) for C = 2.
    """
    channels = logits.shape[-3]
    if channels == 1:
        return torch.sigmoid(logits[..., 0, :, :])
    if channels == 2:
        return logits.softmax(dim=-3)[..., 1, :, :]
    raise ValueError(f"mask logits have {channels} channels on axis -3; expected 1 or 2")


def presence_probability(output: CroBIMOutput) -> Tensor:
    """sigmoid(presence_logit), shape of the leading axes; raises if the presence head is off."""
    return torch.sigmoid(_presence_logit(output))


def gate_by_presence(values: Tensor, presence_logit: Tensor, threshold: float = 0.5) -> Tensor:
    """Empty the masks or probabilities whose presence probability is below ``threshold``.

    The one presence gate: ``binary_mask(..., gate_presence=True)``, the training validation, the evaluation and
    the region predictor all go through it. The decision ``sigmoid(presence_logit) >= threshold`` is taken in
    float32, whatever dtype the logits have under autocast.

    Args:
        values: Masks (bool) or probabilities (float) shaped ``(..., H, W)``.
        presence_logit: Presence logits shaped ``(...)``, the leading axes of ``values`` (``(B,)`` for a paired
            forward, ``(B, Q)`` for ``CroBIM.decode`` without ``pair_index``).
        threshold: Presence probability threshold (``presence.threshold``).

    Returns:
        ``values`` where the referent is present; False (bool) or 0 (float) elsewhere. Same shape and dtype.
    """
    present = torch.sigmoid(presence_logit.float()) >= threshold  # (...)
    if values.dtype == torch.bool:
        return values & present[..., None, None]  # (..., 1, 1) broadcast over (H, W)
    return values * present[..., None, None]


def binary_mask(output: CroBIMOutput | Tensor, gate_presence: bool = False, threshold: float = 0.5) -> Tensor:
    """Boolean mask (..., H, W).

    Args:
        output: a ``CroBIMOutput`` or raw mask logits (..., C, H, W).
        gate_presence: empty the mask where sigmoid(presence_logit) < ``threshold`` (needs the presence head).
        threshold: presence probability threshold (``presence.threshold``, 0.5 by default).

    Returns:
        C = 1: logit > 0; C = 2: foreground logit > background logit (a tie goes to background).
    """
    logits = output if isinstance(output, Tensor) else output.logits
    channels = logits.shape[-3]
    if channels == 1:
        mask = logits[..., 0, :, :] > 0
    elif channels == 2:
        mask = logits[..., 1, :, :] > logits[..., 0, :, :]
    else:
        raise ValueError(f"mask logits have {channels} channels on axis -3; expected 1 or 2")
    if gate_presence:
        if isinstance(output, Tensor):
            raise ValueError(
                "gate_presence=True needs the CroBIMOutput (with presence_logit), not bare logits"
            )
        mask = gate_by_presence(mask, _presence_logit(output), threshold)
    return mask
