"""Quicklook (PIPELINE.md §4): per-chunk thumbnails in the write stage, assembled on the driver into quicklook.png.

The thumbnail of a chunk samples every ``step``-th pixel of the *grid* (not of the chunk), so thumbnails of
neighbouring chunks tile the overview exactly, whatever the chunk size. The overview is at most
:data:`QUICKLOOK_MAX_PX` on its long side; memory on the driver is that canvas, never the region.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.palette import query_rgb

__all__ = [
    "QUICKLOOK_MAX_PX",
    "Overview",
    "Thumbnail",
    "assemble_overview",
    "make_thumbnail",
    "render_quicklook",
    "thumbnail_step",
]

logger = logging.getLogger(__name__)

#: Long side of quicklook.png in pixels, at most.
QUICKLOOK_MAX_PX = 2048
_ALPHA = 0.5


def thumbnail_step(grid_shape: tuple[int, int], max_px: int = QUICKLOOK_MAX_PX) -> int:
    """Sampling step (pixels) so the whole grid fits in ``max_px`` on its long side."""
    return max(1, math.ceil(max(grid_shape) / max_px))


@dataclass
class Thumbnail:
    """A chunk's thumbnail: RGB, per-query mask and validity, sampled every ``step`` grid pixels.

    Attributes:
        row0: Overview row of the thumbnail's first row.
        col0: Overview column of its first column.
        rgb: uint8 ``(h, w, 3)``.
        masks: bool ``(Q, h, w)`` (probability >= threshold).
        valid: bool ``(h, w)``.
    """

    row0: int
    col0: int
    rgb: np.ndarray
    masks: np.ndarray
    valid: np.ndarray

    def to_bytes(self) -> bytes:
        """Compressed ``.npz`` bytes (deterministic: no timestamps in the archive members)."""
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            origin=np.array([self.row0, self.col0], dtype=np.int64),
            rgb=self.rgb,
            masks=self.masks,
            valid=self.valid,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Thumbnail:
        """Inverse of :meth:`to_bytes`."""
        with np.load(io.BytesIO(data)) as z:
            row0, col0 = (int(v) for v in z["origin"])
            return cls(row0, col0, z["rgb"], z["masks"].astype(bool), z["valid"].astype(bool))


def make_thumbnail(
    rgb: np.ndarray,
    prob: np.ndarray,
    valid: np.ndarray,
    row_off: int,
    col_off: int,
    step: int,
    threshold_u8: int,
) -> Thumbnail:
    """Sample a chunk core every ``step`` grid pixels.

    Args:
        rgb: uint8 ``(H, W, 3)`` imagery of the chunk core.
        prob: uint8 ``(Q, H, W)`` written probabilities of the core.
        valid: bool/uint8 ``(H, W)``.
        row_off: Grid row of the core's first row.
        col_off: Grid column of the core's first column.
        step: Sampling step from :func:`thumbnail_step`.
        threshold_u8: Mask threshold on the uint8 probabilities (same as the polygons').

    Returns:
        The thumbnail (possibly 0 rows or columns for a chunk thinner than ``step``).
    """
    r_first = (-row_off) % step
    c_first = (-col_off) % step
    sl = (slice(r_first, None, step), slice(c_first, None, step))
    return Thumbnail(
        row0=(row_off + r_first) // step,
        col0=(col_off + c_first) // step,
        rgb=np.ascontiguousarray(rgb[sl]),
        masks=np.ascontiguousarray(prob[(slice(None), *sl)] >= threshold_u8),
        valid=np.ascontiguousarray(valid[sl].astype(bool)),
    )


def _legend(image: np.ndarray, queries: Sequence[str]) -> np.ndarray:
    """Draw a small legend (colour swatch + query text) in the top-left corner."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    line_h = 14
    width = min(pil.width, 12 + 7 * max((len(q) for q in queries), default=0) + 24)
    height = min(pil.height, 6 + line_h * len(queries))
    draw.rectangle((0, 0, width, height), fill=(0, 0, 0))
    for k, query in enumerate(queries):
        y = 4 + line_h * k
        draw.rectangle((4, y + 2, 14, y + 12), fill=query_rgb(k))
        draw.text((20, y), query, fill=(255, 255, 255))
    return np.asarray(pil)


@dataclass
class Overview:
    """The region at thumbnail scale: imagery, validity and per-query masks (grid pixels sampled every ``step``).

    Its affine transform is ``grid.affine * Affine.scale(step)``.
    """

    rgb: np.ndarray  # uint8 (h, w, 3)
    valid: np.ndarray  # bool (h, w)
    masks: np.ndarray  # bool (Q, h, w)
    step: int


def assemble_overview(
    thumbnails: Iterable[Thumbnail], grid_shape: tuple[int, int], step: int, num_queries: int
) -> Overview:
    """Paste chunk thumbnails (any order) into the overview of the whole grid.

    Args:
        thumbnails: Thumbnails of the processed chunks.
        grid_shape: ``(height, width)`` of the output grid.
        step: The sampling step the thumbnails were made with.
        num_queries: Q.

    Returns:
        The overview; pixels no thumbnail covers are invalid and black.
    """
    h = math.ceil(grid_shape[0] / step)
    w = math.ceil(grid_shape[1] / step)
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    valid = np.zeros((h, w), dtype=bool)
    masks = np.zeros((num_queries, h, w), dtype=bool)
    for th in thumbnails:
        th_h, th_w = th.valid.shape
        if th_h == 0 or th_w == 0:
            continue
        win = (slice(th.row0, th.row0 + th_h), slice(th.col0, th.col0 + th_w))
        rgb[win] = th.rgb
        valid[win] = th.valid
        masks[(slice(None), *win)] = th.masks
    return Overview(rgb, valid, masks, step)


def render_quicklook(overview: Overview, queries: Sequence[str]) -> bytes:
    """Imagery with each query's mask blended over it in its colour, plus a legend, as PNG bytes.

    Pixels without imagery are dark grey; where masks of several queries overlap, the later query shows.
    """
    from PIL import Image

    base = np.where(overview.valid[..., None], overview.rgb, np.uint8(40)).astype(np.float32)
    overlay = np.zeros_like(base)
    covered = np.zeros(overview.valid.shape, dtype=bool)
    for k in range(overview.masks.shape[0]):
        hit = overview.masks[k]
        overlay[hit] = np.asarray(query_rgb(k), dtype=np.float32)
        covered |= hit
    base[covered] = (1 - _ALPHA) * base[covered] + _ALPHA * overlay[covered]
    image = _legend(np.clip(np.rint(base), 0, 255).astype(np.uint8), queries)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
