"""Model tiles on one global lattice and seamless blending (PIPELINE.md §1.7, §1.9).

Every tile of side S lies on one lattice anchored at the grid origin minus (m + R), with stride S - V;
a margin m is discarded on each side, and raised-cosine ramps of width R = V - 2m cross-fade
neighbours, so weights sum to 1 and a pixel's value does not depend on chunk size or position.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["Blender", "TileLattice", "TileWindow", "cut_tiles", "tile_windows"]

logger = logging.getLogger(__name__)

#: Weight floor inside the kept area (TerraTorch's ``tiled_inference`` does the same).
WEIGHT_FLOOR = 1e-6


@dataclass(frozen=True)
class TileWindow:
    """A tile's top-left corner in grid pixels (may be negative) and its lattice index."""

    row: int
    col: int
    i: int
    j: int


@dataclass(frozen=True)
class TileLattice:
    """The global tile lattice.

    Attributes:
        tile_size_px: Tile side S (the predictor's ``tile_size``).
        overlap_px: V, the pixels two neighbouring tiles share.
        margin_px: m, discarded on every tile side.
    """

    tile_size_px: int = 480
    overlap_px: int = 128
    margin_px: int = 16

    def __post_init__(self) -> None:
        s, v, m = self.tile_size_px, self.overlap_px, self.margin_px
        if s < 1 or m < 0 or v < 2 * m or v >= s:
            raise ValueError(
                f"tile lattice S={s}, overlap V={v}, margin m={m}: need S >= 1, m >= 0, 2m <= V < S "
                "(e.g. S=480, V=128, m=16)"
            )

    @classmethod
    def for_tile_size(
        cls, tile_size_px: int, overlap_px: int | None = None, margin_px: int | None = None
    ) -> TileLattice:
        """The lattice for tiles of side S; overlap and margin default to 128 and 16 at S = 480, scaled with S."""
        default_margin = max(0, round(tile_size_px / 30))
        default_overlap = max(2 * default_margin + 2, 2 * round(tile_size_px * 4 / 15 / 2))
        return cls(
            tile_size_px=tile_size_px,
            overlap_px=default_overlap if overlap_px is None else overlap_px,
            margin_px=default_margin if margin_px is None else margin_px,
        )

    @property
    def stride_px(self) -> int:
        """S - V."""
        return self.tile_size_px - self.overlap_px

    @property
    def ramp_px(self) -> int:
        """R = V - 2m."""
        return self.overlap_px - 2 * self.margin_px

    @property
    def origin_px(self) -> int:
        """Lattice origin relative to the grid origin: -(m + R), so the grid border gets full weight."""
        return -(self.margin_px + self.ramp_px)

    @property
    def halo_px(self) -> int:
        """H = S - m: the read halo that holds every tile whose kept area meets a chunk core."""
        return self.tile_size_px - self.margin_px

    def weights_1d(self, mode: Literal["cosine", "clip"] = "cosine") -> np.ndarray:
        """Per-axis weight r(u), u = 0..S-1 (float64); the 2-D weight is r(u) r(v)."""
        s, m, r, stride = self.tile_size_px, self.margin_px, self.ramp_px, self.stride_px
        w = np.zeros(s, dtype=np.float64)
        if mode == "clip":
            # Each tile owns the stride-wide band centred in it; bands tile the line exactly.
            lo = self.overlap_px // 2
            w[lo : lo + stride] = 1.0
            return w
        if mode != "cosine":
            raise ValueError(f"blend mode {mode!r} must be 'cosine' or 'clip'")
        w[m : s - m] = 1.0
        if r > 0:
            u = (np.arange(r) + 0.5) / r
            up = np.sin(0.5 * math.pi * u) ** 2  # Hann ramp; up + reversed(up) == 1
            w[m : m + r] = up
            w[s - m - r : s - m] = up[::-1]
        w[m : s - m] = np.maximum(w[m : s - m], WEIGHT_FLOOR)
        return w

    def tile_range(self, start_px: int, stop_px: int) -> range:
        """Lattice indices of tiles whose kept area meets ``[start_px, stop_px)`` along one axis."""
        s, m, o, stride = self.tile_size_px, self.margin_px, self.origin_px, self.stride_px
        # kept area of tile k: [o + k*stride + m, o + k*stride + s - m)
        k0 = math.floor((start_px - o - s + m) / stride) + 1
        k1 = math.ceil((stop_px - o - m) / stride)
        return range(k0, k1)


