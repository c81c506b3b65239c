"""Memory of ``jobs/summarize.py``'s library call on a region and one 4x larger (issue 23, must-show 3).

Writes two synthetic ``masks.zarr`` through the pipeline's writer (``create_zarr_template`` +
``write_zarr_chunk``, chunk by chunk: ``--px`` and 2 x ``--px`` pixels square, 1 m UTM pixels, ``--chunk-px``
Zarr chunks, two queries with smooth synthetic probabilities), then summarises each over ``--cell-m`` cells and over
a set of zones in a fresh process, interleaved (1x, 4x, 1x, 4x, ...), printing the median peak RSS (``ru_maxrss``),
the RSS after imports and the seconds of each. The claim checked: peak(4x) <= 1.3 x peak(1x).

Usage: ``.venv/bin/python benchmarks/summarize_memory.py [--px 4096] [--chunk-px 512] [--repeats 2] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_WRITE = """
import sys
import numpy as np
from rasterio.crs import CRS
from pipelines.grid import ChunkSpec, OutputGrid
from pipelines.write import create_zarr_template, write_zarr_chunk
px, zc, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
grid = OutputGrid(CRS.from_epsg(32633).to_wkt(), (1.0, 0.0, 400000.0, 0.0, -1.0, 5000000.0), px, px)
create_zarr_template(out + "/masks.zarr", grid, ["roofs", "fields"], zc)
yy, xx = np.mgrid[0:zc, 0:zc].astype(np.float32)
valid = np.ones((zc, zc), np.uint8)
for r in range(0, px, zc):
    for c in range(0, px, zc):
        a = np.sin((xx + c) / 97.0) * np.cos((yy + r) / 131.0)
        prob = np.stack([(a + 1) * 127.5, (1 - a) * 127.5]).round().astype(np.uint8)
        write_zarr_chunk(out + "/masks.zarr", ChunkSpec(f"r{r}c{c}", r // zc, c // zc, r, c, zc, zc, 0), prob, valid)
import geopandas as gpd, shapely
step = 1000.0  # zones: a 1 km lattice of diamonds (not aligned to chunks), stored in EPSG:4326
n = int(px // step)
cx, cy = np.meshgrid(400000 + step * (np.arange(n) + 0.5), 5000000 - step * (np.arange(n) + 0.5))
d = [shapely.Polygon([(x - 600, y), (x, y + 600), (x + 600, y), (x, y - 600)]) for x, y in zip(cx.ravel(), cy.ravel())]
gpd.GeoDataFrame({"name": [f"z{i}" for i in range(len(d))]}, geometry=d, crs="EPSG:32633").to_crs(4326).to_parquet(out + "/zones.parquet")
"""

_SUMMARIZE = """
import json, resource, sys, time
from pipelines.summarize import summarize
import dask.array, xarray, zarr, rasterio.features  # imports counted in the baseline
out, mode, cell_m = sys.argv[1], sys.argv[2], float(sys.argv[3])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
kw = {"cell_m": cell_m} if mode == "cells" else {"zones": out + "/zones.parquet"}
result = summarize(out, output=out + f"/summary_{mode}.parquet", **kw)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": len(result.table), "seconds": seconds, "rss_after_imports_mb": base / 1024,
                  "peak_rss_mb": peak / 1024}))
"""


def _python(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"subprocess failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    """Write both regions, run the interleaved summaries, print the table; returns 0 when the claim holds."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--px", type=int, default=4096, help="side of the 1x region in pixels (the 4x is 2 x px)")
    p.add_argument("--chunk-px", type=int, default=512, help="Zarr chunk side")
    p.add_argument("--cell-m", type=float, default=256.0, help="cell side (1 m pixels)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each region and mode (medians reported)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="summarize-bench-") as tmp:
        sizes = {"1x": args.px, "4x": 2 * args.px}
        for name, px in sizes.items():
            Path(tmp, name).mkdir()
            _python(_WRITE + "\nprint('ok')", str(px), str(args.chunk_px), str(Path(tmp, name)))
        for mode in ("cells", "zones"):
            runs: dict[str, list[dict]] = {name: [] for name in sizes}
            for _ in range(args.repeats):
                for name in sizes:  # interleaved: 1x, 4x, 1x, 4x
                    out = _python(_SUMMARIZE, str(Path(tmp, name)), mode, str(args.cell_m))
                    runs[name].append(json.loads(out))
            for name, px in sizes.items():
                med = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
                rows.append({"mode": mode, "region": name, "px": px, **med})
    print(
        f"{'mode':6} {'region':6} {'pixels':>12} {'rows':>6} {'seconds':>8} {'rss imports MB':>15} {'peak MB':>8}"
    )
    for r in rows:
        print(
            f"{r['mode']:6} {r['region']:6} {r['px']:>5} x {r['px']:<5} {int(r['rows']):>6} {r['seconds']:>8.1f} "
            f"{r['rss_after_imports_mb']:>15.0f} {r['peak_rss_mb']:>8.0f}"
        )
    ok = True
    for mode in ("cells", "zones"):
        one, four = (next(r for r in rows if r["mode"] == mode and r["region"] == n) for n in ("1x", "4x"))
        ratio = four["peak_rss_mb"] / one["peak_rss_mb"]
        ok &= ratio <= 1.3
        print(
            f"{mode}: peak(4x) / peak(1x) = {ratio:.2f} (claim: <= 1.3) {'OK' if ratio <= 1.3 else 'FAILED'}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
