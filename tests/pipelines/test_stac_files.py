"""Catalog files and frozen items: formats, relative hrefs, the stac-geoparquet round trip."""

from __future__ import annotations

import json
from pathlib import Path

import shapely.geometry

from pipelines.stac_files import freeze_items, load_catalog, load_items
from pipelines.stac_selection import sort_items

S2_FILE = "sentinel2_c1_l2a_earthsearch_items.json"


def _features(shared_data: Path, name: str = S2_FILE) -> list[dict]:
    return json.loads((shared_data / "stac" / name).read_text())["features"]


def test_freeze_round_trip_keeps_items_and_order(shared_data, tmp_path):
    items = load_catalog(str(shared_data / "stac" / S2_FILE))
    ordered = sort_items(items)
    uri = str(tmp_path / "inputs" / "items.parquet")
    freeze_items(ordered, uri)
    back = load_items(uri)
    assert [it.id for it in back] == [it.id for it in ordered]
    a, b = ordered[0].to_dict(transform_hrefs=False), back[0].to_dict(transform_hrefs=False)
    assert a["assets"]["red"]["raster:bands"] == b["assets"]["red"]["raster:bands"]
    assert a["assets"]["visual"]["href"] == b["assets"]["visual"]["href"]
    assert shapely.geometry.shape(a["geometry"]).equals_exact(shapely.geometry.shape(b["geometry"]), 1e-12)
    assert a["properties"]["eo:cloud_cover"] == b["properties"]["eo:cloud_cover"]


def test_relative_asset_hrefs_resolve_against_the_catalog(tmp_path, shared_data):
    feature = _features(shared_data)[3]
    feature["assets"] = {"visual": dict(feature["assets"]["visual"], href="cogs/tile.tif")}
    (tmp_path / "cat").mkdir()
    path = tmp_path / "cat" / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    (item,) = load_catalog(str(path))
    assert item.assets["visual"].href == str(tmp_path / "cat" / "cogs" / "tile.tif")
    frozen = str(tmp_path / "out" / "items.parquet")
    freeze_items([item], frozen)
    assert load_items(frozen)[0].assets["visual"].href == str(tmp_path / "cat" / "cogs" / "tile.tif")
