"""Per-query area statistics of a region job's outputs over a cell grid or zones (issue 23; xarray + dask).

From ``masks.zarr`` (lazily, block by block: memory does not grow with the region), per cell or zone and query:
area of pixels ``>= threshold`` (the polygons' uint8 cut), mean probability and area over pixels with imagery.
Cells: padded to whole cells, reduced per cell-aligned block; zones: rasterised per chunk (``map_blocks`` +
``rasterize`` on the chunk's window) and summed per zone per chunk (``blockwise``), then across chunks. From
``polygons.parquet`` (streamed, bbox-filtered with its covering column): polygons whose interior meets the unit and
their area in it. Queries match by text. Areas are planar in the grid CRS, like its pixel areas (geodesic on a
geographic grid; ``polygons.parquet``'s ``area_m2`` is geodesic). Runs on dask's threads or on Ray (Dask-on-Ray).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS as ProjCRS

from common import storage, storage_adapters
from pipelines.geoparquet import write_geoparquet
from pipelines.polygonize import threshold_value

__all__ = ["MaskGrid", "SummaryResult", "format_summary", "mask_grid", "summarize"]

logger = logging.getLogger(__name__)

STAT_COLUMNS = ("mask_area_m2", "mean_prob", "valid_area_m2", "polygon_count", "polygon_area_m2")


@dataclass(frozen=True)
class MaskGrid:
    """Georeferencing of a ``masks.zarr``: CRS, top-left corner, pixel size and shape."""

    crs: ProjCRS
    x0: float
    y0: float
    res_x: float
    res_y: float
    height: int
    width: int

    def row_areas_m2(self) -> np.ndarray:
        """Area (m^2) of one pixel of each row: constant in a projected CRS, by latitude in a geographic one."""
        if self.crs.is_geographic:
            lat = self.y0 - self.res_y * (np.arange(self.height) + 0.5)
            return self.res_x * self.res_y * 111_320.0**2 * np.cos(np.radians(lat))
        factor = self.crs.axis_info[0].unit_conversion_factor if self.crs.axis_info else 1.0
        return np.full(self.height, self.res_x * self.res_y * factor**2)

    def planar_areas_m2(self, geoms: np.ndarray) -> np.ndarray:
        """Areas (m^2) of geometries in the grid CRS (geodesic in a geographic CRS)."""
        if self.crs.is_geographic:
            from pipelines.merge_polygons import geodesic_area_m2

            return geodesic_area_m2(geoms, self.crs.to_wkt())
        factor = self.crs.axis_info[0].unit_conversion_factor if self.crs.axis_info else 1.0
        return np.asarray(shapely.area(geoms), dtype=np.float64) * factor**2


@dataclass(frozen=True)
class SummaryResult:
    """The summary table (one row per unit and query), where it was written, and the run's facts."""

    table: gpd.GeoDataFrame
    output: str
    units: str  # "cells" or "zones"
    scheduler: str
    seconds: float


def _crs_wkt(ds: Any) -> str:
    """The store's CRS: the CF grid mapping's ``crs_wkt``, else the GeoZarr ``proj:`` attributes."""
    prob = ds["prob"]
    for name in (prob.encoding.get("grid_mapping"), prob.attrs.get("grid_mapping"), "spatial_ref"):
        attrs = ds[name].attrs if isinstance(name, str) and name in ds.variables else {}
        if attrs.get("crs_wkt") or attrs.get("spatial_ref"):
            return str(attrs.get("crs_wkt") or attrs["spatial_ref"])
    for key in ("proj:wkt2", "proj:code", "proj:projjson"):
        if ds.attrs.get(key):
            return ProjCRS.from_user_input(ds.attrs[key]).to_wkt()
    raise ValueError("masks.zarr has no CRS (no grid mapping crs_wkt and no proj: attributes)")


def mask_grid(ds: Any) -> MaskGrid:
    """Georeferencing of an opened ``masks.zarr`` from its pixel-centre ``x``/``y`` coordinates and CRS."""
    x = np.asarray(ds["x"].values, dtype=np.float64)
    y = np.asarray(ds["y"].values, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"masks.zarr grid {len(y)} x {len(x)} px is too small to summarise (2 x 2 at least)")
    rx, ry = float(x[1] - x[0]), float(y[0] - y[1])
    if rx <= 0 or ry <= 0:
        raise ValueError("masks.zarr must be north-up with x increasing and y decreasing")
    crs = ProjCRS.from_wkt(_crs_wkt(ds))
    return MaskGrid(crs, float(x[0] - rx / 2), float(y[0] + ry / 2), rx, ry, len(y), len(x))


