"""Imagery for ``map.html`` (PIPELINE.md §4): a georeferenced RGB raster warped onto a Web Mercator overlay."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject, transform_bounds

__all__ = ["MapImagery", "map_imagery"]

_WEB_MERCATOR = CRS.from_epsg(3857)
_LONLAT = CRS.from_epsg(4326)


@dataclass(frozen=True)
class MapImagery:
    """An image overlay for the map.

    Leaflet stretches an overlay linearly between its corners in Web Mercator, so ``rgba`` must be on a Web Mercator
    pixel grid (``map_imagery`` warps any georeferenced raster onto one).

    Attributes:
        rgba: uint8 (H, W, 3) or (H, W, 4); alpha 0 is transparent (nodata).
        bounds_lonlat: (minx, miny, maxx, maxy) in EPSG:4326 degrees.
    """

    rgba: np.ndarray
    bounds_lonlat: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        if self.rgba.dtype != np.uint8 or self.rgba.ndim != 3 or self.rgba.shape[2] not in (3, 4):
            raise ValueError(
                f"imagery must be a uint8 (H, W, 3) or (H, W, 4) array, got {self.rgba.dtype} {self.rgba.shape}"
            )
        minx, miny, maxx, maxy = self.bounds_lonlat
        if not (-180 <= minx < maxx <= 180 and -90 <= miny < maxy <= 90):
            raise ValueError(
                f"imagery bounds {self.bounds_lonlat} are not (minx, miny, maxx, maxy) in EPSG:4326 degrees"
            )

    def to_png(self) -> bytes:
        """The image as PNG bytes (optimised)."""
        buffer = io.BytesIO()
        Image.fromarray(self.rgba).save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()


def map_imagery(
    rgb: np.ndarray,
    crs: CRS | str | int,
    transform: Affine,
    valid: np.ndarray | None = None,
    max_side_px: int = 2048,
) -> MapImagery:
    """Warp a georeferenced RGB raster onto a Web Mercator grid for use as a map overlay.

    Args:
        rgb: uint8 (H, W, 3) imagery (usually a thumbnail of the region).
        crs: CRS of ``rgb``.
        transform: affine pixel-to-CRS transform of ``rgb``.
        valid: optional bool (H, W); False pixels become transparent.
        max_side_px: cap on the overlay's longer side, in pixels.

    Returns:
        The overlay, transparent outside the raster's footprint.

    Raises:
        ValueError: when ``rgb`` or ``valid`` have the wrong shape or type.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be a uint8 (H, W, 3) array, got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    if valid is None:
        valid = np.ones((height, width), dtype=bool)
    if valid.shape != (height, width):
        raise ValueError(f"valid has shape {valid.shape}, expected {(height, width)} to match rgb")
    src_crs = CRS.from_user_input(crs)
    left, top = transform @ (0, 0)
    right, bottom = transform @ (width, height)
    bounds = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    dst_transform, dst_width, dst_height = calculate_default_transform(
        src_crs, _WEB_MERCATOR, width, height, *bounds
    )
    scale = max(dst_width, dst_height) / max_side_px
    if scale > 1:
        dst_width, dst_height = max(1, math.ceil(dst_width / scale)), max(1, math.ceil(dst_height / scale))
        dst_transform = dst_transform @ Affine.scale(scale)
    # (H, W, 3) -> (3, H, W): rasterio's band-first layout.
    source = np.moveaxis(rgb, -1, 0)
    out_rgb = np.zeros((3, dst_height, dst_width), dtype=np.uint8)
    out_alpha = np.zeros((1, dst_height, dst_width), dtype=np.uint8)
    common = {
        "src_transform": transform,
        "src_crs": src_crs,
        "dst_transform": dst_transform,
        "dst_crs": _WEB_MERCATOR,
    }
    reproject(source, out_rgb, resampling=Resampling.bilinear, **common)
    reproject(
        valid.astype(np.uint8)[None] * 255,
        out_alpha,
        resampling=Resampling.nearest,
        src_nodata=None,
        **common,
    )
    # (3, H, W) + (1, H, W) -> (H, W, 4)
    rgba = np.moveaxis(np.concatenate([out_rgb, out_alpha]), 0, -1)
    mleft, mtop = dst_transform @ (0, 0)
    mright, mbottom = dst_transform @ (dst_width, dst_height)
    lonlat = transform_bounds(_WEB_MERCATOR, _LONLAT, mleft, mbottom, mright, mtop)
    west, south, east, north = (float(v) for v in lonlat)
    return MapImagery(rgba=np.ascontiguousarray(rgba), bounds_lonlat=(west, south, east, north))
