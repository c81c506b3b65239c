"""STAC items of a georeferenced SynRS region: WGS84 footprints and the item dict of one COG."""

from __future__ import annotations

from typing import Any

import numpy as np
from affine import Affine

__all__ = ["region_item", "wgs84_footprint"]

_PROJ_EXT = "https://stac-extensions.github.io/projection/v1.2.0/schema.json"
_EO_EXT = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def wgs84_footprint(
    crs: str, bounds: tuple[float, float, float, float]
) -> tuple[list[float], dict[str, Any]]:
    """WGS84 bbox and densified footprint polygon of projected ``bounds``."""
    from pyproj import Transformer

    t = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    minx, miny, maxx, maxy = bounds
    n = 16
    xs = np.concatenate(
        [np.linspace(minx, maxx, n), np.full(n, maxx), np.linspace(maxx, minx, n), np.full(n, minx)]
    )
    ys = np.concatenate(
        [np.full(n, maxy), np.linspace(maxy, miny, n), np.full(n, miny), np.linspace(miny, maxy, n)]
    )
    lon, lat = t.transform(xs, ys)
    ring = [[round(float(a), 9), round(float(b), 9)] for a, b in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    bbox = [round(float(v), 9) for v in (min(lon), min(lat), max(lon), max(lat))]
    return bbox, {"type": "Polygon", "coordinates": [ring]}


def _epsg(crs: str) -> int | None:
    from pyproj import CRS

    return CRS.from_user_input(crs).to_epsg()


def region_item(item_id: str, crs: str, transform: Affine, shape: tuple[int, int], href: str, gsd_m: float,
                datetime: str, cloud: float, seed: int) -> dict[str, Any]:  # fmt: skip
    """The STAC item (a dict) of one region COG: projection and eo fields, WGS84 footprint, a ``visual`` asset."""
    h, w = shape
    minx, maxy = transform @ (0, 0)
    maxx, miny = transform @ (w, h)
    bounds = (float(minx), float(miny), float(maxx), float(maxy))
    bbox, geometry = wgs84_footprint(crs, bounds)
    epsg = _epsg(crs)
    props: dict[str, Any] = {
        "datetime": datetime,
        "eo:cloud_cover": cloud,
        "gsd": gsd_m,
        "platform": "synrs",
        "proj:code": crs if epsg is None else f"EPSG:{epsg}",
        "proj:shape": [h, w],
        "proj:transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
        "proj:bbox": list(bounds),
        "synrs:seed": seed,
    }
    if epsg is not None:
        props["proj:epsg"] = epsg
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [_EO_EXT, _PROJ_EXT],
        "id": item_id,
        "collection": "synrs-region",
        "bbox": bbox,
        "geometry": geometry,
        "properties": props,
        "links": [],
        "assets": {
            "visual": {
                "href": href,
                "type": _COG_TYPE,
                "title": "SynRS RGB",
                "roles": ["visual", "data"],
                "eo:bands": [{"name": n, "common_name": n} for n in ("red", "green", "blue")],
            }
        },
    }
