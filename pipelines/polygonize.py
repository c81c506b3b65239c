"""Polygons of one chunk core from its written probabilities: the per-chunk parts (PIPELINE.md §4).

Threshold the uint8 values as written to Zarr (``>= round(255 t)``), label components with 4-connectivity,
sieve small components unless they touch the core border, ``rasterio.features.shapes`` on the label raster,
per-label score sum/count/max via ``bincount``. Parts are joined across seams by ``pipelines.merge_polygons``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import rasterio.features
import shapely
import shapely.geometry
from affine import Affine
from scipy import ndimage

from common import storage
from pipelines.geoparquet import write_geoparquet
from pipelines.grid import ChunkSpec, OutputGrid

__all__ = ["PART_COLUMNS", "read_part", "threshold_value", "vectorize_chunk", "write_part"]

_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)

#: Columns of a per-chunk part (besides ``geometry``).
PART_COLUMNS = (
    "query_id",
    "query",
    "chunk_id",
    "chunk_row",
    "chunk_col",
    "label",
    "score_sum",
    "score_count",
    "score_max",
    "touches_top",
    "touches_bottom",
    "touches_left",
    "touches_right",
    "item_ids",
    "item_pixels",
)


def threshold_value(threshold: float) -> int:
    """The uint8 cut ``round(255 t)`` applied to written probabilities."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} must be within [0, 1]")
    return int(round(255 * threshold))


