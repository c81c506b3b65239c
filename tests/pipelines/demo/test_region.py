import json

import numpy as np
import pytest
import rasterio
from rasterio import features
from scipy import ndimage

from pipelines.demo.region import REGION_QUERIES, make_region


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    return make_region(tmp_path_factory.mktemp("region"), seed=4, size_px=512, gsd_m=2.0, unit_px=128,
                       origin=(400_000.0, 5_100_000.0))  # fmt: skip


def test_cog_georeferencing_and_layout(region):
    with rasterio.open(region.cog_paths[0]) as src:
        assert src.crs.to_epsg() == 32633
        assert src.transform == region.transform
        assert (src.width, src.height, src.count, src.dtypes[0]) == (512, 512, 3, "uint8")
        assert src.profile["tiled"] and src.overviews(1)
        rgb = src.read()
    assert rgb.std() > 5  # a rendered scene, not a flat fill
    assert region.transform.c == 400_000.0 and region.transform.f == 5_100_000.0 and region.transform.a == 2.0


def test_stac_item_collection(region):
    doc = json.loads(region.catalog_path.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 1
    item = doc["features"][0]
    p = item["properties"]
    assert p["proj:code"] == "EPSG:32633" and p["proj:epsg"] == 32633
    assert p["proj:shape"] == [512, 512]
    assert p["proj:transform"] == [2.0, 0.0, 400_000.0, 0.0, -2.0, 5_100_000.0]
    assert 0 <= p["eo:cloud_cover"] <= 100 and p["datetime"].endswith("Z")
    west, south, east, north = item["bbox"]
    assert 13 < west < east < 16 and 45 < south < north < 47  # UTM 33N near 15 E, 46 N
    assert item["assets"]["visual"]["href"] == str(region.cog_paths[0])
    assert "visual" in item["assets"]["visual"]["roles"]
    from pipelines.stac_files import load_catalog

    items = load_catalog(str(region.catalog_path))
    assert items[0].id == item["id"]


def test_truth_polygons_rasterize_back_to_the_label_map(region):
    gdf = region.truth()
    assert str(gdf.crs.to_epsg()) == "32633"
    with rasterio.open(region.instances_path) as src:
        labels = src.read(1)
    burned = features.rasterize(
        zip(gdf.geometry, gdf["instance_id"], strict=True), out_shape=labels.shape, transform=region.transform,
        dtype="uint32",
    )  # fmt: skip
    np.testing.assert_array_equal(burned, labels)
    assert set(gdf["class"]) <= {"field", "river", "road", "parking lot", "pond", "building", "tree"}
    np.testing.assert_allclose(gdf["area_m2"], gdf.geometry.area)


def test_near_columns_match_a_full_distance_transform(region):
    gdf = region.truth()
    with rasterio.open(region.instances_path) as src:
        labels = src.read(1)
    near_px = region.info["queries"]["pond_near_road"]["near_m"] / 2.0
    for col, (text, cls, ref) in REGION_QUERIES.items():
        ref_ids = gdf.loc[gdf["class"] == ref, "instance_id"].to_numpy()
        dist = ndimage.distance_transform_edt(~np.isin(labels, ref_ids)) if ref_ids.size else None
        for _, row in gdf.iterrows():
            expected = bool(
                row["class"] == cls
                and dist is not None
                and dist[labels == row["instance_id"]].min() <= near_px
            )
            assert bool(row[col]) == expected, (col, row["instance_id"])
        assert region.queries[col] == text
    assert len(region.truth("all ponds near roads")) == int(gdf["pond_near_road"].sum())


def test_deterministic_grid_of_items_and_reuse(tmp_path, region):
    grid = make_region(tmp_path / "g", seed=4, size_px=512, gsd_m=2.0, unit_px=128, origin=(400_000.0, 5_100_000.0),
                       n_items=(2, 2), href_base="http://127.0.0.1:8000/data")  # fmt: skip
    with rasterio.open(region.cog_paths[0]) as src:
        whole = src.read()
    for path in grid.cog_paths:
        r, c = int(path.stem[-3]), int(path.stem[-1])
        with rasterio.open(path) as src:
            np.testing.assert_array_equal(
                src.read(), whole[:, r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256]
            )
            assert src.transform.c == 400_000.0 + c * 512.0
    items = json.loads(grid.catalog_path.read_text())["features"]
    assert [i["assets"]["visual"]["href"] for i in items][0] == "http://127.0.0.1:8000/data/scene_r0c0.tif"
    assert grid.truth().geometry.geom_equals(region.truth().geometry).all()
    again = make_region(tmp_path / "g", seed=4, size_px=512, gsd_m=2.0, unit_px=128, origin=(400_000.0, 5_100_000.0),
                        n_items=(2, 2), href_base="http://127.0.0.1:8000/data")  # fmt: skip
    assert again.info == grid.info
    with pytest.raises(FileExistsError, match="seed"):
        make_region(tmp_path / "g", seed=5, size_px=512, gsd_m=2.0, unit_px=128)
    with pytest.raises(ValueError, match="not projected"):
        make_region(tmp_path / "h", crs="EPSG:4326", size_px=128)
