"""Answer plain-language queries over a region: masks in Zarr, polygons in GeoParquet (PIPELINE.md §1-§5).

Example::

    python jobs/infer_region.py --bbox -69.2 44.3 -69.1 44.4 --query "buildings" --query "ponds near roads" \\
        --stac-url http://127.0.0.1:8080 --collection naip --model ckpt/crobim-tiny --out out/

Runs locally (``ray.init()``) or on a cluster (``--address`` or under ``ray job submit``). Re-running into the
same ``--out`` resumes; ``--overwrite`` starts clean; ``--dry-run`` prints the plan as JSON.
Exit codes: 0 done, 1 some chunks failed (listed in run.json and below), 2 bad input, 130 interrupted (Ctrl-C or
SIGTERM; rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from crobim.cli import add_console_arguments, configure_logging
from pipelines.query_grammar import DEFAULT_NEAR_M

if TYPE_CHECKING:
    from pipelines.demo.setup import DemoSetup
    from pipelines.region_config import RegionJobConfig
    from pipelines.run_document import RegionResult

__all__ = ["build_parser", "config_from_args", "main", "parse_args", "with_demo_defaults"]


class _AppendReplacingDefault(argparse.Action):
    """``append`` whose first use replaces the default list (``--demo``'s queries) instead of extending it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or items is self.default else list(items)
        setattr(namespace, self.dest, [*items, values])


def _add_query_arguments(p: argparse.ArgumentParser) -> None:
    """The queries, their relations and the model."""
    q = p.add_argument_group("queries and model")
    q.add_argument(
        "--query", action=_AppendReplacingDefault, default=[], help="plain-language query (repeatable)"
    )
    q.add_argument("--model", help="CroBIM checkpoint folder (local or s3://) or package.module:factory")
    q.add_argument(
        "--relations",
        choices=("auto", "vector", "model"),
        default="auto",
        help="auto: 'X near Y'-style queries are answered in vector space over the region, the rest by the model; "
        "vector: refuse queries that do not parse as relations; model: every query to the model as is "
        "(docs/queries.md)",
    )
    q.add_argument(
        "--near-m", type=float, default=DEFAULT_NEAR_M, help="distance of 'near' / 'not near' (metres)"
    )
    q.add_argument(
        "--inside-share", type=float, default=0.5, help="share of X's area inside Y for 'X inside Y'"
    )
    q.add_argument("--touch-m", type=float, help="tolerance of 'touching' (m; default: one output pixel)")
    q.add_argument(
        "--object-min-area",
        type=float,
        help="a relation's object polygons below this area (m^2) are speckle (default: ten output pixels)",
    )
    q.add_argument("--threshold", type=float, default=0.5, help="probability cut for polygons")
    q.add_argument("--min-area", type=float, default=0.0, help="drop polygons below this area (m^2)")
    q.add_argument("--simplify", type=float, help="simplify polygons with this tolerance (m)")


def build_parser() -> argparse.ArgumentParser:
    """The job's command line (also used by the quickstart and tests)."""
    p = argparse.ArgumentParser(
        prog="infer_region.py",
        description="Run CroBIM (or any RegionPredictor) over a bbox for one or more text queries.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    where = p.add_argument_group("region and imagery")
    where.add_argument("--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"), help="WGS84 degrees")
    src = where.add_mutually_exclusive_group()
    src.add_argument("--stac-url", help="STAC API root URL")
    src.add_argument("--catalog", help="ItemCollection JSON, NDJSON or stac-geoparquet file (local or s3://)")
    where.add_argument("--collection", action="append", default=[], help="collection id (repeatable)")
    where.add_argument("--datetime", help="'2023-01-01/2023-06-30', one date, or open '../2023-06-30'")
    where.add_argument("--max-cloud", type=float, help="largest eo:cloud_cover in percent")
    where.add_argument("--allow-missing-cloud", action="store_true", help="keep items without eo:cloud_cover")
    where.add_argument("--prefer", choices=("cloud", "recent"), default="cloud", help="item order")
    where.add_argument("--limit", type=int, help="use at most this many items (after ordering)")
    where.add_argument("--max-items-per-chunk", type=int, default=4, help="mosaic depth per chunk")
    where.add_argument("--max-area-km2", type=float, default=250_000.0, help="refuse larger bboxes")
    where.add_argument(
        "--max-tiles", type=int, default=1_000_000, help="refuse output grids needing more model tiles"
    )
    where.add_argument("--nodata", type=float, help="override the assets' nodata value")

    _add_query_arguments(p)

    g = p.add_argument_group("grid and tiling")
    g.add_argument(
        "--crs", help="output CRS (default: items' native metric CRS, else UTM of the bbox centre)"
    )
    g.add_argument("--resolution", type=float, help="pixel size in CRS units (default: native)")
    g.add_argument("--chunk-size", type=int, default=2048, help="processing chunk side (px)")
    g.add_argument("--tile-size", type=int, help="model tile side (px; default: the model's)")
    g.add_argument("--overlap", type=int, help="tile overlap V (px; default 128 at 480, scaled)")
    g.add_argument("--margin", type=int, help="discarded tile margin m (px; default 16 at 480, scaled)")
    g.add_argument("--blend", choices=("cosine", "clip"), default="cosine", help="tile blending")

    r = p.add_argument_group("execution")
    r.add_argument("--out", help="output folder (local or s3://)")
    r.add_argument("--batch-size", type=int, default=4, help="tiles per model call (fixed; last one padded)")
    r.add_argument("--actors", type=int, default=1, help="most inference actors")
    r.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per inference actor (0: CPU)")
    r.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per inference actor")
    r.add_argument("--read-cpus", type=float, default=1.0, help="CPUs reserved per read task")
    r.add_argument("--write-cpus", type=float, default=1.0, help="CPUs reserved per write task")
    r.add_argument("--torch-threads", type=int, help="torch threads per actor (default: its CPUs)")
    r.add_argument("--channels-last", action="store_true", help="CroBIM in channels-last memory format")
    r.add_argument(
        "--compile", action="store_true", help="torch.compile CroBIM's parts (first calls compile: minutes)"
    )
    r.add_argument(
        "--inference-resource",
        help="custom Ray resource the inference actors request (1 each), e.g. inference",
    )
    r.add_argument("--address", help="Ray cluster address (default: a local runtime)")
    r.add_argument(
        "--dashboard",
        action="store_true",
        help="start Ray's dashboard with the local runtime (off: it holds ~1 GB of memory; a cluster keeps its own)",
    )
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an earlier run's files in --out first (refused if the folder holds anything else)",
    )
    r.add_argument("--dry-run", action="store_true", help="print the plan as JSON and exit")
    r.add_argument("--html", action="store_true", help="also write map.html (offline Leaflet map)")
    r.add_argument(
        "--demo",
        action="store_true",
        help="offline quickstart: demo region (generated on first use, cached), its catalog, the shipped demo "
        "model, default queries, out/demo, map.html and a precision/recall report; flags you give win",
    )
    add_console_arguments(r)
    return p


