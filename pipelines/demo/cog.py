"""Write Cloud Optimized GeoTIFFs (tiled, internal overviews, header first): demo regions, tests, benchmarks."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.shutil import copy as rio_copy

__all__ = ["write_cog"]

logger = logging.getLogger(__name__)


def _overview_factors(height: int, width: int, blocksize: int) -> list[int]:
    """Powers of two until the overview fits in one block."""
    factors: list[int] = []
    factor = 2
    while max(height, width) / (factor // 2) > blocksize:
        factors.append(factor)
        factor *= 2
    return factors


def _bands_first(array: np.ndarray, blocksize: int) -> np.ndarray:
    """``array`` as ``(bands, H, W)``; ValueError for other ranks or a block side that is not a multiple of 16."""
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3:
        raise ValueError(f"array must have shape (bands, H, W) or (H, W); got shape {arr.shape}")
    if blocksize <= 0 or blocksize % 16:
        raise ValueError(f"blocksize {blocksize} is not a positive multiple of 16; use e.g. 256 or 512")
    return arr


def write_cog(
    path: str | os.PathLike[str],
    array: np.ndarray,
    crs: CRS | str | int,
    transform: Affine,
    nodata: float | None = None,
    blocksize: int = 256,
    overviews: bool = True,
    resampling: str = "average",
    compress: str = "deflate",
) -> Path:
    """Write ``array`` as a Cloud Optimized GeoTIFF.

    The file is built as a tiled GeoTIFF in a temporary folder next to ``path``, overviews are added,
    then it is copied with ``COPY_SRC_OVERVIEWS=YES`` so the IFDs come first and the tiles are ordered
    as the COG layout requires; the final rename is atomic.

    Args:
        path: Output file (local path).
        array: Pixel values, shape ``(bands, H, W)`` or ``(H, W)`` for one band.
        crs: Any CRS rasterio understands (``CRS``, ``"EPSG:32618"``, WKT, EPSG integer).
        transform: Affine pixel-to-map transform of the array.
        nodata: Nodata value recorded in the file (``None``: none).
        blocksize: Internal tile side in pixels (multiple of 16).
        overviews: Build internal overviews (powers of two down to one block).
        resampling: Overview resampling (``"average"``, ``"nearest"``, ...).
        compress: GeoTIFF compression (``"deflate"``, ``"lzw"``, ``"zstd"``, ``"none"``).

    Returns:
        The written path.

    Raises:
        ValueError: If the array is not 2-D or 3-D, or ``blocksize`` is not a positive multiple of 16.
    """
    arr = _bands_first(array, blocksize)
    bands, height, width = arr.shape
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    crs_obj = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": bands,
        "dtype": arr.dtype.name,
        "crs": crs_obj,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": compress,
        "interleave": "pixel" if bands <= 4 else "band",
    }
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".cog-") as tmp:
        staging = Path(tmp) / "staging.tif"
        with rasterio.open(staging, "w", **profile) as dst:
            dst.write(arr)
            if overviews:
                factors = _overview_factors(height, width, blocksize)
                if factors:
                    dst.build_overviews(factors, Resampling[resampling])
                    dst.update_tags(ns="rio_overview", resampling=resampling)
        final_tmp = Path(tmp) / "final.tif"
        rio_copy(
            staging,
            final_tmp,
            driver="GTiff",
            copy_src_overviews=True,
            tiled=True,
            blockxsize=blocksize,
            blockysize=blocksize,
            compress=compress,
            interleave=profile["interleave"],
        )
        os.replace(final_tmp, out)
    logger.debug("wrote COG %s (%d bands, %dx%d, %s)", out, bands, height, width, crs_obj.to_string())
    return out
