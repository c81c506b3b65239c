"""pipelines.demo (setup and report) and the job's --demo defaults: truth-based scoring of the demo polygons, demo region cache and catalog."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
import shapely

from pipelines.demo import setup as demo
from pipelines.demo.report import format_demo_report, score_polygons, write_demo_report

UTM = "EPSG:32633"


def _gdf(geoms, crs=UTM):
    return gpd.GeoDataFrame(geometry=list(geoms), crs=crs)


def test_score_polygons_by_area_and_object():
    truth = _gdf([shapely.box(0, 0, 10, 10), shapely.box(100, 0, 110, 10), shapely.box(200, 0, 210, 10)])
    predicted = _gdf(
        [
            shapely.box(0, 0, 10, 8),  # IoU 0.8 with truth 0
            shapely.box(105, 0, 115, 10),  # IoU 1/3 with truth 1: half of it on truth
            shapely.box(500, 500, 510, 510),  # false positive
        ]
    )
    report = score_polygons(predicted, truth)
    assert report["n_predicted"] == 3 and report["n_true"] == 3
    area = report["area"]
    # P ∩ T = 80 + 50, |P| = 80 + 100 + 100, |T| = 300, |P ∪ T| = 280 + 300 - 130.
    assert area["precision"] == pytest.approx(130 / 280)
    assert area["recall"] == pytest.approx(130 / 300)
    assert area["iou"] == pytest.approx(130 / 450)
    matched = report["objects_matched"]
    assert matched["matches"] == 1
    assert matched["precision"] == pytest.approx(1 / 3) and matched["recall"] == pytest.approx(1 / 3)
    covered = report["objects_covered"]
    # Predicted 0 (100 %) and 1 (50 %) lie on truth; truth 0 (80 %) and 1 (50 %) are covered.
    assert covered["correct_predicted"] == 2 and covered["found_true"] == 2
    assert covered["precision"] == pytest.approx(2 / 3) and covered["recall"] == pytest.approx(2 / 3)


def test_score_polygons_matching_is_one_to_one_and_reprojects():
    truth = _gdf([shapely.box(500_000, 5_000_000, 500_010, 5_000_010)])
    # Two predictions on one object: only one can match; the other is a false positive for matched precision.
    predicted = _gdf(
        [
            shapely.box(500_000, 5_000_000, 500_010, 5_000_009),
            shapely.box(500_000, 5_000_000, 500_010, 5_000_008),
        ]
    ).to_crs("EPSG:4326")
    report = score_polygons(predicted, truth)
    assert report["objects_matched"]["matches"] == 1
    assert report["objects_matched"]["precision"] == pytest.approx(0.5)
    assert report["objects_matched"]["recall"] == pytest.approx(1.0)
    assert report["area"]["precision"] == pytest.approx(1.0, abs=1e-6)
    assert report["area"]["recall"] == pytest.approx(0.9, abs=1e-6)


def test_score_polygons_empty_sides():
    truth = _gdf([shapely.box(0, 0, 10, 10)])
    report = score_polygons(_gdf([]), truth)
    assert report["n_predicted"] == 0
    assert report["area"]["precision"] is None and report["area"]["recall"] == 0.0
    assert report["objects_matched"]["recall"] == 0.0 and report["objects_matched"]["f1"] is None
    report = score_polygons(_gdf([shapely.box(0, 0, 1, 1)]), _gdf([]))
    assert report["area"]["precision"] == 0.0 and report["area"]["recall"] is None
    with pytest.raises(ValueError, match="projected"):
        score_polygons(_gdf([]), _gdf([shapely.box(0, 0, 1, 1)], crs="EPSG:4326"))


@pytest.fixture
def small_demo(monkeypatch, tmp_path):
    """The demo recipe at 384 px (same code path, seconds instead of a minute) in a temporary cache."""
    monkeypatch.setitem(demo.DEMO_REGION, "size_px", 384)
    monkeypatch.setitem(demo.DEMO_REGION, "unit_px", 128)
    monkeypatch.setenv("CROBIM_GEO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_prepare_demo_generates_once_and_reads_through_the_stac_file_catalog(small_demo):
    from pipelines.stac_files import load_catalog

    setup = demo.prepare_demo()
    assert setup.region_dir == small_demo / "demo" / demo.DEMO_VERSION
    items = load_catalog(str(setup.catalog))
    assert len(items) == 4  # the 2 x 2 item grid
    for item in items:
        href = item.assets["visual"].href
        assert Path(href).is_file() and Path(href).is_relative_to(setup.region_dir)
    west, south, east, north = setup.bbox
    assert 14.9 < west < east < 15.1 and 45.0 < south < north < 45.2
    truth = gpd.read_parquet(setup.truth)
    assert {"class", "pond_near_road"} <= set(truth.columns) and truth.crs.to_epsg() == 32633
    stamp = (setup.region_dir / "region.json").stat().st_mtime_ns
    again = demo.prepare_demo()
    assert again == setup and (setup.region_dir / "region.json").stat().st_mtime_ns == stamp


def test_demo_defaults_fill_only_the_flags_left_out(small_demo, tmp_path):
    from jobs.infer_region import parse_args

    try:
        expected_model = str(demo.demo_model_path())
        model_flag = []
    except FileNotFoundError:
        expected_model = str(tmp_path / "model")
        model_flag = ["--model", expected_model]
    args, setup = parse_args(["--demo", *model_flag])
    assert args.catalog == str(setup.catalog) and args.bbox == list(setup.bbox) and args.stac_url is None
    assert args.model == expected_model
    assert args.query == list(demo.DEMO_QUERIES) and args.out == "out/demo" and args.html is True
    assert args.torch_threads >= 1
    # The user's own flags win; a STAC API replaces the demo catalog; one --query replaces the demo's queries.
    argv = ["--demo", "--stac-url", "http://127.0.0.1:1", "--bbox", "1", "2", "3", "4", "--model", "m"]
    argv += ["--query", "x", "--query", "y", "--out", "o", "--torch-threads", "1"]
    args, _ = parse_args(argv)
    assert (args.catalog, args.bbox, args.model, args.query, args.out, args.torch_threads) == (
        None,
        [1.0, 2.0, 3.0, 4.0],
        "m",
        ["x", "y"],
        "o",
        1,
    )
    # Without --demo nothing is filled in.
    args, setup = parse_args(["--query", "x"])
    assert setup is None and args.catalog is None and args.bbox is None and args.query == ["x"]


def test_demo_report_scores_polygons_against_the_truth(small_demo, tmp_path):
    """A perfect answer scores 1, a shifted one less, and the report lands in the output folder."""
    setup = demo.prepare_demo()
    truth = gpd.read_parquet(setup.truth)
    near = truth[truth["pond_near_road"]]
    buildings = truth[truth["class"] == "building"]
    assert len(near) > 0 and len(buildings) > 0
    rows = [{"query": "all ponds near roads", "geometry": g} for g in near.geometry]
    # Buildings answered 1 km east of where they are: no overlap at all.
    rows += [{"query": "all buildings", "geometry": g} for g in buildings.geometry.translate(1000, 0)]
    rows += [{"query": "something else", "geometry": shapely.box(500_000, 4_999_990, 500_010, 5_000_000)}]
    out = tmp_path / "out"
    out.mkdir()
    gpd.GeoDataFrame(rows, crs=truth.crs).to_crs("EPSG:4326").to_parquet(out / "polygons.parquet")
    report = write_demo_report(str(out), setup, ["all ponds near roads", "all buildings", "something else"])
    assert json.loads((out / "demo_report.json").read_text()) == report
    headline = report["queries"]["all ponds near roads"]
    assert headline["n_true"] == len(near)
    assert headline["area"]["precision"] == pytest.approx(1.0, abs=1e-6)
    assert headline["area"]["recall"] == pytest.approx(1.0, abs=1e-6)
    assert headline["objects_matched"]["recall"] == pytest.approx(1.0)
    assert headline["predicted_area_share_on_ponds_not_near_roads"] == pytest.approx(0.0, abs=1e-9)
    assert report["queries"]["all buildings"]["area"]["precision"] == pytest.approx(0.0)
    assert report["unscored_queries"] == ["something else"]
    text = format_demo_report(report)
    assert "'all ponds near roads'" in text and "precision 100.0%, recall 100.0%" in text
