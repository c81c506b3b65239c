"""Round trip: squares painted at known map coordinates -> HTTP read -> blend -> Zarr -> GeoParquet, UTM and Web Mercator."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rioxarray  # noqa: F401  # registers the .rio accessor
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from common import storage
from pipelines.blend import Blender, TileLattice, cut_tiles, tile_windows
from pipelines.geoparquet import geo_metadata
from pipelines.grid import ChunkSpec, OutputGrid, choose_grid, plan_chunks
from pipelines.merge_polygons import merge_parts
from pipelines.polygonize import vectorize_chunk, write_part
from pipelines.read import read_chunk
from pipelines.write import create_zarr_template, open_masks, write_zarr_chunk
from tests.fixtures.cogs import make_item, write_painted_cog

LATTICE = TileLattice(tile_size_px=64, overlap_px=16, margin_px=4)
CHUNK_PX = 128


def _bright_model(tile: np.ndarray) -> np.ndarray:
    """Per-pixel (hence translation-equivariant) model: p = 0.9 where red > 128, else 0.05."""
    return np.where(tile[..., 0] > 128, 0.9, 0.05)[None].astype(np.float32)


def _run(
    grid: OutputGrid, items, out: Path | str, queries=("bright",), chunk_px: int = CHUNK_PX
) -> gpd.GeoDataFrame:
    """The region chain for one query, chunk by chunk (what pipelines.region runs on Ray)."""
    chunks = plan_chunks(grid, items, chunk_px, LATTICE.halo_px)
    out = str(out)
    zarr_uri = storage.join(out, "masks.zarr")
    create_zarr_template(zarr_uri, grid, list(queries), chunk_px)
    parts = []
    h = LATTICE.halo_px
    for chunk in chunks:
        if chunk.empty:
            continue
        img = read_chunk(chunk, grid, items)
        core = (chunk.row_off, chunk.col_off, chunk.height, chunk.width)
        blender = Blender(LATTICE, core, len(queries))
        for win, tile in cut_tiles(img.rgb, img.window[:2], tile_windows(LATTICE, core), 64, img.valid):
            blender.add(win, np.concatenate([_bright_model(tile)] * len(queries)))
        valid = img.valid[h : h + chunk.height, h : h + chunk.width]
        prob = blender.result(valid)
        write_zarr_chunk(zarr_uri, chunk, prob, valid)
        part = vectorize_chunk(
            prob,
            chunk,
            grid,
            list(queries),
            0.5,
            4,
            img.source_rank[h : h + chunk.height, h : h + chunk.width],
            img.item_ids,
        )
        uri = storage.join(out, "_parts", "polygons", f"{chunk.chunk_id}.parquet")
        write_part(part, uri)
        parts.append(uri)
    return merge_parts(
        parts,
        storage.join(out, "polygons.parquet"),
        grid.crs_wkt,
        item_datetimes={i.id: i.datetime.isoformat() for i in items},
    )


# Squares (x_min, y_max, side, value) in the COG's CRS; one crosses the chunk seams at 128 px.
UTM_SQUARES = [(501000.0, 4499000.0, 300.0, 250), (502200.0, 4497900.0, 600.0, 250)]
UTM_ORIGIN = Affine(10, 0, 500000, 0, -10, 4500000)
# Web Mercator near 45N (pixel 10 m on the map, ~7 m on the ground).
WM_ORIGIN = Affine(10, 0, 1_000_000, 0, -10, 5_620_000)
WM_SQUARES = [(1_001_000.0, 5_619_000.0, 300.0, 250), (1_002_200.0, 5_617_900.0, 600.0, 250)]


@pytest.mark.parametrize(
    ("crs", "origin", "squares", "grid_crs"),
    [
        ("EPSG:32633", UTM_ORIGIN, UTM_SQUARES, None),
        ("EPSG:3857", WM_ORIGIN, WM_SQUARES, None),
        ("EPSG:3857", WM_ORIGIN, WM_SQUARES, "EPSG:32632"),  # reprojected onto a UTM grid
    ],
    ids=["utm", "web-mercator", "web-mercator-to-utm"],
)
def test_round_trip_known_coordinates(cog_server, tmp_path, crs, origin, squares, grid_crs):
    """Must-show 2: painted squares come out of Zarr and GeoParquet where they were painted, CRS recorded."""
    shape = (400, 400)
    write_painted_cog(cog_server.root / "sq.tif", crs, origin, shape, squares, background=40)
    item = make_item("sq", cog_server.href("sq.tif"), crs, origin, shape)
    x0, y1 = origin.c, origin.f
    inner = transform_bounds(crs, "EPSG:4326", x0 + 200, y1 - 3800, x0 + 3800, y1 - 200, densify_pts=21)
    grid = choose_grid(inner, [item], crs=grid_crs, resolution=10.0 if grid_crs else None)
    assert grid.crs == CRS.from_user_input(grid_crs or crs)
    res = grid.resolution[0]
    returned = _run(grid, [item], tmp_path)

    # Truth in the grid CRS: the squares' corners transformed (identity when the grid is native).
    truths = [transform_bounds(crs, grid.crs, x, y - s, x + s, y, densify_pts=21) for x, y, s, _ in squares]

    # Zarr: uint8, CRS and transform recorded, square pixels at the painted coordinates.
    ds = open_masks(str(tmp_path / "masks.zarr"))
    assert ds["prob"].dtype == np.uint8 and "_FillValue" not in ds["prob"].attrs
    assert ds.rio.crs == grid.crs
    assert tuple(ds["prob"].rio.transform())[:6] == pytest.approx(grid.transform)
    assert ProjCRS.from_user_input(ds.attrs["proj:code"]) == ProjCRS.from_wkt(grid.crs_wkt)
    prob = ds["prob"].isel(query=0).values
    xs, ys = ds["x"].values, ds["y"].values
    from scipy import ndimage

    labels, n = ndimage.label(prob >= 128)
    assert n == len(squares)
    found = []
    for k in range(1, n + 1):
        rows, cols = np.nonzero(labels == k)
        found.append(
            (
                xs[cols.min()] - res / 2,
                ys[rows.max()] - res / 2,
                xs[cols.max()] + res / 2,
                ys[rows.min()] + res / 2,
            )
        )
    for truth in truths:
        assert any(np.allclose(f, truth, atol=res * 1.0001) for f in found), (truth, found)
    assert int(ds["valid"].sum()) > 0.9 * grid.width * grid.height

    # GeoParquet 1.1: CRS in PROJJSON, covering bbox, one polygon per square at the painted coordinates.
    meta = geo_metadata(str(tmp_path / "polygons.parquet"))
    assert meta["version"] == "1.1.0"
    col = meta["columns"]["geometry"]
    assert ProjCRS.from_json_dict(col["crs"]) == ProjCRS.from_wkt(grid.crs_wkt)
    assert "covering" in col and col["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    back = gpd.read_parquet(tmp_path / "polygons.parquet")
    assert back.crs == ProjCRS.from_wkt(grid.crs_wkt)
    assert len(back) == len(squares) == len(returned)
    for truth in truths:
        assert any(np.allclose(b, truth, atol=res * 1.0001) for b in back.geometry.bounds.to_numpy()), truth
    assert set(back["item_ids"].map(tuple)) == {("sq",)}
    assert back["score_max"].max() == pytest.approx(round(0.9 * 255) / 255)
    big = back.loc[back["area_m2"].idxmax()]
    sizes = np.bincount(labels.ravel())[1:]
    rows, cols = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    spanned = len(set(zip((rows // CHUNK_PX).tolist(), (cols // CHUNK_PX).tolist(), strict=True)))
    assert big["n_chunks"] == spanned  # cut by chunk seams, merged back into one polygon
    if grid_crs is None:
        assert spanned > 1
    if crs == "EPSG:32633":
        assert big["area_m2"] == pytest.approx(600.0**2, rel=0.01)
    else:  # Web Mercator metres shrink by cos(lat) on the ground
        lat = math.radians(45.0)
        assert big["area_m2"] == pytest.approx(600.0**2 * math.cos(lat) ** 2, rel=0.03)


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            digest.update(str(p.relative_to(root)).encode())
            digest.update(p.read_bytes())
    return digest.hexdigest()


def test_outputs_are_byte_identical_on_rerun(cog_server, tmp_path):
    write_painted_cog(cog_server.root / "sq.tif", "EPSG:32633", UTM_ORIGIN, (400, 400), UTM_SQUARES)
    item = make_item("sq", cog_server.href("sq.tif"), "EPSG:32633", UTM_ORIGIN, (400, 400))
    bbox = transform_bounds("EPSG:32633", "EPSG:4326", 500200, 4496200, 503800, 4499800)
    grid = choose_grid(bbox, [item])
    _run(grid, [item], tmp_path / "a")
    _run(grid, [item], tmp_path / "b")
    _run(grid, [item], tmp_path / "b")  # resume over an existing store rewrites the same bytes
    assert _tree_hash(tmp_path / "a" / "masks.zarr") == _tree_hash(tmp_path / "b" / "masks.zarr")
    assert (tmp_path / "a" / "polygons.parquet").read_bytes() == (
        tmp_path / "b" / "polygons.parquet"
    ).read_bytes()


def test_template_guards_and_alignment(tmp_path):
    grid = OutputGrid(CRS.from_epsg(32633).to_wkt(), (10.0, 0.0, 500000.0, 0.0, -10.0, 4500000.0), 300, 200)
    uri = str(tmp_path / "m.zarr")
    create_zarr_template(uri, grid, ["a", "b"], 128)
    create_zarr_template(uri, grid, ["a", "b"], 128)  # same settings: kept
    with pytest.raises(FileExistsError, match="different settings \\(queries\\)"):
        create_zarr_template(uri, grid, ["a"], 128)
    create_zarr_template(uri, grid, ["a"], 128, overwrite=True)
    ds = open_masks(uri)
    assert ds.attrs["queries"] == ["a"] and ds["query"].dtype == np.int16
    assert ds.attrs["proj:code"] == "EPSG:32633" and ds.attrs["spatial:shape"] == [200, 300]
    assert ds["spatial_ref"].attrs["GeoTransform"].split()[:2] == ["500000.0", "10.0"]
    assert float(ds["x"][0]) == 500005.0 and float(ds["y"][0]) == 4499995.0  # pixel centres
    bad = ChunkSpec("r00000c00000", 0, 0, 0, 64, 128, 128, 0)
    with pytest.raises(ValueError, match="not aligned"):
        write_zarr_chunk(uri, bad, np.zeros((1, 128, 128), np.uint8), np.zeros((128, 128), bool))
    edge = plan_chunks(grid, [], 128, 0)[-1]
    write_zarr_chunk(
        uri,
        edge,
        np.full((1, edge.height, edge.width), 9, np.uint8),
        np.ones((edge.height, edge.width), bool),
    )
    assert int(open_masks(uri)["prob"].sum()) == 9 * edge.height * edge.width
    with pytest.raises(ValueError, match="expected uint8"):
        write_zarr_chunk(
            uri,
            edge,
            np.zeros((1, edge.height, edge.width), np.float32),
            np.ones((edge.height, edge.width), bool),
        )


def test_object_storage_inputs_and_outputs(s3_server, cog_server, tmp_path):
    """COG read through /vsis3/, Zarr, parts, polygons and frozen items written to s3:// (moto on loopback)."""
    import io

    from pipelines.stac_files import freeze_items, load_items

    local = write_painted_cog(cog_server.root / "sq.tif", "EPSG:32633", UTM_ORIGIN, (400, 400), UTM_SQUARES)
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="cogs/sq.tif", Body=local.read_bytes())
    item = make_item("sq", s3_server.uri("cogs", "sq.tif"), "EPSG:32633", UTM_ORIGIN, (400, 400))
    bbox = transform_bounds("EPSG:32633", "EPSG:4326", 500200, 4496200, 503800, 4499800)
    grid = choose_grid(bbox, [item])
    out = s3_server.uri("run")
    freeze_items([item], storage.join(out, "inputs", "items.parquet"))
    frozen = load_items(storage.join(out, "inputs", "items.parquet"))
    assert [it.assets["visual"].href for it in frozen] == [s3_server.uri("cogs", "sq.tif")]
    polygons = _run(grid, frozen, out, chunk_px=256)  # 2 x 2 chunks: seams, few objects
    assert len(polygons) == len(UTM_SQUARES)
    ds = open_masks(storage.join(out, "masks.zarr"))
    assert ds.rio.crs == grid.crs and int((ds["prob"] >= 128).sum()) == 30 * 30 + 60 * 60
    back = gpd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(out, "polygons.parquet"))))
    assert back.crs == ProjCRS.from_wkt(grid.crs_wkt) and len(back) == len(UTM_SQUARES)
    assert geo_metadata(storage.join(out, "polygons.parquet"))["version"] == "1.1.0"
