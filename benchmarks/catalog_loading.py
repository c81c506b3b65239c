"""``--catalog`` on a large stac-geoparquet file: search time and peak memory, Arrow pushdown vs the full read.

Writes (once, cached under the temp folder) a stac-geoparquet catalog of ``--items`` synthetic Sentinel-2 items
built from a real Earth Search item (``../shared/data/stac``): each keeps the real properties and four assets, with
its own id, footprint (a 1-degree raster over Europe), datetime (2024-2025, file in time order) and cloud cover.
Then runs the dry-run search of a region job (``pipelines.stac.search_items`` with ``catalog=``: pushdown, then
filters, de-duplication, order) and the loader the project had before (every row becomes a pystac Item, then the
same filters and order: reproduced here only, the production code has one path), each in a fresh process,
interleaved A, B, A, B, ...; prints medians of wall and CPU seconds and of peak RSS (``VmHWM``) per variant and checks both
select the same ids.

Usage: ``.venv/bin/python benchmarks/catalog_loading.py [--items 100000] [--repeats 3] [--json out.json]``
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
S2_FILE = REPO.parent / "shared" / "data" / "stac" / "sentinel2_c1_l2a_earthsearch_items.json"
#: The search: a 2 x 2 degree box in northern Italy (16 tiles touch it), three months, at most 30 % cloud.
SEARCH = {"bbox": [10.0, 44.0, 12.0, 46.0], "datetime": "2025-05/2025-07", "max_cloud": 30.0}

_CHILD = """
import json, re, sys, time
mode, path, search = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def hwm_mb():  # VmHWM: this process image's peak RSS (ru_maxrss would carry the parent's peak across exec)
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read())[1]) / 1024
import pystac, pyarrow.parquet as pq, stac_geoparquet.arrow
from pipelines.stac import search_items
from pipelines.stac_files import _items_from_dicts
from pipelines.stac_selection import deduplicate, filter_items, parse_datetime_range, sort_items
base = hwm_mb()
t0, c0 = time.perf_counter(), time.process_time()
if mode == "pushdown":
    ids = [it.id for it in search_items(catalog=path, **search)]
else:  # the previous loader: every row becomes an item, then the same selection
    items = _items_from_dicts(stac_geoparquet.arrow.stac_table_to_items(pq.read_table(path)), path)
    rng = parse_datetime_range(search["datetime"])
    kept = filter_items(items, tuple(search["bbox"]), rng, None, search["max_cloud"])
    ids = [it.id for it in sort_items(deduplicate(kept))]
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_mb": hwm_mb(), "after_imports_mb": base, "ids": ids}))
"""


def _write_catalog(n: int, path: Path) -> None:
    """``n`` items from the real template, in datetime order, written with stac-geoparquet's writer."""
    import datetime as dt
    import random

    import stac_geoparquet.arrow

    template = json.loads(S2_FILE.read_text())["features"][1]
    template["assets"] = {k: template["assets"][k] for k in ("red", "green", "blue", "visual")}
    rnd = random.Random(0)
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    step = dt.timedelta(days=730) / n

    def items():
        for k in range(n):
            w, s = -10.0 + (k * 7919) % 40, 35.0 + (k * 104729) % 25  # a 40 x 25 raster of 1-degree tiles
            item = json.loads(json.dumps(template))
            item["id"] = f"S2X_{k:07d}_L2A"
            item["bbox"] = [w, s, w + 1.0, s + 1.0]
            ring = [[w, s], [w + 1.0, s], [w + 1.0, s + 1.0], [w, s + 1.0], [w, s]]
            item["geometry"] = {"type": "Polygon", "coordinates": [ring]}
            props = item["properties"]
            props["datetime"] = (t0 + k * step).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            props["eo:cloud_cover"] = round(rnd.uniform(0, 100), 3)
            props["s2:datatake_id"] = f"GS2X_{k:07d}_N05.11"
            for asset in item["assets"].values():
                asset["href"] = f"https://example.invalid/{item['id']}/{asset['href'].rsplit('/', 1)[-1]}"
            yield item

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    stac_geoparquet.arrow.to_parquet(stac_geoparquet.arrow.parse_stac_items_to_arrow(items()), tmp)
    tmp.rename(path)


def _run(mode: str, path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path), json.dumps(SEARCH)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    if proc.returncode:
        raise RuntimeError(f"{mode} run failed: {proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main() -> None:
    """Parse flags, write the catalog if needed, run both variants interleaved, print medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    path = Path(tempfile.gettempdir()) / "crobim_bench_catalog" / f"items_{args.items}.parquet"
    if not path.exists():
        _write_catalog(args.items, path)
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    runs: dict[str, list[dict]] = {"full": [], "pushdown": []}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(_run(mode, path))
    ids = {mode: r[0]["ids"] for mode, r in runs.items()}
    assert ids["full"] == ids["pushdown"], "the two loaders selected different items"
    summary = {
        "items": args.items,
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "row_groups": meta.num_row_groups,
        "selected": len(ids["full"]),
        "search": SEARCH,
    }
    for mode, rs in runs.items():
        summary[mode] = {
            "seconds_median": round(statistics.median(r["seconds"] for r in rs), 2),
            "cpu_seconds_median": round(statistics.median(r["cpu_seconds"] for r in rs), 2),
            "peak_rss_mb_median": round(statistics.median(r["peak_mb"] for r in rs)),
            "rss_after_imports_mb_median": round(statistics.median(r["after_imports_mb"] for r in rs)),
            "seconds_all": [round(r["seconds"], 2) for r in rs],
        }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
