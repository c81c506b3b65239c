"""The offline quickstart (``jobs/infer_region.py --demo``): demo region, catalog, model, queries and truth report.

The demo region is a large georeferenced SynRS mosaic (``pipelines.synthetic_region``: COGs in UTM 33N, a STAC
ItemCollection, a truth GeoParquet) generated on first use and cached under
``$CROBIM_GEO_CACHE/demo/<version>/`` (default ``~/.cache/crobim-geo``). The job reads its catalog through the real
file-catalog path of ``pipelines.stac``, runs the shipped demo model (``assets/demo-model/``), and this module scores
the resulting polygons against the truth layer (``demo_report.json``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from shapely.strtree import STRtree

from pipelines import storage

__all__ = [
    "DEMO_QUERIES",
    "DEMO_REGION",
    "DEMO_VERSION",
    "DemoSetup",
    "apply_demo",
    "cache_root",
    "demo_model_path",
    "format_demo_report",
    "prepare_demo",
    "score_polygons",
    "write_demo_report",
]

logger = logging.getLogger(__name__)

#: Bump when the demo region recipe changes (the cache folder is per version).
DEMO_VERSION = "1"

#: The demo region: arguments of ``pipelines.synthetic_region.make_region``. 3 km x 3 km, a 2 x 2 grid of items
#: (a mosaic for the reader), 2 m pixels in UTM 33N; ``unit_px`` is the SynRS scene side the demo model was
#: trained at (``configs/synrs-learning.yaml``: 96 px), so objects have the sizes it knows.
DEMO_REGION: dict[str, Any] = {
    "seed": 2024,
    "size_px": 1536,
    "gsd_m": 2.0,
    "crs": "EPSG:32633",
    "origin": (500_000.0, 5_000_000.0),
    "n_items": (2, 2),
    "unit_px": 96,
}

#: Default demo queries. The first is the headline of the report; each has a truth rule in ``_TRUTH_RULES``.
DEMO_QUERIES: tuple[str, ...] = ("all ponds near roads", "all ponds", "all buildings")

#: Query -> (truth column, None) or (None, class): which true objects answer it.
_TRUTH_RULES: dict[str, tuple[str | None, str | None]] = {
    "all ponds near roads": ("pond_near_road", None),
    "all buildings near roads": ("building_near_road", None),
    "all buildings near the river": ("building_near_river", None),
    "all trees near ponds": ("tree_near_pond", None),
    "all ponds": (None, "pond"),
    "all buildings": (None, "building"),
    "all trees": (None, "tree"),
    "all fields": (None, "field"),
    "all roads": (None, "road"),
}

_REPORT = "demo_report.json"
_DEFAULT_OUT = "out/demo"


def cache_root() -> Path:
    """``$CROBIM_GEO_CACHE`` if set, else ``~/.cache/crobim-geo``."""
    env = os.environ.get("CROBIM_GEO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "crobim-geo"


def demo_model_path() -> Path:
    """The demo checkpoint shipped with the repository (``assets/demo-model/``).

    Raises:
        FileNotFoundError: when the folder or its weights are missing (e.g. an installed wheel, not a clone).
    """
    path = Path(__file__).resolve().parents[1] / "assets" / "demo-model"
    if not (path / "config.json").is_file() and not any(path.glob("*.safetensors")):
        raise FileNotFoundError(
            f"demo model not found at {path}: it ships in the repository's assets/demo-model/ (run from a clone), "
            "or pass --model DIR with a CroBIM checkpoint folder"
        )
    return path


@dataclass(frozen=True)
class DemoSetup:
    """What ``--demo`` runs on: the cached region, its catalog and truth, and the demo model.

    Attributes:
        region_dir: the cached region folder.
        catalog: STAC ItemCollection file (local; the job's ``--catalog``).
        truth: truth GeoParquet (one polygon per object, boolean query columns).
        bbox: the region's WGS84 bbox (west, south, east, north).
        info: the region's ``region.json`` (settings, grid, per-query counts).
    """

    region_dir: Path
    catalog: Path
    truth: Path
    bbox: tuple[float, float, float, float]
    info: dict[str, Any]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (concurrent first uses generate the region once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_demo(cache: str | os.PathLike[str] | None = None) -> DemoSetup:
    """The demo region, generated on first use (about a minute on 2 cores) and reused afterwards.

    Args:
        cache: cache root (default :func:`cache_root`); the region goes to ``<cache>/demo/<DEMO_VERSION>/``.

    Returns:
        The demo setup.
    """
    from pipelines.synthetic_region import make_region

    root = Path(cache).expanduser() if cache is not None else cache_root()
    region_dir = root / "demo" / DEMO_VERSION
    with _locked(root / "demo" / f"{DEMO_VERSION}.lock"):
        if not (region_dir / "region.json").is_file():
            logger.info("generating the demo region in %s (first use only; about a minute)", region_dir)
        try:
            scene = make_region(region_dir, **DEMO_REGION)
        except FileExistsError:
            # A region of an older generator version in our own cache folder: regenerate it.
            logger.info("demo region in %s was made with other settings; regenerating it", region_dir)
            scene = make_region(region_dir, **DEMO_REGION, overwrite=True)
    west, south, east, north = (float(v) for v in scene.bbox_wgs84)
    return DemoSetup(
        region_dir=scene.out_dir,
        catalog=scene.catalog_path,
        truth=scene.truth_path,
        bbox=(west, south, east, north),
        info=scene.info,
    )


def apply_demo(args: Any, cache: str | os.PathLike[str] | None = None) -> DemoSetup:  # noqa: ANN401
    """Fill the region job's unset arguments with the demo's (``--demo``); the user's own flags win.

    Sets ``catalog`` (unless ``stac_url`` or ``catalog`` is given), ``bbox``, ``model``, ``query``, ``out``
    (``out/demo``), ``torch_threads`` (the machine's cores, at most 8) and ``html``.

    Args:
        args: the parsed ``jobs/infer_region.py`` arguments (an ``argparse.Namespace``), changed in place.
        cache: cache root (default :func:`cache_root`).

    Returns:
        The demo setup, for :func:`write_demo_report`.
    """
    setup = prepare_demo(cache)
    if args.stac_url is None and args.catalog is None:
        args.catalog = str(setup.catalog)
    if args.bbox is None:
        args.bbox = list(setup.bbox)
    if args.model is None:
        args.model = str(demo_model_path())
    if not args.query:
        args.query = list(DEMO_QUERIES)
    if args.out is None:
        args.out = _DEFAULT_OUT
    if getattr(args, "torch_threads", None) is None:
        # One inference actor on a small machine: let torch use its cores (reads are short and few).
        args.torch_threads = max(1, min(os.cpu_count() or 1, 8))
    args.html = True
    return setup


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


def _truth_for(truth: gpd.GeoDataFrame, query: str) -> gpd.GeoDataFrame | None:
    rule = _TRUTH_RULES.get(" ".join(query.lower().split()))
    if rule is None:
        return None
    column, cls = rule
    if column is not None:
        return truth[truth[column].astype(bool)]
    return truth[truth["class"] == cls]


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
        setup: from :func:`prepare_demo` / :func:`apply_demo`.
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
    truth = gpd.read_parquet(setup.truth)
    region_bbox = tuple(setup.bbox) if bbox is None else tuple(float(v) for v in bbox)
    area = gpd.GeoSeries([shapely.box(*region_bbox)], crs="EPSG:4326").to_crs(truth.crs).iloc[0]
    truth = gpd.clip(truth, area)
    scored: dict[str, Any] = {}
    unscored = []
    for query in queries:
        target = _truth_for(truth, query)
        if target is None:
            unscored.append(query)
            continue
        predicted = polygons[polygons["query"] == query]
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
            "truth": "pipelines.synthetic_region: one polygon per object; 'near' = SynRS rule (pixel-set distance "
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
