"""SynRS scene layout and rasterisation: fields, river, roads, parking lots, ponds, buildings, trees.

All shapes are rasterised in numpy by testing pixel centres (no antialiasing), inside the shape's bounding
window only, so a large mosaic costs about as much per object as a small scene. Every random draw goes through
the ``numpy.random.Generator`` passed in; nothing reads a global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from crobim.data.synrs.scene import CLASSES, Instance, SceneGraph, SynRSParams

__all__ = ["render_scene"]

# Base colours (RGB); each scene jitters them, each instance jitters again.
_BACKGROUNDS = ((96, 122, 62), (142, 132, 92), (118, 100, 76), (108, 128, 84))
_FIELD_COLOURS = {"green": (84, 134, 52), "yellow": (192, 172, 92), "brown": (132, 102, 70)}
_ROOF_COLOURS = {
    "red": (172, 72, 60),
    "grey": (142, 142, 148),
    "white": (218, 216, 210),
    "brown": (118, 84, 58),
    "blue": (70, 92, 146),
}
_CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}


@dataclass
class _Shape:
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


def _rect(cy: float, cx: float, hh: float, hw: float, angle: float, size: tuple[int, int], grow: float = 0.0):  # noqa: ANN202
    """Rotated rectangle with half sides ``hh``, ``hw``: ``(y0, x0, mask, u, v)`` or ``None`` if off-canvas."""
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


def _ellipse(
    cy: float, cx: float, ry: float, rx: float, angle: float, size: tuple[int, int], grow: float = 0.0
):  # noqa: ANN202
    """Rotated ellipse: ``(y0, x0, mask, radial)`` or ``None``."""
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


def _polyline(points: np.ndarray, half_width: float, size: tuple[int, int]):  # noqa: ANN202
    """Pixels within ``half_width`` of a polyline: ``(y0, x0, mask, distance)`` or ``None``."""
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


def _count(rng: np.random.Generator, lo: int, hi: int, area_units: float) -> int:
    """Object count: uniform in ``[lo, hi]`` per unit of area (summed over units for mosaics)."""
    n_units = max(1, round(area_units))
    return int(rng.integers(lo, hi + 1, size=n_units).sum())


def _jitter(rng: np.random.Generator, colour: tuple[float, ...], amount: float) -> tuple[float, float, float]:
    c = np.asarray(colour, dtype=np.float64) + rng.uniform(-amount, amount, size=3)
    c = c * rng.uniform(1.0 - amount / 200.0, 1.0 + amount / 200.0)
    r, g, b = (float(v) for v in np.clip(c, 0, 255))
    return r, g, b


class _Layout:
    """Places shapes with overlap rejection on an occupancy map."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], unit: float) -> None:
        self.rng = rng
        self.size = size
        self.unit = unit
        self.occupied = np.zeros(size, dtype=bool)  # everything except fields (trees may cover fields)
        self.fields = np.zeros(size, dtype=bool)
        self.shapes: list[_Shape] = []
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

    def _commit(self, shape: _Shape, occupancy: np.ndarray | None = None) -> None:
        target = self.fields if shape.cls == "field" else self.occupied
        if occupancy is None:
            target[shape.window] |= shape.mask
        else:
            target |= occupancy
        self.shapes.append(shape)

    def random_point(self) -> tuple[float, float]:
        h, w = self.size
        return float(self.rng.uniform(0, h)), float(self.rng.uniform(0, w))

    def add_line(
        self, cls: str, points: np.ndarray, half_width: float, colour: tuple[float, float, float]
    ) -> None:
        res = _polyline(points, half_width, self.size)
        if res is None:
            return
        y0, x0, m, dist = res
        shape = _Shape(cls, y0, x0, m, colour, edge=dist, half_width=half_width)
        self._commit(shape)
        if cls == "road":
            step = max(1, len(points) // 40)
            self.road_points += [(float(p[0]), float(p[1]), half_width) for p in points[::step]]

    def add_rect(self, cls: str, hh: float, hw: float, colour: tuple[float, float, float], *, gap: float,
                 colour_name: str | None = None, tries: int = 12, angle_sd: float = math.pi,
                 p_near_road: float = 0.0) -> bool:  # fmt: skip
        beside = self.rng.random() < p_near_road
        for _ in range(tries):
            pt = self.near_road_point(max(hh, hw) + gap) if beside else None
            cy, cx = pt if pt is not None else self.random_point()
            angle = float(self.rng.uniform(-angle_sd, angle_sd))
            probe = _rect(cy, cx, hh, hw, angle, self.size, grow=gap)
            if probe is None or not self._free(probe[0], probe[1], probe[2]):
                continue
            res = _rect(cy, cx, hh, hw, angle, self.size)
            if res is None or not res[2].any():
                continue
            y0, x0, m, u, v = res
            self._commit(_Shape(cls, y0, x0, m, colour, colour_name, u=u, v=v, extra={"hh": hh, "hw": hw}))
            return True
        return False

    def add_ellipse(self, cls: str, ry: float, rx: float, colour: tuple[float, float, float], *, gap: float,
                    center: tuple[float, float] | None = None, tries: int = 12, avoid_fields: bool = True,
                    p_near_road: float = 0.0) -> bool:  # fmt: skip
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
            probe = _ellipse(cy, cx, ry, rx, angle, self.size, grow=gap)
            if probe is None or not self._free(probe[0], probe[1], probe[2], also_fields=avoid_fields):
                continue
            res = _ellipse(cy, cx, ry, rx, angle, self.size)
            if res is None or not res[2].any():
                continue
            y0, x0, m, radial = res
            self._commit(_Shape(cls, y0, x0, m, colour, radial=radial))
            return True
        return False


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


def _layout(rng: np.random.Generator, size: tuple[int, int], unit: float, style: dict) -> _Layout:
    h, w = size
    area_units = h * w / unit**2
    lay = _Layout(rng, size, unit)
    n_rivers = (
        int(rng.integers(0, 2)) if area_units <= 1.5 else int(rng.integers(1, 2 + round(area_units**0.5 / 4)))
    )
    for _ in range(n_rivers):
        lay.add_line("river", _meander(rng, size, unit), float(rng.uniform(0.02, 0.04)) * unit,
                     _jitter(rng, style["river"], 6))  # fmt: skip
    n_roads = _count(rng, 0, 3, area_units) if area_units <= 1.5 else _count(rng, 0, 3, area_units) // 2
    for _ in range(n_roads):
        lay.add_line("road", _road_line(rng, size, unit), max(1.5, float(rng.uniform(0.008, 0.015)) * unit),
                     _jitter(rng, style["road"], 6))  # fmt: skip
    gap = max(1.0, 0.006 * unit)
    for _ in range(_count(rng, 0, 5, area_units)):
        name = str(rng.choice(list(_FIELD_COLOURS)))
        lay.add_rect("field", float(rng.uniform(0.05, 0.12)) * unit, float(rng.uniform(0.06, 0.15)) * unit,
                     _jitter(rng, style["field"][name], 8), gap=gap, colour_name=name, angle_sd=0.5)  # fmt: skip
    for _ in range(_count(rng, 0, 2, area_units)):
        lay.add_rect("parking lot", float(rng.uniform(0.035, 0.06)) * unit, float(rng.uniform(0.05, 0.09)) * unit,
                     _jitter(rng, style["parking lot"], 6), gap=gap, angle_sd=0.4)  # fmt: skip
    for _ in range(_count(rng, 0, 4, area_units)):
        r = float(rng.uniform(0.03, 0.08)) * unit
        lay.add_ellipse("pond", r * float(rng.uniform(0.6, 1.0)), r, _jitter(rng, style["pond"], 8), gap=gap,
                        p_near_road=0.3)  # fmt: skip
    for _ in range(_count(rng, 0, 12, area_units)):
        name = str(rng.choice(list(_ROOF_COLOURS)))
        side = max(2.0, float(rng.uniform(0.013, 0.035)) * unit)
        lay.add_rect("building", side * float(rng.uniform(0.55, 1.0)), side, _jitter(rng, style["roof"][name], 8),
                     gap=gap, colour_name=name, p_near_road=0.4)  # fmt: skip
    n_trees = _count(rng, 0, 30, area_units)
    n_clusters = max(1, int(rng.integers(1, 4)) * max(1, round(area_units)))
    centres = [lay.random_point() for _ in range(n_clusters)]
    for _ in range(n_trees):
        r = max(2.2, float(rng.uniform(0.008, 0.018)) * unit)
        cy, cx = centres[int(rng.integers(0, len(centres)))]
        sd = 0.07 * unit
        centre = (cy + float(rng.normal(0, sd)), cx + float(rng.normal(0, sd)))
        lay.add_ellipse("tree", r, r, _jitter(rng, style["tree"], 10), gap=0.5, center=centre, tries=4,
                        avoid_fields=False)  # fmt: skip
    return lay


def _style(rng: np.random.Generator) -> dict:
    """Per-scene colour palette (scene jitter; instances jitter again)."""
    bg = _BACKGROUNDS[int(rng.integers(0, len(_BACKGROUNDS)))]
    return {
        "background": _jitter(rng, bg, 14),
        "river": _jitter(rng, (44, 74, 98), 12),
        "pond": _jitter(rng, (52, 100, 104), 14),
        "road": _jitter(rng, (118, 118, 122), 16),
        "parking lot": _jitter(rng, (150, 150, 146), 12),
        "tree": _jitter(rng, (42, 82, 38), 10),
        "field": {k: _jitter(rng, v, 12) for k, v in _FIELD_COLOURS.items()},
        "roof": {k: _jitter(rng, v, 10) for k, v in _ROOF_COLOURS.items()},
        "sun": float(rng.uniform(0, 2 * math.pi)),
        "noise": float(rng.uniform(3.0, 8.0)),
    }


def _paint(img: np.ndarray, labels: np.ndarray, shape: _Shape, label: int, rng: np.random.Generator) -> None:
    """Paint one shape's texture into ``img`` and its id into ``labels`` (visible = drawn last)."""
    win = shape.window
    m = shape.mask
    col = np.asarray(shape.colour, dtype=np.float32)
    tex = np.ones(m.shape, dtype=np.float32)
    if shape.cls == "field" and shape.u is not None:
        period = float(rng.uniform(2.5, 6.0))
        contrast = float(rng.uniform(0.08, 0.2))
        tex = np.where(np.floor(shape.u / period) % 2 == 0, 1.0, 1.0 - contrast).astype(np.float32)
    elif shape.cls == "parking lot" and shape.u is not None:
        period = float(rng.uniform(3.0, 5.0))
        tex = np.where((shape.u % period) < 0.9, 1.45, 1.0).astype(np.float32)
    elif shape.cls == "building" and shape.v is not None:
        tex = np.where(shape.v > 0, 1.12, 0.88).astype(np.float32)
    elif shape.cls in ("tree", "pond") and shape.radial is not None:
        if shape.cls == "tree":
            tex = (1.2 - 0.4 * shape.radial).astype(np.float32)
        else:
            tex = np.where(shape.radial > 0.85, 0.85, 1.0).astype(np.float32)
    elif shape.cls in ("road", "river") and shape.edge is not None:
        tex = np.where(shape.edge > shape.half_width - 1.0, 0.86, 1.0).astype(np.float32)
    region = img[win]
    region[m] = tex[m, None] * col[None, :]
    labels[win][m] = label


def _shadows(img: np.ndarray, labels: np.ndarray, shapes: list[_Shape], sun: float, unit: float,
             kinds: dict[int, str]) -> None:  # fmt: skip
    """Darken ground pixels under buildings' and trees' cast shadows (sun azimuth ``sun``)."""
    h, w = labels.shape
    shadow = np.zeros((h, w), dtype=bool)
    for s in shapes:
        if s.cls not in ("building", "tree"):
            continue
        length = (0.012 if s.cls == "building" else 0.006) * unit + 1.0
        dy, dx = int(round(math.sin(sun) * length)), int(round(math.cos(sun) * length))
        mh, mw = s.mask.shape
        y0, x0 = s.y0 + dy, s.x0 + dx
        ya, xa = max(0, y0), max(0, x0)
        yb, xb = min(h, y0 + mh), min(w, x0 + mw)
        if ya >= yb or xa >= xb:
            continue
        shadow[ya:yb, xa:xb] |= s.mask[ya - y0 : yb - y0, xa - x0 : xb - x0]
    tall = np.zeros(max(kinds, default=0) + 1, dtype=bool)
    for k, cls in kinds.items():
        tall[k] = cls in ("building", "tree")
    shadow &= ~tall[labels]
    img[shadow] *= 0.58


def render_scene(
    rng: np.random.Generator,
    size: int | tuple[int, int],
    *,
    unit_px: int | None = None,
    params: SynRSParams | None = None,
) -> SceneGraph:
    """Lay out and render one scene.

    Args:
        rng: The scene's generator (one per scene, e.g. from ``SeedSequence(seed).spawn``).
        size: Canvas side or ``(H, W)`` in pixels.
        unit_px: Scene unit ``S`` that object sizes are relative to (default: the canvas side). A mosaic uses
            a canvas several units wide, so objects keep their size and counts scale with area.
        params: Generator thresholds (``min_area_px``).

    Returns:
        The scene graph (image, label map, instances with global ids in draw order).
    """
    params = params or SynRSParams()
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    unit = float(unit_px or max(hw))
    # Benchmark scenes vary their ground scale (object size and density); a mosaic keeps the unit it is given.
    zoom = float(rng.uniform(*params.zoom_range)) if unit_px is None else 1.0
    style = _style(rng)
    lay = _layout(rng, hw, unit * zoom, style)
    h, w = hw
    # Background: base colour, low-frequency brightness field, then per-pixel noise below.
    coarse = rng.normal(1.0, 0.06, size=(max(2, h // 32), max(2, w // 32))).astype(np.float32)
    low = ndimage.zoom(
        coarse, (h / coarse.shape[0], w / coarse.shape[1]), order=1, grid_mode=True, mode="nearest"
    )
    low = low[:h, :w]
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = np.asarray(style["background"], dtype=np.float32)
    labels = np.zeros((h, w), dtype=np.int32)
    order = sorted(range(len(lay.shapes)), key=lambda i: (_CLASS_INDEX[lay.shapes[i].cls], i))
    kinds: dict[int, str] = {}
    for k, i in enumerate(order, start=1):
        _paint(img, labels, lay.shapes[i], k, rng)
        kinds[k] = lay.shapes[i].cls
    img *= low[:, :, None]
    _shadows(img, labels, [lay.shapes[i] for i in order], style["sun"], unit, kinds)
    img += rng.standard_normal((h, w, 1), dtype=np.float32) * style["noise"]
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * (style["noise"] * 0.4)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    # Visible masks: drop instances under the minimum area, then renumber 1..n in draw order.
    n = len(order)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = areas[1:] >= params.min_area_px
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    labels = remap[labels]
    m = int(keep.sum())
    flat = labels.ravel()
    area = np.bincount(flat, minlength=m + 1)
    ys, xs = np.divmod(np.arange(flat.size, dtype=np.int64), w)
    sy = np.bincount(flat, weights=ys + 0.5, minlength=m + 1)
    sx = np.bincount(flat, weights=xs + 0.5, minlength=m + 1)
    boxes = ndimage.find_objects(labels, max_label=m)
    instances = []
    old_ids = np.nonzero(keep)[0]
    for new_id, old in enumerate(old_ids, start=1):
        shape = lay.shapes[order[old - 1]]
        sl = boxes[new_id - 1]
        assert sl is not None
        instances.append(
            Instance(
                id=new_id,
                cls=shape.cls,
                area=int(area[new_id]),
                centroid=(float(sy[new_id] / area[new_id]), float(sx[new_id] / area[new_id])),
                bbox=(sl[0].start, sl[1].start, sl[0].stop, sl[1].stop),
                colour=shape.colour_name,
            )
        )
    return SceneGraph(image=image, labels=labels, instances=instances, unit_px=int(unit))
