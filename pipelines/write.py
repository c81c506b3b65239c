"""Zarr v2 output that xarray, rioxarray and GDAL open as they are (PIPELINE.md §4).

Layout of ``masks.zarr``: ``prob`` (query, y, x) uint8 = round(255 p), ``valid`` (y, x) uint8 0/1, coordinates
``query`` (int16), ``y``/``x`` (float64 pixel centres) and the CF grid mapping ``spatial_ref`` (``crs_wkt``,
``spatial_ref``, ``GeoTransform``), referenced by ``grid_mapping`` and named in ``coordinates``, so plain
``xarray.open_zarr`` makes it a coordinate and rioxarray finds the CRS. GeoZarr ``proj:``/``spatial:`` attributes
with their ``zarr_conventions`` entries on the group and on the data arrays.

Zarr v2 with a zstd compressor, because rasterio's bundled GDAL (3.10) reads it (CRS from the CF
``grid_mapping``, transform from the ``x``/``y`` coordinates) while its Zarr v3 reader predates the final v3
codecs ("Unsupported codec: bytes"). Metadata is consolidated (``.zmetadata``) when the template is created;
chunk writes never change it. No fill value in the metadata, so xarray keeps uint8 (no ``_FillValue`` mask)
and unwritten chunks read as 0 in zarr-python and GDAL alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd
from pyproj import CRS as ProjCRS

from common import storage, storage_adapters
from pipelines.grid import ChunkSpec, OutputGrid

__all__ = [
    "ZARR_CONVENTIONS",
    "ZSTD_LEVEL",
    "create_zarr_template",
    "geozarr_attrs",
    "open_masks",
    "write_zarr_chunk",
]

logger = logging.getLogger(__name__)

#: Fixed codec settings: resumed runs rewrite byte-identical chunks.
ZSTD_LEVEL = 3
_TEMPLATE_KEYS = ("grid", "queries", "zarr_chunk_px")
_DIMS = "_ARRAY_DIMENSIONS"  # Zarr v2 dimension names (xarray, GDAL)

#: The GeoZarr conventions' registration entries (``zarr_conventions``) at their v0.1 tags, as their specifications
#: give them (https://github.com/zarr-conventions/proj, https://github.com/zarr-conventions/spatial).
ZARR_CONVENTIONS: list[dict[str, str]] = [
    {
        "schema_url": "https://raw.githubusercontent.com/zarr-conventions/proj/refs/tags/v0.1/schema.json",
        "spec_url": "https://github.com/zarr-conventions/proj/blob/v0.1/README.md",
        "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
        "name": "proj",
        "description": "Coordinate reference system information for geospatial data",
    },
    {
        "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v0.1/schema.json",
        "spec_url": "https://github.com/zarr-conventions/spatial/blob/v0.1/README.md",
        "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
        "name": "spatial",
        "description": "Spatial coordinate information",
    },
]


def _gdal_geotransform(grid: OutputGrid) -> str:
    a, b, c, d, e, f = grid.transform
    return " ".join(repr(float(v)) for v in (c, a, b, f, d, e))


def geozarr_attrs(grid: OutputGrid) -> dict[str, Any]:
    """GeoZarr ``proj:`` and ``spatial:`` convention attributes for the grid, with their ``zarr_conventions``.

    The CRS is ``proj:code`` when it has an EPSG code, else ``proj:wkt2`` (the convention takes exactly one).
    """
    epsg = ProjCRS.from_wkt(grid.crs_wkt).to_epsg()
    crs_attr = {"proj:code": f"EPSG:{epsg}"} if epsg is not None else {"proj:wkt2": grid.crs_wkt}
    minx, miny, maxx, maxy = grid.bounds
    return {
        "zarr_conventions": [dict(c) for c in ZARR_CONVENTIONS],
        **crs_attr,
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [float(v) for v in grid.transform],
        "spatial:bbox": [minx, miny, maxx, maxy],
        "spatial:shape": [grid.height, grid.width],
        "spatial:registration": "pixel",
    }


def _grid_mapping_attrs(grid: OutputGrid) -> dict[str, Any]:
    crs = ProjCRS.from_wkt(grid.crs_wkt)
    attrs: dict[str, Any] = {}
    try:
        attrs.update({k: v for k, v in crs.to_cf().items() if isinstance(v, str | int | float)})
    except Exception:  # CRS without a CF equivalent: crs_wkt alone is enough for readers
        logger.debug("CRS has no CF grid-mapping description; writing crs_wkt only")
    attrs["crs_wkt"] = grid.crs_wkt
    attrs["spatial_ref"] = grid.crs_wkt
    attrs["GeoTransform"] = _gdal_geotransform(grid)
    return attrs


def _coord_attrs(grid: OutputGrid, axis: str) -> dict[str, Any]:
    crs = ProjCRS.from_wkt(grid.crs_wkt)
    if crs.is_geographic:
        name = "longitude" if axis == "x" else "latitude"
        units = "degrees_east" if axis == "x" else "degrees_north"
        return {"standard_name": name, "long_name": name, "units": units, "axis": axis.upper()}
    unit = crs.axis_info[0].unit_name if crs.axis_info else "metre"
    return {
        "standard_name": f"projection_{axis}_coordinate",
        "long_name": f"{axis} coordinate of projection (pixel centre)",
        "units": "m" if unit in ("metre", "meter") else unit,
        "axis": axis.upper(),
    }


def _template_signature(grid: OutputGrid, queries: Sequence[str], zarr_chunk_px: int) -> dict[str, Any]:
    return {"grid": grid.to_dict(), "queries": list(queries), "zarr_chunk_px": zarr_chunk_px}


def _keep_existing_template(uri: str, signature: dict[str, Any]) -> bool:
    """True when ``uri`` holds a template with ``signature`` (resume); refuse a store with other settings."""
    if storage.exists(storage.join(uri, "zarr.json")):
        raise FileExistsError(
            f"{uri} holds a Zarr v3 store written by an older version (masks.zarr is now Zarr v2, "
            "which GDAL reads); use another --out or pass --overwrite"
        )
    if not storage.exists(storage.join(uri, ".zgroup")):
        return False
    root = zarr.open_group(storage_adapters.zarr_store(uri, read_only=True), mode="r", zarr_format=2)
    existing = root.attrs.get("crobim:template")
    if existing == signature:
        logger.info("Zarr template %s exists with the same settings; keeping it", uri)
        return True
    old = existing if isinstance(existing, dict) else {}
    diff = [k for k in _TEMPLATE_KEYS if old.get(k) != signature[k]]
    raise FileExistsError(
        f"{uri} already holds a Zarr store with different settings ({', '.join(diff) or 'unknown'}); "
        "use another --out or pass --overwrite"
    )


def _create_data_arrays(root: zarr.Group, grid: OutputGrid, q: int, zarr_chunk_px: int) -> None:
    """The empty ``prob`` (query, y, x) and ``valid`` (y, x) arrays, chunked ``zarr_chunk_px`` square."""
    h, w, zc = grid.height, grid.width, zarr_chunk_px
    geo = {**geozarr_attrs(grid), "grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
    for name, shape, chunks, dims, long_name in (
        ("prob", (q, h, w), (1, min(zc, h), min(zc, w)), ["query", "y", "x"], "probability x 255, rounded"),
        ("valid", (h, w), (min(zc, h), min(zc, w)), ["y", "x"], "imagery present (1) or not (0)"),
    ):
        extra = {"valid_range": [0, 255]} if name == "prob" else {}
        root.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype="uint8",
            fill_value=None,
            compressors=Zstd(level=ZSTD_LEVEL),
            attributes={_DIMS: dims, "long_name": long_name, **extra, **geo},
        )


def _write_coordinates(root: zarr.Group, grid: OutputGrid, q: int) -> None:
    """The ``x``/``y`` pixel-centre coordinates, the ``query`` index and the ``spatial_ref`` grid mapping."""
    a, _, c, _, e, f = grid.transform
    x = c + a * (np.arange(grid.width, dtype=np.float64) + 0.5)
    y = f + e * (np.arange(grid.height, dtype=np.float64) + 0.5)
    query = np.arange(q, dtype=np.int16)
    for name, values, attrs in (
        ("x", x, _coord_attrs(grid, "x")),
        ("y", y, _coord_attrs(grid, "y")),
        ("query", query, {"long_name": "query index into the 'queries' attribute"}),
    ):
        arr = root.create_array(
            name,
            shape=values.shape,
            chunks=values.shape,
            dtype=values.dtype,
            fill_value=None,
            compressors=Zstd(level=ZSTD_LEVEL),
            attributes={_DIMS: [name], **attrs},
        )
        arr[:] = values
    sref = root.create_array(
        "spatial_ref",
        shape=(),
        dtype="int32",
        fill_value=None,
        compressors=None,
        attributes={_DIMS: [], **_grid_mapping_attrs(grid)},
    )
    sref[()] = 0


def create_zarr_template(
    uri: str,
    grid: OutputGrid,
    queries: Sequence[str],
    zarr_chunk_px: int = 2048,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Write the store's metadata and coordinates once (no data chunks), then consolidate the metadata.

    An existing template with the same grid, queries and chunking is kept (resume); a different one
    is refused.

    Args:
        uri: Store location (local folder or s3:// / gs:// URI), e.g. ``out/masks.zarr``.
        grid: The output grid.
        queries: Query texts (index = ``query`` coordinate).
        zarr_chunk_px: Zarr chunk side (C/k).
        attrs: Extra group attributes (e.g. run fingerprint).
        overwrite: Replace an existing store.

    Raises:
        FileExistsError: If a store with other settings (or an older Zarr v3 one) exists and ``overwrite``
            is False.
        ValueError: For no queries or a bad chunk size.
    """
    if not queries:
        raise ValueError("at least one query is needed to create the Zarr template")
    if zarr_chunk_px < 1:
        raise ValueError(f"zarr_chunk_px {zarr_chunk_px} must be positive")
    signature = _template_signature(grid, queries, zarr_chunk_px)
    if not overwrite and _keep_existing_template(uri, signature):
        return
    if overwrite and storage.exists(uri):
        storage.remove(uri, recursive=True)
    store = storage_adapters.zarr_store(uri)
    root = zarr.open_group(store, mode="w", zarr_format=2)
    root.attrs.update(
        {
            **geozarr_attrs(grid),
            "queries": list(queries),
            "Conventions": "CF-1.8",
            "title": "CroBIM-Geo query probabilities",
            "crobim:template": signature,
            **(attrs or {}),
        }
    )
    _create_data_arrays(root, grid, len(queries), zarr_chunk_px)
    _write_coordinates(root, grid, len(queries))
    zarr.consolidate_metadata(store, zarr_format=2)
    logger.info(
        "created Zarr template %s (%d queries, %d x %d px, chunks %d)",
        uri,
        len(queries),
        grid.height,
        grid.width,
        zarr_chunk_px,
    )


