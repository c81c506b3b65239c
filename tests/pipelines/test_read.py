"""Chunk reads over HTTP: two items in two CRSs, nodata, reflectance bands, byte budget, retries and clear errors."""

from __future__ import annotations

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from pipelines.demo.cog import write_cog
from pipelines.errors import (
    AssetNotFoundError,
    CorruptAssetError,
    MissingAssetError,
)
from pipelines.grid import ChunkSpec, OutputGrid, choose_grid, plan_chunks
from pipelines.radiometry import select_rgb_source
from pipelines.read import GDAL_SETTINGS, read_chunk
from tests.fixtures.cogs import make_item, write_painted_cog

CRS_32724 = rasterio.crs.CRS.from_epsg(32724)
CRS_26919 = rasterio.crs.CRS.from_epsg(26919)
CRS_32618 = rasterio.crs.CRS.from_epsg(32618)


def _no_sleep(_: float) -> None:
    return None


def _whole_chunk(grid: OutputGrid, item_ids: tuple[str, ...], halo: int = 0) -> ChunkSpec:
    return ChunkSpec("r00000c00000", 0, 0, 0, 0, grid.height, grid.width, halo, item_ids)


def test_chunk_across_two_items_in_two_utm_zones(cog_server):
    """Zone 33 item around 17.5-18.05E (value 100), zone 34 item around 18.0-18.6E (value 200); grid in zone 33."""
    tr_a = Affine(100, 0, 700000, 0, -100, 5020000)
    write_painted_cog(cog_server.root / "a.tif", "EPSG:32633", tr_a, (300, 400), background=100)
    tr_b = Affine(100, 0, 262000, 0, -100, 5020000)
    # A 2 km square in B at known zone-34 coordinates (~18.33E, 45.2N).
    sq = (290000.0, 5010000.0, 2000.0, 250)
    write_painted_cog(cog_server.root / "b.tif", "EPSG:32634", tr_b, (300, 500), [sq], background=200)
    a = make_item("a", cog_server.href("a.tif"), "EPSG:32633", tr_a, (300, 400), cloud=1)
    b = make_item("b", cog_server.href("b.tif"), "EPSG:32634", tr_b, (300, 500), cloud=2)
    bbox = (17.8, 45.1, 18.4, 45.25)
    grid = choose_grid(bbox, [a, b], crs="EPSG:32633", resolution=100.0)
    chunks = plan_chunks(grid, [a, b], chunk_size_px=4096, halo_px=0)
    assert len(chunks) == 1 and chunks[0].item_ids == ("a", "b")
    img = read_chunk(chunks[0], grid, [a, b])
    assert img.item_ids == ["a", "b"]
    ranks = set(np.unique(img.source_rank[img.valid]).tolist())
    assert ranks == {1, 2}
    # Pixels from A are 100, from B 200 or 250 (bilinear stays inside the flat areas).
    from_a = img.source_rank == 1
    assert np.all(img.rgb[from_a][:, 0] == 100)
    # The square lands where its zone-34 corners transform to, within one pixel.
    mask = img.rgb[..., 0] == 250
    rows, cols = np.nonzero(mask)
    x0, y1 = img.transform @ (cols.min(), rows.min())
    x1, y0 = img.transform @ (cols.max() + 1, rows.max() + 1)
    sx0, sy0, sx1, sy1 = transform_bounds(
        "EPSG:32634", "EPSG:32633", sq[0], sq[1] - sq[2], sq[0] + sq[2], sq[1]
    )
    for got, want in ((x0, sx0), (x1, sx1), (y0, sy0), (y1, sy1)):
        assert abs(got - want) <= 100 * 1.5, (got, want)
    # Where A covers, A wins (rank order); B only fills what A leaves invalid.
    a_cols = (np.arange(grid.width) + 0.5) * grid.resolution[0] + grid.transform[2]
    inside_a = a_cols < 740000 - 100
    assert np.all(img.source_rank[:, inside_a] == 1)
    assert (img.source_rank == 2).sum() > 0 and img.valid.all()


