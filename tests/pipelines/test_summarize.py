"""Per-query summaries of a region job's outputs: exact areas from a hand-made masks.zarr and polygons.parquet.

The outputs are written through the pipeline's own writers (``create_zarr_template``/``write_zarr_chunk``,
``write_geoparquet``) on a 2 m UTM grid of 40 x 48 px in 16 px Zarr chunks:

- "roofs": 200/255 on rows 0-9, cols 0-9 (100 px = 400 m^2), 0 elsewhere;
- "ponds": 100/255 on rows 20-39, cols 0-39 (below 0.5, above 0.3), 0 elsewhere;
- valid (imagery) everywhere but cols 40-47.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from rasterio.crs import CRS

from pipelines.geoparquet import write_geoparquet
from pipelines.grid import ChunkSpec, OutputGrid
from pipelines.summarize import format_summary, summarize
from pipelines.write import create_zarr_template, write_zarr_chunk

X0, Y0, RES, H, W, ZC = 500000.0, 4500000.0, 2.0, 40, 48, 16
QUERIES = ["roofs", "ponds"]
PX_M2 = RES * RES


def write_masks(out: Path, x0: float = X0) -> None:
    """``out/masks.zarr`` as described in the module docstring, chunk by chunk."""
    grid = OutputGrid(CRS.from_epsg(32633).to_wkt(), (RES, 0.0, x0, 0.0, -RES, Y0), W, H)
    prob = np.zeros((2, H, W), np.uint8)
    prob[0, 0:10, 0:10] = 200
    prob[1, 20:40, 0:40] = 100
    valid = np.ones((H, W), np.uint8)
    valid[:, 40:] = 0
    uri = str(out / "masks.zarr")
    create_zarr_template(uri, grid, QUERIES, ZC)
    for r in range(0, H, ZC):
        for c in range(0, W, ZC):
            h, w = min(ZC, H - r), min(ZC, W - c)
            chunk = ChunkSpec(f"r{r}c{c}", r // ZC, c // ZC, r, c, h, w, 0)
            write_zarr_chunk(uri, chunk, prob[:, r : r + h, c : c + w], valid[r : r + h, c : c + w])


def write_polygons(out: Path, roles: bool = False) -> None:
    """``out/polygons.parquet``: a roofs box across cells (0,0)/(0,1) and a composed query's answer box."""
    boxes = [
        shapely.box(X0 + 20, Y0 - 10, X0 + 40, Y0),  # 120 m^2 in cell (0, 0), 80 m^2 in cell (0, 1)
        shapely.box(X0 + 70, Y0 - 30, X0 + 74, Y0 - 20),  # 40 m^2 in cell (0, 2)
        shapely.box(X0, Y0 - 32, X0 + 32, Y0),  # exactly cell (0, 0)
    ]
    gdf = gpd.GeoDataFrame(
        {
            "polygon_id": ["a", "b", "c"],
            "query_id": [0, 2, 0],
            "query": ["roofs", "roofs near ponds", "roofs"],
            "area_m2": shapely.area(boxes),
        },
        geometry=boxes,
        crs=CRS.from_epsg(32633).to_wkt(),
    )
    if roles:
        gdf["role"] = ["answer", "answer", "answer"]
    write_geoparquet(gdf, str(out / "polygons.parquet"), covering_bbox=True)


def write_outputs(out: Path, roles: bool = False) -> Path:
    """A tiny region output folder (masks and polygons)."""
    out.mkdir(parents=True, exist_ok=True)
    write_masks(out)
    write_polygons(out, roles)
    return out


def _cell(table: gpd.GeoDataFrame, query: str, row: int, col: int) -> dict:
    rows = table[(table["query"] == query) & (table["row"] == row) & (table["col"] == col)]
    assert len(rows) == 1
    return rows.iloc[0].to_dict()


def test_cells_exact_mask_and_polygon_areas(tmp_path: Path) -> None:
    out = write_outputs(tmp_path / "run")
    result = summarize(str(out), cell_m=32.0)
    t = result.table
    assert result.output == str(out / "summary.parquet")
    assert len(t) == 3 * 3 * 3  # 3 x 3 cells of 16 px, 2 mask queries + 1 polygon-only query
    assert _cell(t, "roofs", 0, 0)["mask_area_m2"] == 100 * PX_M2
    assert _cell(t, "roofs", 0, 0)["mean_prob"] == pytest.approx(100 * 200 / 255 / 256)
    assert t.loc[t["query"] == "roofs", "mask_area_m2"].sum() == 100 * PX_M2
    assert t.loc[t["query"] == "ponds", "mask_area_m2"].sum() == 0  # 100/255 < 0.5
    assert _cell(t, "ponds", 2, 0)["mean_prob"] == pytest.approx(100 / 255)  # the grid's rows 32-39 only
    assert _cell(t, "roofs", 0, 2)["valid_area_m2"] == 16 * 8 * PX_M2  # cols 40-47 have no imagery
    assert _cell(t, "ponds", 2, 2)["mean_prob"] == pytest.approx(100 / 255)  # over valid pixels only
    assert _cell(t, "roofs", 0, 0)["polygon_count"] == 2
    assert _cell(t, "roofs", 0, 0)["polygon_area_m2"] == 120 + 32 * 32
    assert _cell(t, "roofs", 0, 1)["polygon_count"] == 1  # edge-sharing box "c" is not counted here
    assert _cell(t, "roofs", 0, 1)["polygon_area_m2"] == 80
    composed = _cell(t, "roofs near ponds", 0, 2)
    assert composed["polygon_count"] == 1 and composed["polygon_area_m2"] == 40
    assert np.isnan(composed["mask_area_m2"])  # a composed query has no mask
    back = gpd.read_parquet(result.output)
    assert back.crs.to_epsg() == 32633 and len(back) == len(t)
    first = back[(back["cell_id"] == 0) & (back["query"] == "roofs")]  # the writer may reorder rows
    assert first.geometry.iloc[0].equals(shapely.box(X0, Y0 - 32, X0 + 32, Y0))
    assert first["mask_area_m2"].iloc[0] == 100 * PX_M2
    assert "roofs" in format_summary(result)


