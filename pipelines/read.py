"""Read one chunk plus halo from its items: per-asset WarpedVRT, progressive mosaic, validity (PIPELINE.md §1.5).

Reader choice (docs/geospatial-io.md): rasterio ``WarpedVRT`` per asset. It gives explicit nodata and
alpha handling, a per-pixel source rank, early stop once the window is full, one item buffer at a time,
and a transformer tolerance of ~0 (1e-9 px) so a pixel's value does not depend on the chunk window.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from pipelines.grid import ChunkSpec, OutputGrid
from pipelines.radiometry import RadiometryConfig, RGBSource, select_rgb_source, to_uint8
from pipelines.retry import with_retries

__all__ = ["GDAL_SETTINGS", "ChunkImagery", "read_chunk", "read_window"]

logger = logging.getLogger(__name__)

#: Warp transformer error tolerance in source pixels (see ``_warp_bands``).
_TOLERANCE_PX = 1e-9

#: GDAL configuration for COG reads over HTTP / object storage (also set in infra/runtime_env.yaml).
GDAL_SETTINGS: dict[str, str] = {
    # Do not list the "directory" of a remote file (one useless request per open).
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # Only open these over HTTP (no probing of sidecar files); {noext} keeps extension-less URLs readable.
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2,.vrt,{noext}",
    # Fetch the blocks of one read as parallel single-range GETs (S3 has no multipart ranges),
    # merging adjacent ranges into one.
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    # GDAL's own retries of HTTP 429/502/503/504 inside one read; ours wrap the whole read.
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "60",
    # Keep the block cache bounded per process (MB).
    "GDAL_CACHEMAX": "256",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": "16777216",
    # COG headers fit in the first 16 KB normally; one request opens the file.
    "GDAL_INGESTED_BYTES_AT_OPEN": "16384",
}


@dataclass
class ChunkImagery:
    """A chunk's imagery over its read window (core + halo).

    Attributes:
        rgb: uint8 ``(H, W, 3)``; 0 where invalid.
        valid: bool ``(H, W)``; imagery present.
        source_rank: uint8 ``(H, W)``; 0 = no source, k = ``item_ids[k - 1]`` supplied the pixel.
        item_ids: Items that supplied at least one pixel, in rank order.
        transform: Affine of the read window in the grid CRS.
        window: ``(row_off, col_off, height, width)`` of the read window in grid pixels.
    """

    rgb: np.ndarray
    valid: np.ndarray
    source_rank: np.ndarray
    item_ids: list[str]
    transform: Affine
    window: tuple[int, int, int, int]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """No valid pixel at all."""
        return not bool(self.valid.any())


def _open_href(href: str) -> str:
    """Path rasterio/GDAL opens: http(s) through /vsicurl/, s3/gs URIs as rasterio maps them."""
    if href.startswith(("http://", "https://")):
        return f"/vsicurl/{href}"
    if href.startswith("file://"):
        return href[len("file://") :]
    return href


def _overview_level(
    src: rasterio.DatasetReader, dst_crs: Any, dst_transform: Affine, dst_shape: tuple[int, int]
) -> int | None:
    """Index of the coarsest overview still at least as fine as the output (None: full resolution)."""
    factors = src.overviews(1)
    if not factors:
        return None
    h, w = dst_shape
    x0, y0 = dst_transform @ (0, 0)
    x1, y1 = dst_transform @ (w, h)
    try:
        sx0, sy0, sx1, sy1 = transform_bounds(
            dst_crs, src.crs, min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)
        )
    except Exception:  # transform failure: stay at full resolution
        return None
    dst_res_src = min((sx1 - sx0) / max(w, 1), (sy1 - sy0) / max(h, 1))
    ratio = dst_res_src / min(abs(src.transform.a), abs(src.transform.e))
    level = None
    for i, factor in enumerate(factors):
        if factor <= ratio * (1 + 1e-6):
            level = i
    return level


def _grids_coincide(src: rasterio.DatasetReader, dst_crs: Any, dst_transform: Affine) -> bool:
    """Same CRS, same pixel size and integer pixel offset: nearest copies pixels exactly."""
    if src.crs != dst_crs:
        return False
    st, dt_ = src.transform, dst_transform
    if not (math.isclose(st.a, dt_.a, rel_tol=1e-9) and math.isclose(st.e, dt_.e, rel_tol=1e-9)):
        return False
    if abs(st.b) > 0 or abs(st.d) > 0 or abs(dt_.b) > 0 or abs(dt_.d) > 0:
        return False
    col = (dt_.c - st.c) / st.a
    row = (dt_.f - st.f) / st.e
    return abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6


def _sentinel(dtype: str) -> tuple[str, float]:
    """A working dtype and a nodata value no source pixel of ``dtype`` can take."""
    if dtype in ("uint8", "int8"):
        return "int16", -32768.0
    if dtype in ("uint16", "int16"):
        return "int32", -(2.0**31)
    return "float64", float("nan")


def _warp_bands(
    href: str,
    indexes: list[int],
    nodata: float | None,
    dst_crs: Any,
    dst_transform: Affine,
    dst_shape: tuple[int, int],
    uncached: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Warp bands of one file onto the destination window; returns (values (n, H, W), valid (H, W)).

    Validity comes from the destination nodata, never from an added alpha band: with ``add_alpha`` GDAL's
    warper re-fetches the same source blocks once per band over HTTP (4x the bytes in our measurements).
    Without a source nodata, the data are warped in a wider type whose nodata no source value can take,
    so pixels outside the footprint (or masked by the source's mask band) stay recognisable.
    """
    path = _open_href(href)
    if uncached and path.startswith("/vsicurl/"):
        # A retry must not see GDAL's cached failure of the previous attempt.
        with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=path):
            return _warp_bands(href, indexes, nodata, dst_crs, dst_transform, dst_shape)
    with rasterio.open(path) as probe:
        level = _overview_level(probe, dst_crs, dst_transform, dst_shape)
        coincide = _grids_coincide(probe, dst_crs, dst_transform) and level is None
        src_dtype = probe.dtypes[indexes[0] - 1]
        src_nodata = nodata if nodata is not None else probe.nodata
    if src_nodata is not None:
        work_dtype, dst_nodata = src_dtype, float(src_nodata)
    else:
        work_dtype, dst_nodata = _sentinel(src_dtype)
    open_kw: dict[str, Any] = {} if level is None else {"overview_level": level}
    resampling = Resampling.nearest if coincide else Resampling.bilinear
    with rasterio.open(path, **open_kw) as src:
        vrt_kw: dict[str, Any] = {
            "crs": dst_crs,
            "transform": dst_transform,
            "height": dst_shape[0],
            "width": dst_shape[1],
            "resampling": resampling,
            # Tolerance 0 (exact transformer) trips rasterio 1.4.4 ("pfnTransformer is NULL"); at 1e-9 px the
            # approximating transformer falls back to exact transforms, so values do not depend on the window.
            "tolerance": _TOLERANCE_PX,
            "nodata": dst_nodata,
            "dtype": work_dtype,
        }
        if src_nodata is not None:
            vrt_kw["src_nodata"] = src_nodata
        with WarpedVRT(src, **vrt_kw) as vrt:
            values = vrt.read(indexes=indexes)
    if math.isnan(dst_nodata):
        valid = ~np.all(np.isnan(values), axis=0)
    else:
        # A pixel is nodata when every band equals nodata (GDAL's unified source nodata).
        valid = np.any(values != np.asarray(dst_nodata, dtype=values.dtype), axis=0)
    if src_nodata is None:
        values = np.where(valid, values, 0).astype(src_dtype)
    return values, valid


