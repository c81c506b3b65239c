"""Output grid choice (native UTM, UTM of bbox centre, EPSG:4326, Web Mercator), snapping and the chunk plan."""

from __future__ import annotations

import json
import math

import pystac
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from pipelines.grid import ChunkSpec, OutputGrid, choose_grid, plan_chunks, utm_crs_for
from tests.fixtures.cogs import make_item

BRAZIL_BBOX = (-39.5, -4.9, -39.3, -4.7)


@pytest.fixture
def s2_items(shared_data) -> list[pystac.Item]:
    doc = json.loads((shared_data / "stac" / "sentinel2_c1_l2a_earthsearch_items.json").read_text())
    return [pystac.Item.from_dict(f, migrate=False) for f in doc["features"][:6]]


def _covers(grid: OutputGrid, bbox) -> bool:
    minx, miny, maxx, maxy = transform_bounds("EPSG:4326", grid.crs, *bbox, densify_pts=21)
    gx0, gy0, gx1, gy1 = grid.bounds
    return gx0 <= minx and gy0 <= miny and gx1 >= maxx and gy1 >= maxy


def test_native_utm_grid_snaps_to_item_pixel_phase(s2_items):
    brazil = [it for it in s2_items if it.properties.get("proj:epsg") == 32724]
    grid = choose_grid(BRAZIL_BBOX, brazil)
    assert grid.crs == CRS.from_epsg(32724)
    assert grid.resolution == (10.0, 10.0)
    native = Affine(*brazil[0].assets["visual"].extra_fields["proj:transform"][:6])
    # Origin on the items' pixel lattice: reads are pixel-exact with no resampling.
    assert (grid.transform[2] - native.c) % 10 == pytest.approx(0, abs=1e-6)
    assert (grid.transform[5] - native.f) % 10 == pytest.approx(0, abs=1e-6)
    assert _covers(grid, BRAZIL_BBOX)
    # Snapped outward by less than a pixel on each side of the densified bbox.
    minx, _, _, maxy = transform_bounds("EPSG:4326", grid.crs, *BRAZIL_BBOX, densify_pts=21)
    assert 0 <= minx - grid.transform[2] < 10 and 0 <= grid.transform[5] - maxy < 10
    assert "PROJCRS" in grid.crs_wkt  # WKT2


def test_mixed_crs_items_use_utm_of_bbox_centre(s2_items):
    antarctic = s2_items[0]  # EPSG:32720
    brazil = s2_items[1]  # EPSG:32724
    grid = choose_grid(BRAZIL_BBOX, [antarctic, brazil])
    assert grid.crs == utm_crs_for(-39.4, -4.8) == CRS.from_epsg(32724)
    assert grid.resolution == (10.0, 10.0)
    south = choose_grid((-70.0, -40.0, -69.9, -39.9), [antarctic, brazil])
    assert south.crs == CRS.from_epsg(32719)
    north = choose_grid((9.0, 45.0, 9.1, 45.1), [], resolution=5.0)
    assert north.crs == CRS.from_epsg(32632)


def test_geographic_grid_on_user_request(s2_items):
    grid = choose_grid(BRAZIL_BBOX, s2_items[1:3], crs="EPSG:4326")
    assert grid.crs == CRS.from_epsg(4326)
    res_x, res_y = grid.resolution
    assert res_x == pytest.approx(10 / 111_320)  # native 10 m carried over
    assert res_x == res_y
    assert grid.transform[2] % res_x == pytest.approx(0, abs=1e-9) or grid.transform[
        2
    ] % res_x == pytest.approx(res_x)
    assert _covers(grid, BRAZIL_BBOX)
    assert grid.width == math.ceil((grid.bounds[2] - grid.bounds[0]) / res_x - 1e-9)


def test_web_mercator_and_explicit_resolution():
    grid = choose_grid((2.0, 48.0, 2.1, 48.1), [], crs="EPSG:3857", resolution=30.0)
    assert grid.crs == CRS.from_epsg(3857)
    assert grid.transform[2] % 30 == pytest.approx(0, abs=1e-6)
    assert _covers(grid, (2.0, 48.0, 2.1, 48.1))


def test_no_resolution_is_a_clear_error():
    with pytest.raises(ValueError, match="--resolution"):
        choose_grid((2.0, 48.0, 2.1, 48.1), [])


