"""Region job throughput, memory and query cost with crobim-tiny on CPU (issue 5, PIPELINE.md §6).

Measured side by side in one run, on one local Ray runtime:

1. Pipeline efficiency: region tiles/s (the whole Ray Data pipeline: read, infer, blend, write, including
   start-up) over bare ``predict`` tiles/s on the same tiles, same micro-batches, same thread count; and the
   marginal efficiency, the extra bare ``predict`` time of the 4x region over the 1x one divided by the extra
   pipeline wall time: the fixed start-up (Ray, worker imports, model load) cancels, leaving the rate a long run
   settles at.
2. Peak memory of a region and of a region 4x larger (same chunk size): the peak of the summed RSS of the driver
   and its descendants (the local Ray runtime's raylet and workers), sampled every 0.1 s.
3. Query cost: the same region with 4 queries vs 1 (end to end), and bare ``predict`` with 4 vs 1; then
   ``CroBIMPredictor.predict`` with 4 vs 1 queries for each ``--query-cost`` model (a preset plus dotted
   overrides, random weights) on the job's micro-batches (``--batch-size`` tiles a call), with the CPU default of
   one tile-query pair per decoder pass and with all of a micro-batch's pairs in one pass: the ratio is set by the
   model's split between the image encoder (once per tile) and the per-pair decoder.

Each region runs in its own local Ray runtime (started and shut down around it), so both peaks count the same
fixed processes.

Usage: ``.venv/bin/python benchmarks/region_throughput.py [--size-px 1024] [--chunk-size 512] [--json out.json]
[--query-cost crobim-tiny crobim-region crobim-swin-b ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

QUERIES = ["all buildings", "the roads", "ponds", "trees near ponds"]


class PeakMemory:
    """Samples this process and its descendants (Ray's local processes); keeps the peaks of their summed RSS and PSS.

    RSS counts a page shared by several processes (libraries, copy-on-write pages of a forked worker, the object
    store) once in each; PSS shares it out among them, so the summed PSS is the tree's real footprint.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int]:
        # This process and its descendants only: a local ray.init() starts the raylet, which forks the workers,
        # so other Ray sessions on the machine are not counted.
        me = psutil.Process()
        rss = pss = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        return rss, pss

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = self._sample()
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_region(scene, ckpt: Path, out: Path, queries: list[str], args) -> dict:
    from pipelines.region import run_region
    from pipelines.region_config import RegionJobConfig

    config = RegionJobConfig(
        bbox=scene.bbox_wgs84,
        queries=tuple(queries),
        out=str(out),
        model=str(ckpt),
        catalog=str(scene.catalog_path),
        chunk_size_px=args.chunk_size,
        batch_size=args.batch_size,
        cpus_per_actor=1.0,
        read_cpus=args.read_cpus,
        write_cpus=args.write_cpus,
        torch_threads=args.threads,
        progress=False,
    )
    with PeakMemory() as mem:
        result = run_region(config)
    assert result.ok, result.failures
    return {
        "tiles": result.counts["tiles"],
        "chunks": result.counts["chunks"]["done"],
        "pipeline_s": result.timings_s["pipeline_s"],
        "tiles_per_s": result.counts["tiles"] / result.timings_s["pipeline_s"],
        "actor_infer_s": result.timings_s["infer_actor_s"],
        "km2_per_h": result.timings_s["km2_per_h"],
        "peak_rss_mb": mem.peak / 2**20,
        "polygons": result.counts["polygons"],
    }


def bare_predict(scene, ckpt: Path, queries: list[str], args) -> dict:
    """predict() alone over exactly the tiles the pipeline runs, in the same padded micro-batches."""
    import torch

    from pipelines.blend import cut_tiles
    from pipelines.plan import plan_region
    from pipelines.predict import load_predictor
    from pipelines.read import read_chunk
    from pipelines.region_config import RegionJobConfig
    from pipelines.stac_files import load_catalog

    torch.set_num_threads(args.threads)
    config = RegionJobConfig(
        bbox=scene.bbox_wgs84,
        queries=tuple(queries),
        out="",
        model=str(ckpt),
        catalog=str(scene.catalog_path),
        chunk_size_px=args.chunk_size,
    )
    items = load_catalog(str(scene.catalog_path))
    plan = plan_region(config, items)
    predictor = load_predictor(str(ckpt), device="cpu")
    s, b = plan.lattice.tile_size_px, args.batch_size
    n_tiles, seconds = 0, 0.0
    for chunk in plan.chunks:
        if chunk.empty:
            continue
        img = read_chunk(chunk, plan.grid, items)
        origin = (chunk.row_off - chunk.halo_px, chunk.col_off - chunk.halo_px)
        tiles = [t for _, t in cut_tiles(img.rgb, origin, plan.tiles[chunk.chunk_id], s, valid=img.valid)]
        for k in range(0, len(tiles), b):
            batch = np.zeros((b, s, s, 3), dtype=np.uint8)
            part = tiles[k : k + b]
            batch[: len(part)] = np.stack(part)
            start = time.perf_counter()
            predictor.predict(batch, list(queries))
            seconds += time.perf_counter() - start
        n_tiles += len(tiles)
    return {"tiles": n_tiles, "predict_s": seconds, "tiles_per_s": n_tiles / seconds}


def query_cost(spec: str, image: np.ndarray, args) -> dict:
    """Seconds of ``predict`` with 4 queries over 1 on the same micro-batches of ``image`` (H, W, 3) tiles, for
    ``preset[:key=value,...]``; both also with all of a micro-batch's pairs decoded in one pass."""
    import torch

    from crobim.modeling import build_model
    from crobim.training.config import TrainConfig, build_model_config, parse_override
    from pipelines.predict import CroBIMPredictor

    name, _, rest = spec.partition(":")
    overrides = dict(parse_override(item) for item in rest.split(",") if item)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = build_model_config(TrainConfig.from_dict({"model": name, "model_overrides": overrides}))
    predictor = CroBIMPredictor(build_model(cfg))  # CPU: one pair per decoder pass
    one_pass = CroBIMPredictor(predictor.model, pairs_per_pass=args.batch_size * len(QUERIES))
    s, b = predictor.tile_size, args.batch_size
    # Tiles at half-tile steps (overlapping, as the job's tiles do), so large tiles still give several batches.
    corners = [
        (r, c)
        for r in range(0, image.shape[0] - s + 1, s // 2)
        for c in range(0, image.shape[1] - s + 1, s // 2)
    ][: args.query_cost_tiles]
    if len(corners) < args.query_cost_tiles:
        raise ValueError(
            f"the region ({image.shape[:2]}) has fewer than {args.query_cost_tiles} {s} px tiles"
        )
    tiles = np.stack([image[r : r + s, c : c + s] for r, c in corners])
    batches = [tiles[k : k + b] for k in range(0, len(tiles), b)]
    runs = {
        "q1": (predictor, QUERIES[:1]),
        "q4": (predictor, QUERIES),
        "q1_one_pass": (one_pass, QUERIES[:1]),
        "q4_one_pass": (one_pass, QUERIES),
    }
    for pred, queries in runs.values():
        pred.predict(batches[0][:1], queries)  # warm-up (allocator, text cache)
    out = {"tile_px": s, "tiles": len(tiles), "batch_size": b} | {f"predict_s_{key}": 0.0 for key in runs}
    # Interleaved per micro-batch, so drift in the machine's speed affects every setting alike, and the order
    # rotated from one micro-batch to the next, so no setting always runs first.
    keys = list(runs)
    for k, batch in enumerate(batches):
        for key in keys[k % len(keys) :] + keys[: k % len(keys)]:
            pred, queries = runs[key]
            start = time.perf_counter()
            pred.predict(batch, queries)
            out[f"predict_s_{key}"] += time.perf_counter() - start
    out["ratio_4_over_1"] = out["predict_s_q4"] / out["predict_s_q1"]
    out["ratio_4_over_1_one_pass"] = out["predict_s_q4_one_pass"] / out["predict_s_q1_one_pass"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size-px", type=int, default=1024, help="side of the 1x region (the 4x one doubles it)"
    )
    parser.add_argument("--gsd-m", type=float, default=1.0)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, pipeline actor and bare predict alike"
    )
    parser.add_argument("--read-cpus", type=float, default=1.0, help="CPUs reserved per read task")
    parser.add_argument("--write-cpus", type=float, default=1.0, help="CPUs reserved per write task")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--query-cost",
        nargs="*",
        default=["crobim-tiny"],
        help="models for the 4-vs-1 query cost of predict: PRESET[:key=value,...] (random weights)",
    )
    parser.add_argument("--query-cost-tiles", type=int, default=16)
    parser.add_argument(
        "--query-cost-only", action="store_true", help="only the --query-cost measurements (no regions)"
    )
    args = parser.parse_args()

    import ray
    import torch

    from crobim.modeling import build_model
    from crobim.weights import save_model
    from pipelines.demo.region import make_region

    work = Path(args.workdir or tempfile.mkdtemp(prefix="region-bench-"))
    large = make_region(work / "region-4x", seed=1, size_px=2 * args.size_px, gsd_m=args.gsd_m)
    results: dict = {"args": vars(args), "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    if not args.query_cost_only:
        torch.manual_seed(0)
        ckpt = work / "crobim-tiny"
        if not ckpt.exists():
            save_model(build_model("crobim-tiny"), ckpt)
        small = make_region(work / "region-1x", seed=1, size_px=args.size_px, gsd_m=args.gsd_m)
        for key, scene, queries in (
            ("region_1x_q1", small, QUERIES[:1]),
            ("region_4x_q1", large, QUERIES[:1]),
            ("region_1x_q4", small, QUERIES),
        ):
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            try:
                results[key] = run_region(scene, ckpt, work / f"out-{key}", queries, args)
            finally:
                ray.shutdown()
        results["bare_4x_q1"] = bare_predict(large, ckpt, QUERIES[:1], args)
        results["bare_1x_q1"] = bare_predict(small, ckpt, QUERIES[:1], args)
        results["bare_1x_q4"] = bare_predict(small, ckpt, QUERIES, args)
    import rasterio

    # The 4x region's imagery, cut to each model's tile size.
    with rasterio.open(large.cog_paths[0]) as src:
        rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
    results["query_cost"] = {spec: query_cost(spec, rgb, args) for spec in args.query_cost}
    if not args.query_cost_only:
        results["ratios"] = _ratios(results)
    results["load_avg_end"] = os.getloadavg()
    text = json.dumps(results, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


def _ratios(r: dict) -> dict:
    """Pipeline efficiency, memory and query-cost ratios of the region and bare-predict runs."""
    return {
        "pipeline_efficiency_4x": r["region_4x_q1"]["tiles_per_s"] / r["bare_4x_q1"]["tiles_per_s"],
        "pipeline_efficiency_1x": r["region_1x_q1"]["tiles_per_s"] / r["bare_1x_q1"]["tiles_per_s"],
        # The fixed start-up (Ray, worker imports, model load) cancels in the 4x - 1x differences.
        "pipeline_efficiency_marginal": (r["bare_4x_q1"]["predict_s"] - r["bare_1x_q1"]["predict_s"])
        / (r["region_4x_q1"]["pipeline_s"] - r["region_1x_q1"]["pipeline_s"]),
        "peak_memory_4x_over_1x": r["region_4x_q1"]["peak_rss_mb"] / r["region_1x_q1"]["peak_rss_mb"],
        "queries_4_over_1_end_to_end": r["region_1x_q4"]["pipeline_s"] / r["region_1x_q1"]["pipeline_s"],
        "queries_4_over_1_bare_predict": r["bare_1x_q4"]["predict_s"] / r["bare_1x_q1"]["predict_s"],
        "queries_4_over_1_actor_infer": r["region_1x_q4"]["actor_infer_s"]
        / r["region_1x_q1"]["actor_infer_s"],
    }


if __name__ == "__main__":
    main()
