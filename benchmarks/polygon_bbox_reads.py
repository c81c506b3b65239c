"""Bbox reads of ``polygons.parquet``: row groups touched and read time, spatially sorted vs merge order.

Writes ``--polygons`` synthetic polygons (5-40 m boxes over 20 x 20 km of UTM 33N, ``--queries`` queries) twice with
the same row group size: through ``pipelines.geoparquet.write_geoparquet`` (query, then Hilbert order) and in merge
order (by query only, as before). Then reads ``--boxes`` random bboxes of 1 % of the area from each, interleaved:
row groups whose ``bbox`` statistics meet the box (what pyarrow and ``gpd.read_parquet(bbox=...)`` read), and the
median seconds of ``gpd.read_parquet(path, bbox=box)``; plus the whole-file read time of each.

Usage: ``.venv/bin/python benchmarks/polygon_bbox_reads.py [--polygons 100000] [--queries 1] [--boxes 20]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import shapely

from pipelines.geoparquet import ROW_GROUP_ROWS, write_geoparquet

EXTENT = (500_000.0, 4_480_000.0, 520_000.0, 4_500_000.0)


def _polygons(n: int, n_queries: int) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(0)
    x0, y0, x1, y1 = EXTENT
    x, y = rng.uniform(x0, x1 - 40, n), rng.uniform(y0, y1 - 40, n)
    geoms = shapely.box(x, y, x + rng.uniform(5, 40, n), y + rng.uniform(5, 40, n))
    query_id = np.sort(rng.integers(0, n_queries, n))
    return gpd.GeoDataFrame(
        {"query_id": query_id, "score_mean": rng.uniform(0.5, 1, n)}, geometry=geoms, crs=32633
    )


def _touched(path: Path, box: tuple[float, ...]) -> tuple[int, int]:
    """(row groups whose bbox statistics meet ``box``, row groups)."""
    md = pq.ParquetFile(path).metadata
    names = [md.schema.column(i).path for i in range(md.num_columns)]
    cols = [names.index(f"bbox.{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
    w, s, e, n = box
    hit = 0
    for r in range(md.num_row_groups):
        st = [md.row_group(r).column(c).statistics for c in cols]
        hit += st[0].min <= e and st[2].max >= w and st[1].min <= n and st[3].max >= s
    return hit, md.num_row_groups


def _timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def main() -> None:
    """Write both files, read the boxes interleaved, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polygons", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--boxes", type=int, default=20)
    args = parser.parse_args()
    gdf = _polygons(args.polygons, args.queries)
    root = Path(tempfile.mkdtemp(prefix="crobim_bbox_reads_"))
    files = {"sorted": root / "sorted.parquet", "merge_order": root / "merge_order.parquet"}
    write_geoparquet(gdf, str(files["sorted"]), covering_bbox=True)
    gdf.to_parquet(
        files["merge_order"],
        compression="zstd",
        index=False,
        schema_version="1.1.0",
        write_covering_bbox=True,
        row_group_size=ROW_GROUP_ROWS,
    )
    rng = np.random.default_rng(1)
    side = 0.1 * (EXTENT[2] - EXTENT[0])
    stats: dict[str, dict[str, list[float]]] = {
        k: {"fraction": [], "seconds": [], "whole": []} for k in files
    }
    for _ in range(args.boxes):
        x, y = rng.uniform(EXTENT[0], EXTENT[2] - side), rng.uniform(EXTENT[1], EXTENT[3] - side)
        box = (x, y, x + side, y + side)
        for name, path in files.items():
            hit, total = _touched(path, box)
            stats[name]["fraction"].append(hit / total)
            stats[name]["seconds"].append(_timed(gpd.read_parquet, path, bbox=box))
    for _ in range(3):
        for name, path in files.items():
            stats[name]["whole"].append(_timed(gpd.read_parquet, path))
    out = {"polygons": args.polygons, "queries": args.queries, "row_group_rows": ROW_GROUP_ROWS}
    for name, s in stats.items():
        out[name] = {
            "row_groups": pq.ParquetFile(files[name]).metadata.num_row_groups,
            "touched_fraction_median": round(statistics.median(s["fraction"]), 3),
            "touched_fraction_max": round(max(s["fraction"]), 3),
            "bbox_read_s_median": round(statistics.median(s["seconds"]), 3),
            "whole_read_s_median": round(statistics.median(s["whole"]), 3),
            "file_mb": round(files[name].stat().st_size / 2**20, 2),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