def test_nodata_stays_nodata_and_all_nodata_is_empty(cog_server):
    tr = Affine(10, 0, 500000, 0, -10, 4000000)
    arr = np.full((3, 256, 256), 90, dtype=np.uint8)
    arr[:, :, :64] = 0  # a nodata strip on the west
    write_cog(cog_server.root / "n.tif", arr, "EPSG:32631", tr, nodata=0, blocksize=64)
    item = make_item("n", cog_server.href("n.tif"), "EPSG:32631", tr, (256, 256))
    grid = OutputGrid(item_grid_wkt := rasterio.crs.CRS.from_epsg(32631).to_wkt(), tuple(tr)[:6], 256, 256)
    img = read_chunk(_whole_chunk(grid, ("n",)), grid, [item])
    assert not img.valid[:, :64].any() and img.valid[:, 64:].all()
    assert np.all(img.rgb[:, :64] == 0) and np.all(img.rgb[:, 64:] == 90)
    assert np.all(img.source_rank[:, :64] == 0)
    # Scene entirely nodata: an empty result, not an error.
    write_cog(
        cog_server.root / "z.tif", np.zeros((3, 256, 256), np.uint8), "EPSG:32631", tr, nodata=0, blocksize=64
    )
    zero = make_item("z", cog_server.href("z.tif"), "EPSG:32631", tr, (256, 256))
    empty = read_chunk(_whole_chunk(grid, ("z",)), grid, [zero])
    assert empty.empty and empty.item_ids == [] and not empty.rgb.any()
    assert item_grid_wkt


def test_window_beyond_the_scene_is_invalid_outside(cog_server):
    tr = Affine(10, 0, 500000, 0, -10, 4000000)
    write_painted_cog(cog_server.root / "s.tif", "EPSG:32631", tr, (128, 128), background=60, nodata=None)
    item = make_item("s", cog_server.href("s.tif"), "EPSG:32631", tr, (128, 128), nodata=None)
    grid = OutputGrid(rasterio.crs.CRS.from_epsg(32631).to_wkt(), tuple(tr)[:6], 128, 128)
    chunk = ChunkSpec("r00000c00000", 0, 0, 0, 0, 128, 128, 32, ("s",))
    img = read_chunk(chunk, grid, [item])
    assert img.rgb.shape == (192, 192, 3)
    assert img.valid[32:160, 32:160].all() and not img.valid[:32].any() and not img.valid[:, 160:].any()
    assert np.all(img.rgb[32:160, 32:160] == 60)


def test_sentinel2_reflectance_bands_read_and_stretched(cog_server, shared_data):
    """Real S2 item with band assets only: uint16 DN -> fixed stretch; DN 0 is invalid."""
    import json

    doc = json.loads((shared_data / "stac" / "sentinel2_c1_l2a_earthsearch_items.json").read_text())
    raw = doc["features"][3]
    tr = Affine(*raw["assets"]["red"]["proj:transform"][:6]) @ Affine.scale(60)
    shape = (183, 183)
    dn = {"red": 2600, "green": 1600, "blue": 4000}
    for key, value in dn.items():
        data = np.full((1, *shape), value, dtype=np.uint16)
        data[:, :20] = 0  # DN 0: no data
        write_cog(cog_server.root / f"{key}.tif", data, "EPSG:32724", tr, nodata=0, blocksize=64)
        raw["assets"][key]["href"] = cog_server.href(f"{key}.tif")
        raw["assets"][key]["proj:transform"] = list(tr)[:6]
        raw["assets"][key]["proj:shape"] = list(shape)
    del raw["assets"]["visual"]
    item = pystac.Item.from_dict(raw, migrate=False)
    assert select_rgb_source(item).mode == "reflectance"
    grid = OutputGrid(rasterio.crs.CRS.from_epsg(32724).to_wkt(), tuple(tr)[:6], shape[1], shape[0])
    img = read_chunk(_whole_chunk(grid, (item.id,)), grid, [item])
    assert not img.valid[:20].any() and img.valid[20:].all()
    assert img.rgb[20:, :, 0].min() == img.rgb[20:, :, 0].max() == 136
    assert img.rgb[20:, :, 1].max() == 51 and img.rgb[20:, :, 2].max() == 255


