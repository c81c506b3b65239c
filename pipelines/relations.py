"""Exact spatial relations between the seam-merged polygons of a region (docs/queries.md), in one process.

A parsed query ``SUBJECT RELATION OBJECT [and RELATION OBJECT ...]`` keeps each subject polygon (rows whose
``query`` is the subject expression) whole when every relation holds against the object polygons (rows whose
``query`` is the relation's object expression). Distances are shortest Euclidean distances in metres in the
grid's projected CRS; a geographic CRS is first projected to the UTM zone of the data's centre (:func:`metric_crs`).
Nearest objects come from a shapely ``STRtree`` (no loop over all pairs); ties go to the smallest ``polygon_id``.

``pipelines.relations_partitioned`` runs the same evaluation (:func:`evaluate`) per spatial cell with a halo, so
both give the same rows and the same distances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Transformer

from pipelines.grid import utm_crs_for

if TYPE_CHECKING:
    from pipelines.query_grammar import ParsedQuery, Relation

__all__ = [
    "ANSWER_COLUMNS",
    "DISTANCE_KINDS",
    "Evaluation",
    "ObjectSet",
    "answer_query",
    "answer_rows",
    "empty_answers",
    "evaluate",
    "metric_crs",
    "nearest",
    "relation_radius",
    "to_metric",
    "with_answer_columns",
]

#: Relation kinds decided by the distance to the nearest object polygon.
DISTANCE_KINDS = ("near", "within", "farther", "touching")
#: Columns an answer row adds to the subject row it copies.
ANSWER_COLUMNS = ("role", "relation", "distance_m", "nearest_id")


def metric_crs(crs: Any, bounds: Sequence[float] | None = None) -> CRS:
    """The CRS distances are measured in: ``crs`` itself when projected in metres, else UTM at the data's centre.

    Args:
        crs: The polygons' CRS (anything pyproj reads).
        bounds: ``(xmin, ymin, xmax, ymax)`` of the data in ``crs``; needed when ``crs`` is not projected in metres.
    """
    crs = CRS.from_user_input(crs)
    if crs.is_projected and all(a.unit_name in ("metre", "meter") for a in crs.axis_info[:2]):
        return crs
    if bounds is None or not np.all(np.isfinite(bounds)):
        raise ValueError(
            f"polygons in {crs.name} need their bounds to choose a UTM zone for distances in metres"
        )
    cx, cy = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(cx, cy)
    return utm_crs_for(lon, lat)  # the zone an output grid would get there


def to_metric(gdf: gpd.GeoDataFrame, metric: CRS) -> np.ndarray:
    """The geometries of ``gdf`` in ``metric`` (an object array of shapely geometries)."""
    if gdf.crs is None or CRS.from_user_input(gdf.crs) == metric:
        return np.asarray(gdf.geometry.to_numpy(), dtype=object)
    return np.asarray(gdf.geometry.to_crs(metric).to_numpy(), dtype=object)


@dataclass(frozen=True)
class ObjectSet:
    """The object polygons of one expression, in the metric CRS, ordered by ``polygon_id``."""

    geoms: np.ndarray
    ids: np.ndarray

    @classmethod
    def of(cls, gdf: gpd.GeoDataFrame, metric: CRS) -> ObjectSet:
        """The rows of ``gdf`` (already filtered to one expression) as an object set."""
        gdf = gdf.sort_values("polygon_id", kind="stable")
        return cls(to_metric(gdf, metric), gdf["polygon_id"].astype(str).to_numpy(dtype=object))


@dataclass(frozen=True)
class Evaluation:
    """Per subject polygon: kept or not, and the distance and nearest object of the first distance relation."""

    keep: np.ndarray
    distance_m: np.ndarray  # +inf where there is no object (or no distance relation)
    nearest_id: np.ndarray  # None where there is none


def nearest(
    subjects: np.ndarray, objects: ObjectSet, exclusive: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest object polygon of each subject and that object's id (smallest id on ties).

    ``exclusive``: the objects are the subjects' own expression ("ponds near ponds"): a polygon is not its own
    nearest object (the merged polygons of one expression never overlap, so equal geometry means the same one).

    Returns:
        ``(distances, ids)``: ``inf`` and ``None`` for every subject when there are no objects.
    """
    dist = np.full(len(subjects), np.inf)
    ids = np.full(len(subjects), None, dtype=object)
    if not len(subjects) or not len(objects.geoms):
        return dist, ids
    tree = shapely.STRtree(objects.geoms)
    si, oi = tree.query_nearest(subjects, all_matches=True, exclusive=exclusive)
    if not len(si):  # an exclusive query whose only candidates are the subjects themselves
        return dist, ids
    d = shapely.distance(subjects[si], objects.geoms[oi])  # the one distance both evaluations compare
    # Objects are sorted by id, so the smallest object index is the smallest id among equal distances.
    order = np.lexsort((oi, d, si))
    si, oi, d = si[order], oi[order], d[order]
    first = np.r_[True, si[1:] != si[:-1]]
    dist[si[first]] = d[first]
    ids[si[first]] = objects.ids[oi[first]]
    return dist, ids


