"""Per-query area statistics of a region job's outputs over a grid of cells or over zones (issue 23).

Example::

    python jobs/summarize.py --out out/demo --cell-m 256
    python jobs/summarize.py --out out/demo --zones districts.parquet --threshold 0.6 --output districts.parquet

Reads ``masks.zarr`` lazily with xarray + dask (chunk by chunk: memory does not grow with the region) and
streams ``polygons.parquet``; writes one GeoParquet row per cell or zone and query (default
``<out>/summary.parquet``) and prints totals per query and the top cells. With ``--address`` the dask graph runs
on that Ray cluster (Dask-on-Ray; ``auto`` joins the cluster this runs on, e.g. under ``ray job submit``);
without it, on dask's threads. Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

from crobim.cli import add_console_arguments, configure_logging

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The job's command line."""
    p = argparse.ArgumentParser(
        prog="summarize.py",
        description="Area per query over cells or zones, from a region job's masks.zarr and polygons.parquet.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="the region job's output folder (local or s3://)")
    units = p.add_mutually_exclusive_group(required=True)
    units.add_argument("--cell-m", type=float, help="square cells of this side in the grid CRS (metres)")
    units.add_argument("--zones", help="GeoParquet file of zone polygons (any CRS)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability cut for mask areas")
    p.add_argument("--output", help="GeoParquet to write (default: <out>/summary.parquet)")
    p.add_argument("--address", help="Ray cluster address: run the dask graph on Ray (default: dask threads)")
    p.add_argument("--top", type=int, default=5, help="cells or zones listed per query")
    add_console_arguments(p, progress=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    from pipelines.summarize import format_summary, summarize

    try:
        result = summarize(
            args.out,
            cell_m=args.cell_m,
            zones=args.zones,
            threshold=args.threshold,
            output=args.output,
            scheduler="ray" if args.address else "threads",
            address=args.address,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(result, top=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
