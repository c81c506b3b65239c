"""The one scoring loop: batches through the model in inference mode, their masks with and without presence gating.

`crobim.evaluation.evaluate` (the benchmark protocol), the training validation
(`crobim.training.validation.validate`) and the benchmarks all call :func:`score_batches`; each passes a callback
that feeds its own metric accumulators. :func:`forward_batch` is also the training step's forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from crobim.inference import binary_mask, gate_by_presence, presence_probability
from crobim.precision import autocast

if TYPE_CHECKING:
    from crobim.modeling.model import CroBIM

__all__ = ["BatchMasks", "forward_batch", "predict_masks", "score_batches"]


@dataclass
class BatchMasks:
    """The masks of one batch, on the CPU.

    Attributes:
        masks: (B, H, W) bool, ungated (the benchmark protocol).
        gated: (B, H, W) bool, presence-gated at ``presence.threshold``; None without the presence head.
        presence: (B,) presence probability; None without the presence head.
    """

    masks: Tensor
    gated: Tensor | None
    presence: Tensor | None

    def pick(self, gate_presence: bool) -> Tensor:
        """The gated masks when asked for and available, else the ungated ones."""
        return self.gated if gate_presence and self.gated is not None else self.masks


def forward_batch(model: nn.Module, batch: dict[str, Any]) -> Any:  # noqa: ANN401 - CroBIMOutput
    """The model on a batch, each distinct image encoded once.

    Rows with the same `image_key` show the same pixels, so the image encoder runs on the batch's distinct images
    only and `pair_index` pairs every expression with its image; the outputs equal the plain paired forward.

    Args:
        model: CroBIM or its DDP wrapper.
        batch: torch columns `image` (B, 3, H, W), `input_ids` (B, L), `attention_mask` (B, L) and, optionally,
            `image_key` (B,) (`crobim.training.data` decodes it).

    Returns:
        The ``CroBIMOutput`` for the batch's rows, in order.
    """
    images = batch["image"]
    keys = batch.get("image_key")
    if keys is not None:
        _, first, pair = np.unique(keys.cpu().numpy(), return_index=True, return_inverse=True)
        if len(first) < len(pair):
            device = images.device
            unique_images = images.index_select(
                0, torch.as_tensor(first, device=device)
            )  # (B, ...) -> (U, ...)
            pair_index = torch.as_tensor(pair.reshape(-1), dtype=torch.long, device=device)
            return model(unique_images, batch["input_ids"], batch["attention_mask"], pair_index=pair_index)
    return model(images, batch["input_ids"], batch["attention_mask"])


def predict_masks(model: CroBIM, batch: dict[str, Any]) -> BatchMasks:
    """Run one batch (see :func:`forward_batch`) and build its ungated and gated masks.

    Args:
        model: CroBIM (unwrapped), in eval mode; the caller owns inference mode and autocast.
        batch: the columns :func:`forward_batch` reads, on the model's device.

    Returns:
        The batch's masks at the input size (the logits' size), moved to the CPU.
    """
    out = forward_batch(model, batch)
    masks = binary_mask(out)  # (B, H, W) bool
    if out.presence_logit is None:
        return BatchMasks(masks.cpu(), None, None)
    gated = gate_by_presence(masks, out.presence_logit, float(model.config.presence.threshold))
    return BatchMasks(masks.cpu(), gated.cpu(), presence_probability(out).cpu())


def score_batches(
    model: CroBIM,
    batches: Iterable[dict[str, Any]],
    consume: Callable[[dict[str, Any], BatchMasks], None],
    *,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> None:
    """Predict the masks of every batch in inference mode and hand each to ``consume``.

    Args:
        model: CroBIM (unwrapped: a DDP forward would wait for the other ranks' uneven shards). It runs in eval
            mode and gets its training flag back at the end.
        batches: dicts with the columns of :func:`forward_batch`; other entries (the samples, masks, metadata)
            reach ``consume`` unchanged.
        consume: called as ``consume(batch, masks)`` for every batch, in order; it updates the caller's metrics.
        device: move the batch's tensors here first; None leaves them where they are.
        precision: autocast choice (`crobim.precision.autocast`) for the device the batches run on.
    """
    was_training = model.training
    model.eval()
    run_device = device if device is not None else next(model.parameters()).device
    try:
        with torch.inference_mode(), autocast(run_device, precision):
            for batch in batches:
                if device is not None:
                    batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                consume(batch, predict_masks(model, batch))
    finally:
        model.train(was_training)
