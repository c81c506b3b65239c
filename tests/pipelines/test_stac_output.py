"""The run's output STAC Item (issue 23, must show 2): it validates offline and links every input item used.

A real plan (``plan_region`` on three items in EPSG:32633, no search), a real ``run.json`` document
(``started_document`` + ``finished_document``) and a real checkpoint (``crobim-tiny``), written with
``write_output_item``, read back with pystac and validated against STAC 1.1 and the MLM, projection and processing
schemas vendored in ``pipelines/assets/stac-schemas`` (no network: an unvendored schema is an error).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pystac
import pytest
import shapely
from affine import Affine
from rasterio.warp import transform_bounds

from pipelines.plan import plan_region
from pipelines.predict import resolve_model
from pipelines.region_config import RegionJobConfig
from pipelines.run_document import finished_document, started_document
from pipelines.stac_output import build_output_item, validate_output_item, write_output_item
from tests.fixtures.cogs import make_item

ORIGIN = Affine(10, 0, 500000, 0, -10, 4500000)
SHAPE = (400, 400)
STAC_URL = "https://stac.example.test/v1"


def _items() -> list[pystac.Item]:
    """Three items: one with a ``self`` link, two from an API (no ``self``), spread over two dates."""
    items = [
        make_item(f"s{i}", f"https://data.example.test/s{i}.tif", "EPSG:32633", ORIGIN, SHAPE, datetime=dt)
        for i, dt in enumerate(["2024-06-01T10:00:00Z", "2024-06-03T10:00:00Z", "2024-06-02T10:00:00Z"])
    ]
    items[0].set_self_href("https://stac.example.test/v1/collections/test/items/s0")
    return items


def _plan_and_document(out: Path, model: str, catalog: str | None = None):
    bbox = transform_bounds("EPSG:32633", "EPSG:4326", 500200, 4496200, 503800, 4499800)
    config = RegionJobConfig(
        bbox=bbox,
        queries=("red roofs", "ponds"),
        out=str(out),
        model=model,
        stac_url=None if catalog else STAC_URL,
        catalog=catalog,
        chunk_size_px=256,
        tile_size_px=None if "factory" not in model else 64,
    )
    plan = plan_region(config, items=_items(), model=resolve_model(model, config.tile_size_px))
    started = started_document(
        plan, {"settings": "of this test"} | {"model": plan.model.info}, False, time.time()
    )
    document = finished_document(started, plan, {}, [], {"total": 1.0}, {}, {"red roofs": 2, "ponds": 0})
    return plan, document


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    from crobim import build_model
    from crobim.weights import save_model

    path = tmp_path_factory.mktemp("ckpt") / "crobim-tiny"
    save_model(build_model("crobim-tiny"), path)
    return str(path)


def test_output_item_validates_offline_and_links_every_input(tmp_path, checkpoint):
    """Must show 2."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("run.json", "quicklook.png"):
        (out / name).write_bytes(b"{}")  # map.html not written: no map asset
    plan, document = _plan_and_document(out, checkpoint)
    uri = write_output_item(str(out), plan, document)
    assert uri == str(out / "item.json")

    item = pystac.Item.from_file(uri)
    used = validate_output_item(item)
    assert set(item.stac_extensions) <= set(used) and len(item.stac_extensions) == 3
    assert item.id == f"crobim-geo-{document['fingerprint']}"

    # derived_from: every input item, by its self href or its STAC API URL.
    links = {link.title: link.get_href(transform_href=False) for link in item.get_links("derived_from")}
    assert links == {
        "s0": "https://stac.example.test/v1/collections/test/items/s0",
        "s1": f"{STAC_URL}/collections/test/items/s1",
        "s2": f"{STAC_URL}/collections/test/items/s2",
    }
    assert {it.id for it in plan.items} == set(links)

    # Assets: roles, media types, relative hrefs that resolve beside item.json.
    assets = item.assets
    assert set(assets) == {"masks", "polygons", "run", "quicklook", "model"}
    assert assets["masks"].media_type == "application/vnd+zarr" and assets["masks"].roles == ["data"]
    assert assets["polygons"].media_type == "application/vnd.apache.parquet"
    assert assets["run"].roles == ["metadata"] and assets["quicklook"].roles == ["overview"]
    assert assets["masks"].get_absolute_href() == str(out / "masks.zarr")
    assert assets["masks"].extra_fields["proj:code"] == "EPSG:32633"
    assert assets["masks"].extra_fields["proj:shape"] == [plan.grid.height, plan.grid.width]
    assert assets["masks"].extra_fields["proj:transform"] == list(plan.grid.transform)

    # Footprint: the grid in WGS84 (covers the requested bbox), time range of the inputs.
    assert shapely.geometry.shape(item.geometry).contains(shapely.box(*plan.config.bbox).buffer(-1e-6))
    assert item.datetime is None
    assert item.common_metadata.start_datetime.isoformat() == "2024-06-01T10:00:00+00:00"
    assert item.common_metadata.end_datetime.isoformat() == "2024-06-03T10:00:00+00:00"

    # Model (MLM) and software (processing).
    p = item.properties
    assert p["mlm:architecture"] == "CroBIM" and p["mlm:framework"] == "pytorch"
    assert p["mlm:framework_version"] == document["versions"]["torch"]
    assert p["mlm:input"][0]["bands"] == ["red", "green", "blue"]
    assert p["mlm:input"][0]["input"]["shape"][-2:] == [plan.lattice.tile_size_px] * 2
    assert assets["model"].roles == ["mlm:model"] and assets["model"].href == checkpoint
    assert assets["model"].extra_fields["crobim:sha256"] == plan.model.info["sha256"]
    assert p["processing:software"]["crobim-geo"] == document["versions"]["crobim-geo"]
    assert p["processing:datetime"] == document["finished_at"] and p["processing:lineage"]


