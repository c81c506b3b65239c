"""SynRS shape rasterisers: rotated rectangles, ellipses and polylines, tested at pixel centres.

Shapes are rasterised in numpy by testing pixel centres (no antialiasing), inside the shape's bounding window
only, so a large mosaic costs about as much per object as a small scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Shape", "rasterise_ellipse", "rasterise_polyline", "rasterise_rect"]


@dataclass
class Shape:
    """A placed object: class, footprint window and local mask, plus what the painter needs."""

    cls: str
    y0: int
    x0: int
    mask: np.ndarray  # local bool footprint
    colour: tuple[float, float, float]
    colour_name: str | None = None
    u: np.ndarray | None = None  # local coordinate along the shape's long axis (rects)
    v: np.ndarray | None = None  # local coordinate across it
    radial: np.ndarray | None = None  # normalised radius (discs, ellipses)
    edge: np.ndarray | None = None  # distance to the centre line (lines), pixels
    half_width: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def window(self) -> tuple[slice, slice]:
        """The footprint's ``(rows, cols)`` slices on the canvas."""
        h, w = self.mask.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)


def _grid(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a window, ``(h, 1)`` and ``(1, w)`` float32 for broadcasting."""
    yy = (np.arange(y0, y1, dtype=np.float32) + 0.5)[:, None]
    xx = (np.arange(x0, x1, dtype=np.float32) + 0.5)[None, :]
    return yy, xx


def _clip_window(cy: float, cx: float, r: float, h: int, w: int) -> tuple[int, int, int, int] | None:
    y0, y1 = max(0, int(math.floor(cy - r))), min(h, int(math.ceil(cy + r)) + 1)
    x0, x1 = max(0, int(math.floor(cx - r))), min(w, int(math.ceil(cx + r)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    return y0, y1, x0, x1


def rasterise_rect(
    cy: float, cx: float, hh: float, hw: float, angle: float, size: tuple[int, int], grow: float = 0.0
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray] | None:
    """Rotated rectangle with half sides ``hh``, ``hw`` (pixels), grown by ``grow`` on every side.

    Args:
        cy: Centre row.
        cx: Centre column.
        hh: Half side across the long axis.
        hw: Half side along it.
        angle: Rotation in radians.
        size: Canvas ``(H, W)``.
        grow: Extra margin (pixels), for overlap probes.

    Returns:
        ``(y0, x0, mask, u, v)`` with the window origin, the local footprint and the local coordinates along
        and across the long axis, or ``None`` if the window is off the canvas.
    """
    win = _clip_window(cy, cx, math.hypot(hh + grow, hw + grow) + 1, *size)
    if win is None:
        return None
    y0, y1, x0, x1 = win
    yy, xx = _grid(y0, y1, x0, x1)
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    m = (np.abs(u) <= hw + grow) & (np.abs(v) <= hh + grow)
    return y0, x0, m, u, v


def rasterise_ellipse(
    cy: float, cx: float, ry: float, rx: float, angle: float, size: tuple[int, int], grow: float = 0.0
) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    """Rotated ellipse with radii ``ry``, ``rx`` (pixels), grown by ``grow``.

    Args:
        cy: Centre row.
        cx: Centre column.
        ry: Radius across.
        rx: Radius along the rotated axis.
        angle: Rotation in radians.
        size: Canvas ``(H, W)``.
        grow: Extra margin (pixels), for overlap probes.

    Returns:
        ``(y0, x0, mask, radial)`` with the normalised radius of every window pixel, or ``None`` if the window
        is off the canvas.
    """
    win = _clip_window(cy, cx, max(ry, rx) + grow + 1, *size)
    if win is None:
        return None
    y0, y1, x0, x1 = win
    yy, xx = _grid(y0, y1, x0, x1)
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    radial = np.sqrt((u / (rx + grow)) ** 2 + (v / (ry + grow)) ** 2)
    return y0, x0, radial <= 1.0, radial


def rasterise_polyline(
    points: np.ndarray, half_width: float, size: tuple[int, int]
) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    """Pixels within ``half_width`` of a polyline.

    Args:
        points: Vertices, ``(n, 2)`` (y, x) in pixels.
        half_width: Half the line width in pixels.
        size: Canvas ``(H, W)``.

    Returns:
        ``(y0, x0, mask, distance)`` with every window pixel's distance to the centre line, or ``None`` if no
        pixel of the canvas is covered.
    """
    h, w = size
    pad = half_width + 1
    y0 = max(0, int(math.floor(points[:, 0].min() - pad)))
    y1 = min(h, int(math.ceil(points[:, 0].max() + pad)) + 1)
    x0 = max(0, int(math.floor(points[:, 1].min() - pad)))
    x1 = min(w, int(math.ceil(points[:, 1].max() + pad)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    dist = np.full((y1 - y0, x1 - x0), np.inf, dtype=np.float32)
    for a, b in zip(points[:-1], points[1:], strict=True):
        sy0 = max(y0, int(math.floor(min(a[0], b[0]) - pad)))
        sy1 = min(y1, int(math.ceil(max(a[0], b[0]) + pad)) + 1)
        sx0 = max(x0, int(math.floor(min(a[1], b[1]) - pad)))
        sx1 = min(x1, int(math.ceil(max(a[1], b[1]) + pad)) + 1)
        if sy0 >= sy1 or sx0 >= sx1:
            continue
        yy, xx = _grid(sy0, sy1, sx0, sx1)
        d = b - a
        den = float(d @ d) or 1e-9
        t = np.clip(((yy - a[0]) * d[0] + (xx - a[1]) * d[1]) / den, 0.0, 1.0)
        seg = np.hypot(yy - (a[0] + t * d[0]), xx - (a[1] + t * d[1]))
        sub = dist[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
        np.minimum(sub, seg, out=sub)
    m = dist <= half_width
    if not m.any():
        return None
    return y0, x0, m, dist
