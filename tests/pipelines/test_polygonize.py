"""Polygonization per chunk: 4-connectivity, sieving, the uint8 threshold, per-part statistics and part files."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.geoparquet import geo_metadata
from pipelines.grid import plan_chunks
from pipelines.polygonize import PART_COLUMNS, read_part, threshold_value, vectorize_chunk, write_part
from tests.fixtures.polygon_parts import CHUNK, GRID, px_box, vectorize_all


def test_sieve_keeps_border_components_and_drops_small_interior_ones(tmp_path):
    prob = np.zeros((1, 200, 200), np.uint8)
    prob[0, 10:12, 10:12] = 255  # 4 px in the interior: sieved
    prob[0, 98:100, 50:52] = 255  # 2 px + 2 px across the seam at row 100: kept (touches the core border)
    prob[0, 100:102, 50:52] = 255
    prob[0, 150:160, 150:160] = 255  # 100 px: kept
    out = vectorize_all(prob, tmp_path, min_area_px=9)
    assert len(out) == 2
    assert sorted(round(a / 100) for a in out["area_m2"]) == [8, 100]


def test_threshold_is_applied_to_written_uint8_values(tmp_path):
    assert threshold_value(0.5) == 128
    prob = np.zeros((1, 200, 200), np.uint8)
    prob[0, 10:20, 10:20] = 127
    prob[0, 50:60, 50:60] = 128
    out = vectorize_all(prob, tmp_path)
    assert len(out) == 1 and out.iloc[0].geometry.equals(px_box(50, 50, 60, 60))
    with pytest.raises(ValueError, match="within"):
        threshold_value(1.5)


def test_nodata_gives_no_polygons_and_empty_merge(tmp_path):
    prob = np.zeros((1, 200, 200), np.uint8)  # invalid pixels are written as 0
    out = vectorize_all(prob, tmp_path)
    assert len(out) == 0
    assert geo_metadata(str(tmp_path / "polygons.parquet"))["version"] == "1.1.0"
    part = read_part(str(tmp_path / "_parts" / "r00000c00000.parquet"))
    assert len(part) == 0


def test_part_rows_hold_scores_border_contacts_and_source_items(tmp_path):
    chunk = next(c for c in plan_chunks(GRID, [], CHUNK, 0) if c.chunk_id == "r00000c00001")
    prob = np.zeros((2, CHUNK, CHUNK), np.uint8)
    prob[1, 0:10, 20:30] = 200  # touches the top of the core
    prob[1, 0:10, 25:26] = 250
    prob[1, 50:60, 90:100] = 130  # touches the right
    rank = np.ones((CHUNK, CHUNK), np.uint8)
    rank[:, 25:] = 2
    part = vectorize_chunk(prob, chunk, GRID, ["a", "b"], source_rank=rank, item_ids=("i1", "i2"))
    assert list(part.columns) == [*PART_COLUMNS, "geometry"]
    assert part["query"].tolist() == ["b", "b"] and part["label"].tolist() == [1, 2]
    top, right = part.iloc[0], part.iloc[1]
    assert (top["chunk_id"], top["chunk_row"], top["chunk_col"]) == ("r00000c00001", 0, 1)
    assert top["touches_top"] and not (top["touches_bottom"] or top["touches_left"] or top["touches_right"])
    assert right["touches_right"] and not (right["touches_top"] or right["touches_bottom"])
    assert top["score_count"] == 100 and top["score_sum"] == pytest.approx((90 * 200 + 10 * 250) / 255)
    assert top["score_max"] == pytest.approx(250 / 255)
    assert (top["item_ids"], top["item_pixels"]) == (["i1", "i2"], [50, 50])
    assert (right["item_ids"], right["item_pixels"]) == (["i2"], [100])
    assert top.geometry.equals(px_box(0, CHUNK + 20, 10, CHUNK + 30))
    uri = str(tmp_path / "parts" / f"{chunk.chunk_id}.parquet")
    write_part(part, uri)
    back = read_part(uri)
    for column in PART_COLUMNS:
        got, want = back[column].tolist(), part[column].tolist()
        assert [list(v) if column.startswith("item_") else v for v in got] == want, column
    assert all(a.equals(b) for a, b in zip(back["geometry"], part.geometry, strict=True))
    assert "covering" not in geo_metadata(uri)["columns"]["geometry"]
    with pytest.raises(ValueError, match="does not match the core"):
        vectorize_chunk(prob[:, :50], chunk, GRID, ["a", "b"])