def test_chunk_read_fetches_at_most_1_5x_needed_blocks(cog_server):
    """Must-show 3: count bytes at the server against the COG tiles the chunk window needs."""
    rng = np.random.default_rng(7)
    tr = Affine(10, 0, 300000, 0, -10, 5000000)
    shape = (1536, 1536)
    data = rng.integers(1, 256, size=(3, *shape), dtype=np.uint8)  # incompressible: tiles ~ 3 * 256^2 bytes
    path = write_cog(cog_server.root / "big.tif", data, "EPSG:32618", tr, nodata=0, blocksize=256)
    item = make_item("big", cog_server.href("big.tif"), "EPSG:32618", tr, shape)
    grid = OutputGrid(rasterio.crs.CRS.from_epsg(32618).to_wkt(), tuple(tr)[:6], shape[1], shape[0])
    chunk = ChunkSpec("r00001c00001", 1, 1, 600, 700, 400, 400, 100, ("big",))
    cog_server.reset()
    img = read_chunk(chunk, grid, [item])
    assert img.valid.all()
    np.testing.assert_array_equal(np.moveaxis(img.rgb, -1, 0), data[:, 500:1100, 600:1200])
    fetched = cog_server.bytes_sent("big.tif")
    # Needed tiles: those meeting the read window rows 500..1100, cols 600..1200 (tiles 1..4 x 2..4).
    with rasterio.open(path) as ds:
        needed = 0
        win = Window(600, 500, 600, 600)
        for (r, c), bwin in ds.block_windows(1):
            if _intersects(bwin, win):
                needed += ds.block_size(1, r, c)  # TileByteCounts of that tile (all bands, pixel-interleaved)
        file_size = path.stat().st_size
    assert needed > 0
    print(f"bytes fetched {fetched}, needed tiles {needed}, ratio {fetched / needed:.3f}, file {file_size}")
    assert fetched <= 1.5 * needed, (fetched, needed, file_size)
    assert fetched < 0.5 * file_size  # never the whole file


def _intersects(a: Window, b: Window) -> bool:
    return not (
        a.col_off + a.width <= b.col_off
        or b.col_off + b.width <= a.col_off
        or a.row_off + a.height <= b.row_off
        or b.row_off + b.height <= a.row_off
    )


def test_missing_asset_is_a_specific_error(cog_server):
    tr = Affine(10, 0, 500000, 0, -10, 4000000)
    item = make_item("gone", cog_server.href("does-not-exist.tif"), "EPSG:32631", tr, (64, 64))
    grid = OutputGrid(rasterio.crs.CRS.from_epsg(32631).to_wkt(), tuple(tr)[:6], 64, 64)
    with pytest.raises(AssetNotFoundError, match="does-not-exist.tif does not exist"):
        read_chunk(_whole_chunk(grid, ("gone",)), grid, [item], sleep=_no_sleep)
    del item.assets["visual"]
    with pytest.raises(MissingAssetError, match="gone has no RGB source"):
        read_chunk(_whole_chunk(grid, ("gone",)), grid, [item], sleep=_no_sleep)


