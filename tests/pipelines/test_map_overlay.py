"""The map overlay: a georeferenced RGB raster warped onto Web Mercator, transparent where there is no imagery."""

from __future__ import annotations

import io

import numpy as np
import pytest
from affine import Affine
from PIL import Image
from pyproj import Transformer

from pipelines.map_overlay import MapImagery, map_imagery

UTM = "EPSG:32633"
# 1 m pixels, 1000 x 1000, upper-left corner at (500000, 5000000) in UTM 33N.
TRANSFORM = Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 5_000_000.0)


def test_map_imagery_warps_onto_web_mercator():
    rgb = np.zeros((1000, 1000, 3), dtype=np.uint8)
    rgb[200:300, 600:700] = (255, 0, 0)
    valid = np.ones((1000, 1000), dtype=bool)
    valid[:, :100] = False
    overlay = map_imagery(rgb, UTM, TRANSFORM, valid=valid, max_side_px=500)
    height, width = overlay.rgba.shape[:2]
    assert max(height, width) == 500 and overlay.rgba.shape[2] == 4
    minx, miny, maxx, maxy = overlay.bounds_lonlat
    to_merc = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    utm_to_merc = Transformer.from_crs(UTM, "EPSG:3857", always_xy=True)
    (mx0, mx1), (my0, my1) = to_merc.transform([minx, maxx], [miny, maxy])
    # The red square's centre (pixel 650, 250) lands on the overlay pixel that Leaflet's linear stretch gives.
    cx, cy = utm_to_merc.transform(*(TRANSFORM @ (650, 250)))
    col = int((cx - mx0) / (mx1 - mx0) * width)
    row = int((my1 - cy) / (my1 - my0) * height)
    assert tuple(overlay.rgba[row, col]) == (255, 0, 0, 255)
    # Invalid source pixels (the left 100 columns) are transparent, valid ones opaque.
    lx, ly = utm_to_merc.transform(*(TRANSFORM @ (50, 500)))
    rx, ry = utm_to_merc.transform(*(TRANSFORM @ (500, 500)))
    to_px = lambda x, y: (int((my1 - y) / (my1 - my0) * height), int((x - mx0) / (mx1 - mx0) * width))  # noqa: E731
    assert overlay.rgba[to_px(lx, ly)][3] == 0
    assert overlay.rgba[to_px(rx, ry)][3] == 255
    with pytest.raises(ValueError, match="uint8"):
        map_imagery(rgb.astype(np.float32), UTM, TRANSFORM)


def test_overlay_png_round_trip_and_checks():
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[1:3, 2:5] = (10, 20, 30, 255)
    overlay = MapImagery(rgba=rgba, bounds_lonlat=(10.0, 40.0, 10.1, 40.1))
    png = overlay.to_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), rgba)
    with pytest.raises(ValueError, match="uint8"):
        MapImagery(rgba=rgba.astype(np.float32), bounds_lonlat=(10.0, 40.0, 10.1, 40.1))
    with pytest.raises(ValueError, match="EPSG:4326"):
        MapImagery(rgba=rgba, bounds_lonlat=(10.1, 40.0, 10.0, 40.1))
