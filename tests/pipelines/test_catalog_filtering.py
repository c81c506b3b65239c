"""``--catalog`` on stac-geoparquet: filters pushed down to Arrow select exactly what the full read selected.

The reference is the loader the project had before: every row of the file turned into a pystac Item
(``stac_geoparquet.arrow.stac_table_to_items`` on the whole table), then ``filter_items``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from pathlib import Path

import pyarrow.dataset as pds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pystac
import pytest
import stac_geoparquet.arrow

from common import storage
from pipelines.stac import search_items
from pipelines.stac_files import (  # _items_from_dicts: hrefs resolved as before
    RowFilter,
    _items_from_dicts,
    freeze_items,
    load_catalog,
    row_filter_expression,
)
from pipelines.stac_selection import filter_items, parse_datetime_range

S2_FILE = "sentinel2_c1_l2a_earthsearch_items.json"


def _full_read(path: Path) -> list[pystac.Item]:
    """The previous loader: the whole file becomes items."""
    return _items_from_dicts(stac_geoparquet.arrow.stac_table_to_items(pq.read_table(path)), str(path))


def _selected(items: list[pystac.Item], **filters) -> list[str]:
    """The kept items as JSON text (NaN compares equal to itself there), in order."""
    return [
        json.dumps(it.to_dict(transform_hrefs=False), sort_keys=True) for it in filter_items(items, **filters)
    ]


def _to_parquet(features: list[dict], path: Path, row_group_size: int | None = None) -> Path:
    table = stac_geoparquet.arrow.parse_stac_items_to_arrow(features).read_all()
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _synthetic_features(n_side: int = 20) -> list[dict]:
    """Items on a lon/lat raster (row-major, so row groups are spatially coherent) with every awkward case:
    missing and NaN cloud cover, start/end intervals without a datetime, two collections, an antimeridian item."""
    out = []
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    for k, (i, j) in enumerate(itertools.product(range(n_side), range(n_side))):
        w, s = 10.0 + 0.5 * j, 40.0 + 0.5 * i
        props: dict = {"datetime": (t0 + dt.timedelta(hours=19 * k, microseconds=k)).isoformat()}
        if k % 17 != 3:
            props["eo:cloud_cover"] = float((k * 37) % 100) + 0.25
        if k % 53 == 5:
            props["eo:cloud_cover"] = math.nan
        if k % 29 == 7:  # an interval item: no datetime, start/end span about a month
            props.update(datetime=None, start_datetime=props["datetime"])
            props["end_datetime"] = (t0 + dt.timedelta(hours=19 * k, days=30)).isoformat()
        out.append(_feature(f"item-{k:04d}", ("a", "b")[k % 2], [w, s, w + 0.5, s + 0.5], props))
    east = {"type": "Polygon", "coordinates": [[[179.5, 0], [180, 0], [180, 1], [179.5, 1], [179.5, 0]]]}
    west = {"type": "Polygon", "coordinates": [[[-180, 0], [-179.5, 0], [-179.5, 1], [-180, 1], [-180, 0]]]}
    dateline = _feature("dateline", "a", [179.5, 0.0, -179.5, 1.0], {"datetime": "2025-06-01T00:00:00Z"})
    dateline["geometry"] = {
        "type": "MultiPolygon",
        "coordinates": [east["coordinates"], west["coordinates"]],
    }
    dateline["properties"]["eo:cloud_cover"] = 5.0
    return [*out, dateline]


def _feature(item_id: str, collection: str, bbox: list[float], props: dict) -> dict:
    w, s, e, n = bbox
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": item_id,
        "collection": collection,
        "bbox": bbox,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": props,
        "links": [],
        "assets": {"visual": {"href": f"cogs/{item_id}.tif", "type": "image/tiff"}},
    }


FILTER_CASES = [
    {},
    {"bbox": (12.0, 42.0, 13.0, 43.0)},
    {"bbox": (12.25, 42.25, 12.5, 42.5)},  # touches item edges only: shapely's intersects keeps them
    {"bbox": (179.0, 0.2, 180.0, 0.8)},  # meets the antimeridian item's east half
    {"bbox": (11.0, 41.0, 16.0, 46.0), "max_cloud": 30.0},
    {"bbox": (11.0, 41.0, 16.0, 46.0), "max_cloud": 30.0, "allow_missing_cloud": True},
    {"datetime": "2025-03"},
    {"datetime": "2025-03-10T00:00:00Z/2025-04-02T12:00:00Z", "collections": ["b"]},
    {"datetime": "../2025-02-01", "max_cloud": 50.0, "collections": ["a", "zzz"]},
    {"collections": ["nope"]},
]


@pytest.fixture(scope="module")
def synthetic_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    return _to_parquet(_synthetic_features(), root / "items.parquet", row_group_size=40)


@pytest.mark.parametrize("filters", FILTER_CASES, ids=[str(i) for i in range(len(FILTER_CASES))])
def test_generated_catalog_pushdown_selects_exactly_the_full_read(synthetic_catalog, filters):
    rng = parse_datetime_range(filters.get("datetime"))
    f = dict(filters, datetime=rng)
    loaded = load_catalog(str(synthetic_catalog), **f)
    want = _selected(_full_read(synthetic_catalog), **f)
    assert _selected(loaded, **f) == want
    # Relative hrefs resolve against the file as before.
    hrefs = [a["href"] for d in map(json.loads, want) for a in d["assets"].values()]
    assert all(h.startswith(str(synthetic_catalog.parent)) for h in hrefs)
    if filters:
        assert len(loaded) < 401  # something was dropped before it became an item


def test_generated_catalog_edge_cases_are_selected(synthetic_catalog):
    """The awkward rows survive the pushdown where filter_items keeps them."""
    path = str(synthetic_catalog)
    dateline = search_items((179.0, 0.2, 180.0, 0.8), catalog=path, max_cloud=10)
    assert [it.id for it in dateline] == ["dateline"]
    nan_and_missing = {
        it.id
        for it in filter_items(load_catalog(path, max_cloud=0.0, allow_missing_cloud=True), max_cloud=0.0)
    }
    assert "item-0005" in nan_and_missing  # NaN cloud: float("nan") > max_cloud is False
    rng = parse_datetime_range("2025-11-20")  # after the last point item (2025-11-12)
    interval = filter_items(load_catalog(path, datetime=rng), datetime=rng)
    assert interval and all(it.datetime is None for it in interval)  # only start/end items span that day


def test_row_groups_that_cannot_match_are_skipped(synthetic_catalog):
    fmt = pds.ParquetFileFormat()
    fragment = fmt.make_fragment(str(synthetic_catalog), filesystem=pafs.LocalFileSystem())
    n_groups = fragment.metadata.num_row_groups
    where = RowFilter(bbox=(12.0, 42.0, 13.0, 43.0))
    expr = row_filter_expression(fragment.physical_schema, where)
    kept = fragment.split_by_row_group(expr, schema=fragment.physical_schema)
    # Raster rows 3..6 meet the bbox (rows 3 and 6 by an edge); 40 items = 2 raster rows per row group.
    assert n_groups == 11 and len(kept) == 3


def test_real_items_pushdown_matches_full_read(shared_data, tmp_path):
    """Sentinel-2 (Brazil tiles with cloud cover, Colorado tiles without geometry or cloud) and NAIP items."""
    features = json.loads((shared_data / "stac" / S2_FILE).read_text())["features"]
    features += json.loads((shared_data / "stac" / "naip_items.json").read_text())["features"]
    path = tmp_path / "real.parquet"
    freeze_items([pystac.Item.from_dict(f, migrate=False) for f in features], str(path))
    cases = [
        {"bbox": (-40.4, -5.3, -37.5, -3.5), "max_cloud": 40.0, "datetime": "2025-07-31"},
        {"bbox": (-105.5, 39.8, -105.0, 40.2), "max_cloud": 50.0, "allow_missing_cloud": True},
        {"bbox": (-105.5, 39.8, -105.0, 40.2), "max_cloud": 50.0},
        {"bbox": (-70.0, 43.0, -69.0, 46.0), "collections": ["naip"], "datetime": "2023"},
        {"bbox": (-180.0, -90.0, 180.0, 90.0), "datetime": "2025-07-15/2025-07-25"},
    ]
    full = _full_read(path)
    for filters in cases:
        f = dict(filters, datetime=parse_datetime_range(filters.get("datetime")))
        loaded = load_catalog(str(path), **f)
        assert _selected(loaded, **f) == _selected(full, **f), filters
        assert len(loaded) < len(full)


def test_s3_catalog_reads_through_storage(shared_data, s3_server, tmp_path):
    features = json.loads((shared_data / "stac" / S2_FILE).read_text())["features"]
    local = tmp_path / "items.parquet"
    freeze_items([pystac.Item.from_dict(f, migrate=False) for f in features], str(local))
    remote = s3_server.uri("catalogs", "items.parquet")
    storage.write_bytes(remote, local.read_bytes())
    bbox = (-40.4, -5.3, -37.5, -3.5)
    want = [it.id for it in search_items(bbox, catalog=str(local), max_cloud=40)]
    assert [it.id for it in search_items(bbox, catalog=remote, max_cloud=40)] == want
    assert len(want) == 3
    # A stac-geoparquet file without the extension is told apart by its magic bytes.
    odd = s3_server.uri("catalogs", "items.bin")
    storage.write_bytes(odd, local.read_bytes())
    assert [it.id for it in search_items(bbox, catalog=odd, max_cloud=40)] == want