def test_cells_anchor_at_multiples_of_cell_size(tmp_path: Path) -> None:
    """A grid starting 10 m past a cell edge: the roofs block (x 10-30 m) lies in the first cell's x range."""
    out = tmp_path / "run"
    out.mkdir()
    write_masks(out, x0=X0 + 10)
    t = summarize(str(out), cell_m=32.0, threshold=0.3).table
    assert "polygon_count" not in t  # no polygons.parquet: mask statistics only
    assert _cell(t, "roofs", 0, 0)["mask_area_m2"] == 100 * PX_M2  # x 10-30 m, inside the cell's 0-32 m
    assert _cell(t, "roofs", 0, 1)["mask_area_m2"] == 0
    assert t.loc[t["query"] == "ponds", "mask_area_m2"].sum() == 20 * 40 * PX_M2  # 0.3 keeps 100/255
    assert _cell(t, "roofs", 0, 0)["valid_area_m2"] == 11 * 16 * PX_M2


def _zones_4326(path: Path) -> None:
    """Three zones drawn in UTM and stored in EPSG:4326; edges 0.5 m from pixel centres survive the round trip."""
    zones = gpd.GeoDataFrame(
        {"name": ["roof block", "pond east", "far away"]},
        geometry=[
            shapely.box(X0 - 10, Y0 - 20.5, X0 + 20.5, Y0 + 10),  # cols 0-9, rows 0-9 (and outside the grid)
            shapely.box(X0 + 40.5, Y0 - 100, X0 + 200, Y0 - 39.5),  # cols 20-47, rows 20-39
            shapely.box(X0 + 1000, Y0 - 1000, X0 + 1100, Y0 - 900),
        ],
        crs="EPSG:32633",
    ).to_crs("EPSG:4326")
    zones.to_parquet(path)


def test_zones_in_another_crs(tmp_path: Path) -> None:
    out = write_outputs(tmp_path / "run")
    _zones_4326(tmp_path / "zones.parquet")
    result = summarize(str(out), zones=str(tmp_path / "zones.parquet"), threshold=0.3)
    t = result.table
    assert result.units == "zones" and t.crs.to_epsg() == 32633
    z = {(r["zone_id"], r["query"]): r for r in t.to_dict("records")}
    assert z[(0, "roofs")]["name"] == "roof block"  # the zones' own columns are kept
    assert z[(0, "roofs")]["mask_area_m2"] == 100 * PX_M2
    assert z[(0, "roofs")]["mean_prob"] == pytest.approx(200 / 255)
    assert z[(1, "ponds")]["mask_area_m2"] == 20 * 20 * PX_M2  # cols 20-39; cols 40-47 have prob 0
    assert z[(1, "ponds")]["valid_area_m2"] == 20 * 20 * PX_M2
    assert z[(1, "ponds")]["mean_prob"] == pytest.approx(100 / 255)
    assert z[(1, "roofs")]["mask_area_m2"] == 0
    assert z[(2, "roofs")]["mask_area_m2"] == 0 and np.isnan(z[(2, "roofs")]["mean_prob"])
    assert z[(0, "roofs")]["polygon_count"] == 2  # box "c", and box "a" by its first 0.5 m
    assert z[(0, "roofs")]["polygon_area_m2"] == pytest.approx(20.5 * 20.5 + 0.5 * 10, rel=1e-6)
    assert z[(1, "roofs")]["polygon_count"] == 0


def test_roles_are_carried(tmp_path: Path) -> None:
    out = write_outputs(tmp_path / "run", roles=True)
    t = summarize(str(out), cell_m=32.0).table
    roles = dict(zip(t["query"], t["role"], strict=True))
    assert roles["roofs"] == "answer" and roles["roofs near ponds"] == "answer"
    assert roles["ponds"] is None  # a mask without polygons has no role to report


def test_folder_without_masks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"masks\.zarr not found"):
        summarize(str(tmp_path), cell_m=32.0)
    write_masks(tmp_path)
    with pytest.raises(ValueError, match="whole multiple of the pixel size"):
        summarize(str(tmp_path), cell_m=33.0)
    with pytest.raises(ValueError, match="exactly one"):
        summarize(str(tmp_path))


def test_dask_on_ray_matches_threads(tmp_path: Path, ray_local) -> None:
    out = write_outputs(tmp_path / "run")
    _zones_4326(tmp_path / "zones.parquet")
    for kwargs in ({"cell_m": 32.0}, {"zones": str(tmp_path / "zones.parquet")}):
        threads = summarize(str(out), output=str(tmp_path / "threads.parquet"), **kwargs).table
        on_ray = summarize(str(out), output=str(tmp_path / "ray.parquet"), scheduler="ray", **kwargs)
        assert on_ray.scheduler == "ray"
        assert on_ray.table.drop(columns="geometry").equals(threads.drop(columns="geometry"))
