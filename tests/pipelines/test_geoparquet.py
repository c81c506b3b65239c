"""The GeoParquet writer: spatially sorted row groups of final outputs, deterministic order, parts untouched."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import shapely

from pipelines.geoparquet import ROW_GROUP_ROWS, geo_metadata, spatial_order, write_geoparquet

EXTENT = (500_000.0, 4_480_000.0, 520_000.0, 4_500_000.0)  # 20 km x 20 km of UTM 33N


def _polygons(n: int, n_queries: int = 1, seed: int = 0) -> gpd.GeoDataFrame:
    """``n`` small boxes (5-40 m) spread over EXTENT, ordered as merge_polygons orders them (by query)."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = EXTENT
    x, y = rng.uniform(x0, x1 - 40, n), rng.uniform(y0, y1 - 40, n)
    geoms = shapely.box(x, y, x + rng.uniform(5, 40, n), y + rng.uniform(5, 40, n))
    query_id = np.sort(rng.integers(0, n_queries, n))
    ids = [f"q{q:03d}-{k:06d}" for k, q in enumerate(query_id)]
    return gpd.GeoDataFrame({"polygon_id": ids, "query_id": query_id}, geometry=geoms, crs="EPSG:32633")


def _bbox_stats(path) -> np.ndarray:
    """Per row group: (min xmin, min ymin, max xmax, max ymax) from the covering columns' statistics."""
    md = pq.ParquetFile(path).metadata
    names = [md.schema.column(i).path for i in range(md.num_columns)]
    cols = [names.index(f"bbox.{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
    out = np.empty((md.num_row_groups, 4))
    for r in range(md.num_row_groups):
        st = [md.row_group(r).column(c).statistics for c in cols]
        out[r] = (st[0].min, st[1].min, st[2].max, st[3].max)
    return out


def _touched(stats: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    w, s, e, n = box
    return np.flatnonzero((stats[:, 0] <= e) & (stats[:, 2] >= w) & (stats[:, 1] <= n) & (stats[:, 3] >= s))


def _one_percent_boxes(count: int, seed: int = 1) -> list[tuple[float, float, float, float]]:
    """Squares of 1 % of EXTENT's area (2 km x 2 km) at random places."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = EXTENT
    side = 0.1 * (x1 - x0)
    corners = zip(rng.uniform(x0, x1 - side, count), rng.uniform(y0, y1 - side, count), strict=True)
    return [(x, y, x + side, y + side) for x, y in corners]


def _bbox_filter(box: tuple[float, float, float, float]) -> pds.Expression:
    w, s, e, n = box
    b = {k: pc.field("bbox", k) for k in ("xmin", "ymin", "xmax", "ymax")}
    return (b["xmin"] <= e) & (b["xmax"] >= w) & (b["ymin"] <= n) & (b["ymax"] >= s)


def test_bbox_read_of_one_percent_touches_few_row_groups(tmp_path):
    """Must show 5: 100k polygons; a 1 % bbox read touches <= 10 % of the row groups, and reads the right rows."""
    gdf = _polygons(100_000)
    path = tmp_path / "polygons.parquet"
    write_geoparquet(gdf, str(path), covering_bbox=True)
    stats = _bbox_stats(path)
    n_groups = len(stats)
    assert n_groups == -(-100_000 // ROW_GROUP_ROWS)
    table = pq.read_table(path, columns=["polygon_id", "bbox"])
    fragment = pds.ParquetFileFormat().make_fragment(str(path), filesystem=pafs.LocalFileSystem())
    fractions = []
    for k, box in enumerate(_one_percent_boxes(8)):
        touched = _touched(stats, box)
        fractions.append(len(touched) / n_groups)
        # pyarrow's own statistics pruning of the same filter keeps the same row groups.
        kept = fragment.split_by_row_group(_bbox_filter(box), schema=fragment.physical_schema)
        assert sorted(f.row_groups[0].id for f in kept) == touched.tolist()
        # Reading only those row groups gives every row whose bbox meets the box.
        part = pq.ParquetFile(path).read_row_groups(touched.tolist(), columns=["polygon_id", "bbox"])
        want = table.filter(_bbox_filter(box))["polygon_id"].to_pylist()
        assert part.filter(_bbox_filter(box))["polygon_id"].to_pylist() == want and want
        if k < 2:  # as a user reads it (geopandas decodes geometries: slower)
            assert set(gpd.read_parquet(path, bbox=box)["polygon_id"]) == set(want)
    assert max(fractions) <= 0.10, fractions
    # The same rows in merge order (no spatial sort) would read nearly everything.
    b = gdf.geometry.bounds
    bbox = pa.StructArray.from_arrays([b[c].to_numpy() for c in b.columns], ["xmin", "ymin", "xmax", "ymax"])
    unsorted = tmp_path / "unsorted.parquet"
    pq.write_table(pa.table({"bbox": bbox}), unsorted, row_group_size=ROW_GROUP_ROWS)
    assert min(len(_touched(_bbox_stats(unsorted), b)) for b in _one_percent_boxes(8)) / n_groups > 0.9


def test_query_and_bbox_read_with_several_queries(tmp_path):
    """Rows stay grouped by query: a query filter plus a 1 % bbox touches few row groups too."""
    gdf = _polygons(60_000, n_queries=3, seed=2)
    path = tmp_path / "polygons.parquet"
    write_geoparquet(gdf, str(path), covering_bbox=True)
    fragment = pds.ParquetFileFormat().make_fragment(str(path), filesystem=pafs.LocalFileSystem())
    n_groups = fragment.metadata.num_row_groups
    for box in _one_percent_boxes(6, seed=3):
        expr = _bbox_filter(box) & (pc.field("query_id") == 1)
        assert len(fragment.split_by_row_group(expr, schema=fragment.physical_schema)) / n_groups <= 0.10


def test_order_is_query_then_hilbert_and_deterministic(tmp_path):
    gdf = _polygons(5_000, n_queries=3, seed=4)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_geoparquet(gdf, str(a), covering_bbox=True)
    write_geoparquet(gdf.sample(frac=1.0, random_state=7), str(b), covering_bbox=True)
    back = gpd.read_parquet(a)
    qid = back["query_id"].to_numpy()
    assert (np.diff(qid) >= 0).all()
    for q in range(3):
        sub = back[back["query_id"] == q]
        key = sub.geometry.hilbert_distance(total_bounds=back.geometry.total_bounds).to_numpy()
        assert (np.diff(key.astype(np.int64)) >= 0).all()
    # Input order does not matter (no ties among random boxes); the same input gives the same bytes.
    assert gpd.read_parquet(b)["polygon_id"].tolist() == back["polygon_id"].tolist()
    c = tmp_path / "c.parquet"
    write_geoparquet(gdf, str(c), covering_bbox=True)
    assert a.read_bytes() == c.read_bytes()
    assert geo_metadata(str(a))["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]


def test_parts_keep_their_order_in_one_row_group(tmp_path):
    gdf = _polygons(3_000, n_queries=2, seed=5).sample(frac=1.0, random_state=1)
    path = tmp_path / "part.parquet"
    write_geoparquet(gdf, str(path), covering_bbox=False)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    assert gpd.read_parquet(path)["polygon_id"].tolist() == gdf["polygon_id"].tolist()
    assert "bbox" not in pq.read_schema(path).names


def test_spatial_order_edge_cases():
    empty = _polygons(0)
    assert len(spatial_order(empty)) == 0
    one = _polygons(1)
    assert spatial_order(one)["polygon_id"].tolist() == one["polygon_id"].tolist()
    gdf = _polygons(4)
    gdf.loc[1, "geometry"] = shapely.Polygon()
    gdf.loc[2, "geometry"] = None
    ordered = spatial_order(gdf)
    assert ordered["polygon_id"].tolist()[-2:] == [gdf["polygon_id"][1], gdf["polygon_id"][2]]
    same = _polygons(3)
    same["geometry"] = [shapely.box(0, 0, 1, 1)] * 3  # one point extent, all ties: incoming order kept
    assert spatial_order(same)["polygon_id"].tolist() == same["polygon_id"].tolist()
    with pytest.raises(KeyError):
        spatial_order(gdf)["no_such_column"]
