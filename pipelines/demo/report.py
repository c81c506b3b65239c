"""The demo report: precision and recall of a region job's polygons against the demo region's true objects."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from shapely.strtree import STRtree

from common import storage
from pipelines.demo.setup import TRUTH_RULES, DemoSetup
from pipelines.query_grammar import parse_query

__all__ = ["format_demo_report", "score_polygons", "write_demo_report"]

_REPORT = "demo_report.json"


def _clean(gdf: gpd.GeoDataFrame, crs: Any) -> list[shapely.Geometry]:
    """Valid, non-empty polygonal geometries of ``gdf`` in ``crs``."""
    if len(gdf) == 0:
        return []
    geoms = shapely.make_valid(np.asarray(gdf.to_crs(crs).geometry.values, dtype=object))
    return [g for g in geoms if g is not None and not g.is_empty and g.area > 0]


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None or precision + recall == 0:
        return None if precision is None or recall is None else 0.0
    return 2 * precision * recall / (precision + recall)


def _greedy_matches(pred: list[shapely.Geometry], truth: list[shapely.Geometry], iou_threshold: float) -> int:
    """One-to-one matches with IoU >= ``iou_threshold``, taken greedily by decreasing IoU."""
    if not pred or not truth:
        return 0
    tree = STRtree(truth)
    pred_idx, truth_idx = tree.query(pred, predicate="intersects")
    pairs = []
    for p, t in zip(pred_idx.tolist(), truth_idx.tolist(), strict=True):
        inter = pred[p].intersection(truth[t]).area
        iou = inter / (pred[p].area + truth[t].area - inter)
        if iou >= iou_threshold:
            pairs.append((iou, p, t))
    used_p: set[int] = set()
    used_t: set[int] = set()
    for _, p, t in sorted(pairs, key=lambda x: (-x[0], x[1], x[2])):
        if p not in used_p and t not in used_t:
            used_p.add(p)
            used_t.add(t)
    return len(used_p)


def _covered_count(parts: list[shapely.Geometry], cover: shapely.Geometry, threshold: float) -> int:
    """How many of ``parts`` have at least ``threshold`` of their area inside ``cover``."""
    if cover.is_empty:
        return 0
    return sum(1 for g in parts if g.intersection(cover).area >= threshold * g.area)


def score_polygons(
    predicted: gpd.GeoDataFrame,
    truth: gpd.GeoDataFrame,
    iou_threshold: float = 0.5,
    cover_threshold: float = 0.5,
) -> dict[str, Any]:
    """Precision and recall of predicted polygons against true objects, by area and by object.

    Both layers are compared in the truth's CRS (projected, metres).

    * Area: precision = area(P ∩ T) / area(P), recall = area(P ∩ T) / area(T), IoU = area(P ∩ T) / area(P ∪ T),
      with P and T the unions of the predicted and true polygons.
    * Objects, matched: predicted and true polygons are paired one-to-one, greedily by decreasing IoU, when their
      IoU is at least ``iou_threshold``; precision = pairs / predicted, recall = pairs / true.
    * Objects, covered: a predicted polygon is correct when at least ``cover_threshold`` of its area lies on true
      objects; a true object is found when at least ``cover_threshold`` of its area is covered by predictions.
      Precision = correct / predicted, recall = found / true (lenient to merged or split blobs).

    Args:
        predicted: predicted polygons (any CRS).
        truth: true objects, one polygon per object, in a projected CRS.
        iou_threshold: IoU needed for a matched pair.
        cover_threshold: area share needed by the covered criterion.

    Returns:
        ``{"n_predicted", "n_true", "area": {...}, "objects_matched": {...}, "objects_covered": {...}}``; a ratio
        with a zero denominator is None.

    Raises:
        ValueError: when ``truth`` has no CRS or a geographic one.
    """
    if truth.crs is None or not truth.crs.is_projected:
        raise ValueError(f"truth must be in a projected CRS (metres) to compare areas, got {truth.crs}")
    if predicted.crs is None and len(predicted):
        raise ValueError("predicted polygons have no CRS")
    pred = _clean(predicted, truth.crs)
    true = _clean(truth, truth.crs)
    pred_union = shapely.union_all(pred) if pred else shapely.Polygon()
    true_union = shapely.union_all(true) if true else shapely.Polygon()
    inter = pred_union.intersection(true_union).area
    union = pred_union.union(true_union).area
    area_p = _ratio(inter, pred_union.area)
    area_r = _ratio(inter, true_union.area)
    matched = _greedy_matches(pred, true, iou_threshold)
    match_p, match_r = _ratio(matched, len(pred)), _ratio(matched, len(true))
    correct = _covered_count(pred, true_union, cover_threshold)
    found = _covered_count(true, pred_union, cover_threshold)
    cover_p, cover_r = _ratio(correct, len(pred)), _ratio(found, len(true))
    return {
        "n_predicted": len(pred),
        "n_true": len(true),
        "area": {
            "precision": area_p,
            "recall": area_r,
            "f1": _f1(area_p, area_r),
            "iou": _ratio(inter, union),
            "predicted_m2": float(pred_union.area),
            "true_m2": float(true_union.area),
            "intersection_m2": float(inter),
        },
        "objects_matched": {
            "iou_threshold": iou_threshold,
            "matches": matched,
            "precision": match_p,
            "recall": match_r,
            "f1": _f1(match_p, match_r),
        },
        "objects_covered": {
            "cover_threshold": cover_threshold,
            "correct_predicted": correct,
            "found_true": found,
            "precision": cover_p,
            "recall": cover_r,
            "f1": _f1(cover_p, cover_r),
        },
    }


_DETERMINERS = {"all", "the", "a", "an", "every", "each", "any", "some"}


def _class_of(expression: str, classes: set[str]) -> str | None:
    """The truth class an expression names ("all ponds", "the river", "roads"), if it names exactly one."""
    words = expression.lower().split()
    if len(words) == 2 and words[0] in _DETERMINERS or len(words) == 1:
        noun = words[-1]
        for candidate in (noun, noun[:-1] if noun.endswith("s") else noun):
            if candidate in classes:
                return candidate
    return None


def _within(truth: gpd.GeoDataFrame, subject: str, obj: str, distance_m: float, near_m: float) -> np.ndarray:
    """Per truth row: an object of class ``subject`` within ``distance_m`` of an object of class ``obj``."""
    column = f"{subject}_near_{obj}"
    if column in truth.columns and abs(distance_m - near_m) < 1e-6:
        return truth[column].astype(bool).to_numpy()  # the region's own rule (pixel-set distance)
    refs = truth.geometry[(truth["class"] == obj).to_numpy()].to_numpy()
    hit = np.zeros(len(truth), dtype=bool)
    if len(refs):
        rows, _ = STRtree(refs).query(truth.geometry.to_numpy(), predicate="dwithin", distance=distance_m)
        hit[np.unique(rows)] = True
    return hit & (truth["class"] == subject).to_numpy()


def _truth_for(truth: gpd.GeoDataFrame, query: str, near_m: float) -> gpd.GeoDataFrame | None:
    """The true objects answering ``query``: a class, a truth column, or a parsed distance relation."""
    rule = TRUTH_RULES.get(" ".join(query.lower().split()))
    if rule is not None:
        column, cls = rule
        return truth[truth[column].astype(bool)] if column is not None else truth[truth["class"] == cls]
    try:
        parsed = parse_query(query, "auto", near_m)
    except ValueError:
        return None
    classes = set(truth["class"].astype(str))
    subject = _class_of(parsed.subject, classes)
    if not parsed.composed or subject is None:
        return None
    keep = (truth["class"] == subject).to_numpy()
    for rel in parsed.relations:
        obj = _class_of(rel.object, classes)
        if obj is None or rel.distance_m is None or rel.kind not in ("near", "within", "farther"):
            return None
        close = _within(truth, subject, obj, rel.distance_m, near_m)
        keep &= ~close if (rel.kind == "farther") != rel.negated else close
    return truth[keep]


def _share_on(predicted: gpd.GeoDataFrame, layer: gpd.GeoDataFrame) -> float | None:
    """Share of the predicted area that lies on ``layer`` (both unioned, in ``layer``'s CRS)."""
    pred = _clean(predicted, layer.crs)
    if not pred:
        return None
    pred_union = shapely.union_all(pred)
    other = _clean(layer, layer.crs)
    if not other:
        return 0.0
    return float(pred_union.intersection(shapely.union_all(other)).area / pred_union.area)


def write_demo_report(
    out: str, setup: DemoSetup, queries: Sequence[str], bbox: Sequence[float] | None = None
) -> dict[str, Any]:
    """Score ``out/polygons.parquet`` against the demo truth and write ``out/demo_report.json``.

    Args:
        out: the region job's output folder (local or s3:// / gs://).
        setup: from :func:`pipelines.demo.setup.prepare_demo`.
        queries: the job's queries; those with a truth rule are scored (see :func:`score_polygons`).
        bbox: the job's WGS84 bbox; the truth is clipped to it (default: the whole region).

    Returns:
        The report (also written to ``out/demo_report.json``).

    Raises:
        FileNotFoundError: when the job wrote no ``polygons.parquet``.
    """
    polygons_uri = storage.join(out, "polygons.parquet")
    if not storage.exists(polygons_uri):
        raise FileNotFoundError(
            f"{polygons_uri} does not exist; the region job must finish before the report"
        )
    with storage.open_file(polygons_uri, "rb") as handle:
        polygons = gpd.read_parquet(handle)
    answers = polygons[polygons["role"] == "answer"] if "role" in polygons.columns else polygons
    truth = gpd.read_parquet(setup.truth)
    region_bbox = tuple(setup.bbox) if bbox is None else tuple(float(v) for v in bbox)
    area = gpd.GeoSeries([shapely.box(*region_bbox)], crs="EPSG:4326").to_crs(truth.crs).iloc[0]
    truth = gpd.clip(truth, area)
    scored: dict[str, Any] = {}
    unscored = []
    for query in queries:
        target = _truth_for(truth, query, setup.near_m)
        if target is None:
            unscored.append(query)
            continue
        predicted = answers[answers["query"] == query]
        entry = score_polygons(predicted, target)
        if query == "all ponds near roads":
            ponds = truth[truth["class"] == "pond"]
            entry["predicted_area_share_on_any_pond"] = _share_on(predicted, ponds)
            entry["predicted_area_share_on_ponds_not_near_roads"] = _share_on(
                predicted, ponds[~ponds["pond_near_road"].astype(bool)]
            )
        scored[query] = entry
    report = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "polygons": polygons_uri,
        "truth": str(setup.truth),
        "region": {
            "folder": str(setup.region_dir),
            "bbox_wgs84": list(region_bbox),
            "settings": setup.info.get("settings"),
            "true_objects_in_bbox": {
                str(k): int(v) for k, v in truth["class"].value_counts().sort_index().items()
            },
        },
        "definitions": {
            "area": "P, T = unions of predicted and true polygons; precision = |P∩T|/|P|, recall = |P∩T|/|T|, "
            "iou = |P∩T|/|P∪T| (areas in m², in the truth CRS)",
            "objects_matched": "one-to-one pairs of predicted and true polygons with IoU >= 0.5, greedy by "
            "decreasing IoU; precision = pairs/predicted, recall = pairs/true",
            "objects_covered": "a predicted polygon is correct if >= 50% of its area lies on true objects; a true "
            "object is found if >= 50% of its area is covered by predictions; precision = correct/predicted, "
            "recall = found/true",
            "truth": "pipelines.demo.region: one polygon per object; 'near' = SynRS rule (pixel-set distance "
            "<= 0.06 x scene unit)",
        },
        "queries": scored,
        "unscored_queries": unscored,
    }
    storage.write_json(storage.join(out, _REPORT), report)
    return report


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_demo_report(report: dict[str, Any]) -> str:
    """The report as a few console lines (the job prints them)."""
    lines = ["", "Demo report (polygons vs the region's true objects; definitions in demo_report.json):"]
    for query, entry in report["queries"].items():
        area, matched, covered = entry["area"], entry["objects_matched"], entry["objects_covered"]
        lines.append(f"  {query!r}: {entry['n_predicted']} polygons, {entry['n_true']} true objects")
        lines.append(
            f"    area:    precision {_pct(area['precision'])}, recall {_pct(area['recall'])}, "
            f"IoU {_pct(area['iou'])}"
        )
        lines.append(
            f"    objects (IoU >= 0.5): precision {_pct(matched['precision'])}, recall {_pct(matched['recall'])}"
        )
        lines.append(
            f"    objects (>= 50% covered): precision {_pct(covered['precision'])}, recall {_pct(covered['recall'])}"
        )
        if "predicted_area_share_on_ponds_not_near_roads" in entry:
            lines.append(
                f"    predicted area on ponds not near roads: "
                f"{_pct(entry['predicted_area_share_on_ponds_not_near_roads'])} "
                f"(on any pond: {_pct(entry['predicted_area_share_on_any_pond'])})"
            )
    if report["unscored_queries"]:
        lines.append(f"  not scored (no truth rule): {report['unscored_queries']}")
    lines.append(f"  report: {report['polygons'].rsplit('/', 1)[0]}/{_REPORT}")
    return "\n".join(lines)
