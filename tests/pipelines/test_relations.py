"""The relation step on hand-made polygons: exact thresholds in metres, shares, `and`, geographic input, and the
partitioned evaluation (local cells and Ray tasks) giving exactly the one-process rows, across cells and seams."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Geod
from shapely.geometry import box

from pipelines.geoparquet import write_geoparquet
from pipelines.query_grammar import parse_query
from pipelines.relations import answer_query, metric_crs
from pipelines.relations_partitioned import answer_queries
from tests.fixtures.polygon_parts import vectorize_all

UTM = "EPSG:32631"
PONDS, ROADS, FIELDS, HOUSES = "all ponds", "all roads", "all fields", "all houses"


def _polygons(rows: list[tuple[str, str, shapely.Geometry]], crs: str = UTM) -> pd.DataFrame:
    """A polygons.parquet-like table: (polygon_id, query, geometry) rows plus copied score columns."""
    import geopandas as gpd

    ids, queries, geoms = zip(*rows, strict=True)
    return gpd.GeoDataFrame(
        {
            "polygon_id": list(ids),
            "query_id": [{PONDS: 0, ROADS: 1, FIELDS: 2, HOUSES: 3}[q] for q in queries],
            "query": list(queries),
            "score_mean": np.linspace(0.6, 0.9, len(rows)),
            "chunk_id": "r00000c00000",
        },
        geometry=list(geoms),
        crs=crs,
    )


def _answer(polygons, text: str, *, touch_m: float = 10.0, near_m: float = 50.0, **kw):
    return answer_query(polygons, parse_query(text, near_m=near_m), 7, touch_m=touch_m, **kw)


def test_exact_threshold_distance_is_within_and_one_millimetre_more_is_not():
    polygons = _polygons(
        [
            ("pA", PONDS, box(0, 0, 10, 10)),
            ("rA", ROADS, box(60, -100, 70, 100)),  # exactly 50 m from pA
            ("pB", PONDS, box(1000, 0, 1010, 10)),
            ("rB", ROADS, box(1060.001, -100, 1070, 100)),  # 50.001 m from pB
        ]
    )
    within = _answer(polygons, "all ponds within 50 m of roads")
    assert within["polygon_id"].tolist() == ["a007-pA"]
    row = within.iloc[0]
    assert row["distance_m"] == 50.0 and row["nearest_id"] == "rA"
    assert row["query"] == "all ponds within 50 m of roads" and row["query_id"] == 7
    assert row["role"] == "answer" and row["relation"] == "within 50 m of all roads"
    assert row["score_mean"] == polygons["score_mean"].iloc[0]
    assert row.geometry.equals(box(0, 0, 10, 10))  # kept whole, in the input CRS

    farther = _answer(polygons, "ponds farther than 50 m from roads")
    assert farther["polygon_id"].tolist() == ["a007-pB"]
    assert farther["distance_m"].iloc[0] == pytest.approx(50.001, abs=1e-9)
    assert farther["nearest_id"].iloc[0] == "rB"
    assert _answer(polygons, "ponds not near roads", near_m=50)["polygon_id"].tolist() == ["a007-pB"]
    assert _answer(polygons, "ponds near roads", near_m=50)["polygon_id"].tolist() == ["a007-pA"]


def test_inside_share_just_below_and_above_one_half_with_overlapping_objects_counted_once():
    polygons = _polygons(
        [
            ("p1", PONDS, box(0, 0, 100, 10)),
            ("f1", FIELDS, box(-10, -10, 50.1, 20)),  # covers 50.1 %
            ("p2", PONDS, box(0, 100, 100, 110)),
            ("f2", FIELDS, box(-10, 90, 49.9, 120)),  # 49.9 %
            ("p3", PONDS, box(0, 200, 100, 210)),
            ("f3", FIELDS, box(-10, 190, 30, 220)),  # 30 % and 30 %, overlapping: 40 % of p3
            ("f4", FIELDS, box(10, 190, 40, 220)),
        ]
    )
    assert _answer(polygons, "ponds inside fields")["polygon_id"].tolist() == ["a007-p1"]
    assert _answer(polygons, "ponds not inside fields")["polygon_id"].tolist() == ["a007-p2", "a007-p3"]
    assert _answer(polygons, "ponds in fields", inside_share=0.39)["polygon_id"].tolist() == [
        "a007-p1",
        "a007-p2",
        "a007-p3",
    ]
    inside = _answer(polygons, "ponds inside fields")
    assert inside["distance_m"].isna().all() and inside["nearest_id"].isna().all()  # no distance relation


def test_touching_is_within_touch_m_and_a_shared_edge_touches():
    polygons = _polygons(
        [
            ("p1", PONDS, box(0, 0, 10, 10)),
            ("r1", ROADS, box(20, 0, 30, 10)),  # 10 m: one pixel
            ("p2", PONDS, box(0, 500, 10, 510)),
            ("r2", ROADS, box(20.5, 500, 30, 510)),  # 10.5 m
            ("p3", PONDS, box(0, 1000, 10, 1010)),
            ("r3", ROADS, box(10, 1000, 30, 1010)),  # shared edge
        ]
    )
    touching = _answer(polygons, "ponds touching roads", touch_m=10.0)
    assert touching["polygon_id"].tolist() == ["a007-p1", "a007-p3"]
    assert touching["distance_m"].tolist() == [10.0, 0.0]
    assert _answer(polygons, "ponds not adjacent to roads", touch_m=10.0)["polygon_id"].tolist() == [
        "a007-p2"
    ]


def test_and_needs_every_relation_and_distance_is_the_first_distance_relations():
    polygons = _polygons(
        [
            ("pA", PONDS, box(0, 0, 10, 10)),  # 30 m from a road, 100 m from a house: kept
            ("pB", PONDS, box(0, 300, 10, 310)),  # near a road and a house: dropped
            ("pC", PONDS, box(0, 600, 10, 610)),  # far from roads: dropped
            ("r1", ROADS, box(40, -50, 45, 350)),
            ("h1", HOUSES, box(110, 0, 120, 10)),
            ("h2", HOUSES, box(-20, 300, -15, 310)),
        ]
    )
    out = _answer(polygons, "ponds within 50 m of roads and not within 20 m of houses")
    assert out["polygon_id"].tolist() == ["a007-pA"]
    assert out["distance_m"].iloc[0] == 30.0 and out["nearest_id"].iloc[0] == "r1"
    assert out["relation"].iloc[0] == "within 50 m of all roads and not within 20 m of all houses"


def test_no_object_polygons_means_infinite_distance():
    polygons = _polygons([("p1", PONDS, box(0, 0, 10, 10)), ("p2", PONDS, box(100, 0, 110, 10))])
    assert _answer(polygons, "ponds near roads").empty
    out = _answer(polygons, "ponds not near roads")
    assert out["polygon_id"].tolist() == ["a007-p1", "a007-p2"]
    assert out["distance_m"].isna().all() and out["nearest_id"].isna().all()


def test_geographic_input_is_measured_in_metres_in_the_utm_zone_of_its_centre():
    lon, lat = 15.0, 45.0
    gap = 0.00063  # ~50 m of longitude at 45N
    pond = box(lon, lat, lon + 0.0001, lat + 0.0001)
    road = box(lon + 0.0001 + gap, lat - 0.001, lon + 0.0002 + gap, lat + 0.001)
    polygons = _polygons([("p1", PONDS, pond), ("r1", ROADS, road)], crs="EPSG:4326")
    assert metric_crs(polygons.crs, polygons.total_bounds).to_epsg() == 32633
    geodesic = Geod(ellps="WGS84").inv(lon + 0.0001, lat + 0.00005, lon + 0.0001 + gap, lat + 0.00005)[2]
    assert 45 < geodesic < 55
    out = _answer(polygons, "ponds within 60 m of roads")
    assert out["distance_m"].iloc[0] == pytest.approx(geodesic, rel=2e-3)  # UTM scale error only
    assert _answer(polygons, "ponds within 45 m of roads").empty


def _write(polygons, tmp_path):
    uri = str(tmp_path / "polygons.parquet")
    write_geoparquet(polygons, uri, covering_bbox=True)
    return uri


QUERIES = [
    "all ponds within 50 m of roads",
    "ponds not near roads",
    "ponds farther than 120 m from roads",
    "ponds inside fields and touching roads",
    "ponds not inside fields",
]


def _scattered(crs: str = UTM) -> pd.DataFrame:
    """Ponds, roads and fields scattered over 2 km (deterministic), many crossing the 500 m cell borders."""
    rng = np.random.default_rng(3)
    rows = []
    for i, (x, y) in enumerate(rng.uniform(0, 2000, (300, 2))):
        w, h = rng.uniform(5, 40, 2)
        rows.append((f"q000-p{i:04d}", PONDS, box(x, y, x + w, y + h)))
    for i, (x, y) in enumerate(rng.uniform(0, 2000, (25, 2))):
        long_side = rng.uniform(100, 600)
        geom = box(x, y, x + long_side, y + 8) if i % 2 else box(x, y, x + 8, y + long_side)
        rows.append((f"q001-r{i:04d}", ROADS, geom))
    for i, (x, y) in enumerate(rng.uniform(0, 2000, (30, 2))):
        rows.append((f"q002-f{i:04d}", FIELDS, box(x, y, x + 300, y + 250)))
    return _polygons(rows, crs)


def _all_answers(uri: str, backend: str, partition_m: float | None = 500.0) -> pd.DataFrame:
    queries = [(k, parse_query(t, near_m=80)) for k, t in enumerate(QUERIES)]
    return answer_queries(uri, queries, touch_m=10.0, backend=backend, partition_m=partition_m)


@pytest.mark.parametrize("crs", [UTM, "EPSG:4326"])
def test_partitioned_cells_give_exactly_the_one_process_rows(tmp_path, crs):
    polygons = _scattered()
    if crs != UTM:
        polygons = polygons.to_crs(crs)
    uri = _write(polygons, tmp_path)
    single = _all_answers(uri, "single")
    assert single["query_id"].nunique() == len(QUERIES)
    for part in (_all_answers(uri, "local"), _all_answers(uri, "local", partition_m=None)):
        pd.testing.assert_frame_equal(part, single, check_exact=True)
    farther = single[single["query_id"] == 2]
    assert (farther["distance_m"] > 120).all() and farther["nearest_id"].notna().all()


def test_ray_tasks_give_exactly_the_one_process_rows(tmp_path, ray_local):
    uri = _write(_scattered(), tmp_path)
    pd.testing.assert_frame_equal(_all_answers(uri, "ray"), _all_answers(uri, "single"), check_exact=True)


def test_subject_crossing_a_cell_border_is_answered_once_against_objects_in_the_next_cell(tmp_path):
    polygons = _polygons(
        [
            (
                "p1",
                PONDS,
                box(280, 100, 320, 120),
            ),  # crosses the 300 m cell border (centre in the second cell)
            ("r1", ROADS, box(200, 130, 210, 140)),  # in the first cell, ~72 m away
            ("r2", ROADS, box(0, 0, 10, 10)),  # sets the extent's origin at 0
            ("r3", ROADS, box(890, 890, 900, 900)),
        ]
    )
    uri = _write(polygons, tmp_path)
    queries = [(0, parse_query("ponds within 100 m of roads"))]
    out = answer_queries(uri, queries, touch_m=10.0, partition_m=300.0)
    assert out["polygon_id"].tolist() == ["a000-p1"] and out["nearest_id"].tolist() == ["r1"]
    assert out["distance_m"].iloc[0] == pytest.approx(float(np.hypot(70, 10)), abs=1e-9)


def test_object_crossing_a_chunk_seam_counts_once_as_the_merged_polygon(tmp_path):
    prob = np.zeros((2, 200, 200), np.uint8)
    prob[0, 40:45, 60:66] = 255  # a pond in chunk r0c0, 30 m left of the road
    prob[0, 150:155, 60:66] = 255  # a pond far from it
    prob[1, 20:80, 69:140] = 255  # a road crossing the seam at col 100 (10 m pixels)
    merged = vectorize_all(prob, tmp_path, queries=(PONDS, ROADS))
    road = merged[merged["query"] == ROADS]
    assert len(road) == 1 and road["n_chunks"].iloc[0] == 2
    uri = str(tmp_path / "polygons.parquet")
    queries = [
        (5, parse_query("ponds within 50 m of roads")),
        (6, parse_query("ponds not near roads", near_m=50)),
    ]
    single = answer_queries(uri, queries, touch_m=10.0, backend="single")
    part = answer_queries(uri, queries, touch_m=10.0, partition_m=400.0)  # a cell edge on the seam
    pd.testing.assert_frame_equal(part, single, check_exact=True)
    near = part[part["query_id"] == 5]
    assert len(near) == 1 and near["nearest_id"].iloc[0] == road["polygon_id"].iloc[0]
    assert near["distance_m"].iloc[0] == pytest.approx(30.0)
    assert (part["query_id"] == 6).sum() == 1


def test_an_expression_related_to_itself_never_counts_a_polygon_as_its_own_neighbour(tmp_path):
    """ "ponds near ponds": each pond's nearest pond is another one (one process and cells give the same)."""
    import geopandas as gpd
    import shapely.affinity

    boxes = [shapely.box(0, 0, 10, 10), shapely.box(30, 0, 40, 10), shapely.box(500, 0, 510, 10)]
    polygons = gpd.GeoDataFrame(
        {
            "polygon_id": ["p0", "p1", "p2"],
            "query_id": [0, 0, 0],
            "query": ["all ponds"] * 3,
            "score_mean": [1.0] * 3,
            "score_max": [1.0] * 3,
            "area_m2": [100.0] * 3,
        },
        geometry=[shapely.affinity.translate(b, 500_000, 5_000_000) for b in boxes],
        crs="EPSG:32633",
    )
    uri = str(tmp_path / "polygons.parquet")
    write_geoparquet(polygons, uri, covering_bbox=True)
    query = parse_query("ponds within 50 m of ponds")
    single = answer_query(polygons, query, 0, touch_m=1.0)
    assert sorted(single["nearest_id"]) == ["p0", "p1"] and np.allclose(single["distance_m"], 20.0)
    cells = answer_queries(uri, [(0, query)], touch_m=1.0, backend="local", partition_m=100.0)
    assert cells["polygon_id"].tolist() == single["polygon_id"].tolist()
    assert np.allclose(cells["distance_m"], single["distance_m"])
    far = answer_queries(uri, [(0, parse_query("ponds farther than 50 m from ponds"))], touch_m=1.0)
    assert far["nearest_id"].tolist() == ["p1"] and np.allclose(far["distance_m"], 460.0)