def _cell_units(grid: MaskGrid, cell_m: float) -> tuple[gpd.GeoDataFrame, int, int, int]:
    """Cells of ``cell_m`` anchored at multiples of ``cell_m`` in the grid CRS; (cells, factor, pad_y, pad_x)."""
    if grid.crs.is_geographic:
        raise ValueError("--cell-m needs a projected grid CRS; this masks.zarr is geographic: use --zones")
    factor = cell_m / grid.res_x
    if abs(grid.res_x - grid.res_y) > 1e-9 * grid.res_x or abs(factor - round(factor)) > 1e-6 or factor < 1:
        raise ValueError(
            f"--cell-m {cell_m} must be a whole multiple of the pixel size ({grid.res_x} x {grid.res_y})"
        )
    f = int(round(factor))
    cx0 = math.floor(grid.x0 / cell_m + 1e-9) * cell_m
    cy0 = math.ceil(grid.y0 / cell_m - 1e-9) * cell_m
    pad_x, pad_y = int(round((grid.x0 - cx0) / grid.res_x)), int(round((cy0 - grid.y0) / grid.res_y))
    n_rows, n_cols = math.ceil((grid.height + pad_y) / f), math.ceil((grid.width + pad_x) / f)
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    minx, maxy = cx0 + cols * cell_m, cy0 - rows * cell_m
    cells = gpd.GeoDataFrame(
        {"cell_id": np.arange(n_rows * n_cols), "row": rows, "col": cols},
        geometry=shapely.box(minx, maxy - cell_m, minx + cell_m, maxy),
        crs=grid.crs,
    )
    return cells, f, pad_y, pad_x


def _zone_units(zones_uri: str, grid: MaskGrid) -> gpd.GeoDataFrame:
    """The zones file reprojected to the grid CRS, with ``zone_id`` = row position in the file."""
    if not storage.exists(zones_uri):
        raise FileNotFoundError(f"zones file {zones_uri} not found")
    fs, path = storage_adapters.arrow_fs(zones_uri)
    zones = gpd.read_parquet(path, filesystem=fs)
    if zones.crs is None:
        raise ValueError(f"zones file {zones_uri} has no CRS")
    zones = zones.to_crs(grid.crs).reset_index(drop=True)
    zones = zones[[c for c in zones.columns if c not in (*STAT_COLUMNS, "zone_id", "query", "role")]]
    zones.insert(0, "zone_id", np.arange(len(zones)))
    return zones


def _mask_queries(ds: Any) -> list[str]:
    texts, n = ds.attrs.get("queries"), ds.sizes["query"]
    return list(map(str, texts if isinstance(texts, list) and len(texts) == n else range(n)))


