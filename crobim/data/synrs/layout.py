"""SynRS scene layout: where rivers, roads, fields, parking lots, ponds, buildings and trees go.

Objects are placed with overlap rejection on an occupancy map. Every random draw goes through the
``numpy.random.Generator`` passed in; nothing reads a global RNG.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crobim.data.synrs.shapes import Shape, rasterise_ellipse, rasterise_polyline, rasterise_rect
from crobim.data.synrs.style import FIELD_COLOURS, ROOF_COLOURS, jitter

__all__ = ["Layout", "lay_out_scene"]


class Layout:
    """Places shapes with overlap rejection on an occupancy map.

    Args:
        rng: The scene's generator.
        size: Canvas ``(H, W)`` in pixels.
        unit: Scene unit that object sizes are relative to, in pixels.
    """

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], unit: float) -> None:
        self.rng = rng
        self.size = size
        self.unit = unit
        self.occupied = np.zeros(size, dtype=bool)  # everything except fields (trees may cover fields)
        self.fields = np.zeros(size, dtype=bool)
        self.shapes: list[Shape] = []
        self.road_points: list[tuple[float, float, float]] = []  # (y, x, half width) along road centre lines

    def near_road_point(self, clearance: float) -> tuple[float, float] | None:
        """A point beside a random road, ``clearance`` plus a small random gap from its centre line."""
        if not self.road_points:
            return None
        y, x, hw = self.road_points[int(self.rng.integers(0, len(self.road_points)))]
        ang = float(self.rng.uniform(0, 2 * math.pi))
        d = hw + clearance + float(self.rng.uniform(1.0, 0.04 * self.unit))
        return y + d * math.sin(ang), x + d * math.cos(ang)

    def _free(self, y0: int, x0: int, m: np.ndarray, also_fields: bool = True) -> bool:
        h, w = m.shape
        win = (slice(y0, y0 + h), slice(x0, x0 + w))
        if (self.occupied[win] & m).any():
            return False
        return not (also_fields and (self.fields[win] & m).any())

    def _commit(self, shape: Shape, occupancy: np.ndarray | None = None) -> None:
        target = self.fields if shape.cls == "field" else self.occupied
        if occupancy is None:
            target[shape.window] |= shape.mask
        else:
            target |= occupancy
        self.shapes.append(shape)

    def random_point(self) -> tuple[float, float]:
        """A uniform point ``(y, x)`` on the canvas."""
        h, w = self.size
        return float(self.rng.uniform(0, h)), float(self.rng.uniform(0, w))

    def add_line(
        self, cls: str, points: np.ndarray, half_width: float, colour: tuple[float, float, float]
    ) -> None:
        """Add a river or road along ``points`` (``(n, 2)`` (y, x)); lines may cross anything."""
        res = rasterise_polyline(points, half_width, self.size)
        if res is None:
            return
        y0, x0, m, dist = res
        shape = Shape(cls, y0, x0, m, colour, edge=dist, half_width=half_width)
        self._commit(shape)
        if cls == "road":
            step = max(1, len(points) // 40)
            self.road_points += [(float(p[0]), float(p[1]), half_width) for p in points[::step]]

    def add_rect(self, cls: str, hh: float, hw: float, colour: tuple[float, float, float], *, gap: float,
                 colour_name: str | None = None, tries: int = 12, angle_sd: float = math.pi,
                 p_near_road: float = 0.0) -> bool:  # fmt: skip
        """Place a rotated rectangle at least ``gap`` pixels from other objects; False if no try fits."""
        beside = self.rng.random() < p_near_road
        for _ in range(tries):
            pt = self.near_road_point(max(hh, hw) + gap) if beside else None
            cy, cx = pt if pt is not None else self.random_point()
            angle = float(self.rng.uniform(-angle_sd, angle_sd))
            probe = rasterise_rect(cy, cx, hh, hw, angle, self.size, grow=gap)
            if probe is None or not self._free(probe[0], probe[1], probe[2]):
                continue
            res = rasterise_rect(cy, cx, hh, hw, angle, self.size)
            if res is None or not res[2].any():
                continue
            y0, x0, m, u, v = res
            self._commit(Shape(cls, y0, x0, m, colour, colour_name, u=u, v=v, extra={"hh": hh, "hw": hw}))
            return True
        return False

    def add_ellipse(self, cls: str, ry: float, rx: float, colour: tuple[float, float, float], *, gap: float,
                    center: tuple[float, float] | None = None, tries: int = 12, avoid_fields: bool = True,
                    p_near_road: float = 0.0) -> bool:  # fmt: skip
        """Place a rotated ellipse (near ``center`` if given) ``gap`` pixels clear; False if no try fits."""
        beside = center is None and self.rng.random() < p_near_road
        for attempt in range(tries):
            pt = self.near_road_point(max(ry, rx) + gap) if beside else None
            if pt is not None:
                cy, cx = pt
            elif center is not None and attempt == 0:
                cy, cx = center
            elif center is not None:
                cy = center[0] + float(self.rng.normal(0, 2 * max(ry, rx)))
                cx = center[1] + float(self.rng.normal(0, 2 * max(ry, rx)))
            else:
                cy, cx = self.random_point()
            angle = float(self.rng.uniform(0, math.pi))
            probe = rasterise_ellipse(cy, cx, ry, rx, angle, self.size, grow=gap)
            if probe is None or not self._free(probe[0], probe[1], probe[2], also_fields=avoid_fields):
                continue
            res = rasterise_ellipse(cy, cx, ry, rx, angle, self.size)
            if res is None or not res[2].any():
                continue
            y0, x0, m, radial = res
            self._commit(Shape(cls, y0, x0, m, colour, radial=radial))
            return True
        return False


def _count(rng: np.random.Generator, lo: int, hi: int, area_units: float) -> int:
    """Object count: uniform in ``[lo, hi]`` per unit of area (summed over units for mosaics)."""
    n_units = max(1, round(area_units))
    return int(rng.integers(lo, hi + 1, size=n_units).sum())


def _meander(rng: np.random.Generator, size: tuple[int, int], unit: float) -> np.ndarray:
    """Edge-to-edge meandering centre line of a river, ``(n, 2)`` (y, x)."""
    h, w = size
    vertical = bool(rng.integers(0, 2))
    length = float(h if vertical else w)
    across = float(w if vertical else h)
    start = float(rng.uniform(0.2, 0.8)) * across
    end = float(np.clip(start + rng.uniform(-0.3, 0.3) * across, 0.1 * across, 0.9 * across))
    amp = float(rng.uniform(0.04, 0.11)) * unit
    wavelength = float(rng.uniform(0.35, 0.8)) * unit
    phase = float(rng.uniform(0, 2 * math.pi))
    n = max(8, int(length / (0.02 * unit)))
    t = np.linspace(-0.05, 1.05, n)
    along = t * length
    off = start + (end - start) * t + amp * np.sin(2 * math.pi * along / wavelength + phase)
    pts = np.stack([along, off], axis=1) if vertical else np.stack([off, along], axis=1)
    return pts.astype(np.float64)


def _road_line(rng: np.random.Generator, size: tuple[int, int], unit: float) -> np.ndarray:
    """A straight or gently curved road centre line starting on an edge, ``(n, 2)`` (y, x)."""
    h, w = size
    side = int(rng.integers(0, 4))
    if side == 0:
        p0, base = np.array([-2.0, rng.uniform(0, w)]), math.pi / 2
    elif side == 1:
        p0, base = np.array([h + 2.0, rng.uniform(0, w)]), -math.pi / 2
    elif side == 2:
        p0, base = np.array([rng.uniform(0, h), -2.0]), 0.0
    else:
        p0, base = np.array([rng.uniform(0, h), w + 2.0]), math.pi
    heading = base + float(rng.uniform(-0.6, 0.6))
    length = float(rng.uniform(1.0, 2.5)) * unit
    bend = float(rng.normal(0, 0.5)) if rng.random() < 0.5 else 0.0
    n = max(4, int(length / (0.05 * unit)))
    steps = np.linspace(0, 1, n)
    ang = heading + bend * steps
    dy = np.sin(ang) * length / (n - 1)
    dx = np.cos(ang) * length / (n - 1)
    pts = np.zeros((n, 2))
    pts[1:, 0] = np.cumsum(dy[:-1])
    pts[1:, 1] = np.cumsum(dx[:-1])
    return pts + p0


def lay_out_scene(
    rng: np.random.Generator, size: tuple[int, int], unit: float, style: dict[str, Any]
) -> Layout:
    """Place a scene's objects class by class (lines, fields, lots, ponds, buildings, tree clusters).

    Args:
        rng: The scene's generator.
        size: Canvas ``(H, W)`` in pixels.
        unit: Scene unit in pixels; counts scale with the canvas area in units.
        style: The scene's palette from :func:`crobim.data.synrs.style.draw_style`.

    Returns:
        The layout, its shapes in placement order.
    """
    h, w = size
    area_units = h * w / unit**2
    lay = Layout(rng, size, unit)
    n_rivers = (
        int(rng.integers(0, 2)) if area_units <= 1.5 else int(rng.integers(1, 2 + round(area_units**0.5 / 4)))
    )
    for _ in range(n_rivers):
        lay.add_line("river", _meander(rng, size, unit), float(rng.uniform(0.02, 0.04)) * unit,
                     jitter(rng, style["river"], 6))  # fmt: skip
    n_roads = _count(rng, 0, 3, area_units) if area_units <= 1.5 else _count(rng, 0, 3, area_units) // 2
    for _ in range(n_roads):
        lay.add_line("road", _road_line(rng, size, unit), max(1.5, float(rng.uniform(0.008, 0.015)) * unit),
                     jitter(rng, style["road"], 6))  # fmt: skip
    gap = max(1.0, 0.006 * unit)
    for _ in range(_count(rng, 0, 5, area_units)):
        name = str(rng.choice(list(FIELD_COLOURS)))
        lay.add_rect("field", float(rng.uniform(0.05, 0.12)) * unit, float(rng.uniform(0.06, 0.15)) * unit,
                     jitter(rng, style["field"][name], 8), gap=gap, colour_name=name, angle_sd=0.5)  # fmt: skip
    for _ in range(_count(rng, 0, 2, area_units)):
        lay.add_rect("parking lot", float(rng.uniform(0.035, 0.06)) * unit, float(rng.uniform(0.05, 0.09)) * unit,
                     jitter(rng, style["parking lot"], 6), gap=gap, angle_sd=0.4)  # fmt: skip
    for _ in range(_count(rng, 0, 4, area_units)):
        r = float(rng.uniform(0.03, 0.08)) * unit
        lay.add_ellipse("pond", r * float(rng.uniform(0.6, 1.0)), r, jitter(rng, style["pond"], 8), gap=gap,
                        p_near_road=0.3)  # fmt: skip
    for _ in range(_count(rng, 0, 12, area_units)):
        name = str(rng.choice(list(ROOF_COLOURS)))
        side = max(2.0, float(rng.uniform(0.013, 0.035)) * unit)
        lay.add_rect("building", side * float(rng.uniform(0.55, 1.0)), side, jitter(rng, style["roof"][name], 8),
                     gap=gap, colour_name=name, p_near_road=0.4)  # fmt: skip
    n_trees = _count(rng, 0, 30, area_units)
    n_clusters = max(1, int(rng.integers(1, 4)) * max(1, round(area_units)))
    centres = [lay.random_point() for _ in range(n_clusters)]
    for _ in range(n_trees):
        r = max(2.2, float(rng.uniform(0.008, 0.018)) * unit)
        cy, cx = centres[int(rng.integers(0, len(centres)))]
        sd = 0.07 * unit
        centre = (cy + float(rng.normal(0, sd)), cx + float(rng.normal(0, sd)))
        lay.add_ellipse("tree", r, r, jitter(rng, style["tree"], 10), gap=0.5, center=centre, tries=4,
                        avoid_fields=False)  # fmt: skip
    return lay
