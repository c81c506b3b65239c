"""STAC search against a real rustac API and catalog files, ordering, de-duplication, freezing and errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pystac
import pytest

from pipelines.errors import CatalogError, NoItemsError
from pipelines.stac import bbox_area_km2, check_source, item_summary, search_items, validate_bbox
from pipelines.stac_files import freeze_items, load_catalog
from tests.fixtures.servers import free_port

S2_FILE = "sentinel2_c1_l2a_earthsearch_items.json"
# Ceará, Brazil: the five T24M* tiles of 2025-07-31 lie here (clouds 56.8, 34.8, 25.3, 24.7, 41.5 %).
BRAZIL_BBOX = (-40.4, -5.3, -37.5, -3.5)


def _features(shared_data: Path, name: str = S2_FILE) -> list[dict]:
    return json.loads((shared_data / "stac" / name).read_text())["features"]


def _expected(features: list[dict], bbox, day: str, max_cloud: float) -> list[str]:
    """Independent truth: plain comparisons on the published JSON (bbox overlap, date prefix, cloud)."""
    w, s, e, n = bbox
    keep = []
    for f in features:
        fw, fs, fe, fn = f["bbox"]
        cloud = f["properties"].get("eo:cloud_cover")
        if fe < w or fw > e or fn < s or fs > n:
            continue
        if not f["properties"]["datetime"].startswith(day) or cloud is None or cloud > max_cloud:
            continue
        keep.append((cloud, f["id"]))
    return [i for _, i in sorted(keep)]


def test_search_rustac_real_sentinel2_exact_and_least_cloudy_first(shared_data, s2_items_served, stac_api):
    url = stac_api(s2_items_served)
    items = search_items(BRAZIL_BBOX, stac_url=url, datetime="2025-07-31", max_cloud=40.0)
    ids = [it.id for it in items]
    expected = _expected(_features(shared_data), BRAZIL_BBOX, "2025-07-31", 40.0)
    assert expected == [
        "S2B_T24MXV_20250731T130245_L2A",
        "S2B_T24MWV_20250731T130245_L2A",
        "S2B_T24MVV_20250731T130245_L2A",
    ]
    assert ids == expected
    clouds = [it.properties["eo:cloud_cover"] for it in items]
    assert clouds == sorted(clouds)
    # The served items carry rewritten hrefs on loopback; every other field is as published.
    assert items[0].assets["visual"].href.startswith("http://127.0.0.1:")


def test_search_rustac_datetime_instants_and_collections(s2_items_served, stac_api):
    url = stac_api(s2_items_served)
    # Acquisition times of the Brazil tiles differ by seconds; the window keeps MXV, MWV and MVV only.
    items = search_items(BRAZIL_BBOX, stac_url=url, datetime="2025-07-31T13:03:20Z/2025-07-31T13:03:26Z")
    assert [it.id for it in items] == [
        "S2B_T24MXV_20250731T130245_L2A",
        "S2B_T24MWV_20250731T130245_L2A",
        "S2B_T24MVV_20250731T130245_L2A",
    ]
    with pytest.raises(NoItemsError):
        search_items(BRAZIL_BBOX, stac_url=url, datetime="2025-07-01/2025-07-30")
    with pytest.raises(NoItemsError):
        search_items(BRAZIL_BBOX, stac_url=url, collections=["landsat-c2-l2"])
    assert len(search_items(BRAZIL_BBOX, stac_url=url, datetime="2025-07", limit=2)) == 2


def test_catalog_missing_cloud_and_recent_order(shared_data):
    catalog = str(shared_data / "stac" / S2_FILE)
    # Colorado items carry no eo:cloud_cover (and no geometry: the bbox is the footprint): dropped under
    # max_cloud unless allowed; with equal (missing) cloud, the most recent comes first.
    bbox = (-105.5, 39.8, -105.0, 40.2)
    with pytest.raises(NoItemsError, match="allow-missing-cloud"):
        search_items(bbox, catalog=catalog, datetime="2025-07-15/2025-07-25", max_cloud=50)
    items = search_items(
        bbox,
        catalog=catalog,
        datetime="2025-07-15/2025-07-25",
        max_cloud=50,
        allow_missing_cloud=True,
        collections=["sentinel-2-c1-l2a"],
    )
    assert [it.id for it in items] == [
        "S2B_T13TDE_20250724T180145_L2A",
        "S2B_T13TDE_20250721T174755_L2A",
        "S2C_T13TDE_20250719T180004_L2A",
        "S2A_T13TDE_20250718T175132_L2A",
        "S2C_T13TDE_20250716T175117_L2A",
    ]


def test_catalog_files_give_same_result_as_api(shared_data, tmp_path, s2_items_served, stac_api):
    url = stac_api(s2_items_served)
    api = [it.id for it in search_items(BRAZIL_BBOX, stac_url=url, max_cloud=45)]
    fc = tmp_path / "items.json"
    fc.write_text(json.dumps({"type": "FeatureCollection", "features": s2_items_served}))
    nd = tmp_path / "items.ndjson"
    nd.write_text("\n".join(json.dumps(f) for f in s2_items_served) + "\n")
    gp = tmp_path / "items.parquet"
    freeze_items([pystac.Item.from_dict(f, migrate=False) for f in s2_items_served], str(gp))
    for path in (fc, nd, gp):
        assert [it.id for it in search_items(BRAZIL_BBOX, catalog=str(path), max_cloud=45)] == api
    assert len(api) == 4


def test_validate_bbox_errors():
    assert validate_bbox([1, 2, 3, 4]) == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match="south 5.0 is not below north 4.0"):
        validate_bbox((1, 5, 3, 4))
    with pytest.raises(ValueError, match="antimeridian"):
        validate_bbox((179, -1, -179, 1))
    with pytest.raises(ValueError, match=r"outside \[-90, 90\]"):
        validate_bbox((0, -95, 1, 1))
    with pytest.raises(ValueError, match=r"outside \[-180, 180\]"):
        validate_bbox((-181, 0, 1, 1))
    with pytest.raises(ValueError, match="4 numbers"):
        validate_bbox((1, 2, 3))
    with pytest.raises(ValueError, match="exceeds the limit"):
        validate_bbox((0, 0, 10, 10), max_area_km2=1000)
    assert bbox_area_km2((0, 0, 1, 1)) == pytest.approx(12308, rel=0.01)


def test_unreachable_api_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CatalogError, match="unreachable|could not be opened"):
        search_items(BRAZIL_BBOX, stac_url=url)


def test_static_catalog_and_bad_files(tmp_path):
    cat = tmp_path / "catalog.json"
    cat.write_text(
        json.dumps({"type": "Catalog", "id": "x", "description": "d", "stac_version": "1.0.0", "links": []})
    )
    with pytest.raises(CatalogError, match="not searchable"):
        search_items(BRAZIL_BBOX, catalog=str(cat))
    with pytest.raises(CatalogError, match="does not exist"):
        search_items(BRAZIL_BBOX, catalog=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CatalogError, match="neither JSON"):
        load_catalog(str(bad))
    with pytest.raises(ValueError, match="exactly one"):
        search_items(BRAZIL_BBOX)


def test_no_items_names_the_filters(shared_data):
    with pytest.raises(NoItemsError, match="max_cloud=1"):
        search_items(BRAZIL_BBOX, catalog=str(shared_data / "stac" / S2_FILE), max_cloud=1)
    items = _features(shared_data)
    assert copy.deepcopy(items) == items  # the published file is untouched


def test_result_modifier_signs_asset_urls(s2_items_served, stac_api):
    url = stac_api(s2_items_served)
    seen = []

    def sign(page):
        """In place, as planetary_computer.sign_inplace does; pystac-client passes each result page as a dict."""
        for feature in page.get("features", []):
            seen.append(feature["id"])
            for asset in feature.get("assets", {}).values():
                asset["href"] += "?sig=test"

    items = search_items(BRAZIL_BBOX, stac_url=url, max_cloud=40, modifier=sign)
    assert seen and all(a.href.endswith("?sig=test") for it in items for a in it.assets.values())


def test_required_assets_predicate_drops_items_without_rgb(shared_data):
    from pipelines.radiometry import has_rgb_source

    catalog = str(shared_data / "stac" / S2_FILE)
    bbox = (-105.5, 39.8, -105.0, 40.2)  # Colorado items: published without assets
    assert len(search_items(bbox, catalog=catalog)) == 10
    with pytest.raises(NoItemsError):
        search_items(bbox, catalog=catalog, required_assets=has_rgb_source)
    kept = search_items(BRAZIL_BBOX, catalog=catalog, required_assets=has_rgb_source)
    assert len(kept) == 5 and all(has_rgb_source(it) for it in kept)


def test_check_source_wants_exactly_one_of_api_and_catalog():
    check_source("http://127.0.0.1:1", None)
    check_source(None, "items.json")
    for stac_url, catalog in ((None, None), ("http://127.0.0.1:1", "items.json")):
        with pytest.raises(ValueError, match="give exactly one of --stac-url URL or --catalog FILE"):
            check_source(stac_url, catalog)


def test_item_summary_short_and_full(shared_data):
    item = load_catalog(str(shared_data / "stac" / S2_FILE))[3]
    # A root link that cannot be reached: summaries must not resolve it (run.json is written offline).
    item.remove_links("root")
    item.add_link(pystac.Link("root", "http://127.0.0.1:9/v1", media_type="application/json"))
    assert item.get_single_link("self") is not None
    props = item.properties
    short = item_summary(item)
    assert short == {
        "id": item.id,
        "collection": item.collection_id,
        "datetime": props.get("datetime") or props.get("start_datetime"),
        "cloud_cover": props.get("eo:cloud_cover"),
    }
    full = item_summary(item, full=True)
    assert list(full) == ["id", "collection", "datetime", "cloud_cover", "self_href", "asset_hrefs"]
    assert {k: full[k] for k in short} == short
    assert list(full["asset_hrefs"]) == sorted(item.assets)
    assert full["asset_hrefs"]["visual"] == item.assets["visual"].href
    assert full["self_href"] == item.get_single_link("self").get_href(transform_href=False)
    item.remove_links("self")
    assert item_summary(item, full=True)["self_href"] is None


def test_bbox_area_is_the_ellipsoidal_area_of_the_lon_lat_box():
    import numpy as np
    from pyproj import Geod

    assert bbox_area_km2((-180.0, -90.0, 180.0, 90.0)) == pytest.approx(510_065_621.7, rel=1e-9)
    assert bbox_area_km2((-179.9, -89.0, 179.9, 89.0)) == pytest.approx(509_703_911.5, rel=1e-9)
    assert bbox_area_km2((0.0, 0.0, 360.0 / 4, 90.0)) == pytest.approx(510_065_621.7 / 8, rel=1e-9)
    # Against a polygon densified along the parallels (the box's real edges), small and continental.
    geod = Geod(ellps="WGS84")
    for w, s, e, n in ((10.0, 44.0, 11.0, 45.0), (-100.0, 10.0, 100.0, 70.0)):
        lons = [*np.linspace(w, e, 20_000), *np.linspace(e, w, 20_000)]
        lats = [s] * 20_000 + [n] * 20_000
        expected = abs(geod.polygon_area_perimeter(lons, lats)[0]) / 1e6
        assert bbox_area_km2((w, s, e, n)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ((-180.0, -90.0, 180.0, 90.0), r"510,065,622 km\^2 exceeds the limit"),
        ((15.0, 45.0, 14.9, 45.1), "west and east look swapped"),
        ((170.0, 0.0, -170.0, 1.0), "crosses the antimeridian"),
    ],
)
def test_world_swapped_and_antimeridian_bboxes_are_told_apart(bbox, message):
    with pytest.raises(ValueError, match=message):
        validate_bbox(bbox, 250_000.0)


def test_conforms_to_sort_on_conformance_lists():
    from pipelines.stac import conforms_to_sort

    core = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"]
    assert not conforms_to_sort(core)
    assert not conforms_to_sort([])
    for uri in (
        "https://api.stacspec.org/v1.0.0/item-search#sort",
        "https://api.stacspec.org/v1.0.0-rc.1/item-search#sort",
        "https://api.stacspec.org/v1.0.0-rc.2/item-search#sort",
        "https://api.stacspec.org/v1.0.0-beta.4/item-search#sort",
    ):
        assert conforms_to_sort([*core, uri]), uri
    for uri in (
        "https://api.stacspec.org/v1.0.0/item-search#filter",
        "https://api.stacspec.org/v1.0.0/ogcapi-features#sort",  # sorting of collection items, not of search
        "https://api.stacspec.org/v1.0.*/item-search#sort",  # pystac-client's placeholder, not a server's
        "http://www.opengis.net/spec/ogcapi-features-8/1.0/conf/sorting",
    ):
        assert not conforms_to_sort([*core, uri]), uri


def _recording_modifier(sent: list[dict]):
    """A pystac-client request modifier that records the query parameters and JSON body of every request."""

    def record(request):
        sent.append({"url": request.url, "params": dict(request.params or {}), "json": request.json or {}})

    return record


def test_sortby_follows_the_servers_sort_conformance(s2_items_served, stac_api, caplog):
    """rustac serve declares no sort extension (checked here): nothing is sent. The same real server, told by the
    client that it conforms, receives ``sortby`` in the selection's order and still answers."""
    import logging

    import pystac_client

    from pipelines.stac import _search_kwargs, conforms_to_sort, sortby_for

    url = stac_api(s2_items_served)
    sent: list[dict] = []
    with caplog.at_level(logging.DEBUG, logger="pipelines.stac"):
        items = search_items(
            BRAZIL_BBOX, stac_url=url, max_cloud=40, request_modifier=_recording_modifier(sent)
        )
    assert [it.id for it in items][:1] == ["S2B_T24MXV_20250731T130245_L2A"]
    searches = [r for r in sent if r["url"].rstrip("/").endswith("/search")]
    assert searches and not any("sortby" in r["params"] or "sortby" in r["json"] for r in searches)
    assert "does not declare the sort extension" in caplog.text

    sent.clear()
    client = pystac_client.Client.open(url, request_modifier=_recording_modifier(sent))
    assert not conforms_to_sort(client.get_conforms_to())
    client.set_conforms_to([*client.get_conforms_to(), "https://api.stacspec.org/v1.0.0/item-search#sort"])
    for prefer in ("cloud", "recent"):
        kwargs = _search_kwargs(client, BRAZIL_BBOX, None, None, 40.0, prefer)
        assert kwargs["sortby"] == sortby_for(prefer)
        # The five served Brazil tiles: the server accepts sortby (and, declaring no filter, filters no cloud).
        assert len(list(client.search(**kwargs).items())) == 5
    bodies = [r["json"] for r in sent if r["url"].rstrip("/").endswith("/search")]
    assert [b["sortby"] for b in bodies] == [
        [
            {"field": "properties.eo:cloud_cover", "direction": "asc"},
            {"field": "properties.datetime", "direction": "desc"},
        ],
        [
            {"field": "properties.datetime", "direction": "desc"},
            {"field": "properties.eo:cloud_cover", "direction": "asc"},
        ],
    ]
