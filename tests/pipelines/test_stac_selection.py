"""Item selection: datetime intervals, de-duplication of reprocessed copies, the total order."""

from __future__ import annotations

import pytest

from pipelines.stac_files import load_catalog
from pipelines.stac_selection import deduplicate, filter_items, parse_datetime_range, sort_items

S2_FILE = "sentinel2_c1_l2a_earthsearch_items.json"


def test_ordering_total_and_prefer_recent(shared_data):
    items = load_catalog(str(shared_data / "stac" / S2_FILE))
    by_cloud = sort_items(items)
    clouded = [it for it in by_cloud if "eo:cloud_cover" in it.properties]
    assert [it.properties["eo:cloud_cover"] for it in clouded] == sorted(
        it.properties["eo:cloud_cover"] for it in clouded
    )
    assert by_cloud[-1].properties.get("eo:cloud_cover") is None  # missing cloud sorts last
    recent = sort_items(items, prefer="recent")
    dates = [it.datetime for it in recent]
    assert dates == sorted(dates, reverse=True)
    assert sort_items(list(reversed(items))) == by_cloud  # total order: input order does not matter


def test_deduplicate_ids_and_reprocessed_copies(shared_data):
    items = load_catalog(str(shared_data / "stac" / S2_FILE))
    base = items[1]
    twin = base.clone()
    old = base.clone()
    old.id = base.id.replace("_L2A", "_L2A_OLD")
    old.properties["s2:processing_baseline"] = "05.00"
    old.properties["s2:datatake_id"] = base.properties["s2:datatake_id"].replace("N05.11", "N05.00")
    kept = deduplicate([old, base, twin])
    assert [it.id for it in kept] == [base.id]


def test_datetime_parsing():
    rng = parse_datetime_range("2025-07")
    assert rng.start.isoformat() == "2025-07-01T00:00:00+00:00"
    assert rng.end.isoformat() == "2025-07-31T23:59:59.999999+00:00"
    open_end = parse_datetime_range("2025-07-01/..")
    assert open_end.end is None
    with pytest.raises(ValueError, match="starts after it ends"):
        parse_datetime_range("2025-08-01/2025-07-01")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_datetime_range("July")


def test_filter_items_applies_every_filter(shared_data):
    items = load_catalog(str(shared_data / "stac" / S2_FILE))
    day = items[0].datetime.strftime("%Y-%m-%d")
    same_day = filter_items(items, datetime=day)
    assert same_day and all(it.datetime.strftime("%Y-%m-%d") == day for it in same_day)
    assert filter_items(items, collections=["no-such-collection"]) == []
    clear = filter_items(items, max_cloud=30)
    assert clear and all(it.properties["eo:cloud_cover"] <= 30 for it in clear)
    with_missing = filter_items(items, max_cloud=30, allow_missing_cloud=True)
    assert len(with_missing) == len(clear) + sum("eo:cloud_cover" not in it.properties for it in items)
    w, s, e, n = items[0].bbox
    inside = filter_items(items, bbox=(w, s, e, n))
    assert items[0] in inside and len(inside) < len(items)
    assert [it.id for it in filter_items(items, required_assets=lambda it: it.id == items[2].id)] == [
        items[2].id
    ]
    assert filter_items(list(reversed(items))) == list(reversed(items))  # order preserved
