"""Georeferenced SynRS regions: a large mosaic scene as COG(s), its true objects as GeoParquet, a STAC catalog.

The region job and the quickstart demo score their polygons against these scenes. The mosaic is rendered by the
SynRS renderer (:func:`crobim.data.synrs.render_scene`) on a canvas several scene units wide, so objects keep
their benchmark size, instance ids are global, and most tiles hold no target of a given query.

Outputs in ``out_dir``:

* ``scene.tif`` (one item) or ``scene_r{row}c{col}.tif`` (a grid of items): RGB uint8 COGs in ``crs``.
* ``instances.tif``: uint32 instance ids (0: background), nearest-resampled overviews.
* ``truth.parquet``: GeoParquet, one (multi)polygon per object in ``crs``: ``instance_id``, ``class``,
  ``colour``, ``area_m2`` and one boolean column per canonical region query (see :data:`REGION_QUERIES`).
* ``catalog.json``: STAC ItemCollection (``proj:code``/``proj:epsg``, ``proj:shape``, ``proj:transform``,
  WGS84 bbox and footprint, ``datetime``, ``eo:cloud_cover``, a ``visual`` asset per COG).
* ``region.json``: settings, grid and per-query counts; written last (completion marker and fingerprint).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

__all__ = ["REGION_QUERIES", "RegionScene", "make_region"]

logger = logging.getLogger(__name__)

#: Canonical region queries: truth column -> (query text, target class, reference class). "Near" is the SynRS
#: rule: minimum pixel-set distance <= ``near * unit_px`` pixels.
REGION_QUERIES: dict[str, tuple[str, str, str]] = {
    "pond_near_road": ("all ponds near roads", "pond", "road"),
    "building_near_road": ("all buildings near roads", "building", "road"),
    "building_near_river": ("all buildings near the river", "building", "river"),
    "tree_near_pond": ("all trees near ponds", "tree", "pond"),
}

_PROJ_EXT = "https://stac-extensions.github.io/projection/v1.2.0/schema.json"
_EO_EXT = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


@dataclass
class RegionScene:
    """A written region (all paths absolute).

    Attributes:
        out_dir: The output folder.
        catalog_path: ``catalog.json`` (STAC ItemCollection).
        truth_path: ``truth.parquet`` (GeoParquet of the true objects).
        instances_path: ``instances.tif`` (uint32 instance ids).
        cog_paths: The RGB COGs, one per item.
        crs: Scene CRS (``"EPSG:32633"``).
        transform: Pixel-to-map affine of the whole mosaic.
        shape: ``(H, W)`` pixels of the whole mosaic.
        bounds: ``(minx, miny, maxx, maxy)`` in ``crs``.
        bbox_wgs84: ``(west, south, east, north)`` degrees.
        queries: Truth column -> query text.
        info: The content of ``region.json``.
    """

    out_dir: Path
    catalog_path: Path
    truth_path: Path
    instances_path: Path
    cog_paths: list[Path]
    crs: str
    transform: Affine
    shape: tuple[int, int]
    bounds: tuple[float, float, float, float]
    bbox_wgs84: tuple[float, float, float, float]
    queries: dict[str, str]
    info: dict[str, Any]

    def truth(self, query: str | None = None) -> Any:  # noqa: ANN401 - geopandas.GeoDataFrame
        """The truth layer, optionally only the objects answering ``query`` (a column name or its text)."""
        import geopandas as gpd

        gdf = gpd.read_parquet(self.truth_path)
        if query is None:
            return gdf
        column = query if query in self.queries else {v: k for k, v in self.queries.items()}.get(query)
        if column is None:
            raise KeyError(f"unknown region query {query!r}; known: {sorted(self.queries.values())}")
        return gdf[gdf[column]].reset_index(drop=True)


def _wgs84_footprint(
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


def _item(item_id: str, crs: str, transform: Affine, shape: tuple[int, int], href: str, gsd_m: float,
          datetime: str, cloud: float, seed: int) -> dict[str, Any]:  # fmt: skip
    h, w = shape
    minx, maxy = transform @ (0, 0)
    maxx, miny = transform @ (w, h)
    bounds = (float(minx), float(miny), float(maxx), float(maxy))
    bbox, geometry = _wgs84_footprint(crs, bounds)
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


def _vectorize(labels: np.ndarray, transform: Affine) -> dict[int, Any]:
    """One shapely (multi)polygon per instance id, in map coordinates."""
    import shapely
    from rasterio import features
    from shapely.geometry import shape as to_shape

    parts: dict[int, list[Any]] = {}
    for geom, value in features.shapes(labels, mask=labels > 0, transform=transform, connectivity=4):
        parts.setdefault(int(value), []).append(to_shape(geom))
    return {k: (v[0] if len(v) == 1 else shapely.union_all(v)) for k, v in sorted(parts.items())}


def _settings(seed: int, size: tuple[int, int], gsd_m: float, crs: str, origin: tuple[float, float],
              grid: tuple[int, int], unit_px: int, href_base: str | None, datetime: str) -> dict[str, Any]:  # fmt: skip
    from crobim.data.synrs import GENERATOR_VERSION

    return {
        "seed": seed,
        "size_px": list(size),
        "gsd_m": gsd_m,
        "crs": crs,
        "origin": list(origin),
        "grid": list(grid),
        "unit_px": unit_px,
        "href_base": href_base,
        "datetime": datetime,
        "generator_version": GENERATOR_VERSION,
    }


def _load(out: Path, info: dict[str, Any]) -> RegionScene:
    return RegionScene(
        out_dir=out,
        catalog_path=out / "catalog.json",
        truth_path=out / "truth.parquet",
        instances_path=out / "instances.tif",
        cog_paths=[out / p for p in info["cogs"]],
        crs=info["settings"]["crs"],
        transform=Affine(*info["transform"][:6]),
        shape=(info["settings"]["size_px"][0], info["settings"]["size_px"][1]),
        bounds=tuple(info["bounds"]),  # type: ignore[arg-type]
        bbox_wgs84=tuple(info["bbox_wgs84"]),  # type: ignore[arg-type]
        queries={k: v["text"] for k, v in info["queries"].items()},
        info=info,
    )


def make_region(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    size_px: int | tuple[int, int] = 2048,
    gsd_m: float = 1.0,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500_000.0, 5_000_000.0),
    n_items: int | tuple[int, int] = 1,
    *,
    unit_px: int = 512,
    href_base: str | None = None,
    datetime: str = "2024-06-15T10:30:00Z",
    overwrite: bool = False,
) -> RegionScene:
    """Render a georeferenced SynRS mosaic and write its COGs, truth layer and STAC catalog.

    Same arguments give the same pixels, ids and polygons. A folder that already holds a region written with
    the same settings is reused as is (so the demo generates it once); different settings are refused unless
    ``overwrite``.

    Args:
        out_dir: Output folder (local).
        seed: Scene seed (the mosaic is scene 0 of ``SeedSequence(seed, spawn_key=(3, 0))``).
        size_px: Mosaic side or ``(H, W)`` in pixels.
        gsd_m: Pixel size in metres (CRS units).
        crs: A projected CRS in metres (default UTM 33N).
        origin: Map coordinates ``(x, y)`` of the upper-left corner.
        n_items: 1 (one COG) or ``(rows, cols)`` (a grid of adjacent items, one COG each).
        unit_px: SynRS scene unit: object sizes and the "near" rule are relative to it. Match the tile size
            the model was trained at for a fair test.
        href_base: Asset href prefix (a URL or folder, e.g. ``http://127.0.0.1:8000``); default: the COG's
            absolute local path.
        datetime: Item acquisition time (RFC 3339).
        overwrite: Replace a region written with other settings.

    Returns:
        The written :class:`RegionScene`.

    Raises:
        ValueError: For a non-projected CRS, a bad size/gsd or an item grid that does not divide the mosaic.
        FileExistsError: If ``out_dir`` holds a region with other settings and ``overwrite`` is False.
    """
    import geopandas as gpd
    from pyproj import CRS

    from crobim.data.synrs import SynRSParams, render_scene
    from pipelines.cog import write_cog

    size = (size_px, size_px) if isinstance(size_px, int) else (int(size_px[0]), int(size_px[1]))
    grid: tuple[int, int] = (1, 1) if isinstance(n_items, int) else (int(n_items[0]), int(n_items[1]))
    if isinstance(n_items, int) and n_items != 1:
        raise ValueError(f"n_items={n_items}: pass 1 or a (rows, cols) grid such as (2, 2)")
    if min(size) < 64 or gsd_m <= 0:
        raise ValueError(f"size_px {size} must be >= 64 and gsd_m {gsd_m} > 0")
    if size[0] % grid[0] or size[1] % grid[1]:
        raise ValueError(
            f"item grid {grid} does not divide the mosaic {size}; choose sizes divisible by the grid"
        )
    crs_obj = CRS.from_user_input(crs)
    if not crs_obj.is_projected:
        raise ValueError(f"crs {crs!r} is not projected; use a metric CRS such as a UTM zone (EPSG:326xx)")
    out = Path(out_dir).resolve()
    settings = _settings(
        seed, size, gsd_m, crs, (float(origin[0]), float(origin[1])), grid, unit_px, href_base, datetime
    )
    marker = out / "region.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("settings") == settings and not overwrite:
            logger.info("region in %s already written with the same settings; reusing it", out)
            return _load(out, info)
        if not overwrite:
            diff = {
                k: (info.get("settings", {}).get(k), v)
                for k, v in settings.items()
                if info.get("settings", {}).get(k) != v
            }
            raise FileExistsError(f"{out} holds a region with other settings {diff}; pass overwrite=True")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    params = SynRSParams()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, 0)))
    graph = render_scene(rng, size, unit_px=unit_px, params=params)
    transform = Affine(gsd_m, 0.0, float(origin[0]), 0.0, -gsd_m, float(origin[1]))
    h, w = size

    # COGs: one per item of the grid.
    cogs: list[str] = []
    items = []
    cloud_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, 1)))
    th, tw = h // grid[0], w // grid[1]
    for r in range(grid[0]):
        for c in range(grid[1]):
            name = "scene.tif" if grid == (1, 1) else f"scene_r{r}c{c}.tif"
            tile = graph.image[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
            t_tile = transform @ Affine.translation(c * tw, r * th)
            write_cog(out / name, np.moveaxis(tile, 2, 0), crs, t_tile, blocksize=256)
            href = str(out / name) if href_base is None else f"{href_base.rstrip('/')}/{name}"
            item_id = f"synrs-{seed}" if grid == (1, 1) else f"synrs-{seed}-r{r}c{c}"
            cloud = round(float(cloud_rng.uniform(0.0, 10.0)), 2)
            items.append(_item(item_id, crs, t_tile, (th, tw), href, gsd_m, datetime, cloud, seed))
            cogs.append(name)
    write_cog(out / "instances.tif", graph.labels.astype(np.uint32)[None], crs, transform, nodata=None,
              resampling="nearest")  # fmt: skip

    # Truth layer with the canonical query columns.
    near_px = params.near * unit_px
    geoms = _vectorize(graph.labels, transform)
    rows: dict[str, list[Any]] = {"instance_id": [], "class": [], "colour": [], "area_m2": []}
    for col in REGION_QUERIES:
        rows[col] = []
    geometry = []
    ref_ids = {ref: np.array([i.id for i in graph.instances if i.cls == ref], dtype=np.int32)
               for _, _, ref in REGION_QUERIES.values()}  # fmt: skip
    for inst in graph.instances:
        rows["instance_id"].append(inst.id)
        rows["class"].append(inst.cls)
        rows["colour"].append(inst.colour)
        rows["area_m2"].append(inst.area * gsd_m * gsd_m)
        for col, (_, cls, ref) in REGION_QUERIES.items():
            rows[col].append(inst.cls == cls and _near(graph, inst, ref_ids[ref], near_px))
        geometry.append(geoms[inst.id])
    gdf = gpd.GeoDataFrame(rows, geometry=geometry, crs=crs)
    gdf.to_parquet(out / "truth.parquet", index=False)

    catalog = {"type": "FeatureCollection", "features": items}
    (out / "catalog.json").write_text(json.dumps(catalog, indent=2) + "\n")
    minx, maxy = transform @ (0, 0)
    maxx, miny = transform @ (w, h)
    bounds = [float(minx), float(miny), float(maxx), float(maxy)]
    bbox, _ = _wgs84_footprint(crs, (bounds[0], bounds[1], bounds[2], bounds[3]))
    counts: dict[str, int] = {}
    for inst in graph.instances:
        counts[inst.cls] = counts.get(inst.cls, 0) + 1
    info = {
        "settings": settings,
        "transform": list(transform)[:6],
        "bounds": bounds,
        "bbox_wgs84": bbox,
        "cogs": cogs,
        "classes": dict(sorted(counts.items())),
        "queries": {
            col: {
                "text": text,
                "class": cls,
                "ref_class": ref,
                "near_m": near_px * gsd_m,
                "positives": int(sum(rows[col])),
            }  # fmt: skip
            for col, (text, cls, ref) in REGION_QUERIES.items()
        },
        "tiles_with_target_share": _tile_share(graph.labels, rows, unit_px),
    }
    marker.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    logger.info(
        "wrote SynRS region %s: %dx%d px, %d objects, %d items", out, w, h, len(graph.instances), len(items)
    )
    return _load(out, info)


def _near(graph: Any, inst: Any, ref_ids: np.ndarray, near_px: float) -> bool:  # noqa: ANN401
    """Whether ``inst`` lies within ``near_px`` (pixel-set distance) of any instance in ``ref_ids``.

    Exact and local: any reference pixel that close lies in the instance's box grown by ``near_px``, so the
    distance transform runs on that window only.
    """
    from scipy import ndimage

    if ref_ids.size == 0:
        return False
    h, w = graph.shape
    pad = int(math.ceil(near_px)) + 1
    y0, x0, y1, x1 = inst.bbox
    ys, xs = slice(max(0, y0 - pad), min(h, y1 + pad)), slice(max(0, x0 - pad), min(w, x1 + pad))
    win = graph.labels[ys, xs]
    ref = np.isin(win, ref_ids)
    if not ref.any():
        return False
    dist = ndimage.distance_transform_edt(~ref)
    return bool(dist[win == inst.id].min() <= near_px)


def _tile_share(labels: np.ndarray, rows: dict[str, list[Any]], tile: int) -> dict[str, float]:
    """Share of ``tile``-sized tiles touching at least one positive object, per query (sparsity check)."""
    h, w = labels.shape
    out = {}
    ids = np.asarray(rows["instance_id"], dtype=np.int64)
    for col in REGION_QUERIES:
        lut = np.zeros(int(labels.max()) + 1, dtype=bool)
        lut[ids[np.asarray(rows[col], dtype=bool)]] = True
        pos = lut[labels]
        n_t = math.ceil(h / tile) * math.ceil(w / tile)
        hits = sum(
            bool(pos[r : r + tile, c : c + tile].any()) for r in range(0, h, tile) for c in range(0, w, tile)
        )
        out[col] = round(hits / n_t, 6)
    return out
