"""CroBIM losses (MODEL.md §5 and §4.2; keys `loss.*`, `head.channels`, `presence.*`).

2 channels (the paper presets; the LAVT/RMSIN harness): ``ce_weight`` x class-weighted CE + ``dice_weight`` x
Dice_sum (Lsan2401/RMSIN ``loss/loss.py``; ``loss.kind = "ce"`` is yz93/LAVT-RIS ``train.py::criterion``);
1 channel (ours): ``ce_weight`` x pixel-weighted BCE + ``dice_weight`` x foreground Dice_sum; presence: BCE against
"the target mask is non-empty". The foreground Dice term is skipped for empty targets (``loss.dice_skip_empty``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crobim.config import CroBIMConfig

__all__ = ["CroBIMLoss", "LossOutput", "dice_per_sample"]


@dataclass
class LossOutput:
    """``total`` (scalar, differentiable) and its detached parts by name (``mask_ce``, ``dice``, ``presence``)."""

    total: Tensor
    parts: dict[str, Tensor]


def dice_per_sample(prob: Tensor, target: Tensor, smooth: float) -> Tensor:
    """1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s) per sample: prob, target (B, H, W) -> (B,)."""
    inter = (prob * target).flatten(1).sum(dim=1)
    denom = prob.flatten(1).sum(dim=1) + target.flatten(1).sum(dim=1)
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


class CroBIMLoss(nn.Module):
    """Mask loss (+ presence loss when the model has the presence head)."""

    class_weights: Tensor

    def __init__(self, config: CroBIMConfig) -> None:
        super().__init__()
        self.loss = config.loss
        self.channels = config.head.channels
        self.presence_weight = config.presence.loss_weight
        self.register_buffer("class_weights", torch.tensor(config.loss.class_weights), persistent=False)

    def _dice(self, terms: Tensor, keep: Tensor) -> Tensor:
        """Sum (``ce_dice_sum``) or mean (``ce_dice_mean``) of the kept Dice terms."""
        kept = terms[keep]
        if self.loss.kind == "ce_dice_mean":
            return kept.mean() if kept.numel() else terms.sum() * 0.0
        return kept.sum()

    def forward(self, output: object, masks: Tensor, has_target: Tensor | None = None) -> LossOutput:
        """Loss of a paired forward.

        Args:
            output: a ``CroBIMOutput`` with logits (B, C, H, W) at the masks' resolution.
            masks: (B, H, W) ground truth in {0, 1} (empty for no-target samples).
            has_target: (B,) bool, the presence target; None derives it from the masks (non-empty = present).

        Returns:
            ``LossOutput``.
        """
        logits: Tensor = output.logits  # type: ignore[attr-defined]
        presence_logit: Tensor | None = output.presence_logit  # type: ignore[attr-defined]
        if logits.ndim != 4 or logits.shape[0] != masks.shape[0] or logits.shape[-2:] != masks.shape[-2:]:
            raise ValueError(
                f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} must be (B, C, H, W) and (B, H, W) at "
                "the same size; resize masks with crobim.transforms.resize_mask"
            )
        target = masks.to(logits.dtype)
        non_empty = target.flatten(1).amax(dim=1) > 0  # (B,)
        if has_target is None:
            has_target = non_empty
        parts: dict[str, Tensor] = {}
        keep_fg = non_empty if self.loss.dice_skip_empty else torch.ones_like(non_empty)
        if self.channels == 2:
            ce = F.cross_entropy(logits, target.long(), weight=self.class_weights.to(logits.dtype))
            prob = logits.softmax(dim=1)
            dice_bg = dice_per_sample(prob[:, 0], 1.0 - target, self.loss.dice_smooth)
            dice_fg = dice_per_sample(prob[:, 1], target, self.loss.dice_smooth)
            terms = torch.stack([dice_bg, dice_fg], dim=1)  # (B, 2)
            keep = torch.stack([torch.ones_like(keep_fg), keep_fg], dim=1)
        else:
            logit = logits[:, 0]
            pixel_w = torch.where(target > 0, self.class_weights[1], self.class_weights[0]).to(logit.dtype)
            ce = (
                F.binary_cross_entropy_with_logits(logit, target, reduction="none") * pixel_w
            ).sum() / pixel_w.sum()
            terms = dice_per_sample(torch.sigmoid(logit), target, self.loss.dice_smooth)  # (B,)
            keep = keep_fg
        parts["mask_ce"] = ce
        if self.loss.kind == "ce":
            total = ce
        else:
            dice = self._dice(terms, keep)
            parts["dice"] = dice
            total = self.loss.ce_weight * ce + self.loss.dice_weight * dice
        if presence_logit is not None:
            presence = F.binary_cross_entropy_with_logits(presence_logit, has_target.to(presence_logit.dtype))
            parts["presence"] = presence
            total = total + self.presence_weight * presence
        return LossOutput(total=total, parts={k: v.detach() for k, v in parts.items()})
