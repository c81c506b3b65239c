"""The sample every reader returns (DATA_AND_EVAL.md §1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Sample"]


@dataclass
class Sample:
    """One (image, expression, mask) triplet.

    Attributes:
        image: RGB pixels, ``(H, W, 3)`` uint8.
        mask: Referred pixels, ``(H, W)`` bool; all False for a no-target sample, the union of the referents for
            a multi-target one.
        text: The raw expression.
        meta: ``sample_id`` (unique in the split), ``split``, ``dataset``, ``category`` (``None`` when unknown),
            ``file_name`` and ``no_target`` (from the annotation, never from a resized mask), plus reader-specific
            ids.
    """

    image: np.ndarray
    mask: np.ndarray
    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"Sample.image must be (H, W, 3) uint8; got shape {self.image.shape} dtype {self.image.dtype}"
            )
        if self.mask.dtype != np.bool_ or self.mask.shape != self.image.shape[:2]:
            raise ValueError(
                f"Sample.mask must be bool with the image's (H, W) {self.image.shape[:2]}; "
                f"got shape {self.mask.shape} dtype {self.mask.dtype}"
            )

    @property
    def no_target(self) -> bool:
        """Whether the expression refers to nothing in the image (from the annotation)."""
        return bool(self.meta.get("no_target", False))