def _cell_block_sums(prob: np.ndarray, valid: np.ndarray, w: np.ndarray, *, f: int, cut: int) -> np.ndarray:
    """Per-cell sums of one cell-aligned block, shape ``(Q, 4, rows, cols)``: area, prob sum, valid px, valid area."""
    q, h, wd = prob.shape

    def cells(a: np.ndarray) -> np.ndarray:
        return np.broadcast_to(
            a.reshape(a.shape[0], h // f, f, wd // f, f).sum(axis=(2, 4)), (q, h // f, wd // f)
        )

    v = valid > 0
    sums = [(prob >= cut) * w, np.where(v, prob, 0) / 255.0, v * 1.0, v * w]
    return np.stack([cells(a) for a in sums], axis=1)


def _cell_mask_stats(ds: Any, grid: MaskGrid, cut: int, f: int, pad_y: int, pad_x: int) -> list[Any]:
    """Lazy (Q, rows, cols) sums in one pass over cell-aligned blocks (padded to whole cells), each reduced alone.

    Not xarray's ``coarsen``: it reshapes, merging whole rows of chunks (memory grows with the region's width).
    """
    import dask.array as da

    prob = ds["prob"].data
    valid = ds["valid"].data[None] if "valid" in ds else da.ones_like(prob[:1])
    w = da.from_array(grid.row_areas_m2()[:, None], chunks=(prob.chunks[1], 1))
    pads = ((0, 0), (pad_y, -(grid.height + pad_y) % f), (pad_x, -(grid.width + pad_x) % f))
    side = max(f, prob.chunksize[1] // f * f), max(f, prob.chunksize[2] // f * f)
    prob = da.pad(prob, pads, constant_values=0).rechunk((1, *side))
    valid = da.pad(valid, pads, constant_values=0).rechunk((1, *side))
    w = da.pad(w, pads[1:2] + ((0, 0),), constant_values=0).rechunk((side[0], 1))
    out_chunks = (prob.chunks[0], (4,), *(tuple(n // f for n in c) for c in prob.chunks[1:]))
    sums = da.map_blocks(
        _cell_block_sums, prob, valid, w, f=f, cut=cut, new_axis=1, chunks=out_chunks, dtype=float
    )
    return [sums[:, k] for k in range(4)]


def _rasterize_block(
    block: np.ndarray, zones_wkb: Sequence[bytes], grid: MaskGrid, block_info: dict | None = None
) -> np.ndarray:
    """Zone ids (``-1`` outside every zone) of one chunk's window, pixel centres inside the zone."""
    from affine import Affine
    from rasterio.features import rasterize

    (r0, r1), (c0, c1) = block_info[0]["array-location"] if block_info else ((0, block.shape[0]), (0, 0))
    left, top = grid.x0 + c0 * grid.res_x, grid.y0 - r0 * grid.res_y
    transform = Affine(grid.res_x, 0.0, left, 0.0, -grid.res_y, top)
    window = shapely.box(left, top - (r1 - r0) * grid.res_y, left + (c1 - c0) * grid.res_x, top)
    geoms = shapely.from_wkb(np.asarray(zones_wkb, dtype=object))
    hit = np.flatnonzero(shapely.intersects(geoms, window))
    if not len(hit):
        return np.full(block.shape, -1, dtype=np.int32)
    shapes = [(geoms[i], int(i)) for i in hit]
    return rasterize(shapes, block.shape, transform=transform, fill=-1, dtype="int32")


def _zone_block_sums(
    prob: np.ndarray, valid: np.ndarray, zid: np.ndarray, w: np.ndarray, *, n_zones: int, cut: int
) -> np.ndarray:
    """Per-zone sums of one chunk, shape ``(Q, 1, 1, 4, n_zones)``: area, probability sum, valid px, valid area."""
    out = np.zeros((prob.shape[0], 1, 1, 4, n_zones), dtype=np.float64)
    z = zid[inside := zid >= 0]
    area = np.broadcast_to(w[:, None], zid.shape)[inside]
    ok = valid[inside] > 0
    for qi in range(prob.shape[0]):
        p = prob[qi][inside]
        out[qi, 0, 0, 0] = np.bincount(z[p >= cut], weights=area[p >= cut], minlength=n_zones)
        out[qi, 0, 0, 1] = np.bincount(z[ok], weights=p[ok] / 255.0, minlength=n_zones)
    out[:, 0, 0, 2] = np.bincount(z[ok], minlength=n_zones)
    out[:, 0, 0, 3] = np.bincount(z[ok], weights=area[ok], minlength=n_zones)
    return out


def _zone_mask_stats(ds: Any, grid: MaskGrid, cut: int, zones: gpd.GeoDataFrame) -> list[Any]:
    """Lazy (Q, n_zones) sums, as :func:`_cell_mask_stats`, from zone ids rasterised chunk by chunk."""
    import dask.array as da

    prob = ds["prob"].data
    valid = ds["valid"].data.rechunk(prob.chunks[1:]) if "valid" in ds else da.ones_like(prob[0])
    wkb = list(shapely.to_wkb(zones.geometry.to_numpy()))
    zid = da.map_blocks(_rasterize_block, valid, wkb, grid, dtype=np.int32)
    w = da.from_array(grid.row_areas_m2(), chunks=(prob.chunks[1],))
    n = len(zones)
    sums = da.blockwise(
        _zone_block_sums, "qyxsz", prob, "qyx", valid, "yx", zid, "yx", w, "y",
        new_axes={"s": 4, "z": n}, adjust_chunks={"y": 1, "x": 1}, dtype=np.float64,
        n_zones=n, cut=cut, concatenate=True,
    )  # fmt: skip
    total = sums.sum(axis=(1, 2))
    return [total[:, k, :] for k in range(4)]


def _polygon_stats(
    polygons_uri: str, units: gpd.GeoDataFrame, grid: MaskGrid, texts: list[str]
) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, str]]:
    """((count, area) per (query text index, unit), roles by text), streamed; appends new texts to ``texts``."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    fs, path = storage_adapters.arrow_fs(polygons_uri)
    schema = pq.read_schema(path, filesystem=fs)
    columns = ["query", "geometry", *(["role"] if "role" in schema.names else [])]
    minx, miny, maxx, maxy, fld = (*units.total_bounds, pc.field)
    flt = (fld("bbox", "xmin") <= maxx) & (fld("bbox", "xmax") >= minx) & (fld("bbox", "ymin") <= maxy)
    flt = flt & (fld("bbox", "ymax") >= miny) if "bbox" in schema.names else None
    tree = shapely.STRtree(unit_geoms := units.geometry.to_numpy())
    index = {t: i for i, t in enumerate(texts)}
    count, area = np.zeros((len(texts), len(units))), np.zeros((len(texts), len(units)))
    roles: dict[str, str] = {}
    batches = pads.dataset(path, filesystem=fs).to_batches(columns=columns, filter=flt)
    for frame in (batch.to_pandas() for batch in batches):
        geoms = shapely.from_wkb(frame["geometry"].to_numpy())
        if "role" in frame:
            roles.update(zip(frame["query"].astype(str), frame["role"].astype(str), strict=True))
        pi, ui = tree.query(geoms, predicate="intersects")
        part = grid.planar_areas_m2(shapely.intersection(geoms[pi], unit_geoms[ui]))
        keep = part > 0  # a polygon sharing only an edge with a unit is not in it
        texts_hit = frame["query"].astype(str).to_numpy()[pi[keep]]
        qi = np.fromiter((index.setdefault(t, len(index)) for t in texts_hit), np.int64, len(texts_hit))
        count, area = (np.vstack([a, np.zeros((len(index) - len(a), len(units)))]) for a in (count, area))
        np.add.at(count, (qi, ui[keep]), 1)
        np.add.at(area, (qi, ui[keep]), part[keep])
    texts[:] = list(index)
    return (count, area), roles


def _table(
    units: gpd.GeoDataFrame, texts: list[str], mask: list[np.ndarray], poly: tuple[np.ndarray, np.ndarray] | None,
    roles: dict[str, str],
) -> gpd.GeoDataFrame:  # fmt: skip
    """One row per unit and query text (query-major); mask stats NaN for texts without a mask."""
    nq, nu = len(texts), len(units)
    full = [np.full((nq, nu), np.nan) for _ in range(4)]
    for k, arr in enumerate(mask):  # texts with a mask come first
        full[k][: arr.shape[0]] = arr.reshape(arr.shape[0], nu)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(full[2] > 0, full[1] / full[2], np.nan)
    stats = {"mask_area_m2": full[0], "mean_prob": mean, "valid_area_m2": full[3]}
    if poly is not None:
        stats["polygon_count"] = poly[0][:nq].astype(np.int64)
        stats["polygon_area_m2"] = poly[1][:nq]
    base = pd.DataFrame(units.drop(columns="geometry")).reset_index(drop=True)
    frames = []
    for q, text in enumerate(texts):
        frame = base.copy()
        frame["query"] = text
        if roles:
            frame["role"] = roles.get(text)
        for name, arr in stats.items():
            frame[name] = arr[q]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    geometry = np.tile(units.geometry.to_numpy(), nq)
    return gpd.GeoDataFrame(table, geometry=geometry, crs=units.crs)


def _compute(lazy: list[Any], scheduler: str, address: str | None) -> list[np.ndarray]:
    """Compute the lazy sums together (each chunk read once) on dask's threads or on Ray."""
    import dask

    if scheduler == "threads":
        return [np.asarray(a) for a in dask.compute(*lazy, scheduler="threads")]
    if scheduler != "ray":
        raise ValueError(f"scheduler {scheduler!r} must be 'threads' or 'ray'")
    from ray.util.dask import ray_dask_get

    from pipelines.execute import ray_runtime

    with ray_runtime(address):
        return [np.asarray(a) for a in dask.compute(*lazy, scheduler=ray_dask_get)]


def summarize(
    out: str,
    *,
    cell_m: float | None = None,
    zones: str | None = None,
    threshold: float = 0.5,
    output: str | None = None,
    scheduler: str = "threads",
    address: str | None = None,
) -> SummaryResult:
    """Summarise a region job's ``masks.zarr`` and ``polygons.parquet`` per cell or zone and query.

    Args:
        out: The region job's output folder (local or object store).
        cell_m: Side of square cells in grid-CRS metres (a multiple of the pixel size), anchored at multiples
            of ``cell_m``; exclusive with ``zones``.
        zones: GeoParquet file of zone polygons in any CRS (reprojected to the grid CRS); its columns are kept.
        threshold: Probability cut for the mask areas (the polygons' uint8 cut ``round(255 t)``, at least 1).
        output: Where to write the GeoParquet table (default ``<out>/summary.parquet``).
        scheduler: ``"threads"`` (dask's threaded scheduler) or ``"ray"`` (Dask-on-Ray).
        address: Ray cluster address for ``"ray"`` (default: the running runtime, else a local one).

    Returns:
        The table (per unit and query: unit columns, ``query``, ``role`` when the polygons have one,
        :data:`STAT_COLUMNS`, unit geometry in the grid CRS) and where it was written.

    Raises:
        FileNotFoundError: No ``masks.zarr`` in ``out``, or no zones file.
        ValueError: Both or neither of ``cell_m``/``zones``, a cell size off the pixel grid, a bad threshold.
    """
    from pipelines.write import open_masks

    if (cell_m is None) == (zones is None):
        raise ValueError("give exactly one of --cell-m and --zones")
    masks_uri = storage.join(out, "masks.zarr")
    if not storage.exists(masks_uri):
        raise FileNotFoundError(f"{masks_uri} not found: --out must be a region job's output folder")
    cut, t0 = max(threshold_value(threshold), 1), time.perf_counter()
    grid = mask_grid(ds := open_masks(masks_uri))
    if cell_m is not None:
        units, f, pad_y, pad_x = _cell_units(grid, cell_m)
        lazy = _cell_mask_stats(ds, grid, cut, f, pad_y, pad_x)
    else:
        units = _zone_units(str(zones), grid)
        lazy = _zone_mask_stats(ds, grid, cut, units)
    mask, texts = _compute(lazy, scheduler, address), _mask_queries(ds)
    polygons_uri = storage.join(out, "polygons.parquet")
    poly, roles = None, {}
    if storage.exists(polygons_uri):
        poly, roles = _polygon_stats(polygons_uri, units, grid, texts)
    else:
        logger.warning("%s not found: the summary has mask statistics only", polygons_uri)
    table = _table(units, texts, mask, poly, roles)
    target = output or storage.join(out, "summary.parquet")
    write_geoparquet(table, target, covering_bbox=True)
    kind, seconds = ("cells" if cell_m is not None else "zones"), time.perf_counter() - t0
    logger.info("summarised %d %s x %d queries in %.1fs -> %s", len(units), kind, len(texts), seconds, target)
    return SummaryResult(table, target, kind, scheduler, seconds)


def format_summary(result: SummaryResult, top: int = 5) -> str:
    """A compact text table: totals per query, then the ``top`` units by mask (else polygon) area of each query."""
    t = result.table
    unit = "cell_id" if result.units == "cells" else "zone_id"
    cols = [c for c in ("mask_area_m2", "valid_area_m2", "polygon_count", "polygon_area_m2") if c in t]
    groups = t.assign(_pv=t["mean_prob"] * t["valid_area_m2"]).groupby("query", sort=False)
    totals = groups[cols].sum(min_count=1)
    totals.insert(1, "mean_prob", groups["_pv"].sum(min_count=1) / totals["valid_area_m2"])
    fmt = {c: "{:.1f}".format for c in cols if c != "polygon_count"} | {"mean_prob": "{:.3f}".format}
    lines = [f"totals per query over {t[unit].nunique()} {result.units}:", totals.to_string(formatters=fmt)]
    show = [unit, *(c for c in ("row", "col") if c in t), "mask_area_m2", "mean_prob", *cols[2:]]
    order = [c for c in ("mask_area_m2", "polygon_area_m2") if c in t]
    for text, rows in t.groupby("query", sort=False):
        best = rows.sort_values(order, ascending=False, na_position="last").head(top)
        lines += [
            f"\ntop {len(best)} {result.units} of {text!r}:",
            best[show].to_string(index=False, formatters=fmt),
        ]
    lines.append(f"\nwrote {len(t)} rows to {result.output} ({result.scheduler}, {result.seconds:.1f} s)")
    return "\n".join(lines)
