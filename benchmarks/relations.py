"""Relation step cost at region scale: time and peak memory for a region and one 4x larger, one process vs partitioned.

The relation step (``pipelines.relations_partitioned.answer_queries``) runs after the seam merge over
``polygons.parquet``. This benchmark writes a synthetic region of ponds (small squares, ``--ponds-per-km2``) and
roads (8 m wide, 0.2-0.9 km long) tiled over k x k km and 2k x 2k km, sorted by the Hilbert key of each bbox centre
and written as GeoParquet 1.1 with the ``bbox`` covering column in small row groups, so bbox reads touch few row
groups. Each variant answers "ponds within 50 m of roads" and "ponds not near roads" (near = 100 m) in a fresh
subprocess: ``single`` (read the whole file, one process), ``local`` (cells one after another), ``ray`` (Ray tasks),
``dask`` (dask-geopandas partitions, threads) and ``dask-ray`` (the same on Dask-on-Ray). Memory is the peak RSS of
each process involved: the driver (``getrusage``) and every Ray worker (``VmHWM`` from /proc, read with psutil
before Ray shuts down). Variants and regions run interleaved (all variants for 1x, then 4x, per repeat); the table
shows medians over ``--repeats``.

Usage: ``.venv/bin/python benchmarks/relations.py [--km 6] [--repeats 1] [--json out.json]``
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
VARIANTS = ("single", "local", "ray", "dask", "dask-ray")

_WRITE = """
import sys
import geopandas as gpd, numpy as np, shapely
km, density, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ids, queries, geoms = [], [], []
for ti in range(km):
    for tj in range(km):
        rng = np.random.default_rng(1000 * ti + tj)  # per tile: the 4x region contains the 1x one
        x0, y0 = 500_000.0 + 1000 * tj, 5_000_000.0 + 1000 * ti
        xy = rng.uniform(0, 1000, (density, 2)) + (x0, y0)
        side = rng.uniform(5, 30, density)
        geoms += list(shapely.box(xy[:, 0], xy[:, 1], xy[:, 0] + side, xy[:, 1] + side))
        ids += [f"q000-t{ti:03d}{tj:03d}-{n:05d}" for n in range(density)]
        queries += ["all ponds"] * density
        for n in range(8):
            x, y = rng.uniform(0, 1000, 2) + (x0, y0)
            long = rng.uniform(200, 900)
            geoms.append(shapely.box(x, y, x + long, y + 8) if n % 2 else shapely.box(x, y, x + 8, y + long))
            ids.append(f"q001-t{ti:03d}{tj:03d}-{n:05d}")
            queries.append("all roads")
gdf = gpd.GeoDataFrame({"polygon_id": ids, "query_id": [int(q == "all roads") for q in queries], "query": queries,
                        "score_mean": 0.8, "area_m2": shapely.area(np.asarray(geoms))}, geometry=geoms, crs=32631)
gdf = gdf.iloc[np.argsort(gdf.geometry.hilbert_distance(), kind="stable")]  # bbox centres, Hilbert order
gdf.to_parquet(out, compression="zstd", index=False, schema_version="1.1.0", write_covering_bbox=True,
               row_group_size=2000)
print(len(gdf))
"""

_RUN = """
import json, os, resource, sys, time
variant, uri, partition_m = sys.argv[1], sys.argv[2], float(sys.argv[3])
from pipelines.query_grammar import parse_query
from pipelines.relations_partitioned import answer_queries
queries = [(0, parse_query("ponds within 50 m of roads")), (1, parse_query("ponds not near roads", near_m=100))]
kw = {"touch_m": 1.0, "partition_m": partition_m}
if variant.endswith("ray"):
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
if variant == "dask-ray":
    kw.update(backend="dask", dask_scheduler="ray")