def covered_share(subjects: np.ndarray, objects: ObjectSet) -> np.ndarray:
    """Share of each subject's area covered by the union of the object polygons (0 for an empty subject)."""
    share = np.zeros(len(subjects))
    if not len(subjects) or not len(objects.geoms):
        return share
    si, oi = shapely.STRtree(objects.geoms).query(subjects, predicate="intersects")
    if not len(si):
        return share
    order = np.lexsort((oi, si))
    si, oi = si[order], oi[order]
    starts = np.flatnonzero(np.r_[True, si[1:] != si[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(si)], strict=True):
        s = subjects[si[a]]
        cover = objects.geoms[oi[a]] if b - a == 1 else shapely.union_all(objects.geoms[oi[a:b]])
        area = shapely.area(s)
        share[si[a]] = shapely.area(shapely.intersection(s, cover)) / area if area > 0 else 0.0
    return share


def relation_radius(relation: Relation, touch_m: float) -> float:
    """The distance (m) a relation is decided at: its D, ``touch_m`` for touching, 0 for inside."""
    if relation.kind == "inside":
        return 0.0
    if relation.kind == "touching":
        return float(touch_m)
    if relation.distance_m is None:
        raise ValueError(f"relation {relation.describe()!r} has no distance")
    return float(relation.distance_m)


def _holds(
    relation: Relation, dist: np.ndarray, share: np.ndarray, touch_m: float, inside_share: float
) -> np.ndarray:
    """Whether ``relation`` holds for each subject, from its nearest distance or its covered share."""
    if relation.kind == "inside":
        ok = share >= inside_share
    elif relation.kind == "farther":
        ok = dist > relation_radius(relation, touch_m)
    else:  # near, within, touching
        ok = dist <= relation_radius(relation, touch_m)
    return ~ok if relation.negated else ok


def evaluate(
    subjects: np.ndarray,
    objects: Mapping[str, ObjectSet],
    query: ParsedQuery,
    *,
    touch_m: float,
    inside_share: float = 0.5,
) -> Evaluation:
    """Decide every relation of ``query`` for subject polygons (metric CRS) against the objects of each expression."""
    keep = np.ones(len(subjects), dtype=bool)
    first: tuple[np.ndarray, np.ndarray] | None = None
    for rel in query.relations:
        share = np.zeros(len(subjects))
        dist = np.full(len(subjects), np.inf)
        if rel.kind == "inside":
            share = covered_share(subjects, objects[rel.object])
        else:
            dist, ids = nearest(subjects, objects[rel.object], exclusive=rel.object == query.subject)
            if first is None:
                first = (dist, ids)
        keep &= _holds(rel, dist, share, touch_m, inside_share)
    if first is None:
        first = (np.full(len(subjects), np.inf), np.full(len(subjects), None, dtype=object))
    return Evaluation(keep, first[0], first[1])


def answer_rows(
    subjects: gpd.GeoDataFrame, query: ParsedQuery, query_id: int, ev: Evaluation
) -> gpd.GeoDataFrame:
    """The kept subject rows as answer rows (new ids, the user's text, relation, distance, nearest id)."""
    kept = subjects[ev.keep].copy()
    dist = ev.distance_m[ev.keep]
    kept["polygon_id"] = [f"a{int(query_id):03d}-{pid}" for pid in kept["polygon_id"]]
    kept["query_id"] = np.int64(query_id)
    kept["query"] = query.text
    kept["role"] = "answer"
    kept["relation"] = " and ".join(r.describe() for r in query.relations)
    kept["distance_m"] = np.where(np.isfinite(dist), dist, np.nan)
    kept["nearest_id"] = pd.Series(ev.nearest_id[ev.keep], index=kept.index, dtype=object)
    return kept.sort_values("polygon_id", kind="stable").reset_index(drop=True)


def with_answer_columns(rows: gpd.GeoDataFrame, role: Any) -> gpd.GeoDataFrame:  # noqa: ANN401
    """``rows`` (a copy) with the :data:`ANSWER_COLUMNS`: ``role`` as given (one value or one per row), the others
    null (rows that answer no relation)."""
    out = rows.copy()
    n = len(out)
    out["role"] = pd.Series(
        np.broadcast_to(np.asarray(role, dtype=object), (n,)), index=out.index, dtype=object
    )
    out["relation"] = pd.Series([None] * n, index=out.index, dtype=object)
    out["distance_m"] = np.full(n, np.nan)
    out["nearest_id"] = pd.Series([None] * n, index=out.index, dtype=object)
    return out


def empty_answers(polygons: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """An answer table with no rows: the columns of ``polygons`` and the answer columns."""
    return with_answer_columns(polygons.iloc[:0], "answer").reset_index(drop=True)


def answer_query(
    polygons: gpd.GeoDataFrame,
    query: ParsedQuery,
    query_id: int,
    *,
    touch_m: float,
    inside_share: float = 0.5,
    metric: CRS | None = None,
    object_min_area_m2: float = 0.0,
) -> gpd.GeoDataFrame:
    """The answer rows of one composed query over all of ``polygons`` (one process, exact).

    Args:
        polygons: Seam-merged polygons of every expression (``polygon_id``, ``query``, geometry, ...).
        query: The parsed query (subject expression and relations).
        query_id: The id the caller gives this user query.
        touch_m: Distance (m) counted as touching, e.g. one output pixel.
        inside_share: Share of a subject's area an object union must cover for ``inside``.
        metric: The CRS to measure in; default :func:`metric_crs` of ``polygons`` (its CRS and total bounds).
        object_min_area_m2: Object polygons smaller than this (``area_m2``) are speckle and count for nothing.

    Returns:
        The kept subject rows, sorted by their new ``polygon_id``, with ``role``, ``relation``, ``distance_m``
        (metres to the nearest object of the first distance relation; NaN if none) and ``nearest_id``.
    """
    metric = metric or metric_crs(polygons.crs, polygons.total_bounds)
    subjects = polygons[polygons["query"] == query.subject]
    big = polygons[polygons["area_m2"] >= object_min_area_m2] if object_min_area_m2 > 0 else polygons
    objects = {rel.object: ObjectSet.of(big[big["query"] == rel.object], metric) for rel in query.relations}
    ev = evaluate(to_metric(subjects, metric), objects, query, touch_m=touch_m, inside_share=inside_share)
    return answer_rows(subjects, query, query_id, ev)
