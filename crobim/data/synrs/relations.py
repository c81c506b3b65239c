"""SynRS scene relations: geometry queries on a scene graph (counts, distances, grid cells, halves, offsets)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from crobim.data.synrs.scene import Instance, SceneGraph, SynRSParams

__all__ = ["LINE_CLASSES", "SceneRelations"]

#: Classes drawn as lines; their centroids mean little, so relations to them use their pixels.
LINE_CLASSES = ("river", "road")


class SceneRelations:
    """Geometry queries on a scene graph with cached distance maps (pixel-set distances via the EDT)."""

    def __init__(self, graph: SceneGraph, params: SynRSParams) -> None:
        self.g = graph
        self.p = params
        self.S = float(graph.unit_px)
        self.h, self.w = graph.shape
        self._dist: dict[str, np.ndarray] = {}
        self._cls_mask: dict[str, np.ndarray] = {}

    def count(self, cls: str) -> int:
        return len(self.g.of_class(cls))

    def class_mask(self, cls: str) -> np.ndarray:
        if cls not in self._cls_mask:
            self._cls_mask[cls] = self.g.mask([i.id for i in self.g.of_class(cls)])
        return self._cls_mask[cls]

    def distance_map(self, cls: str) -> np.ndarray:
        """Distance of every pixel to the nearest pixel of ``cls`` (``inf`` everywhere if absent)."""
        if cls not in self._dist:
            m = self.class_mask(cls)
            self._dist[cls] = (
                ndimage.distance_transform_edt(~m).astype(np.float32)
                if m.any()
                else np.full(m.shape, np.inf, dtype=np.float32)
            )
        return self._dist[cls]

    def distance(self, inst: Instance, ref_cls: str) -> float:
        """Minimum pixel-set distance from ``inst`` to any instance of ``ref_cls``."""
        y0, x0, y1, x1 = inst.bbox
        own = self.g.labels[y0:y1, x0:x1] == inst.id
        return float(self.distance_map(ref_cls)[y0:y1, x0:x1][own].min())

    def cell(self, inst: Instance) -> tuple[int, int] | None:
        """3 x 3 grid cell of the centroid, or ``None`` when it lies within the margin of a grid line."""
        m = self.p.position_margin * self.S
        cy, cx = inst.centroid
        for c, side in ((cy, self.h), (cx, self.w)):
            if min(abs(c - side / 3), abs(c - 2 * side / 3)) < m:
                return None
        return min(2, int(3 * cy / self.h)), min(2, int(3 * cx / self.w))

    def half(self, inst: Instance, half: str) -> bool | None:
        """Whether the centroid is in ``half``; ``None`` within the margin of the middle line."""
        m = self.p.position_margin * self.S
        cy, cx = inst.centroid
        c, side = (cy, self.h) if half in ("upper", "lower") else (cx, self.w)
        if abs(c - side / 2) < m:
            return None
        first = c < side / 2
        return first if half in ("upper", "left") else not first

    def offset(self, inst: Instance, ref: Instance, direction: str) -> float | None:
        """How far ``inst`` lies in ``direction`` of ``ref`` (pixels); ``None`` if undefined.

        Compact references compare centroids. A river or road compares with the reference's pixels in the
        candidate's row (left/right) or column (above/below); undefined if the line does not cross it.
        """
        cy, cx = inst.centroid
        if ref.cls in LINE_CLASSES:
            ref_mask = self.g.labels == ref.id
            if direction in ("left", "right"):
                xs = np.flatnonzero(ref_mask[min(self.h - 1, int(cy))])
                if xs.size == 0:
                    return None
                return float(xs.min() + 0.5 - cx) if direction == "left" else float(cx - xs.max() - 0.5)
            ys = np.flatnonzero(ref_mask[:, min(self.w - 1, int(cx))])
            if ys.size == 0:
                return None
            return float(ys.min() + 0.5 - cy) if direction == "above" else float(cy - ys.max() - 0.5)
        ry, rx = ref.centroid
        return {"left": rx - cx, "right": cx - rx, "above": ry - cy, "below": cy - ry}[direction]
