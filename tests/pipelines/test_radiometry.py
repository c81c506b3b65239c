"""RGB asset choice (visual, NAIP 4-band image, Sentinel-2 band assets) and the fixed 8-bit mapping."""

from __future__ import annotations

import json

import numpy as np
import pystac
import pytest

from pipelines.errors import MissingAssetError, RadiometryError
from pipelines.radiometry import RadiometryConfig, has_rgb_source, select_rgb_source, to_uint8


@pytest.fixture
def s2_item(shared_data) -> pystac.Item:
    doc = json.loads((shared_data / "stac" / "sentinel2_c1_l2a_earthsearch_items.json").read_text())
    return pystac.Item.from_dict(doc["features"][3], migrate=False)


@pytest.fixture
def naip_item(shared_data) -> pystac.Item:
    doc = json.loads((shared_data / "stac" / "naip_items.json").read_text())
    return pystac.Item.from_dict(doc["features"][0], migrate=False)


def test_sentinel2_visual_asset_passes_through(s2_item):
    src = select_rgb_source(s2_item)
    assert src.kind == "visual"
    assert src.mode == "passthrough"
    assert [b.band_index for b in src.bands] == [1, 2, 3]
    assert src.hrefs == [s2_item.assets["visual"].href]
    assert all(b.nodata == 0 for b in src.bands)


def test_sentinel2_band_assets_use_raster_bands_scale_offset(s2_item):
    del s2_item.assets["visual"]
    src = select_rgb_source(s2_item)
    assert src.kind == "bands"
    assert src.mode == "reflectance"
    assert [b.asset_key for b in src.bands] == ["red", "green", "blue"]
    assert [(b.scale, b.offset, b.nodata, b.data_type) for b in src.bands] == [
        (0.0001, -0.1, 0, "uint16")
    ] * 3
    # DN -> reflectance DN*1e-4 - 0.1 -> 0..0.3 linearly to 0..255: 1000 -> 0, 2600 -> 136, 4000 -> 255.
    dn = np.array([1000, 2600, 4000, 500, 60000], dtype=np.uint16)
    values = np.broadcast_to(dn, (3, 1, 5)).copy()
    out = to_uint8(values, src)
    assert out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 136, 255, 0, 255]


def test_naip_four_band_image_picks_rgb_bands(naip_item):
    src = select_rgb_source(naip_item)
    assert src.kind == "multiband"
    assert src.mode == "passthrough"
    assert [b.band_index for b in src.bands] == [1, 2, 3]
    assert {b.asset_key for b in src.bands} == {"image"}


def test_band_order_follows_common_names(naip_item):
    asset = naip_item.assets["image"]
    asset.extra_fields["eo:bands"] = [
        {"name": "NIR", "common_name": "nir"},
        {"name": "Blue", "common_name": "blue"},
        {"name": "Green", "common_name": "green"},
        {"name": "Red", "common_name": "red"},
    ]
    assert [b.band_index for b in select_rgb_source(naip_item).bands] == [4, 3, 2]


def test_no_per_tile_stretch(s2_item):
    """The mapping of a tile equals the same window of the mapped scene: no statistic of the data is used."""
    del s2_item.assets["visual"]
    src = select_rgb_source(s2_item)
    rng = np.random.default_rng(0)
    scene = rng.integers(1, 6000, size=(3, 64, 64), dtype=np.uint16)
    whole = to_uint8(scene, src)
    for y, x in ((0, 0), (17, 40), (48, 3)):
        tile = scene[:, y : y + 16, x : x + 16]
        np.testing.assert_array_equal(to_uint8(tile, src), whole[:, y : y + 16, x : x + 16])
    dark = np.full((3, 8, 8), 1200, dtype=np.uint16)  # a uniformly dark tile stays dark
    assert int(to_uint8(dark, src).max()) == round((0.12 - 0.1) / 0.3 * 255)


def test_custom_stretch_constants(s2_item):
    del s2_item.assets["visual"]
    src = select_rgb_source(s2_item)
    cfg = RadiometryConfig(stretch_min=0.0, stretch_max=0.2)
    out = to_uint8(np.full((3, 1, 1), 3000, dtype=np.uint16), src, cfg)
    assert out.ravel().tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="stretch_max"):
        RadiometryConfig(stretch_min=0.3, stretch_max=0.1)


def test_uint16_without_scale_is_an_error_unless_supplied(naip_item):
    asset = naip_item.assets["image"]
    asset.extra_fields["raster:bands"] = [{"data_type": "uint16"}] * 4
    with pytest.raises(RadiometryError, match="--scale"):
        select_rgb_source(naip_item)
    src = select_rgb_source(naip_item, RadiometryConfig(scale=0.0001, offset=0.0))
    assert src.mode == "reflectance"
    out = to_uint8(np.full((3, 1, 1), 1600, dtype=np.uint16), src, RadiometryConfig(scale=0.0001, offset=0.0))
    assert out.ravel().tolist() == [136] * 3


def test_missing_rgb_names_the_assets(s2_item):
    for key in ("visual", "red", "green", "blue"):
        del s2_item.assets[key]
    with pytest.raises(MissingAssetError, match="no RGB source") as info:
        select_rgb_source(s2_item)
    assert "nir" in str(info.value)
    assert not has_rgb_source(s2_item)


def test_nodata_override(s2_item):
    src = select_rgb_source(s2_item, RadiometryConfig(nodata=255))
    assert all(b.nodata == 255 for b in src.bands)
