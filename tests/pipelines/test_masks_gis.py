"""``masks.zarr`` opens as it is in xarray + rioxarray and in GDAL (rasterio), with GeoZarr conventions (issue 23).

Must show 1 on a grid in EPSG:32633 (the demo's CRS): plain ``xr.open_zarr`` gives the CRS and transform without
options or warnings; ``rasterio.open`` of the Zarr array gives the same CRS, transform and values; the group and data
arrays validate against the ``proj``/``spatial`` conventions' JSON schemas (vendored, offline).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  # registers the .rio accessor
import xarray as xr
from rasterio.crs import CRS

from pipelines.grid import OutputGrid, plan_chunks
from pipelines.write import create_zarr_template, open_masks, write_zarr_chunk

SCHEMAS = Path(__file__).resolve().parents[1] / "fixtures" / "zarr_conventions"
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 4500000.0)
ZC = 128


def _grid(epsg: int = 32633) -> OutputGrid:
    return OutputGrid(CRS.from_epsg(epsg).to_wkt(), TRANSFORM, 300, 200)  # 2 x 3 Zarr chunks, ragged edges


def _written(
    tmp_path: Path, grid: OutputGrid, queries=("roofs", "ponds")
) -> tuple[str, np.ndarray, np.ndarray]:
    """A store with every chunk written except the bottom-right one (never read: reads as 0)."""
    uri = str(tmp_path / "masks.zarr")
    create_zarr_template(uri, grid, list(queries), ZC)
    rng = np.random.default_rng(0)
    prob = rng.integers(1, 256, (len(queries), grid.height, grid.width), dtype=np.uint8)
    valid = np.ones(grid.shape, np.uint8)
    chunks = plan_chunks(grid, [], ZC, 0)
    for chunk in chunks[:-1]:
        rows = slice(chunk.row_off, chunk.row_off + chunk.height)
        cols = slice(chunk.col_off, chunk.col_off + chunk.width)
        write_zarr_chunk(
            uri, chunk, np.ascontiguousarray(prob[:, rows, cols]), valid[rows, cols].astype(bool)
        )
    last = chunks[-1]
    prob[:, last.row_off :, last.col_off :] = 0
    valid[last.row_off :, last.col_off :] = 0
    return uri, prob, valid


def test_xarray_and_rioxarray_open_it_as_it_is(tmp_path):
    grid = _grid()
    uri, prob, valid = _written(tmp_path, grid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "consolidated metadata" warning, no other
        ds = xr.open_zarr(uri)
    assert "spatial_ref" in ds.coords  # a coordinate without decode_coords="all"
    assert ds["prob"].dims == ("query", "y", "x") and ds["prob"].dtype == np.uint8
    assert "_FillValue" not in ds["prob"].attrs and ds["prob"].chunks is not None  # uint8, lazy (dask)
    assert ds["prob"].rio.crs.to_epsg() == 32633 and ds.rio.crs.to_epsg() == 32633
    assert tuple(ds["prob"].rio.transform())[:6] == pytest.approx(TRANSFORM)
    assert ds.attrs["queries"] == ["roofs", "ponds"] and ds["query"].values.tolist() == [0, 1]
    np.testing.assert_array_equal(ds["prob"].values, prob)
    np.testing.assert_array_equal(ds["valid"].values, valid)
    assert open_masks(uri).identical(ds)


def test_gdal_reads_the_same_crs_transform_and_values(tmp_path):
    grid = _grid()
    uri, prob, valid = _written(tmp_path, grid)
    with rasterio.open(f'ZARR:"{uri}":/prob') as src:  # the query dimension becomes the bands
        assert src.crs.to_epsg() == 32633
        assert tuple(src.transform)[:6] == pytest.approx(TRANSFORM)
        assert (src.count, src.height, src.width) == (2, 200, 300) and src.dtypes[0] == "uint8"
        np.testing.assert_array_equal(src.read(), prob)
    with rasterio.open(f'ZARR:"{uri}":/prob:1') as src:  # one query as a 2-D raster
        assert src.crs.to_epsg() == 32633 and src.count == 1
        np.testing.assert_array_equal(src.read(1), prob[1])
    with rasterio.open(f'ZARR:"{uri}":/valid') as src:
        assert tuple(src.transform)[:6] == pytest.approx(TRANSFORM)
        np.testing.assert_array_equal(src.read(1), valid)


def _validate(document: dict) -> None:
    for name in ("proj-v0.1.schema.json", "spatial-v0.1.schema.json"):
        jsonschema.validate(document, json.loads((SCHEMAS / name).read_text()))


@pytest.mark.parametrize("epsg", [32633, None], ids=["epsg", "wkt-only"])
def test_geozarr_conventions_validate(tmp_path, epsg):
    """The group and the data arrays carry ``zarr_conventions`` + ``proj:``/``spatial:`` that the schemas accept."""
    if epsg is None:  # no EPSG code: proj:wkt2 instead of proj:code (the schema takes exactly one)
        wkt = CRS.from_proj4(
            "+proj=tmerc +lat_0=0 +lon_0=15.5 +k=0.9996 +x_0=500000 +datum=WGS84 +units=m"
        ).to_wkt()
        grid = OutputGrid(wkt, TRANSFORM, 300, 200)
    else:
        grid = _grid(epsg)
    uri, _, _ = _written(tmp_path, grid)
    root = Path(uri)
    group = json.loads((root / ".zattrs").read_text())
    _validate({"zarr_format": 2, "node_type": "group", "attributes": group})
    for name in ("prob", "valid"):
        attrs = json.loads((root / name / ".zattrs").read_text())
        _validate({"zarr_format": 2, "node_type": "array", "attributes": attrs})
        assert attrs["spatial:dimensions"] == attrs["_ARRAY_DIMENSIONS"][-2:]
    assert group["spatial:transform"] == list(TRANSFORM) and group["spatial:shape"] == [200, 300]
    assert ("proj:code" in group) == (epsg is not None) and ("proj:wkt2" in group) == (epsg is None)
    bad = {**group, "proj:wkt2": grid.crs_wkt, "proj:code": "EPSG:32633"}  # both: the schema refuses
    with pytest.raises(jsonschema.ValidationError):
        _validate({"zarr_format": 2, "node_type": "group", "attributes": bad})


def test_metadata_is_consolidated_once_and_chunk_writes_leave_it(tmp_path):
    """Parallel chunk writes never touch metadata: ``.zmetadata`` written with the template is final."""
    grid = _grid()
    uri = str(tmp_path / "masks.zarr")
    create_zarr_template(uri, grid, ["roofs"], ZC)
    before = {p.relative_to(uri): p.read_bytes() for p in Path(uri).rglob(".z*")}
    _written(tmp_path, grid, queries=("roofs",))  # same settings: the template is kept, chunks written
    after = {p.relative_to(uri): p.read_bytes() for p in Path(uri).rglob(".z*")}
    assert before == after and Path(".zmetadata") in after
    consolidated = json.loads(after[Path(".zmetadata")])["metadata"]
    assert consolidated[".zattrs"]["proj:code"] == "EPSG:32633" and "prob/.zarray" in consolidated


def test_an_older_zarr_v3_store_is_refused(tmp_path):
    uri = tmp_path / "masks.zarr"
    uri.mkdir()
    (uri / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(FileExistsError, match="Zarr v3 store"):
        create_zarr_template(str(uri), _grid(), ["roofs"], ZC)
    create_zarr_template(str(uri), _grid(), ["roofs"], ZC, overwrite=True)
    assert not (uri / "zarr.json").exists() and (uri / ".zmetadata").exists()