def config_from_args(args: argparse.Namespace) -> RegionJobConfig:
    """The ``RegionJobConfig`` the parsed arguments describe.

    Raises:
        ValueError: A required flag is missing or a value is invalid.
    """
    from pipelines.region_config import RegionJobConfig

    missing = [flag for flag, value in (("--bbox", args.bbox), ("--model", args.model)) if value is None]
    if not args.dry_run and args.out is None:
        missing.append("--out")
    if missing:
        raise ValueError(f"missing {', '.join(missing)}; see --help")
    return RegionJobConfig(
        bbox=tuple(args.bbox),
        queries=tuple(args.query),
        out=args.out or "",
        model=args.model,
        stac_url=args.stac_url,
        catalog=args.catalog,
        collections=tuple(args.collection),
        datetime=args.datetime,
        max_cloud=args.max_cloud,
        allow_missing_cloud=args.allow_missing_cloud,
        prefer=args.prefer,
        limit=args.limit,
        max_items_per_chunk=args.max_items_per_chunk,
        max_area_km2=args.max_area_km2,
        max_tiles=args.max_tiles,
        crs=args.crs,
        resolution=args.resolution,
        nodata=args.nodata,
        chunk_size_px=args.chunk_size,
        tile_size_px=args.tile_size,
        overlap_px=args.overlap,
        margin_px=args.margin,
        blend=args.blend,
        threshold=args.threshold,
        relations=args.relations,
        near_m=args.near_m,
        inside_share=args.inside_share,
        touch_m=args.touch_m,
        object_min_area_m2=args.object_min_area,
        min_area_m2=args.min_area,
        simplify_m=args.simplify,
        batch_size=args.batch_size,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        read_cpus=args.read_cpus,
        write_cpus=args.write_cpus,
        torch_threads=args.torch_threads,
        channels_last=args.channels_last,
        compile_model=args.compile,
        inference_resource=args.inference_resource,
        overwrite=args.overwrite,
        html=args.html,
        progress=not args.no_progress,
        dashboard=args.dashboard,
    )


