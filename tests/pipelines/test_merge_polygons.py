"""The seam merge of per-chunk parts: exact merged scores, areas, ids, order and the streaming union-find."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from rasterio.crs import CRS
from shapely.geometry import box

from pipelines.geoparquet import geo_metadata
from pipelines.grid import OutputGrid, plan_chunks
from pipelines.merge_polygons import merge_parts
from pipelines.polygonize import vectorize_chunk, write_part
from tests.fixtures.polygon_parts import GRID, px_box, vectorize_all


def test_polygon_across_four_chunks_is_merged_with_exact_scores(tmp_path):
    prob = np.zeros((1, 200, 200), np.uint8)
    prob[0, 80:130, 70:140] = 200  # crosses the seams at row 100 and col 100
    prob[0, 90:95, 95:105] = 250
    out = vectorize_all(prob, tmp_path)
    assert len(out) == 1
    poly = out.iloc[0]
    assert poly.geometry.equals(px_box(80, 70, 130, 140))
    assert poly["n_chunks"] == 4
    fg = prob[0][prob[0] >= 128]
    assert poly["score_mean"] == pytest.approx(fg.mean() / 255, abs=1e-12)
    assert poly["score_max"] == pytest.approx(250 / 255)
    assert poly["area_m2"] == pytest.approx(50 * 70 * 100, rel=0.002)  # UTM scale error only
    assert poly["chunk_id"] == "r00001c00001"  # chunk holding the largest share (rows 100-130, cols 100-140)


def test_diagonal_touch_across_a_seam_is_not_merged(tmp_path):
    prob = np.zeros((1, 200, 200), np.uint8)
    prob[0, 90:100, 90:100] = 255  # chunk r0c0
    prob[0, 100:110, 100:110] = 255  # chunk r1c1: touches only at a corner
    prob[0, 90:95, 100:120] = 255  # chunk r0c1: shares an edge with the first square only
    out = vectorize_all(prob, tmp_path)
    assert len(out) == 2
    assert sorted(out["n_chunks"].tolist()) == [1, 2]


def test_queries_items_datetime_and_order(tmp_path):
    prob = np.zeros((2, 200, 200), np.uint8)
    prob[0, 150:160, 10:20] = 255
    prob[0, 10:20, 150:160] = 255
    prob[1, 60:140, 60:140] = 255
    rank = np.ones((200, 200), np.uint8)
    rank[:, 110:] = 2  # item i2 supplies the east
    out = vectorize_all(prob, tmp_path, queries=("ponds", "roads"), rank=rank, item_ids=("i1", "i2"))
    written = gpd.read_parquet(tmp_path / "polygons.parquet")
    assert (
        written["polygon_id"].tolist() == out["polygon_id"].tolist()
    )  # returned in the file's (spatial) order
    out = out.sort_values("polygon_id").reset_index(drop=True)  # ids: query, first chunk, position
    assert out["query"].tolist() == ["ponds", "ponds", "roads"]
    assert out["polygon_id"].tolist() == [
        "q000-r00000c00001-00000",
        "q000-r00001c00000-00000",
        "q001-r00000c00000-00000",
    ]
    roads = out.iloc[2]
    assert list(roads["item_ids"]) == ["i1", "i2"] and roads["datetime"] == "2024-01-01T00:00:00Z"
    assert out.iloc[0]["datetime"] == "2024-02-01T00:00:00Z"
    meta = geo_metadata(str(tmp_path / "polygons.parquet"))
    assert meta["version"] == "1.1.0" and meta["columns"]["geometry"]["encoding"] == "WKB"


def test_min_area_and_simplify(tmp_path):
    prob = np.zeros((1, 200, 200), np.uint8)
    prob[0, 10:14, 10:14] = 255  # 1600 m^2
    prob[0, 40:80, 40:80] = 255  # 160000 m^2
    uris = []
    for chunk in plan_chunks(GRID, [], 200, 0):
        part = vectorize_chunk(prob, chunk, GRID, ["q"])
        uri = str(tmp_path / f"{chunk.chunk_id}.parquet")
        write_part(part, uri)
        uris.append(uri)
    out = merge_parts(uris, str(tmp_path / "p.parquet"), GRID.crs_wkt, min_area_m2=5000, simplify_m=5.0)
    assert len(out) == 1 and out.iloc[0]["area_m2"] == pytest.approx(160000, rel=0.002)


def _merge_grid(prob, grid, tmp_path, skip=()):
    uris = []
    for chunk in plan_chunks(grid, [], 100, 0):
        if chunk.chunk_id in skip:
            continue  # a missing part (e.g. a failed chunk) must not break the merge
        sl = (
            slice(chunk.row_off, chunk.row_off + chunk.height),
            slice(chunk.col_off, chunk.col_off + chunk.width),
        )
        uri = str(tmp_path / f"{chunk.chunk_id}.parquet")
        write_part(vectorize_chunk(prob[(slice(None), *sl)], chunk, grid, ["q"]), uri)
        uris.append(uri)
    return merge_parts(uris, str(tmp_path / "p.parquet"), grid.crs_wkt)


def test_streaming_merge_across_rows_u_shape_and_gaps(tmp_path):
    """Groups grow row by row: a U whose arms join only in a lower row; a bar over three chunk rows; a gap."""
    grid = OutputGrid(CRS.from_epsg(32631).to_wkt(), (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), 200, 300)
    prob = np.zeros((1, 300, 200), np.uint8)
    prob[0, 20:120, 20:30] = 255  # left arm (chunk column 0, rows 0-1)
    prob[0, 20:120, 150:160] = 255  # right arm (chunk column 1)
    prob[0, 110:120, 20:160] = 255  # base in chunk row 1 joins both arms
    prob[0, 50:290, 180:185] = 255  # a separate bar across chunk rows 0, 1, 2
    u_px = int(np.count_nonzero(prob[0, :, :170]))
    out = _merge_grid(prob, grid, tmp_path / "full")
    assert len(out) == 2
    u, bar = (out.iloc[0], out.iloc[1]) if out.iloc[0]["n_chunks"] == 4 else (out.iloc[1], out.iloc[0])
    assert u["n_chunks"] == 4 and u["area_m2"] == pytest.approx(u_px * 100, rel=0.002)
    assert u.geometry.geom_type == "Polygon" and len(u.geometry.interiors) == 0
    assert bar["n_chunks"] == 3 and bar["area_m2"] == pytest.approx(240 * 5 * 100, rel=0.002)
    gap = _merge_grid(prob, grid, tmp_path / "gap", skip={"r00001c00001"})
    # Without chunk r1c1 the U's right arm and the bar's middle are gone: four pieces remain.
    assert len(gap) == 4


def _reference_record(sub, datetimes):
    """Plain per-group computation of one merged row, to check the vectorised merge against."""
    sub = sub.sort_values(["chunk_id", "label"], kind="stable")
    count = int(sub["score_count"].sum())
    per_chunk: dict[str, int] = {}
    item_px: dict[str, int] = {}
    for row in sub.itertuples():
        per_chunk[row.chunk_id] = per_chunk.get(row.chunk_id, 0) + int(row.score_count)
        for item, px in zip(row.item_ids, row.item_pixels, strict=True):
            item_px[item] = item_px.get(item, 0) + int(px)
    main_chunk = max(sorted(per_chunk), key=lambda c: per_chunk[c])  # first of the sorted ties
    main_item = max(sorted(item_px), key=lambda i: item_px[i]) if item_px else None
    return {
        "query_id": int(sub["query_id"].iloc[0]),
        "query": sub["query"].iloc[0],
        "score_mean": float(sub["score_sum"].sum()) / max(count, 1),
        "score_max": float(sub["score_max"].max()),
        "chunk_id": main_chunk,
        "n_chunks": len(per_chunk),
        "item_ids": sorted(item_px),
        "datetime": datetimes.get(main_item) if main_item else None,
        "_first_chunk": sub["chunk_id"].iloc[0],
    }


def test_vectorised_group_records_match_a_per_group_computation():
    import pandas as pd

    from pipelines.merge_polygons import _merged_records

    rng = np.random.default_rng(7)
    n = 400
    roots = np.sort(rng.integers(0, 120, n))
    items = ["i1", "i2", "i3"]
    parts = pd.DataFrame(
        {
            "query_id": roots % 3,
            "query": [f"q{r % 3}" for r in roots],
            "chunk_id": [f"r{rng.integers(0, 2):05d}c{rng.integers(0, 3):05d}" for _ in range(n)],
            "label": rng.integers(1, 50, n),
            "score_sum": rng.random(n) * 10,
            "score_count": rng.integers(1, 4, n),  # small counts: ties between chunks are common
            "score_max": rng.random(n),
            "item_ids": [list(rng.choice(items, rng.integers(0, 3), replace=False)) for _ in range(n)],
            "geometry": [box(i, 0, i + 1, 1) for i in range(n)],
        }
    )
    parts["item_pixels"] = [list(rng.integers(1, 3, len(ids))) for ids in parts["item_ids"]]
    parts = parts.sample(frac=1.0, random_state=1).reset_index(drop=True)  # any input order
    datetimes = {"i1": "2024-01-01", "i2": "2024-02-01", "i3": "2024-03-01"}
    root_of = parts["geometry"].map(lambda g: int(roots[int(g.bounds[0])]))
    frame, geoms = _merged_records(parts, root_of.to_numpy(), datetimes)
    expected = [_reference_record(sub, datetimes) for _, sub in parts.groupby(root_of, sort=True)]
    assert len(frame) == len(expected) == len(geoms) == len(np.unique(roots))
    groups = [sub for _, sub in parts.groupby(root_of, sort=True)]
    for got, want, geom, sub in zip(frame.to_dict("records"), expected, geoms, groups, strict=True):
        for key in ("score_mean", "score_max"):
            assert got.pop(key) == pytest.approx(want.pop(key), rel=1e-12)
        assert {k: got[k] for k in want} == want
        assert geom.equals(shapely.union_all(sub["geometry"].to_numpy()))
