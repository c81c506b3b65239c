"""Zarr v3 output: template with CF grid mapping and GeoZarr attributes, whole-chunk region writes (PIPELINE.md §4).

Layout of ``masks.zarr`` (``consolidated=False``): ``prob`` (query, y, x) uint8 = round(255 p), ``valid`` (y, x)
uint8 0/1, coordinates ``query`` (int16), ``y``/``x`` (float64 pixel centres) and the CF grid mapping
``spatial_ref`` (``crs_wkt``, ``spatial_ref``, ``GeoTransform``), referenced by ``grid_mapping``. No
``_FillValue`` attribute, so xarray keeps uint8. Read back with ``xarray.open_zarr(..., decode_coords="all")``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from pyproj import CRS as ProjCRS
from zarr.codecs import ZstdCodec

from common import storage, storage_adapters
from pipelines.grid import ChunkSpec, OutputGrid

__all__ = ["ZSTD_LEVEL", "create_zarr_template", "geozarr_attrs", "open_masks", "write_zarr_chunk"]

logger = logging.getLogger(__name__)

#: Fixed codec settings: resumed runs rewrite byte-identical chunks.
ZSTD_LEVEL = 3
_TEMPLATE_KEYS = ("grid", "queries", "zarr_chunk_px")


def _gdal_geotransform(grid: OutputGrid) -> str:
    a, b, c, d, e, f = grid.transform
    return " ".join(repr(float(v)) for v in (c, a, b, f, d, e))


def geozarr_attrs(grid: OutputGrid) -> dict[str, Any]:
    """GeoZarr modular-convention attributes (``proj:``, ``spatial:``) for the grid."""
    crs = ProjCRS.from_wkt(grid.crs_wkt)
    epsg = crs.to_epsg()
    a, b, c, d, e, f = grid.transform
    minx, miny, maxx, maxy = grid.bounds
    attrs: dict[str, Any] = {
        "proj:wkt2": grid.crs_wkt,
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [a, b, c, d, e, f],
        "spatial:bbox": [minx, miny, maxx, maxy],
        "spatial:shape": [grid.height, grid.width],
        "spatial:registration": "pixel",
    }
    if epsg is not None:
        attrs["proj:code"] = f"EPSG:{epsg}"
    return attrs


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
    if not storage.exists(storage.join(uri, "zarr.json")):
        return False
    existing = zarr.open_group(storage_adapters.zarr_store(uri, read_only=True), mode="r").attrs.get(
        "crobim:template"
    )
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
    root.create_array(
        "prob",
        shape=(q, h, w),
        chunks=(1, min(zc, h), min(zc, w)),
        dtype="uint8",
        fill_value=0,
        compressors=[ZstdCodec(level=ZSTD_LEVEL)],
        dimension_names=["query", "y", "x"],
        attributes={
            "long_name": "probability x 255, rounded",
            "grid_mapping": "spatial_ref",
            "valid_range": [0, 255],
        },
    )
    root.create_array(
        "valid",
        shape=(h, w),
        chunks=(min(zc, h), min(zc, w)),
        dtype="uint8",
        fill_value=0,
        compressors=[ZstdCodec(level=ZSTD_LEVEL)],
        dimension_names=["y", "x"],
        attributes={"long_name": "imagery present (1) or not (0)", "grid_mapping": "spatial_ref"},
    )


def _write_coordinates(root: zarr.Group, grid: OutputGrid, q: int) -> None:
    """The ``x``/``y`` pixel-centre coordinates, the ``query`` index and the ``spatial_ref`` grid mapping."""
    compressors = [ZstdCodec(level=ZSTD_LEVEL)]
    a, _, c, _, e, f = grid.transform
    x = c + a * (np.arange(grid.width, dtype=np.float64) + 0.5)
    y = f + e * (np.arange(grid.height, dtype=np.float64) + 0.5)
    for name, values in (("x", x), ("y", y)):
        arr = root.create_array(
            name,
            shape=values.shape,
            chunks=values.shape,
            dtype="float64",
            fill_value=np.nan,
            compressors=compressors,
            dimension_names=[name],
            attributes=_coord_attrs(grid, name),
        )
        arr[:] = values
    qarr = root.create_array(
        "query",
        shape=(q,),
        chunks=(q,),
        dtype="int16",
        fill_value=-1,
        compressors=compressors,
        dimension_names=["query"],
        attributes={"long_name": "query index into the 'queries' attribute"},
    )
    qarr[:] = np.arange(q, dtype=np.int16)
    sref = root.create_array(
        "spatial_ref",
        shape=(),
        dtype="int32",
        fill_value=0,
        compressors=None,
        dimension_names=[],
        attributes=_grid_mapping_attrs(grid),
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
    """Write the store's metadata and coordinates once (no data chunks).

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
        FileExistsError: If a store with other settings exists and ``overwrite`` is False.
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
    root = zarr.open_group(storage_adapters.zarr_store(uri), mode="w", zarr_format=3)
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
    root = zarr.open_group(storage_adapters.zarr_store(uri), mode="r+")
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
    """Open ``masks.zarr`` with xarray (``decode_coords="all"``, so ``spatial_ref`` is a coordinate)."""
    import xarray as xr

    return xr.open_zarr(
        storage_adapters.zarr_store(uri, read_only=True), consolidated=False, decode_coords="all"
    )