def read_window(
    item: pystac.Item,
    crs: Any,
    transform: Affine,
    shape: tuple[int, int],
    radiometry: RadiometryConfig | None = None,
    source: RGBSource | None = None,
    attempts: int = 5,
    backoff_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one item's RGB onto a window, as uint8 ``(3, H, W)`` plus validity ``(H, W)``.

    Args:
        item: The STAC item.
        crs: Destination CRS.
        transform: Destination affine.
        shape: Destination ``(H, W)``.
        radiometry: Stretch constants and overrides.
        source: Pre-selected RGB source (default: :func:`select_rgb_source`).
        attempts: Tries for transient errors.
        backoff_s: First retry delay in seconds.
        sleep: Sleep function used between retries.

    Returns:
        ``(rgb uint8 (3, H, W), valid bool (H, W))``.
    """
    cfg = radiometry or RadiometryConfig()
    src = source or select_rgb_source(item, cfg)
    h, w = shape
    raw: np.ndarray | None = None
    valid = np.ones((h, w), dtype=bool)
    for href in src.hrefs:
        bands = [(i, b) for i, b in enumerate(src.bands) if b.href == href]
        indexes = [b.band_index for _, b in bands]
        nodata = bands[0][1].nodata

        def job(
            attempt: int, href: str = href, indexes: list[int] = indexes, nodata: float | None = nodata
        ) -> Any:
            return _warp_bands(href, indexes, nodata, crs, transform, shape, uncached=attempt > 0)

        values, ok = with_retries(job, href, attempts=attempts, backoff_s=backoff_s, sleep=sleep)
        if raw is None:
            raw = np.zeros((3, h, w), dtype=values.dtype)
        for j, (i, _) in enumerate(bands):
            raw[i] = values[j]
        valid &= ok
        if not valid.any():
            break
    assert raw is not None
    if src.mode == "reflectance":
        dn_zero = np.all(raw == 0, axis=0)  # Sentinel-2 DN 0 is "no data" whatever the metadata says
        valid &= ~dn_zero
    rgb = to_uint8(raw, src, cfg)
    rgb[:, ~valid] = 0
    return rgb, valid


def read_chunk(
    chunk: ChunkSpec,
    grid: OutputGrid,
    items: Sequence[pystac.Item] | Mapping[str, pystac.Item],
    radiometry: RadiometryConfig | None = None,
    max_items: int | None = None,
    attempts: int = 5,
    backoff_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    env: Mapping[str, str] | None = None,
) -> ChunkImagery:
    """Read a chunk's core + halo from its candidate items, mosaicked in candidate order.

    Each item fills only pixels still invalid; reading stops once the window is fully valid. Only
    the blocks the window needs are fetched (WarpedVRT over the remote COG, never whole files).

    Args:
        chunk: The chunk (its ``item_ids`` are the candidates, best first).
        grid: The output grid.
        items: The frozen items (sequence or mapping by id); must contain the chunk's candidates.
        radiometry: Stretch constants and overrides.
        max_items: Read at most this many candidates (default: all of ``chunk.item_ids``).
        attempts: Tries per asset for transient errors.
        backoff_s: First retry delay in seconds.
        sleep: Sleep function used between retries.
        env: GDAL settings (default: :data:`GDAL_SETTINGS` for every key the environment does not set).

    Returns:
        The chunk imagery (``valid`` all False for an all-nodata or empty chunk).

    Raises:
        KeyError: If a candidate id is not among ``items``.
        PermanentReadError: For a missing, forbidden or corrupt asset, or an item without RGB.
        TransientReadError: When retries are exhausted.
    """
    by_id = items if isinstance(items, Mapping) else {it.id: it for it in items}
    row_off, col_off, h, w = chunk.read_window
    transform = grid.window_transform(row_off, col_off)
    crs = grid.crs
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    valid = np.zeros((h, w), dtype=bool)
    rank = np.zeros((h, w), dtype=np.uint8)
    used: list[str] = []
    candidates = list(chunk.item_ids[:max_items] if max_items else chunk.item_ids)
    if len(candidates) > 255:
        raise ValueError(
            f"chunk {chunk.chunk_id} has {len(candidates)} candidates; source_rank holds at most 255"
        )
    if env is None:
        # Defaults fill in what the process environment (runtime_env env_vars) does not already set.
        env = {k: v for k, v in GDAL_SETTINGS.items() if k not in os.environ}
    options = {k: int(v) if str(v).isdigit() else v for k, v in env.items()}
    with rasterio.Env(**options):
        for item_id in candidates:
            if valid.all():
                break
            if item_id not in by_id:
                raise KeyError(
                    f"chunk {chunk.chunk_id} names item {item_id!r}, which is not in the frozen items"
                )
            item = by_id[item_id]
            item_rgb, item_valid = read_window(
                item, crs, transform, (h, w), radiometry, attempts=attempts, backoff_s=backoff_s, sleep=sleep
            )
            fill = item_valid & ~valid
            if not fill.any():
                continue
            used.append(item_id)
            rgb[fill] = np.moveaxis(item_rgb, 0, -1)[fill]  # (3, H, W) -> (H, W, 3)
            rank[fill] = len(used)
            valid |= fill
    logger.debug("chunk %s: %d items used, %.1f%% valid", chunk.chunk_id, len(used), 100 * valid.mean())
    return ChunkImagery(rgb, valid, rank, used, transform, (row_off, col_off, h, w))