def tile_windows(lattice: TileLattice, core: tuple[int, int, int, int]) -> list[TileWindow]:
    """Tiles needed for a chunk core ``(row_off, col_off, height, width)`` in grid pixels, row-major.

    Args:
        lattice: The global lattice.
        core: The chunk core window.

    Returns:
        Tile windows in a fixed (row-major lattice) order.
    """
    row_off, col_off, h, w = core
    o, stride = lattice.origin_px, lattice.stride_px
    return [
        TileWindow(o + i * stride, o + j * stride, i, j)
        for i in lattice.tile_range(row_off, row_off + h)
        for j in lattice.tile_range(col_off, col_off + w)
    ]


def cut_tiles(
    image: np.ndarray,
    image_origin: tuple[int, int],
    windows: list[TileWindow],
    tile_size_px: int,
    valid: np.ndarray | None = None,
    skip_invalid: bool = True,
) -> Iterator[tuple[TileWindow, np.ndarray]]:
    """Yield ``(window, tile (S, S, C))`` cut from ``image (H, W, C)`` whose top-left is ``image_origin``.

    Invalid pixels are set to 0; tiles with no valid pixel are skipped when ``skip_invalid``.

    Raises:
        ValueError: If a tile leaves the image (the read halo is too small for the lattice).
    """
    r0, c0 = image_origin
    h, w = image.shape[:2]
    for win in windows:
        y, x = win.row - r0, win.col - c0
        if y < 0 or x < 0 or y + tile_size_px > h or x + tile_size_px > w:
            raise ValueError(
                f"tile at grid ({win.row}, {win.col}) leaves the read window {image_origin} + {image.shape[:2]}; "
                f"the halo must be at least S - m"
            )
        tile = image[y : y + tile_size_px, x : x + tile_size_px]
        if valid is not None:
            tv = valid[y : y + tile_size_px, x : x + tile_size_px]
            if skip_invalid and not tv.any():
                continue
            if not tv.all():
                tile = np.where(tv[..., None], tile, 0).astype(image.dtype)
        yield win, tile


class Blender:
    """Accumulates tile probabilities over a chunk core; returns uint8 ``round(255 p)``.

    Tiles must be added in a fixed order (that of :func:`tile_windows`) so float sums are reproducible.
    """

    def __init__(
        self,
        lattice: TileLattice,
        core: tuple[int, int, int, int],
        n_queries: int,
        mode: Literal["cosine", "clip"] = "cosine",
    ) -> None:
        """Create zeroed accumulators for a core ``(row_off, col_off, height, width)`` and Q queries."""
        self.lattice = lattice
        self.core = core
        self.mode = mode
        _, _, h, w = core
        self._w1 = lattice.weights_1d(mode).astype(np.float32)
        self._acc = np.zeros((n_queries, h, w), dtype=np.float32)
        self._wsum = np.zeros((h, w), dtype=np.float32)

    def add(self, window: TileWindow, probs: np.ndarray) -> None:
        """Add one tile's probabilities ``(Q, S, S)`` in [0, 1] at ``window``."""
        s = self.lattice.tile_size_px
        if probs.shape[-2:] != (s, s):
            raise ValueError(f"tile probabilities have shape {probs.shape}; expected (Q, {s}, {s})")
        r0, c0, h, w = self.core
        # Overlap of the tile with the core, in core and tile coordinates.
        y0, y1 = max(window.row, r0), min(window.row + s, r0 + h)
        x0, x1 = max(window.col, c0), min(window.col + s, c0 + w)
        if y0 >= y1 or x0 >= x1:
            return
        ty, tx = slice(y0 - window.row, y1 - window.row), slice(x0 - window.col, x1 - window.col)
        wy, wx = self._w1[ty], self._w1[tx]
        weight = wy[:, None] * wx[None, :]  # (h', w')
        cy, cx = slice(y0 - r0, y1 - r0), slice(x0 - c0, x1 - c0)
        self._acc[:, cy, cx] += probs[:, ty, tx].astype(np.float32) * weight[None]
        self._wsum[cy, cx] += weight

    def result(self, valid: np.ndarray | None = None) -> np.ndarray:
        """uint8 ``(Q, h, w)``: ``round(255 * sum(w p) / sum(w))``; 0 where invalid or never covered.

        Args:
            valid: bool ``(h, w)`` validity of the core pixels.
        """
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(self._wsum > 0, self._acc / np.maximum(self._wsum, np.float32(1e-30)), 0.0)
        out = np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)
        if valid is not None:
            out[:, ~valid] = 0
        return out