def test_corrupt_cog_is_a_specific_error(cog_server):
    tr = Affine(10, 0, 500000, 0, -10, 4000000)
    good = write_cog(
        cog_server.root / "good.tif",
        np.full((3, 256, 256), 5, np.uint8),
        "EPSG:32631",
        tr,
        nodata=0,
        blocksize=64,
    )
    blob = bytearray(good.read_bytes())
    (cog_server.root / "text.tif").write_bytes(b"<html>not a tiff</html>" * 100)
    blob[len(blob) // 2 :] = bytes(len(blob) - len(blob) // 2)  # tiles zeroed: deflate streams broken
    (cog_server.root / "broken.tif").write_bytes(bytes(blob))
    (cog_server.root / "short.tif").write_bytes(good.read_bytes()[: len(blob) // 3])  # truncated upload
    grid = OutputGrid(rasterio.crs.CRS.from_epsg(32631).to_wkt(), tuple(tr)[:6], 256, 256)
    for name in ("text.tif", "broken.tif", "short.tif"):
        item = make_item(name, cog_server.href(name), "EPSG:32631", tr, (256, 256))
        with pytest.raises(CorruptAssetError, match=f"{name} is corrupt or not a readable GeoTIFF"):
            read_chunk(_whole_chunk(grid, (name,)), grid, [item], sleep=_no_sleep)


def test_transient_http_errors_are_retried_with_backoff(cog_server):
    tr = Affine(10, 0, 500000, 0, -10, 4000000)
    write_cog(
        cog_server.root / "flaky.tif",
        np.full((3, 64, 64), 9, np.uint8),
        "EPSG:32631",
        tr,
        nodata=0,
        blocksize=64,
    )
    item = make_item("flaky", cog_server.href("flaky.tif"), "EPSG:32631", tr, (64, 64))
    grid = OutputGrid(rasterio.crs.CRS.from_epsg(32631).to_wkt(), tuple(tr)[:6], 64, 64)
    # More 503s than GDAL's own retries (GDAL_HTTP_MAX_RETRY) so our backoff loop has to act.
    cog_server.fail_next("flaky.tif", 503, times=int(GDAL_SETTINGS["GDAL_HTTP_MAX_RETRY"]) + 2)
    delays: list[float] = []
    env = {**GDAL_SETTINGS, "GDAL_HTTP_RETRY_DELAY": "0.01"}
    img = read_chunk(
        _whole_chunk(grid, ("flaky",)), grid, [item], sleep=delays.append, env=env, backoff_s=1.0
    )
    assert img.valid.all() and np.all(img.rgb == 9)
    assert len(delays) >= 1 and 0.5 <= delays[0] <= 1.0
    statuses = [r.status for r in cog_server.records("flaky.tif")]
    assert statuses.count(503) == int(GDAL_SETTINGS["GDAL_HTTP_MAX_RETRY"]) + 2


def test_real_landsat_scene_windowed_read(shared_data, cog_server):
    """The real Landsat 7 subset (UTM 18N, nodata border) served as a COG: pixel-exact windowed read."""
    with rasterio.open(shared_data / "real" / "landsat7_rgb_byte.tif") as src:
        data, crs, tr = src.read(), src.crs, src.transform
    write_cog(cog_server.root / "l7.tif", data, crs, tr, nodata=0, blocksize=128)
    item = make_item("l7", cog_server.href("l7.tif"), "EPSG:32618", tr, data.shape[1:])
    grid = OutputGrid(crs.to_wkt(), tuple(tr)[:6], data.shape[2], data.shape[1])
    chunk = ChunkSpec("r00001c00001", 1, 1, 256, 256, 256, 256, 32, ("l7",))
    img = read_chunk(chunk, grid, [item])
    window = data[:, 224:544, 224:544]
    np.testing.assert_array_equal(np.moveaxis(img.rgb, -1, 0), window)
    np.testing.assert_array_equal(img.valid, np.any(window != 0, axis=0))
    corner = ChunkSpec("r00000c00000", 0, 0, 0, 0, 256, 256, 32, ("l7",))
    cimg = read_chunk(corner, grid, [item])
    assert not cimg.valid[:32].any()  # halo above the scene
    assert cimg.valid.mean() < 0.9  # the rotated footprint's nodata corner stays invalid
    assert from_bounds(*grid.bounds, transform=grid.affine).width == pytest.approx(grid.width)


def test_real_sentinel2_items_two_tiles(s2_items_served, cog_server):
    """Real items (hrefs rewritten): a chunk across the overlap of T24MWV and T24MVV, visual asset, native CRS."""
    items = [pystac.Item.from_dict(f, migrate=False) for f in s2_items_served]
    by_id = {it.id: it for it in items}
    mwv, mvv = by_id["S2B_T24MWV_20250731T130245_L2A"], by_id["S2B_T24MVV_20250731T130245_L2A"]
    bbox = (-39.1, -4.9, -38.8, -4.6)
    grid = choose_grid(bbox, [mwv, mvv])  # least cloudy first
    assert grid.crs == CRS_32724 and grid.resolution == (600.0, 600.0)  # native CRS, rewritten 600 m pixels
    chunk = plan_chunks(grid, [mwv, mvv], chunk_size_px=1024, halo_px=0)[0]
    assert chunk.item_ids == (mwv.id, mvv.id)
    img = read_chunk(chunk, grid, [mwv, mvv])
    assert img.valid.all() and img.item_ids == [mwv.id, mvv.id]
    # MWV (rank 1) covers x >= 499980 in the tiles' UTM 24S; MVV fills only the pixels west of it.
    centres_x = grid.transform[2] + 600.0 * (np.arange(grid.width) + 0.5)
    assert np.all(img.source_rank[:, centres_x > 499980 + 600] == 1)
    assert np.all(img.source_rank[:, centres_x < 499980 - 600] == 2)

    # Pixel-exact on a grid snapped to MWV's pixel phase (nearest, no resampling).
    own = choose_grid(bbox, [mwv])
    assert (own.transform[2] - 499980.0) % 600 == 0
    one = read_chunk(plan_chunks(own, [mwv], 1024, 0)[0], own, [mwv])
    with rasterio.open(cog_server.root / f"{mwv.id}_visual.tif") as ds:
        data = ds.read()
        r0 = round((ds.transform.f - own.transform[5]) / -600.0)
        c0 = round((ds.transform.c - own.transform[2]) / 600.0)
    rows, cols = np.nonzero(one.valid)
    assert len(rows) > 0.5 * one.valid.size  # the bbox reaches west of the tile
    np.testing.assert_array_equal(one.rgb[rows, cols].T, data[:, rows - r0, cols - c0])


def test_real_naip_four_band_image(naip_items_served, cog_server):
    """NAIP's 4-band `image` (R, G, B, NIR): bands 1-3 are read pixel-exactly, NIR ignored."""
    item = pystac.Item.from_dict(naip_items_served[0], migrate=False)
    grid = choose_grid(tuple(item.bbox), [item])
    assert grid.crs == CRS_26919 and grid.resolution == (24.0, 24.0)
    chunk = plan_chunks(grid, [item], 2048, 0)[0]
    img = read_chunk(chunk, grid, [item])
    assert img.valid.mean() > 0.8
    with rasterio.open(cog_server.root / item.assets["image"].href.rsplit("/", 1)[1]) as ds:
        assert ds.count == 4
        data = ds.read(indexes=[1, 2, 3])
        # Same CRS and pixel phase: file pixel (r, c) is grid pixel (r + r0, c + c0).
        r0 = round((ds.transform.f - grid.transform[5]) / -24.0)
        c0 = round((ds.transform.c - grid.transform[2]) / 24.0)
    rows, cols = np.nonzero(img.valid)
    np.testing.assert_array_equal(img.rgb[rows, cols].T, data[:, rows - r0, cols - c0])


def test_coarser_output_reads_an_overview(cog_server):
    """An output 4x coarser than native opens the 4x overview: far fewer bytes than the full-resolution tiles."""
    rng = np.random.default_rng(1)
    tr = Affine(10, 0, 300000, 0, -10, 5000000)
    data = rng.integers(1, 256, size=(3, 1024, 1024), dtype=np.uint8)
    path = write_cog(cog_server.root / "ov.tif", data, "EPSG:32618", tr, nodata=0, blocksize=256)
    with rasterio.open(path) as ds:
        assert ds.overviews(1) == [2, 4]
    item = make_item("ov", cog_server.href("ov.tif"), "EPSG:32618", tr, (1024, 1024))
    coarse = OutputGrid(CRS_32618.to_wkt(), (40.0, 0.0, 300000.0, 0.0, -40.0, 5000000.0), 256, 256)
    cog_server.reset()
    img = read_chunk(_whole_chunk(coarse, ("ov",)), coarse, [item])
    assert img.valid.all()
    assert cog_server.bytes_sent("ov.tif") < 0.2 * path.stat().st_size
    # Averaged overview pixels of uniform noise sit near the mean, unlike full-resolution samples.
    assert abs(float(img.rgb.mean()) - 128) < 10 and img.rgb.std() < 0.5 * data.std()


def test_cog_server_ranges_head_and_416(cog_server):
    """The fixture behind the byte budget: HEAD, single and multi ranges, 416, and exact byte counts."""
    import urllib.error
    import urllib.request

    payload = bytes(range(256)) * 40
    (cog_server.root / "f.bin").write_bytes(payload)

    def get(headers, method="GET"):
        req = urllib.request.Request(cog_server.href("f.bin"), headers=headers, method=method)
        with urllib.request.urlopen(req) as resp:
            return resp.status, dict(resp.headers), resp.read()

    status, headers, body = get({}, "HEAD")
    assert status == 200 and headers["Content-Length"] == str(len(payload)) and body == b""
    status, headers, body = get({"Range": "bytes=10-19"})
    assert (
        status == 206 and body == payload[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(payload)}"
    )
    status, headers, body = get({"Range": "bytes=0-3,100-103"})
    assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
    assert payload[0:4] in body and payload[100:104] in body
    status, _, body = get({"Range": "bytes=-5"})
    assert body == payload[-5:]
    with pytest.raises(urllib.error.HTTPError) as info:
        get({"Range": f"bytes={len(payload) + 10}-"})
    assert info.value.code == 416
    assert cog_server.bytes_sent("f.bin") == 10 + 8 + 5
    assert [r.status for r in cog_server.records("f.bin")] == [200, 206, 206, 206, 416]
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(cog_server.href("nope.bin"))
    assert missing.value.code == 404


def test_alpha_band_and_nodata_override(tmp_path):
    """An RGBA file's alpha masks pixels; a user nodata overrides missing metadata (local paths work too)."""
    from pipelines.radiometry import RadiometryConfig

    tr = Affine(10, 0, 500000, 0, -10, 4000000)
    arr = np.full((4, 128, 128), 80, np.uint8)
    arr[3] = 255
    arr[3, :, :40] = 0  # transparent west strip
    profile = dict(
        driver="GTiff", width=128, height=128, count=4, dtype="uint8", crs="EPSG:32631", transform=tr
    )
    with rasterio.open(
        tmp_path / "rgba.tif", "w", **profile, tiled=True, photometric="RGB", alpha="YES"
    ) as dst:
        dst.write(arr)
    grid = OutputGrid(rasterio.crs.CRS.from_epsg(32631).to_wkt(), tuple(tr)[:6], 128, 128)
    rgba = make_item("rgba", str(tmp_path / "rgba.tif"), "EPSG:32631", tr, (128, 128), nodata=None)
    img = read_chunk(_whole_chunk(grid, ("rgba",)), grid, [rgba])
    assert not img.valid[:, :40].any() and img.valid[:, 40:].all()
    # No nodata in file or metadata: a zero border counts as imagery unless the user says otherwise.
    data = np.full((3, 128, 128), 70, np.uint8)
    data[:, :16] = 0
    write_cog(tmp_path / "nonodata.tif", data, "EPSG:32631", tr, nodata=None, blocksize=64)
    plain = make_item("plain", str(tmp_path / "nonodata.tif"), "EPSG:32631", tr, (128, 128), nodata=None)
    assert read_chunk(_whole_chunk(grid, ("plain",)), grid, [plain]).valid.all()
    fixed = read_chunk(_whole_chunk(grid, ("plain",)), grid, [plain], radiometry=RadiometryConfig(nodata=0))
    assert not fixed.valid[:16].any() and fixed.valid[16:].all()


def test_signed_and_extensionless_urls(cog_server):
    tr = Affine(10, 0, 500000, 0, -10, 4000000)
    write_cog(
        cog_server.root / "blob", np.full((3, 64, 64), 33, np.uint8), "EPSG:32631", tr, nodata=0, blocksize=64
    )
    grid = OutputGrid(rasterio.crs.CRS.from_epsg(32631).to_wkt(), tuple(tr)[:6], 64, 64)
    for href in (cog_server.href("blob"), cog_server.href("blob") + "?st=2025&sig=abc%3D"):
        item = make_item("blob", href, "EPSG:32631", tr, (64, 64))
        img = read_chunk(_whole_chunk(grid, ("blob",)), grid, [item])
        assert img.valid.all() and np.all(img.rgb == 33)
