"""The truth layer of a SynRS region: one polygon per object and a boolean column per canonical region query."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

__all__ = ["REGION_QUERIES", "tile_share", "write_truth"]

#: Canonical region queries: truth column -> (query text, target class, reference class). "Near" is the SynRS
#: rule: minimum pixel-set distance <= ``near * unit_px`` pixels.
REGION_QUERIES: dict[str, tuple[str, str, str]] = {
    "pond_near_road": ("all ponds near roads", "pond", "road"),
    "building_near_road": ("all buildings near roads", "building", "road"),
    "building_near_river": ("all buildings near the river", "building", "river"),
    "tree_near_pond": ("all trees near ponds", "tree", "pond"),
}


def _vectorize(labels: np.ndarray, transform: Affine) -> dict[int, Any]:
    """One shapely (multi)polygon per instance id, in map coordinates."""
    import shapely
    from rasterio import features
    from shapely.geometry import shape as to_shape

    parts: dict[int, list[Any]] = {}
    for geom, value in features.shapes(labels, mask=labels > 0, transform=transform, connectivity=4):
        parts.setdefault(int(value), []).append(to_shape(geom))
    return {k: (v[0] if len(v) == 1 else shapely.union_all(v)) for k, v in sorted(parts.items())}


def _near(graph: Any, inst: Any, ref_ids: np.ndarray, near_px: float) -> bool:  # noqa: ANN401
    """Whether ``inst`` lies within ``near_px`` (pixel-set distance) of any instance in ``ref_ids``.

    Exact and local: any reference pixel that close lies in the instance's box grown by ``near_px``, so the
    distance transform runs on that window only.
    """
    from scipy import ndimage

    if ref_ids.size == 0:
        return False
    h, w = graph.shape
    pad = int(math.ceil(near_px)) + 1
    y0, x0, y1, x1 = inst.bbox
    ys, xs = slice(max(0, y0 - pad), min(h, y1 + pad)), slice(max(0, x0 - pad), min(w, x1 + pad))
    win = graph.labels[ys, xs]
    ref = np.isin(win, ref_ids)
    if not ref.any():
        return False
    dist = ndimage.distance_transform_edt(~ref)
    return bool(dist[win == inst.id].min() <= near_px)


def tile_share(labels: np.ndarray, rows: dict[str, list[Any]], tile: int) -> dict[str, float]:
    """Share of ``tile``-sized tiles touching at least one positive object, per query (sparsity check)."""
    h, w = labels.shape
    out = {}
    ids = np.asarray(rows["instance_id"], dtype=np.int64)
    for col in REGION_QUERIES:
        lut = np.zeros(int(labels.max()) + 1, dtype=bool)
        lut[ids[np.asarray(rows[col], dtype=bool)]] = True
        pos = lut[labels]
        n_t = math.ceil(h / tile) * math.ceil(w / tile)
        hits = sum(
            bool(pos[r : r + tile, c : c + tile].any()) for r in range(0, h, tile) for c in range(0, w, tile)
        )
        out[col] = round(hits / n_t, 6)
    return out


def write_truth(
    path: Path,
    graph: Any,
    transform: Affine,
    crs: str,
    gsd_m: float,
    near_px: float,  # noqa: ANN401
) -> dict[str, list[Any]]:
    """Write ``truth.parquet`` (GeoParquet in ``crs``) for a rendered scene graph; returns its columns.

    Columns: ``instance_id``, ``class``, ``colour``, ``area_m2`` and one boolean per :data:`REGION_QUERIES` entry
    (the object is of the query's class and lies within ``near_px`` pixels of an object of its reference class).
    """
    import geopandas as gpd

    geoms = _vectorize(graph.labels, transform)
    rows: dict[str, list[Any]] = {"instance_id": [], "class": [], "colour": [], "area_m2": []}
    for col in REGION_QUERIES:
        rows[col] = []
    geometry = []
    ref_ids = {ref: np.array([i.id for i in graph.instances if i.cls == ref], dtype=np.int32)
               for _, _, ref in REGION_QUERIES.values()}  # fmt: skip
    for inst in graph.instances:
        rows["instance_id"].append(inst.id)
        rows["class"].append(inst.cls)
        rows["colour"].append(inst.colour)
        rows["area_m2"].append(inst.area * gsd_m * gsd_m)
        for col, (_, cls, ref) in REGION_QUERIES.items():
            rows[col].append(inst.cls == cls and _near(graph, inst, ref_ids[ref], near_px))
        geometry.append(geoms[inst.id])
    gdf = gpd.GeoDataFrame(rows, geometry=geometry, crs=crs)
    gdf.to_parquet(path, index=False)
    return rows
