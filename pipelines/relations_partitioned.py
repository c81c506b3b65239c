"""The relation step over a whole region without holding the region: spatial cells with a halo (docs/queries.md).

The region's extent is cut into square cells; each subject polygon belongs to the one cell holding its bbox centre.
A cell reads its subjects, then the object polygons whose bbox meets the subjects' total bounds grown by the
relation's distance (the halo; 0 for ``inside``), both by bbox from ``polygons.parquet`` (pyarrow filters on the
GeoParquet 1.1 ``bbox`` covering columns, so sorted files read few row groups), and runs the exact evaluation of
:mod:`pipelines.relations`. Any object within D of a subject has a bbox within D of the subject's bbox, so the
decisions equal the one-process ones; a subject with no object inside the halo gets its exact ``distance_m`` from
a second, wider read. No process holds the whole region: the driver holds cell bounds and answer rows.

Backends: ``single`` (read the whole file, :func:`pipelines.relations.answer_query`: the reference), ``local``
(cells one after another here), ``ray`` (one Ray task per batch of cells; Ray is initialised by the caller),
``dask`` (dask-geopandas ``read_parquet`` partitions, one delayed evaluation each; threads, or Dask-on-Ray with
``dask_scheduler="ray"``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyproj import CRS, Transformer

from common.storage_adapters import arrow_fs
from pipelines.geoparquet import geo_metadata
from pipelines.relations import (
    DISTANCE_KINDS,
    ObjectSet,
    answer_query,
    answer_rows,
    empty_answers,
    evaluate,
    metric_crs,
    relation_radius,
    to_metric,
)
from pipelines.relations import nearest as _nearest

if TYPE_CHECKING:
    from pipelines.query_grammar import ParsedQuery

__all__ = ["Cell", "RegionIndex", "answer_queries", "cell_answers", "plan_cells", "region_index"]

Backend = Literal["single", "local", "ray", "dask"]
#: Default number of polygons (all expressions) per cell when ``partition_m`` is not given.
TARGET_ROWS_PER_CELL = 20_000


@dataclass(frozen=True)
class RegionIndex:
    """What the driver knows of ``polygons.parquet``: its CRS, extent and row count (from metadata only)."""

    uri: str
    crs_wkt: str
    metric_wkt: str
    bounds: tuple[float, float, float, float]
    num_rows: int
    #: Object polygons smaller than this (m^2, the ``area_m2`` column) are speckle, not objects: never read.
    object_min_area_m2: float = 0.0


@dataclass(frozen=True)
class Cell:
    """Bbox-centre ranges ``[x0, x1) x [y0, y1)`` (outer cells open to +-inf) in the file's CRS."""

    x0: float
    x1: float
    y0: float
    y1: float


def region_index(uri: str) -> RegionIndex:
    """The CRS, total bounds and row count of a GeoParquet file, from its metadata (no rows read)."""
    meta = geo_metadata(uri)
    col = meta["columns"][meta["primary_column"]]
    crs = _crs(json.dumps(col.get("crs")))
    fs, path = arrow_fs(uri)
    num_rows = pads.dataset(path, filesystem=fs, format="parquet").count_rows()
    bounds = tuple(float(v) for v in col.get("bbox", (0.0, 0.0, 0.0, 0.0)))
    metric = metric_crs(crs, bounds) if num_rows else crs
    return RegionIndex(uri, crs.to_wkt(), metric.to_wkt(), bounds, num_rows)  # type: ignore[arg-type]


