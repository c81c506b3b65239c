"""SynRS scene rendering: paint the laid-out shapes' textures, cast shadows, add noise, and list the instances.

Every random draw goes through the ``numpy.random.Generator`` passed in; nothing reads a global RNG.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from crobim.data.synrs.layout import lay_out_scene
from crobim.data.synrs.scene import CLASSES, Instance, SceneGraph, SynRSParams
from crobim.data.synrs.shapes import Shape
from crobim.data.synrs.style import draw_style

__all__ = ["render_scene"]

_CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}


def _paint(img: np.ndarray, labels: np.ndarray, shape: Shape, label: int, rng: np.random.Generator) -> None:
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


def _shadows(img: np.ndarray, labels: np.ndarray, shapes: list[Shape], sun: float, unit: float,
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


def _visible_instances(
    labels: np.ndarray, drawn: list[Shape], min_area_px: int
) -> tuple[np.ndarray, list[Instance]]:
    """Drop instances under ``min_area_px`` visible pixels, renumber the rest 1..n in draw order.

    Args:
        labels: ``(H, W)`` int32 label map, id ``k`` for ``drawn[k - 1]`` (0: background).
        drawn: The shapes in draw order.
        min_area_px: Smallest visible area kept.

    Returns:
        The renumbered label map and one :class:`Instance` per kept id.
    """
    w = labels.shape[1]
    n = len(drawn)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = areas[1:] >= min_area_px
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
        shape = drawn[old - 1]
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
    return labels, instances


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
    style = draw_style(rng)
    lay = lay_out_scene(rng, hw, unit * zoom, style)
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
    drawn = [lay.shapes[i] for i in order]
    kinds: dict[int, str] = {}
    for k, shape in enumerate(drawn, start=1):
        _paint(img, labels, shape, k, rng)
        kinds[k] = shape.cls
    img *= low[:, :, None]
    _shadows(img, labels, drawn, style["sun"], unit, kinds)
    img += rng.standard_normal((h, w, 1), dtype=np.float32) * style["noise"]
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * (style["noise"] * 0.4)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    # Visible masks: drop instances under the minimum area, then renumber 1..n in draw order.
    labels, instances = _visible_instances(labels, drawn, params.min_area_px)
    return SceneGraph(image=image, labels=labels, instances=instances, unit_px=int(unit))