else:
    kw["backend"] = variant
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
out = answer_queries(uri, queries, **kw)
seconds = time.perf_counter() - t0
driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
workers = []
if variant.endswith("ray"):
    import psutil
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name().startswith("ray::") or "default_worker.py" in " ".join(p.cmdline()):
                hwm = [ln for ln in open(f"/proc/{p.pid}/status") if ln.startswith("VmHWM")][0]
                workers.append(int(hwm.split()[1]) / 1024)
        except (psutil.Error, OSError, IndexError):
            pass
    ray.shutdown()
import dask, dask_geopandas, hashlib
digest = hashlib.sha256(out[["polygon_id", "distance_m", "nearest_id"]].to_csv().encode()).hexdigest()[:16]
print(json.dumps({"answers": len(out), "digest": digest, "seconds": seconds, "driver_after_imports_mb": base, "driver_peak_mb": driver,
                  "worker_peak_mb": max(workers, default=0.0), "workers": len(workers),
                  "peak_mb": max([driver, *workers]), "dask": dask.__version__,
                  "dask_geopandas": dask_geopandas.__version__}))
"""


def _python(code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise RuntimeError(f"benchmark step failed:\n{result.stderr[-4000:]}")
    return result.stdout


def _table(rows: list[dict]) -> None:
    print(f"\n{'variant':>9} {'region':>6} {'polygons':>9} {'answers':>8} {'seconds':>8} {'peak MB':>8} "
          f"{'driver MB':>9} {'driver +MB':>10} {'worker MB':>9}")  # fmt: skip
    for r in rows:
        print(
            f"{r['variant']:>9} {r['region']:>6} {r['polygons']:>9} {r['answers']:>8} {r['seconds']:>8.1f} "
            f"{r['peak_mb']:>8.0f} {r['driver_peak_mb']:>9.0f} "
            f"{r['driver_peak_mb'] - r['driver_after_imports_mb']:>10.0f} {r['worker_peak_mb']:>9.0f}"
        )
    print()
    for v in sorted({r["variant"] for r in rows}, key=VARIANTS.index):
        one, four = (next(r for r in rows if r["variant"] == v and r["region"] == g) for g in ("1x", "4x"))
        print(f"{v:>9}: 4x / 1x peak memory {four['peak_mb'] / one['peak_mb']:.2f}, "
              f"time {four['seconds'] / one['seconds']:.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--km", type=int, default=6, help="side of the 1x region in km (the 4x has 2x the side)"
    )
    parser.add_argument("--ponds-per-km2", type=int, default=600)
    parser.add_argument(
        "--partition-m", type=float, default=2000.0, help="cell side of the partitioned variants"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the rows (medians) here")
    args = parser.parse_args()
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="crobim-relations-") as tmp:
        polygons = {}
        for label, km in (("1x", args.km), ("4x", 2 * args.km)):
            uri = f"{tmp}/{label}.parquet"
            polygons[label] = (uri, int(_python(_WRITE, str(km), str(args.ponds_per_km2), uri).split()[-1]))
        for rep in range(args.repeats):
            for label, (uri, _) in polygons.items():
                for variant in args.variants:
                    print(f"repeat {rep + 1}: {variant} on {label} ...", flush=True)
                    out = _python(_RUN, variant, uri, str(args.partition_m)).strip().splitlines()[-1]
                    runs.setdefault((variant, label), []).append(json.loads(out))
    rows = []
    for (variant, label), rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
        rows.append({"variant": variant, "region": label, "polygons": polygons[label][1], "repeats": len(rs),
                     **med, "digest": rs[0]["digest"], "dask": rs[0]["dask"], "dask_geopandas": rs[0]["dask_geopandas"]})  # fmt: skip
    rows.sort(key=lambda r: (VARIANTS.index(r["variant"]), r["region"]))
    for label in polygons:  # every variant gives the same rows and distances
        digests = {r["variant"]: r["digest"] for r in rows if r["region"] == label}
        if len(set(digests.values())) != 1:
            raise SystemExit(f"variants disagree on the {label} answers: {digests}")
    _table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
