"""GeoParquet 1.1 files of the pipeline (PIPELINE.md §4): one writer for polygon parts and ``polygons.parquet``.

Every file is written the same way: WKB geometry, PROJJSON CRS, zstd, no index, one object (atomic locally).
"""

from __future__ import annotations

import io
import json
from typing import Any

import geopandas as gpd
import pyarrow.parquet as pq

from common import storage

__all__ = ["geo_metadata", "write_geoparquet"]


def write_geoparquet(gdf: gpd.GeoDataFrame, uri: str, *, covering_bbox: bool) -> None:
    """Write ``gdf`` as GeoParquet 1.1 (zstd, no index) in one object, creating the parent folder.

    Args:
        gdf: The table to write.
        uri: Destination (local path or object-store URI).
        covering_bbox: Add the ``bbox`` covering column (final outputs; per-chunk parts skip it).
    """
    buf = io.BytesIO()
    gdf.to_parquet(
        buf, compression="zstd", index=False, schema_version="1.1.0", write_covering_bbox=covering_bbox
    )
    parent = uri.rsplit("/", 1)[0]
    if parent != uri:
        storage.makedirs(parent)
    storage.write_bytes(uri, buf.getvalue())


def geo_metadata(uri: str) -> dict[str, Any]:
    """The ``geo`` metadata of a GeoParquet file (version, CRS, covering)."""
    meta = pq.read_schema(io.BytesIO(storage.read_bytes(uri))).metadata or {}
    return dict(json.loads(meta[b"geo"])) if b"geo" in meta else {}