def write_zarr_chunk(
    uri: str,
    chunk: ChunkSpec,
    prob: np.ndarray,
    valid: np.ndarray,
) -> None:
    """Write one chunk core as whole Zarr chunks (region aligned to chunk boundaries, no read-modify-write).

    Args:
        uri: Store created by :func:`create_zarr_template`.
        chunk: The chunk (its core window is the region).
        prob: uint8 ``(Q, h, w)``.
        valid: bool or uint8 ``(h, w)``.

    Raises:
        ValueError: If shapes, dtype or alignment do not match the store.
    """
    root = zarr.open_group(storage_adapters.zarr_store(uri), mode="r+", zarr_format=2)
    parr = root["prob"]
    varr = root["valid"]
    assert isinstance(parr, zarr.Array) and isinstance(varr, zarr.Array)
    q, h, w = parr.shape
    _, zh, zw = parr.chunks
    r0, c0, ch, cw = chunk.row_off, chunk.col_off, chunk.height, chunk.width
    if prob.shape != (q, ch, cw) or prob.dtype != np.uint8:
        raise ValueError(
            f"chunk {chunk.chunk_id}: prob {prob.dtype} {prob.shape}; expected uint8 {(q, ch, cw)}"
        )
    if valid.shape != (ch, cw):
        raise ValueError(f"chunk {chunk.chunk_id}: valid shape {valid.shape}; expected {(ch, cw)}")
    aligned = (
        r0 % zh == 0 and c0 % zw == 0 and (ch % zh == 0 or r0 + ch == h) and (cw % zw == 0 or c0 + cw == w)
    )
    if not aligned:
        raise ValueError(
            f"chunk {chunk.chunk_id} window ({r0}, {c0}, {ch}, {cw}) is not aligned to Zarr chunks "
            f"{zh}x{zw}; use a chunk size that is a multiple of the Zarr chunk size"
        )
    parr[:, r0 : r0 + ch, c0 : c0 + cw] = prob
    varr[r0 : r0 + ch, c0 : c0 + cw] = valid.astype(np.uint8)


def open_masks(uri: str) -> Any:
    """Open ``masks.zarr`` as an xarray Dataset: plain ``xarray.open_zarr`` (lazy, dask-chunked as stored).

    ``spatial_ref`` is a coordinate, so ``ds.rio.crs`` and ``ds.prob.rio.transform()`` work as they are.
    """
    import xarray as xr

    return xr.open_zarr(storage_adapters.zarr_store(uri, read_only=True))