def _sieve(labels: np.ndarray, counts: np.ndarray, min_px: int) -> np.ndarray:
    """Zero out labels with fewer than ``min_px`` pixels unless they touch the core border."""
    if min_px <= 1:
        return labels
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = counts >= min_px
    keep[border] = True
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def _components(scores: np.ndarray, cut: int, min_area_px: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Sieved 4-connected components of ``scores >= cut``: ``(labels (h, w), pixels per label, n)``, or None."""
    fg = scores >= cut
    if not fg.any():
        return None
    labels, n = ndimage.label(fg, structure=_FOUR)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    labels = _sieve(labels, counts, min_area_px)
    if not labels.any():
        return None
    return labels, counts, n


def _item_shares(
    labels: np.ndarray, n: int, source_rank: np.ndarray | None, item_ids: Sequence[str]
) -> dict[int, tuple[list[str], list[int]]]:
    """Per label: the items that supplied its pixels (rank order) and how many pixels each supplied."""
    per_item: dict[int, tuple[list[str], list[int]]] = {}
    if source_rank is None or not item_ids:
        return per_item
    flat = labels.ravel()
    n_items = len(item_ids)
    pair = flat.astype(np.int64) * (n_items + 1) + source_rank.ravel().astype(np.int64)
    table = np.bincount(pair, minlength=(n + 1) * (n_items + 1)).reshape(n + 1, n_items + 1)
    for lab in np.unique(flat[flat > 0]):
        ranks = np.flatnonzero(table[lab, 1:])
        per_item[int(lab)] = (
            [item_ids[int(r)] for r in ranks],
            [int(table[lab, r + 1]) for r in ranks],
        )
    return per_item


def _label_rows(
    labels: np.ndarray,
    counts: np.ndarray,
    n: int,
    scores: np.ndarray,
    transform: Affine,
    per_item: dict[int, tuple[list[str], list[int]]],
) -> list[tuple[dict[str, Any], shapely.Geometry]]:
    """One ``(statistics, polygon)`` per polygon of the label raster: scores, border contacts, source items."""
    flat = labels.ravel()
    sums = np.bincount(flat, weights=scores.ravel().astype(np.float64), minlength=n + 1)
    maxes = np.zeros(n + 1, dtype=np.int64)
    np.maximum.at(maxes, flat, scores.ravel())
    top, bottom = set(np.unique(labels[0])), set(np.unique(labels[-1]))
    left, right = set(np.unique(labels[:, 0])), set(np.unique(labels[:, -1]))
    out: list[tuple[dict[str, Any], shapely.Geometry]] = []
    for geom, value in rasterio.features.shapes(
        labels.astype(np.int32), mask=labels > 0, connectivity=4, transform=transform
    ):
        lab = int(value)
        ids, pixels = per_item.get(lab, ([], []))
        stats = {
            "label": lab,
            "score_sum": float(sums[lab]) / 255.0,
            "score_count": int(counts[lab]),
            "score_max": float(maxes[lab]) / 255.0,
            "touches_top": lab in top,
            "touches_bottom": lab in bottom,
            "touches_left": lab in left,
            "touches_right": lab in right,
            "item_ids": ids,
            "item_pixels": pixels,
        }
        out.append((stats, shapely.geometry.shape(geom)))
    return out


def vectorize_chunk(
    prob: np.ndarray,
    chunk: ChunkSpec,
    grid: OutputGrid,
    queries: Sequence[str],
    threshold: float = 0.5,
    min_area_px: int = 0,
    source_rank: np.ndarray | None = None,
    item_ids: Sequence[str] = (),
) -> gpd.GeoDataFrame:
    """Polygons of one chunk core, one row per 4-connected component per query.

    Args:
        prob: uint8 ``(Q, h, w)`` as written to Zarr (invalid pixels already 0).
        chunk: The chunk (core window, id, position).
        grid: The output grid (CRS, transform).
        queries: Query texts, index = query id.
        threshold: Probability threshold t; pixels ``>= round(255 t)`` are foreground (t = 0 counts as 1/255).
        min_area_px: Sieve size: components below it are dropped unless they touch the core border.
        source_rank: uint8 ``(h, w)`` source rank over the core (0 = none, k = ``item_ids[k-1]``).
        item_ids: Items of the chunk in rank order.

    Returns:
        A GeoDataFrame in the grid CRS with :data:`PART_COLUMNS` and ``geometry``.
    """
    q, h, w = prob.shape
    if (h, w) != (chunk.height, chunk.width):
        raise ValueError(
            f"chunk {chunk.chunk_id}: prob shape {prob.shape} does not match the core {chunk.height}x{chunk.width}"
        )
    cut = max(threshold_value(threshold), 1)
    transform: Affine = grid.window_transform(chunk.row_off, chunk.col_off)
    rows: list[dict[str, Any]] = []
    geoms: list[shapely.Geometry] = []
    for qi in range(q):
        found = _components(prob[qi], cut, min_area_px)
        if found is None:
            continue
        labels, counts, n = found
        per_item = _item_shares(labels, n, source_rank, item_ids)
        head = {
            "query_id": qi,
            "query": queries[qi],
            "chunk_id": chunk.chunk_id,
            "chunk_row": chunk.row,
            "chunk_col": chunk.col,
        }
        for stats, geom in _label_rows(labels, counts, n, prob[qi], transform, per_item):
            rows.append({**head, **stats})
            geoms.append(geom)
    frame = pd.DataFrame(rows, columns=list(PART_COLUMNS))
    gdf = gpd.GeoDataFrame(
        frame, geometry=geoms if geoms else gpd.GeoSeries([], dtype="geometry"), crs=grid.crs_wkt
    )
    return gdf.sort_values(["query_id", "label"], kind="stable").reset_index(drop=True)


def write_part(gdf: gpd.GeoDataFrame, uri: str) -> None:
    """Write a per-chunk part as GeoParquet (explicit ``geo`` metadata; one object, atomic locally)."""
    write_geoparquet(gdf, uri, covering_bbox=False)


def read_part(uri: str) -> pd.DataFrame:
    """Read a part written by :func:`write_part` as a DataFrame whose ``geometry`` holds shapely objects.

    The CRS is the grid's (known to the caller); not parsing each part's PROJJSON saves ~40 ms per part.
    """
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    frame = table.drop(["geometry"]).to_pandas()
    frame["geometry"] = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    return frame