def _print_summary(r: RegionResult) -> None:
    c = r.counts
    t = r.timings_s
    ch = c["chunks"]
    print(f"\nRegion job {r.status}: {r.out}")
    print(
        f"  chunks: {ch['total']} total, {ch['done']} done ({ch['done_this_run']} this run, "
        f"{ch['skipped_done_before']} resumed), {ch['empty']} without imagery, {ch['failed']} failed"
    )
    print(
        f"  tiles: {c['tiles']} ({c['tile_query_decodes']} tile-query decodes), imagery: {c['valid_km2']:.3f} km^2"
    )
    for query, n in r.polygons_per_query.items():  # answer polygons (sub-queries are in the file too)
        print(f"  polygons for {query!r}: {n}")
    print(
        f"  throughput: {t['tiles_per_s']:.2f} tiles/s, {t['km2_per_h']:.1f} km^2/h "
        f"(GSD {t['gsd_m']:.2f} m, {t['expressions']} expressions decoded, rho = {t['rho']:.2f}); "
        f"time: {t['total_s']:.1f} s (pipeline {t['pipeline_s']:.1f} s)"
    )
    for f in r.failures:
        print(f"  FAILED chunk {f['chunk_id']} ({f['stage']}): {f['reason']}", file=sys.stderr)
    if r.failures:
        print("  rerun the same command to retry the failed chunks", file=sys.stderr)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, DemoSetup | None]:
    """Parse the command line; with ``--demo``, the demo's inputs are the defaults and the user's flags win."""
    parser = build_parser()
    return with_demo_defaults(parser, parser.parse_args(argv), argv)


def with_demo_defaults(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None
) -> tuple[argparse.Namespace, DemoSetup | None]:
    """``args`` as they are without ``--demo``; with it, parsed again with the demo's inputs as the defaults."""
    if not args.demo:
        return args, None
    from pipelines.demo.setup import DEMO_OUT, DEMO_QUERIES, demo_model_path, demo_torch_threads, prepare_demo

    setup = prepare_demo()
    defaults = {
        "bbox": list(setup.bbox),
        "model": str(demo_model_path()),
        "query": list(DEMO_QUERIES),
        "out": DEMO_OUT,
        "torch_threads": demo_torch_threads(),
        "html": True,
        "near_m": setup.near_m,  # the demo region's own "near" rule, which its truth uses
    }
    if args.stac_url is None:
        defaults["catalog"] = str(setup.catalog)
    parser.set_defaults(**defaults)
    return parser.parse_args(argv), setup


def main(argv: list[str] | None = None) -> int:
    """Parse, plan or run, print the summary; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)  # before the demo region is generated: it logs its progress
    from pipelines.errors import PipelineError
    from pipelines.provenance import FingerprintMismatchError

    try:
        args, demo = with_demo_defaults(parser, args, argv)
        config = config_from_args(args)
        if args.dry_run:
            from pipelines.plan import plan_region

            print(json.dumps(plan_region(config).to_json(), indent=2))
            return 0
        from pipelines.region import run_region

        result = run_region(config, address=args.address)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, KeyError, PipelineError) as exc:
        kind = "settings differ" if isinstance(exc, FingerprintMismatchError) else type(exc).__name__
        print(f"error ({kind}): {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during the run: run.json says "interrupted"
        from pipelines.region import resume_command

        cause = f"by {exc}" if str(exc) else "by Ctrl-C"
        command = resume_command(sys.argv[1:] if argv is None else argv)
        print(f"\ninterrupted {cause}; finished chunks are kept, resume with: {command}", file=sys.stderr)
        return 130
    _print_summary(result)
    if demo is not None:
        from pipelines.demo.report import format_demo_report, write_demo_report

        print(format_demo_report(write_demo_report(config.out, demo, list(config.queries), config.bbox)))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