def test_items_from_a_catalog_file_link_to_it(tmp_path):
    """No self link and no API: the catalog file the items came from, the item id as the fragment (one link per
    item); a factory model still validates."""
    from pipelines.stac_files import freeze_items

    catalog = str(tmp_path / "catalog.parquet")
    freeze_items(_items(), catalog)  # a real stac-geoparquet catalog file (run.json hashes it)
    plan, document = _plan_and_document(tmp_path, "tests.fixtures.predictors:factory", catalog=catalog)
    item = build_output_item(str(tmp_path), plan, document)
    validate_output_item(item)
    hrefs = [link.href for link in item.get_links("derived_from")]
    ids = [link.title for link in item.get_links("derived_from")]
    assert hrefs == ["https://stac.example.test/v1/collections/test/items/s0"] + [
        f"{catalog}#{i}" for i in ids[1:]
    ]
    assert len(set(hrefs)) == len(hrefs) == 3
    assert "quicklook" not in item.assets  # not written: not listed


def test_validation_catches_a_broken_item(tmp_path):
    plan, document = _plan_and_document(tmp_path, "tests.fixtures.predictors:factory")
    d = build_output_item(str(tmp_path), plan, document).to_dict(include_self_link=False)
    broken = json.loads(json.dumps(d))
    del broken["properties"]["mlm:architecture"]
    with pytest.raises(pystac.errors.STACValidationError, match="mlm"):
        validate_output_item(broken)
    broken = json.loads(json.dumps(d))
    broken["properties"]["processing:software"] = {"torch": 2}
    with pytest.raises(pystac.errors.STACValidationError, match="processing"):
        validate_output_item(broken)
    broken = json.loads(json.dumps(d))
    broken["stac_extensions"].append("https://stac-extensions.github.io/sat/v1.0.0/schema.json")
    with pytest.raises(pystac.validation.GetSchemaError):  # not vendored: never fetched
        validate_output_item(broken)
