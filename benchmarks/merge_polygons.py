"""Polygon merge cost at region scale: time and peak memory of ``merge_parts`` for a region and one 4x larger.

The final step of a region job joins the per-chunk polygon parts across chunk seams and writes
``polygons.parquet`` on the driver (``pipelines.merge_polygons.merge_parts``). This benchmark writes synthetic parts
(``--chunk-px`` chunks on a k x k grid, each with a dense field of small blobs for one query and two bands that cross
every seam for another: ~1,000 polygons per chunk, most of them single-chunk, some groups spanning every chunk row)
and merges them in a fresh process per region, printing side by side: polygons, merge seconds, polygons per
second, and the peak RSS of the merging process over its RSS after imports.

Usage: ``.venv/bin/python benchmarks/merge_polygons.py [--chunks 5] [--chunk-px 256] [--json out.json]``
(``--chunks 5`` merges 5 x 5 and 10 x 10 chunks: ~25,600 and ~102,400 polygons).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_WRITE_PARTS = """
import sys
import numpy as np
from rasterio.crs import CRS
from pipelines.grid import OutputGrid, plan_chunks
from pipelines.polygonize import vectorize_chunk, write_part
k, px, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
grid = OutputGrid(CRS.from_epsg(32631).to_wkt(), (1.0, 0.0, 500000.0, 0.0, -1.0, 5000000.0), k * px, k * px)
prob = np.zeros((2, px, px), np.uint8)
cols = np.arange(px) % 8 < 4
for r in range(2, px, 8):
    prob[0, r : r + 2, cols] = 200  # 2 x 4 px blobs every 8 px
prob[1, :, px // 3 : px // 3 + 40] = 180  # a band through every chunk row (one polygon per grid column)
prob[1, 10:20, :] = 180  # and one through every chunk column
for chunk in plan_chunks(grid, [], px, 0):
    write_part(vectorize_chunk(prob, chunk, grid, ["blobs", "bands"]), f"{out}/{chunk.chunk_id}.parquet")
"""

_MERGE = """
import glob, json, resource, sys, time
from rasterio.crs import CRS
from pipelines.merge_polygons import merge_parts
parts = sorted(glob.glob(sys.argv[1] + "/parts/*.parquet"))
crs = CRS.from_epsg(32631).to_wkt()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
out = merge_parts(parts, sys.argv[1] + "/polygons.parquet", crs)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"parts": len(parts), "polygons": len(out), "seconds": seconds,
                  "rss_after_imports_mb": base / 1024, "peak_rss_mb": peak / 1024}))
"""


def _python(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise RuntimeError(f"benchmark step failed:\n{result.stderr[-4000:]}")
    return result.stdout


def measure(k: int, chunk_px: int, work: Path) -> dict[str, float]:
    """Write the parts of a k x k chunk region, merge them in a fresh process; timings and memory."""
    (work / "parts").mkdir(parents=True)
    _python(_WRITE_PARTS, str(k), str(chunk_px), str(work / "parts"))
    row = json.loads(_python(_MERGE, str(work)).strip().splitlines()[-1])
    row["chunks"] = k * k
    row["polygons_per_s"] = row["polygons"] / row["seconds"]
    row["merge_mb"] = row["peak_rss_mb"] - row["rss_after_imports_mb"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--chunks", type=int, default=5, help="chunks per side of the 1x region (the 4x has 2k)"
    )
    parser.add_argument("--chunk-px", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="crobim-merge-") as tmp:
        for label, k in (("1x", args.chunks), ("4x", 2 * args.chunks)):
            print(f"writing and merging {k} x {k} chunks ...", flush=True)
            rows.append({"region": label, **measure(k, args.chunk_px, Path(tmp) / label)})
    print(f"\n{'region':>6} {'chunks':>6} {'polygons':>9} {'merge s':>8} {'polygons/s':>11} {'merge MB':>9}")
    for r in rows:
        print(
            f"{r['region']:>6} {r['chunks']:>6} {r['polygons']:>9} {r['seconds']:>8.1f} "
            f"{r['polygons_per_s']:>11.0f} {r['merge_mb']:>9.0f}"
        )
    one, four = rows
    print(
        f"\n4x / 1x: polygons {four['polygons'] / one['polygons']:.2f}, time {four['seconds'] / one['seconds']:.2f}, "
        f"merge memory {four['merge_mb'] / max(one['merge_mb'], 1e-9):.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
