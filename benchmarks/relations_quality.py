"""Answer quality of relation queries: composed in vector space (``--relations auto``) vs the model (``model``).

On a SynRS region that is not the demo's (another seed, the demo's size and resolution), with the shipped demo
model, the same queries run twice, once per ``--relations`` mode, in one local Ray runtime; each answer is scored
against the region's true objects exactly as the quickstart's report scores it (area precision and recall; a true
pond is "near" a road by the region's own rule, a pixel-set distance of ``near_m``).

Usage: ``.venv/bin/python benchmarks/relations_quality.py [--seed 7] [--size-px 1536] [--work DIR] [--json PATH]
[--modes auto model]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.demo.region import make_region  # noqa: E402
from pipelines.demo.report import write_demo_report  # noqa: E402
from pipelines.demo.setup import DEMO_REGION, DemoSetup, demo_model_path, demo_torch_threads  # noqa: E402
from pipelines.region import run_region  # noqa: E402
from pipelines.region_config import RegionJobConfig  # noqa: E402


def _region(work: Path, seed: int, size_px: int) -> DemoSetup:
    settings = {**DEMO_REGION, "seed": seed, "size_px": size_px}
    scene = make_region(work / f"region-{seed}-{size_px}", **settings)
    west, south, east, north = (float(v) for v in scene.bbox_wgs84)
    return DemoSetup(
        scene.out_dir, scene.catalog_path, scene.truth_path, (west, south, east, north), scene.info
    )


def _run(setup: DemoSetup, queries: list[str], mode: str, out: Path) -> dict[str, object]:
    config = RegionJobConfig(
        bbox=setup.bbox,
        queries=tuple(queries),
        out=str(out),
        model=str(demo_model_path()),
        catalog=str(setup.catalog),
        relations=mode,  # type: ignore[arg-type]
        near_m=setup.near_m,
        torch_threads=demo_torch_threads(),
        overwrite=True,
        progress=False,
    )
    start = time.perf_counter()
    result = run_region(config)
    seconds = time.perf_counter() - start
    report = write_demo_report(str(out), setup, queries, setup.bbox)
    rows = {}
    for query in queries:
        area = report["queries"][query]["area"]
        rows[query] = {k: area[k] for k in ("precision", "recall", "iou")}
    return {
        "mode": mode,
        "seconds": round(seconds, 1),
        "tiles": result.counts["tiles"],
        "tile_query_decodes": result.counts["tile_query_decodes"],
        "queries": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=7, help="region seed (the demo's is 2024)")
    p.add_argument("--size-px", type=int, default=int(DEMO_REGION["size_px"]), help="region side (px)")
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument(
        "--modes", nargs="+", default=["auto", "model"], choices=["auto", "model"], help="modes to run"
    )
    args = p.parse_args(argv)
    if args.seed == DEMO_REGION["seed"]:
        p.error("choose a seed other than the demo region's")
    import ray

    with tempfile.TemporaryDirectory(prefix="relq-") as tmp:
        work = args.work or Path(tmp)
        setup = _region(work, args.seed, args.size_px)
        near = setup.near_m
        queries = [
            f"all ponds within {near:g} m of roads",
            "all ponds near roads",
            "all ponds not near roads",
        ]
        ray.init(runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
        try:
            results = [
                _run(setup, queries, mode, work / f"out-{args.seed}-{args.size_px}-{mode}")
                for mode in args.modes
            ]
        finally:
            ray.shutdown()
    print(
        f"SynRS region seed {args.seed}, {args.size_px} px at {DEMO_REGION['gsd_m']} m, near rule {near:g} m"
    )
    print(f"{'mode':<6} {'query':<36} {'precision':>9} {'recall':>7} {'IoU':>6} {'decodes':>8} {'time s':>7}")
    for r in results:
        for query, m in r["queries"].items():  # type: ignore[union-attr]
            cells = [f"{m[k]:.3f}" if m[k] is not None else "-" for k in ("precision", "recall", "iou")]
            print(
                f"{r['mode']:<6} {query:<36} {cells[0]:>9} {cells[1]:>7} {cells[2]:>6} "
                f"{r['tile_query_decodes']:>8} {r['seconds']:>7}"
            )
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "near_m": near, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
