"""GeoParquet 1.1 files of the pipeline (PIPELINE.md §4): one writer for polygon parts and ``polygons.parquet``.

Every file is written the same way: WKB geometry, PROJJSON CRS, zstd, no index, one object (atomic locally).
Final outputs (with the ``bbox`` covering column) are also spatially sorted: rows grouped by query, in Hilbert
order of their bbox centres within a query, in row groups of :data:`ROW_GROUP_ROWS` rows, so that a bbox read
with filters on the covering columns (``gpd.read_parquet(bbox=...)``, pyarrow filters) skips most row groups.
"""

from __future__ import annotations

import io
import json
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq

from common import storage

__all__ = ["GROUP_COLUMN", "ROW_GROUP_ROWS", "geo_metadata", "spatial_order", "write_geoparquet"]

#: Rows per row group of final outputs: a 1 % bbox read of 100k polygons touches about 5 % of the row groups
#: (benchmarks/polygon_bbox_reads.py), and a whole-file read stays one fast scan.
ROW_GROUP_ROWS = 1024
#: Final outputs keep the rows of one value of this column together, in ascending order, when it is present.
GROUP_COLUMN = "query_id"


def spatial_order(gdf: gpd.GeoDataFrame, group_column: str = GROUP_COLUMN) -> gpd.GeoDataFrame:
    """``gdf`` reordered by ``group_column`` (when present), then the Hilbert key of each bbox centre.

    The key is geopandas' ``hilbert_distance`` (level 16) over the extent of all rows; ties keep their incoming
    order, and rows without a geometry (or an empty one) come last in their group. Deterministic for equal inputs.

    Args:
        gdf: The table.
        group_column: Column whose values stay together (ignored when absent).

    Returns:
        A reordered copy (the index is reset).
    """
    if len(gdf) < 2:
        return gdf.reset_index(drop=True)
    geoms = gdf.geometry
    valid = ~(geoms.isna() | geoms.is_empty).to_numpy()
    key = np.full(len(gdf), np.iinfo(np.int64).max, dtype=np.int64)
    if valid.any():
        key[valid] = geoms[valid].hilbert_distance(total_bounds=geoms[valid].total_bounds).to_numpy()
    keys = [np.arange(len(gdf)), key]
    if group_column in gdf.columns:
        keys.append(gdf[group_column].to_numpy())
    return gdf.iloc[np.lexsort(keys)].reset_index(drop=True)


def write_geoparquet(gdf: gpd.GeoDataFrame, uri: str, *, covering_bbox: bool) -> None:
    """Write ``gdf`` as GeoParquet 1.1 (zstd, no index) in one object, creating the parent folder.

    Args:
        gdf: The table to write.
        uri: Destination (local path or object-store URI).
        covering_bbox: A final output: add the ``bbox`` covering column and write the rows in
            :func:`spatial_order`, :data:`ROW_GROUP_ROWS` to a row group (per-chunk parts skip both and keep
            their order in one row group).
    """
    options: dict[str, Any] = {}
    if covering_bbox:
        gdf = spatial_order(gdf)
        options["row_group_size"] = ROW_GROUP_ROWS
    buf = io.BytesIO()
    gdf.to_parquet(
        buf,
        compression="zstd",
        index=False,
        schema_version="1.1.0",
        write_covering_bbox=covering_bbox,
        **options,
    )
    parent = uri.rsplit("/", 1)[0]
    if parent != uri:
        storage.makedirs(parent)
    storage.write_bytes(uri, buf.getvalue())


def geo_metadata(uri: str) -> dict[str, Any]:
    """The ``geo`` metadata of a GeoParquet file (version, CRS, covering)."""
    meta = pq.read_schema(io.BytesIO(storage.read_bytes(uri))).metadata or {}
    return dict(json.loads(meta[b"geo"])) if b"geo" in meta else {}