def test_chunk_plan_ids_windows_and_determinism():
    grid = OutputGrid(CRS.from_epsg(32633).to_wkt(), (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), 1000, 600)
    chunks = plan_chunks(grid, [], chunk_size_px=256, halo_px=40)
    assert len(chunks) == 3 * 4
    assert [c.chunk_id for c in chunks[:5]] == [
        "r00000c00000",
        "r00000c00001",
        "r00000c00002",
        "r00000c00003",
        "r00001c00000",
    ]
    last = chunks[-1]
    assert (last.row_off, last.col_off, last.height, last.width) == (512, 768, 88, 232)
    assert last.read_window == (472, 728, 168, 312)
    # The cores tile the grid exactly once.
    assert sum(c.height * c.width for c in chunks) == 1000 * 600
    assert all(c.empty for c in chunks)  # no items: nothing to read
    assert plan_chunks(grid, [], 256, 40) == chunks
    assert ChunkSpec.from_dict(chunks[7].to_dict()) == chunks[7]
    assert OutputGrid.from_dict(grid.to_dict()) == grid


def test_chunk_candidates_empty_chunks_and_cap(tmp_path):
    tr = Affine(10, 0, 500000, 0, -10, 5000000)
    grid = OutputGrid(CRS.from_epsg(32633).to_wkt(), tuple(tr)[:6], 1024, 1024)
    # Item A covers the top-left 300x300 px, B the top 1024x300 px strip, C..E the whole grid.
    a = make_item("a", "a.tif", "EPSG:32633", tr, (300, 300), cloud=1)
    b = make_item("b", "b.tif", "EPSG:32633", tr, (300, 1024), cloud=2)
    full = [
        make_item(i, f"{i}.tif", "EPSG:32633", tr, (1024, 1024), cloud=3 + k) for k, i in enumerate("cde")
    ]
    chunks = {c.chunk_id: c for c in plan_chunks(grid, [a, b, *full[:1]], chunk_size_px=256, halo_px=16)}
    assert chunks["r00000c00000"].item_ids == ("a", "b", "c")
    assert chunks["r00000c00001"].item_ids == ("a", "b", "c")  # halo reaches A's edge at 300 px
    assert chunks["r00000c00002"].item_ids == ("b", "c")
    assert chunks["r00002c00002"].item_ids == ("c",)
    only_a = {c.chunk_id: c for c in plan_chunks(grid, [a], 256, 16)}
    assert only_a["r00003c00003"].empty and not only_a["r00000c00000"].empty
    capped = plan_chunks(grid, [a, b, *full], 256, 16, max_items_per_chunk=4)
    assert capped[0].item_ids == ("a", "b", "c", "d") and capped[0].capped
    assert not capped[-1].capped and capped[-1].item_ids == ("c", "d", "e")


@pytest.mark.parametrize(("lon", "lat"), [(-39.4, -4.8), (5.0, 60.0), (179.9, 10.0), (0.0, 0.0)])
def test_utm_zone_matches_pyproj_database(lon, lat):
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info

    infos = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    codes = {int(i.code) for i in infos}
    assert utm_crs_for(lon, lat).to_epsg() in codes


def test_items_without_projection_fields_give_their_gsd_in_metres(s2_items):
    """STAC's gsd is in metres: an item without the projection extension still sets the grid's resolution."""
    item = s2_items[1].clone()
    item.stac_extensions = [e for e in item.stac_extensions if "projection" not in e]
    for fields in (item.properties, *(a.extra_fields for a in item.assets.values())):
        for key in [k for k in fields if k.startswith("proj:")]:
            del fields[key]
    for asset in item.assets.values():
        asset.extra_fields.pop("gsd", None)
    item.properties["gsd"] = 10
    grid = choose_grid(BRAZIL_BBOX, [item])
    assert grid.crs == utm_crs_for(-39.4, -4.8) and grid.resolution == (10.0, 10.0)
    del item.properties["gsd"]
    with pytest.raises(ValueError, match="neither proj:transform nor gsd; pass --resolution"):
        choose_grid(BRAZIL_BBOX, [item])
    with pytest.raises(ValueError, match="not a positive pixel size"):
        choose_grid(BRAZIL_BBOX, [item], resolution=-2.0)
