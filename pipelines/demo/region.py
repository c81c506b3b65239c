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
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from pipelines.demo.catalog import region_item, wgs84_footprint
from pipelines.demo.truth import REGION_QUERIES, tile_share, write_truth

__all__ = ["REGION_QUERIES", "RegionScene", "make_region"]

logger = logging.getLogger(__name__)


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


def _check_arguments(
    size_px: int | tuple[int, int], n_items: int | tuple[int, int], gsd_m: float, crs: str
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(size, item grid)`` of a region, or ValueError naming the bad argument."""
    from pyproj import CRS

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
    if not CRS.from_user_input(crs).is_projected:
        raise ValueError(f"crs {crs!r} is not projected; use a metric CRS such as a UTM zone (EPSG:326xx)")
    return size, grid


def _reuse_or_clear(out: Path, settings: dict[str, Any], overwrite: bool) -> RegionScene | None:
    """The region already in ``out`` when its settings match; else clear it (``overwrite``) or refuse."""
    marker = out / "region.json"
    if not marker.exists():
        return None
    info = json.loads(marker.read_text())
    if info.get("settings") == settings and not overwrite:
        logger.info("region in %s already written with the same settings; reusing it", out)
        return _load(out, info)
    if not overwrite:
        old = info.get("settings", {})
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        raise FileExistsError(f"{out} holds a region with other settings {diff}; pass overwrite=True")
    shutil.rmtree(out)
    return None


def _write_items(
    out: Path, image: np.ndarray, transform: Affine, grid: tuple[int, int], settings: dict[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    """One RGB COG and STAC item per cell of the item grid; returns the COG names and the items."""
    from pipelines.demo.cog import write_cog

    seed, crs, gsd_m = settings["seed"], settings["crs"], settings["gsd_m"]
    href_base, datetime = settings["href_base"], settings["datetime"]
    cogs: list[str] = []
    items = []
    cloud_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, 1)))
    th, tw = image.shape[0] // grid[0], image.shape[1] // grid[1]
    for r in range(grid[0]):
        for c in range(grid[1]):
            name = "scene.tif" if grid == (1, 1) else f"scene_r{r}c{c}.tif"
            tile = image[r * th : (r + 1) * th, c * tw : (c + 1) * tw]
            t_tile = transform @ Affine.translation(c * tw, r * th)
            write_cog(out / name, np.moveaxis(tile, 2, 0), crs, t_tile, blocksize=256)
            href = str(out / name) if href_base is None else f"{href_base.rstrip('/')}/{name}"
            item_id = f"synrs-{seed}" if grid == (1, 1) else f"synrs-{seed}-r{r}c{c}"
            cloud = round(float(cloud_rng.uniform(0.0, 10.0)), 2)
            items.append(region_item(item_id, crs, t_tile, (th, tw), href, gsd_m, datetime, cloud, seed))
            cogs.append(name)
    return cogs, items


def _region_info(
    settings: dict[str, Any],
    graph: Any,  # noqa: ANN401 - a SynRS scene graph
    transform: Affine,
    cogs: list[str],
    rows: dict[str, list[Any]],
    near_px: float,
) -> dict[str, Any]:
    """The content of ``region.json``: settings, grid, class counts and per-query truth counts."""
    h, w = graph.shape
    minx, maxy = transform @ (0, 0)
    maxx, miny = transform @ (w, h)
    bounds = [float(minx), float(miny), float(maxx), float(maxy)]
    bbox, _ = wgs84_footprint(settings["crs"], (bounds[0], bounds[1], bounds[2], bounds[3]))
    counts: dict[str, int] = {}
    for inst in graph.instances:
        counts[inst.cls] = counts.get(inst.cls, 0) + 1
    return {
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
                "near_m": near_px * settings["gsd_m"],
                "positives": int(sum(rows[col])),
            }  # fmt: skip
            for col, (text, cls, ref) in REGION_QUERIES.items()
        },
        "tiles_with_target_share": tile_share(graph.labels, rows, settings["unit_px"]),
    }


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
    from crobim.data.synrs import SynRSParams, render_scene
    from pipelines.demo.cog import write_cog

    size, grid = _check_arguments(size_px, n_items, gsd_m, crs)
    out = Path(out_dir).resolve()
    settings = _settings(
        seed, size, gsd_m, crs, (float(origin[0]), float(origin[1])), grid, unit_px, href_base, datetime
    )
    existing = _reuse_or_clear(out, settings, overwrite)
    if existing is not None:
        return existing
    out.mkdir(parents=True, exist_ok=True)
    params = SynRSParams()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, 0)))
    graph = render_scene(rng, size, unit_px=unit_px, params=params)
    transform = Affine(gsd_m, 0.0, float(origin[0]), 0.0, -gsd_m, float(origin[1]))
    cogs, items = _write_items(out, graph.image, transform, grid, settings)
    write_cog(out / "instances.tif", graph.labels.astype(np.uint32)[None], crs, transform, nodata=None,
              resampling="nearest")  # fmt: skip
    near_px = params.near * unit_px
    rows = write_truth(out / "truth.parquet", graph, transform, crs, gsd_m, near_px)
    catalog = {"type": "FeatureCollection", "features": items}
    (out / "catalog.json").write_text(json.dumps(catalog, indent=2) + "\n")
    info = _region_info(settings, graph, transform, cogs, rows, near_px)
    (out / "region.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    h, w = size
    logger.info(
        "wrote SynRS region %s: %dx%d px, %d objects, %d items", out, w, h, len(graph.instances), len(items)
    )
    return _load(out, info)