def plan_cells(index: RegionIndex, partition_m: float | None = None) -> list[Cell]:
    """Square cells of ``partition_m`` metres over the region (default: ~TARGET_ROWS_PER_CELL polygons each)."""
    xmin, ymin, xmax, ymax = index.bounds
    if not index.num_rows:
        return []
    if partition_m is None:
        # From the density, not a cell count: a region 4x larger at the same density gets the same cell size.
        n_cells = max(1.0, index.num_rows / TARGET_ROWS_PER_CELL)
        size = math.sqrt(max((xmax - xmin) * (ymax - ymin), 1e-12) / n_cells)
    else:
        size = partition_m if _crs(index.crs_wkt).is_projected else partition_m / 111_320.0
    nx = max(1, math.ceil((xmax - xmin) / size))
    ny = max(1, math.ceil((ymax - ymin) / size))
    # Shared edges, outer ones open: every bbox centre falls in exactly one cell.
    xs = [-math.inf, *(xmin + size * k for k in range(1, nx)), math.inf]
    ys = [-math.inf, *(ymin + size * k for k in range(1, ny)), math.inf]
    return [Cell(xs[i], xs[i + 1], ys[j], ys[j + 1]) for j in range(ny) for i in range(nx)]


def _read(uri: str, condition: pc.Expression) -> gpd.GeoDataFrame:
    """The rows of ``uri`` matching ``condition`` (row groups pruned by their statistics), without ``bbox``."""
    fs, path = arrow_fs(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    meta = json.loads(dataset.schema.metadata[b"geo"])
    geom = meta["primary_column"]
    columns = [n for n in dataset.schema.names if n != "bbox"]
    table = dataset.to_table(columns=columns, filter=condition)
    frame = table.drop_columns([geom]).to_pandas()
    crs = meta["columns"][geom].get("crs")
    geoms = gpd.GeoSeries.from_wkb(table[geom].to_numpy(zero_copy_only=False), crs=_crs(json.dumps(crs)))
    frame.insert(columns.index(geom), geom, geoms)
    return gpd.GeoDataFrame(frame, geometry=geom)


@functools.lru_cache(maxsize=16)
def _crs(text: str) -> CRS:
    """A CRS from PROJJSON or WKT text ("null": OGC:CRS84), parsed once per process (parsing costs ~40 ms)."""
    value = json.loads(text) if text.startswith(("{", "null")) else text
    if value is None:
        return CRS.from_user_input("OGC:CRS84")
    return CRS.from_json_dict(value) if isinstance(value, dict) else CRS.from_wkt(value)


@functools.lru_cache(maxsize=16)
def _transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(_crs(src), _crs(dst), always_xy=True)


def _bbox(name: str) -> pc.Expression:
    return pc.field("bbox", name)


def _in_cell(cell: Cell) -> pc.Expression:
    """Bbox centre in the cell, plus the implied bbox bounds (which row-group statistics can prune on)."""
    cond = pc.scalar(True)
    for lo, hi, a, b in ((cell.x0, cell.x1, "xmin", "xmax"), (cell.y0, cell.y1, "ymin", "ymax")):
        centre = (_bbox(a) + _bbox(b)) / 2.0
        if math.isfinite(lo):
            cond = cond & (_bbox(b) >= lo) & (centre >= lo)
        if math.isfinite(hi):
            cond = cond & (_bbox(a) < hi) & (centre < hi)
    return cond


def _meets(bounds: Sequence[float]) -> pc.Expression:
    """Bbox meets ``bounds`` (closed)."""
    x0, y0, x1, y1 = bounds
    return (_bbox("xmin") <= x1) & (_bbox("xmax") >= x0) & (_bbox("ymin") <= y1) & (_bbox("ymax") >= y0)


def _grow(bounds: Sequence[float], radius_m: float, index: RegionIndex) -> tuple[float, ...]:
    """``bounds`` (file CRS) grown by ``radius_m`` metres, as a file-CRS box that contains the grown metric box."""
    if index.crs_wkt == index.metric_wkt:
        return (bounds[0] - radius_m, bounds[1] - radius_m, bounds[2] + radius_m, bounds[3] + radius_m)
    pad = radius_m * 1.01 + 1.0  # densified edge sampling may miss a sliver: read a little more, never less
    x0, y0, x1, y1 = _transformer(index.crs_wkt, index.metric_wkt).transform_bounds(*bounds, densify_pts=21)
    back = _transformer(index.metric_wkt, index.crs_wkt)
    gx0, gy0, gx1, gy1 = back.transform_bounds(x0 - pad, y0 - pad, x1 + pad, y1 + pad, densify_pts=21)
    return (gx0 - 1e-6, gy0 - 1e-6, gx1 + 1e-6, gy1 + 1e-6)


def _objects(index: RegionIndex, expr: str, bounds: Sequence[float], radius_m: float) -> ObjectSet:
    condition = (pc.field("query") == expr) & _meets(_grow(bounds, radius_m, index))
    if index.object_min_area_m2 > 0:
        condition &= pc.field("area_m2") >= index.object_min_area_m2
    rows = _read(index.uri, condition)
    return ObjectSet.of(rows, _crs(index.metric_wkt))


def _exact_nearest(
    index: RegionIndex,
    expr: str,
    subjects: gpd.GeoDataFrame,
    subj_m: np.ndarray,
    radius_m: float,
    exclusive: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest distances of subjects with no object within ``radius_m``: widen the read until one is found."""
    nearest = functools.partial(_nearest, exclusive=exclusive)
    bounds = subjects.total_bounds
    ext = index.bounds
    radius = max(2.0 * radius_m, 1.0)
    while True:
        grown = _grow(bounds, radius, index)
        dist, ids = nearest(subj_m, _objects(index, expr, bounds, radius))
        if np.isfinite(dist).all():
            if dist.max() <= radius:
                return dist, ids  # every object within `radius` of a subject was read
            return nearest(subj_m, _objects(index, expr, bounds, float(dist.max())))
        if grown[0] <= ext[0] and grown[1] <= ext[1] and grown[2] >= ext[2] and grown[3] >= ext[3]:
            return nearest(
                subj_m, _objects(index, expr, ext, 0.0)
            )  # the whole extent: what is not found is not there
        radius *= 4.0


def subject_answers(
    index: RegionIndex,
    subjects: gpd.GeoDataFrame,
    queries: Sequence[tuple[int, ParsedQuery]],
    *,
    touch_m: float,
    inside_share: float = 0.5,
) -> gpd.GeoDataFrame | None:
    """Answer rows of every query for the subject polygons given (any subset of the region's subject rows).

    Object polygons are read once per expression: those whose bbox meets the subjects' total bounds grown by the
    largest distance any relation on that expression is decided at (the halo).
    """
    if not len(subjects):
        return None
    bounds = subjects.total_bounds
    radius: dict[str, float] = {}
    for _, query in queries:
        for rel in query.relations:
            radius[rel.object] = max(radius.get(rel.object, 0.0), relation_radius(rel, touch_m))
    objects = {expr: _objects(index, expr, bounds, r) for expr, r in radius.items()}
    parts = []
    for query_id, query in queries:
        subj = subjects[subjects["query"] == query.subject]
        subj_m = to_metric(subj, _crs(index.metric_wkt))
        ev = evaluate(subj_m, objects, query, touch_m=touch_m, inside_share=inside_share)
        first = next((r for r in query.relations if r.kind in DISTANCE_KINDS), None)
        if first is not None:
            # Beyond the halo the decision is right (farther than D) but the distance is not yet the nearest's.
            far = ev.distance_m > radius[first.object]
            if far.any():
                ev.distance_m[far], ev.nearest_id[far] = _exact_nearest(
                    index,
                    first.object,
                    subj[far],
                    subj_m[far],
                    radius[first.object],
                    exclusive=first.object == query.subject,
                )
        parts.append(answer_rows(subj, query, query_id, ev))
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else None  # type: ignore[return-value]


def cell_answers(
    index: RegionIndex,
    cells: Sequence[Cell],
    queries: Sequence[tuple[int, ParsedQuery]],
    touch_m: float,
    inside_share: float = 0.5,
) -> gpd.GeoDataFrame | None:
    """Answer rows of every query for the subjects of ``cells`` (one task's work); None when there are none."""
    wanted = pa.array(sorted({q.subject for _, q in queries}))
    parts = []
    for cell in cells:
        subjects = _read(index.uri, pc.field("query").isin(wanted) & _in_cell(cell))
        parts.append(subject_answers(index, subjects, queries, touch_m=touch_m, inside_share=inside_share))
    parts = [p for p in parts if p is not None]
    return pd.concat(parts, ignore_index=True) if parts else None  # type: ignore[return-value]


def _ray_parts(
    index: RegionIndex, cells: list[Cell], queries: Any, touch_m: float, inside_share: float
) -> list:
    """One Ray task per batch of cells (about four batches per cluster CPU)."""
    import ray

    n_batches = min(len(cells), max(1, 4 * int(ray.cluster_resources().get("CPU", 1))))
    task = ray.remote(num_cpus=1)(cell_answers)
    refs = [task.remote(index, cells[b::n_batches], queries, touch_m, inside_share) for b in range(n_batches)]
    return ray.get(refs)


def _dask_parts(
    index: RegionIndex, queries: Any, touch_m: float, inside_share: float, scheduler: str
) -> list:
    """dask-geopandas partitions of the subject rows, one delayed evaluation of every query each."""
    import dask
    import dask_geopandas

    subjects = sorted({q.subject for _, q in queries})
    # One partition per row group (fsspec paths: dask refuses split_row_groups on a pyarrow filesystem).
    ddf = dask_geopandas.read_parquet(index.uri, filters=[("query", "in", subjects)], split_row_groups=True)

    def run(part: gpd.GeoDataFrame) -> gpd.GeoDataFrame | None:
        return subject_answers(index, part, queries, touch_m=touch_m, inside_share=inside_share)

    tasks = [dask.delayed(run)(p) for p in ddf.to_delayed()]
    if scheduler == "ray":
        from ray.util.dask import ray_dask_get

        return list(dask.compute(*tasks, scheduler=ray_dask_get))
    return list(dask.compute(*tasks, scheduler="threads"))


def answer_queries(
    polygons_uri: str,
    queries: Sequence[tuple[int, ParsedQuery]],
    *,
    touch_m: float,
    inside_share: float = 0.5,
    backend: Backend = "local",
    partition_m: float | None = None,
    dask_scheduler: Literal["threads", "ray"] = "threads",
    object_min_area_m2: float = 0.0,
) -> gpd.GeoDataFrame:
    """Answer rows of every ``(query_id, parsed query)`` over ``polygons.parquet``, sorted by query id and id.

    Args:
        polygons_uri: The seam-merged GeoParquet 1.1 file (with the ``bbox`` covering column).
        queries: Composed queries and the query id each one's answer rows get.
        touch_m: Distance (m) counted as touching (one output pixel).
        inside_share: Share of a subject's area an object union must cover for ``inside``.
        backend: ``single`` (one process, whole file), ``local``, ``ray`` or ``dask`` (partitioned).
        partition_m: Cell side in metres (default: about TARGET_ROWS_PER_CELL polygons per cell).
        dask_scheduler: For ``dask``: local threads or Dask-on-Ray.
        object_min_area_m2: Object polygons below this area are speckle and count for no relation.
    """
    index = dataclasses.replace(region_index(polygons_uri), object_min_area_m2=object_min_area_m2)
    queries = list(queries)
    if backend == "single":
        polygons = _read(polygons_uri, pc.scalar(True))
        metric = _crs(index.metric_wkt)
        parts = [
            answer_query(
                polygons,
                q,
                qid,
                touch_m=touch_m,
                inside_share=inside_share,
                metric=metric,
                object_min_area_m2=object_min_area_m2,
            )
            for qid, q in queries
        ]
    elif backend == "dask":
        parts = _dask_parts(index, queries, touch_m, inside_share, dask_scheduler)
    else:
        cells = plan_cells(index, partition_m)
        if backend == "ray" and len(cells) > 1:  # one cell: a task would only add its start-up
            parts = _ray_parts(index, cells, queries, touch_m, inside_share)
        else:
            parts = [cell_answers(index, cells, queries, touch_m, inside_share)]
    parts = [p for p in parts if p is not None and len(p)]
    if not parts:
        return empty_answers(_read(polygons_uri, pc.scalar(False)))
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["query_id", "polygon_id"], kind="stable").reset_index(drop=True)
