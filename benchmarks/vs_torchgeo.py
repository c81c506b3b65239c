"""Our region job against what a TorchGeo user writes, same predictor, same SynRS regions (issue 25).

Both ways use the demo model (``assets/demo-model``), the same queries, tile size and stride (our lattice), batch size
and torch threads. ``ours``: ``pipelines.region.run_region`` with the job's defaults. ``torchgeo``: a ``RasterDataset``
over the region's COG, a ``GridGeoSampler``, a ``DataLoader`` (``stack_samples``), the same ``CroBIMPredictor`` per
batch, the probabilities stitched into one in-memory array of the region (overlaps averaged), p >= 0.5 and
``rasterio.features.shapes`` into a GeoDataFrame. Each variant runs in a fresh subprocess per region (1x, and 4x =
twice the side), interleaved. Reported: marginal tiles/s ``(tiles_4x - tiles_1x) / (t_4x - t_1x)`` on the wall time
of the whole call (start-up cancels); peak memory of the subprocess and its descendants (summed PSS, the tree's real
footprint, and summed RSS, which counts shared pages once per process; sampled every 0.1 s) and ``ru_maxrss``;
seams: where the two masks differ within ``--strip-px`` of a tile border vs elsewhere, each mask's IoU with the truth
on its own tile-border strips vs interiors, and the share of mask edges exactly on a tile border over the share
expected by chance (1 = no seams).

Usage: ``.venv/bin/python benchmarks/vs_torchgeo.py [--size-px 768] [--repeats 3] [--json out.json]``; ``--smoke``
runs tiny regions (the suite's check). Needs ``torchgeo`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUERIES = ("all ponds", "all buildings")
VARIANTS = ("ours", "torchgeo")


def region_settings(size_px: int, seed: int) -> dict[str, Any]:
    """The demo region's recipe (``DEMO_REGION``) at another size and seed, one COG per region."""
    from pipelines.demo.setup import DEMO_REGION

    return {**DEMO_REGION, "seed": seed, "size_px": size_px, "n_items": 1}


def make_regions(work: Path, size_px: int, seed: int) -> dict[str, Any]:
    """The 1x region (``size_px`` square) and the 4x region (twice the side), same generator and seed."""
    from pipelines.demo.region import make_region

    return {
        size: make_region(work / f"region-{size}", **region_settings(k * size_px, seed))
        for size, k in (("1x", 1), ("4x", 2))
    }


def _lattice(model: str) -> Any:  # noqa: ANN401 - pipelines.blend.TileLattice
    from pipelines.blend import TileLattice
    from pipelines.predict import resolve_model

    return TileLattice.for_tile_size(resolve_model(model).tile_size_px)


# --- the two variants (each in its own subprocess) ---------------------------------------------------------------


def run_ours(scene: Any, out: Path, args: argparse.Namespace) -> dict[str, Any]:  # noqa: ANN401
    """Our region job over the region's catalog; returns its counts and timings."""
    from pipelines.region import run_region
    from pipelines.region_config import RegionJobConfig

    config = RegionJobConfig(bbox=scene.bbox_wgs84, queries=QUERIES, out=str(out), model=args.model,
                             catalog=str(scene.catalog_path), batch_size=args.batch_size,
                             torch_threads=args.threads, progress=False, overwrite=True)  # fmt: skip
    start = time.perf_counter()
    result = run_region(config)
    wall = time.perf_counter() - start
    if not result.ok:
        raise RuntimeError(f"region job failed: {result.failures}")
    return {
        "tiles": int(result.counts["tiles"]),
        "wall_s": wall,
        "pipeline_s": float(result.timings_s["pipeline_s"]),
        "polygons": int(sum(result.polygons_per_query.values())),
    }


def _torchgeo_dataset_class() -> type:
    """A ``RasterDataset`` over the region's RGB COGs (``scene*.tif``), as a TorchGeo user declares it."""
    from torchgeo.datasets import RasterDataset

    class SynRSScenes(RasterDataset):
        filename_glob = "scene*.tif"
        is_image = True
        all_bands = ("red", "green", "blue")
        rgb_bands = ("red", "green", "blue")

    return SynRSScenes


def _stitch(
    loader: Any, predictor: Any, shape: tuple[int, int], origin: tuple[float, float], res: float
) -> tuple[np.ndarray, int]:  # noqa: ANN401,E501
    """Average each tile's probabilities into one (Q, H, W) array of the region; returns it and the tile count."""
    acc = np.zeros((len(QUERIES), *shape), dtype=np.float32)
    count = np.zeros(shape, dtype=np.float32)
    (minx, maxy), (h, w), tiles = origin, shape, 0
    for batch in loader:
        images = batch["image"].permute(0, 2, 3, 1).clamp(0, 255).round().to(dtype=__import__("torch").uint8)
        probs = predictor.predict(np.ascontiguousarray(images.numpy()), list(QUERIES))
        for prob, (xs, ys, _) in zip(probs, batch["bounds"], strict=True):
            # GridGeoSampler anchors chips at the bottom-left corner: the top row and right column overhang.
            r, c = round((maxy - ys.stop) / res), round((xs.start - minx) / res)
            r0, c0, r1, c1 = max(r, 0), max(c, 0), min(r + prob.shape[-2], h), min(c + prob.shape[-1], w)
            acc[:, r0:r1, c0:c1] += prob[:, r0 - r : r1 - r, c0 - c : c1 - c]
            count[r0:r1, c0:c1] += 1.0
        tiles += len(probs)
    return acc / np.maximum(count, 1.0), tiles


def run_torchgeo(scene: Any, out: Path, args: argparse.Namespace) -> dict[str, Any]:  # noqa: ANN401
    """The TorchGeo user's loop: dataset, grid sampler, loader, predictor, stitch, threshold, polygonise."""
    import geopandas as gpd
    import torch
    from rasterio import features
    from shapely.geometry import shape as to_shape
    from torch.utils.data import DataLoader
    from torchgeo.datasets import stack_samples
    from torchgeo.samplers import GridGeoSampler

    from pipelines.predict import load_predictor

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    predictor = load_predictor(args.model, device="cpu")
    lattice = _lattice(args.model)
    dataset = _torchgeo_dataset_class()(paths=str(scene.out_dir))
    sampler = GridGeoSampler(dataset, size=lattice.tile_size_px, stride=lattice.stride_px)
    loader = DataLoader(dataset, sampler=sampler, batch_size=args.batch_size, collate_fn=stack_samples,
                        num_workers=args.tg_workers)  # fmt: skip
    xs, ys, _ = dataset.bounds
    res = float(dataset.res[0])
    shape = (round((ys.stop - ys.start) / res), round((xs.stop - xs.start) / res))
    prob, tiles = _stitch(loader, predictor, shape, (xs.start, ys.stop), res)
    masks = prob >= 0.5
    transform = scene.transform
    rows = [
        {"query": q, "geometry": to_shape(geom)}
        for k, q in enumerate(QUERIES)
        for geom, _ in features.shapes(masks[k].astype(np.uint8), mask=masks[k], transform=transform)
    ]
    polygons = gpd.GeoDataFrame(rows, geometry="geometry", crs=dataset.crs) if rows else gpd.GeoDataFrame()
    wall = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "masks.npy", masks)
    return {"tiles": tiles, "wall_s": wall, "polygons": len(polygons)}


def child(args: argparse.Namespace) -> None:
    """One variant on one region in this (fresh) process; prints one JSON line with timings and memory."""
    from benchmarks.region_throughput import PeakMemory
    from pipelines.demo.region import make_region

    scene = make_region(args.region, **region_settings(args.region_size, args.seed))
    runner = run_ours if args.variant == "ours" else run_torchgeo
    with PeakMemory() as mem:
        result = runner(scene, Path(args.out), args)
    result["peak_tree_rss_mb"] = mem.peak / 2**20
    result["peak_tree_pss_mb"] = mem.peak_pss / 2**20
    result["ru_maxrss_self_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["ru_maxrss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def spawn(variant: str, size: str, scene: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:  # noqa: ANN401
    """Run ``child`` for one variant and region in a fresh interpreter; returns its result."""
    cmd = [sys.executable, __file__, "--child", variant, "--region", str(scene.out_dir), "--out",
           str(work / f"out-{variant}-{size}"), "--region-size", str(scene.shape[0]), "--seed", str(args.seed),
           "--model", args.model, "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--tg-workers", str(args.tg_workers)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} {size} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# --- seams and truth ------------------------------------------------------------------------------------------------


def _our_masks(out: Path, scene: Any, threshold: float = 0.5) -> tuple[np.ndarray, tuple[int, int]]:  # noqa: ANN401
    """Our thresholded masks (Q, H, W) on the scene's pixels (the job's own cut) and the grid's offset on them."""
    import rioxarray  # noqa: F401 - the .rio accessor

    from pipelines.polygonize import threshold_value
    from pipelines.write import open_masks

    prob = open_masks(str(out / "masks.zarr")).prob
    grid, gsd = prob.rio.transform(), scene.transform.a
    # scene pixel = grid pixel + offset
    off = (round((scene.transform.f - grid.f) / gsd), round((grid.c - scene.transform.c) / gsd))
    h, w = scene.shape
    values = prob.values[:, -off[0] : -off[0] + h, -off[1] : -off[1] + w]
    return values >= max(threshold_value(threshold), 1), off


def _truth_masks(scene: Any) -> np.ndarray:  # noqa: ANN401
    """True objects (Q, H, W) of each query (``TRUTH_RULES``: a truth column or a class)."""
    import rasterio

    from pipelines.demo.setup import TRUTH_RULES

    truth = scene.truth()
    with rasterio.open(scene.instances_path) as src:
        labels = src.read(1)
    out = []
    for query in QUERIES:
        column, cls = TRUTH_RULES[query]
        rows = truth[truth[column]] if column else truth[truth["class"] == cls]
        out.append(np.isin(labels, rows["instance_id"].to_numpy()))
    return np.stack(out)


def _edges(starts: np.ndarray, size: int, n: int) -> np.ndarray:
    """Tile-border positions (between pixel p-1 and p) inside (0, n) along one axis."""
    e = np.concatenate([starts, starts + size])
    return np.unique(e[(e > 0) & (e < n)])


def _strip(edges: tuple[np.ndarray, np.ndarray], shape: tuple[int, int], width: int) -> np.ndarray:
    """Pixels within ``width`` of a tile border, (H, W) bool."""
    axes = []
    for pos, n in zip(edges, shape, strict=True):
        near = np.zeros(n, dtype=bool)
        for e in pos:
            near[max(0, e - width) : e + width] = True
        axes.append(near)
    return axes[0][:, None] | axes[1][None, :]


def _edge_ratio(mask: np.ndarray, edges: tuple[np.ndarray, np.ndarray]) -> float | None:
    """Share of mask edges lying on a tile border over the share of edge positions that are tile borders."""
    ty, tx = mask[1:] != mask[:-1], mask[:, 1:] != mask[:, :-1]
    total = int(ty.sum() + tx.sum())
    if total == 0:
        return None
    on = int(ty[edges[0] - 1].sum() + tx[:, edges[1] - 1].sum())
    expected = (len(edges[0]) * ty.shape[1] + len(edges[1]) * tx.shape[0]) / (ty.size + tx.size)
    return (on / total) / expected


def _iou(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float | None:
    union = int(((a | b) & where).sum())
    return int((a & b & where).sum()) / union if union else None


def _mask_scores(
    mask: np.ndarray, truth: np.ndarray, edges: tuple[np.ndarray, np.ndarray], strip: np.ndarray
) -> dict[str, Any]:  # noqa: E501
    every = np.ones_like(strip)
    return {
        "iou": _iou(mask, truth, every),
        "iou_border": _iou(mask, truth, strip),
        "iou_interior": _iou(mask, truth, ~strip),
        "edge_on_border_ratio": _edge_ratio(mask, edges),
    }


def compare(scene: Any, work: Path, size: str, lattice: Any, strip_px: int) -> dict[str, Any]:  # noqa: ANN401
    """Seam and truth scores of the two variants' masks on one region (see the module docstring)."""
    ours, off = _our_masks(work / f"out-ours-{size}", scene)
    tg = np.load(work / f"out-torchgeo-{size}" / "masks.npy")
    truth = _truth_masks(scene)
    shape = scene.shape
    s, stride = lattice.tile_size_px, lattice.stride_px
    # Our lattice is anchored at the output grid's origin, (off) pixels from the scene's; TorchGeo's at the scene's.
    ours_edges = tuple(
        _edges(lattice.origin_px + off[a] + stride * np.arange(-1, shape[a] // stride + 3), s, shape[a])
        for a in (0, 1)
    )
    # TorchGeo's chips start at the scene's bottom-left corner: rows count up from the bottom.
    tg_k = [np.arange(int(np.ceil((n - s) / stride)) + 1) for n in shape]
    tg_edges = (_edges(shape[0] - s - stride * tg_k[0], s, shape[0]), _edges(stride * tg_k[1], s, shape[1]))
    ours_strip, tg_strip = _strip(ours_edges, shape, strip_px), _strip(tg_edges, shape, strip_px)
    either = ours_strip | tg_strip
    out: dict[str, Any] = {"strip_px": strip_px, "border_share_ours": float(ours_strip.mean()),
                           "border_share_torchgeo": float(tg_strip.mean()), "queries": {}}  # fmt: skip
    for k, query in enumerate(QUERIES):
        differ = ours[k] != tg[k]
        out["queries"][query] = {
            "disagree_border": float(differ[either].mean()),
            "disagree_interior": float(differ[~either].mean()),
            "truth_share": float(truth[k].mean()),
            "ours": _mask_scores(ours[k], truth[k], ours_edges, ours_strip),
            "torchgeo": _mask_scores(tg[k], truth[k], tg_edges, tg_strip),
        }
    return out


# --- the run ---------------------------------------------------------------------------------------------------------


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]], scenes: dict[str, Any]) -> dict[str, Any]:
    """Medians per variant and region, the marginal rates (start-up cancelled) and the ours/TorchGeo ratios."""
    pixels = {size: scene.shape[0] * scene.shape[1] for size, scene in scenes.items()}
    out: dict[str, Any] = {}
    for variant, by_size in runs.items():
        med = {size: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for size, rs in by_size.items()}
        dt = med["4x"]["wall_s"] - med["1x"]["wall_s"]
        out[variant] = {
            "runs": by_size,
            "median": med,
            "marginal_tiles_per_s": (med["4x"]["tiles"] - med["1x"]["tiles"]) / dt if dt > 0 else None,
            "marginal_mpx_per_s": (pixels["4x"] - pixels["1x"]) / 1e6 / dt if dt > 0 else None,
        }
    ours, tg = out["ours"], out["torchgeo"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out["ours_over_torchgeo"] = {
        "marginal_tiles_per_s": ratio(ours["marginal_tiles_per_s"], tg["marginal_tiles_per_s"]),
        "marginal_mpx_per_s": ratio(ours["marginal_mpx_per_s"], tg["marginal_mpx_per_s"]),
        **{f"{key}_{size}": ratio(ours["median"][size][f"{key}_mb"], tg["median"][size][f"{key}_mb"])
           for key in ("peak_tree_pss", "peak_tree_rss") for size in ("1x", "4x")},
    }  # fmt: skip
    return out


_TABLE_KEYS = (
    "tiles",
    "wall_s",
    "peak_tree_pss_mb",
    "peak_tree_rss_mb",
    "ru_maxrss_self_mb",
    "ru_maxrss_children_mb",
    "polygons",
)


def _fmt(value: Any) -> str:  # noqa: ANN401
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(results: dict[str, Any]) -> str:
    """The side-by-side table printed at the end."""
    s, rows = results["summary"], []
    ours, tg = s["ours"], s["torchgeo"]
    for size in ("1x", "4x"):
        for key in _TABLE_KEYS:
            rows.append((f"{size} {key}", ours["median"][size][key], tg["median"][size][key]))
    rows += [(key, ours[key], tg[key]) for key in ("marginal_tiles_per_s", "marginal_mpx_per_s")]
    for size, seam in results["seams"].items():
        for query, q in seam["queries"].items():
            rows.append(
                (f"{size} '{query}' disagree border / interior", q["disagree_border"], q["disagree_interior"])
            )
            for key in ("iou", "iou_border", "iou_interior", "edge_on_border_ratio"):
                rows.append((f"{size} '{query}' {key}", q["ours"][key], q["torchgeo"][key]))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'ours':>12}  {'torchgeo':>12}"]
    lines += [f"{name:{width}}  {_fmt(a):>12}  {_fmt(b):>12}" for name, a, b in rows]
    lines += [f"ours / torchgeo: {json.dumps({k: _fmt(v) for k, v in s['ours_over_torchgeo'].items()})}"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags (``--child`` and the hidden ones: one variant in a subprocess)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--size-px", type=int, default=768, help="1x region side (2 m px); 4x doubles it")
    add("--seed", type=int, default=7, help="region seed (the demo's is 2024)")
    add("--model", default=str(ROOT / "assets" / "demo-model"))
    add("--batch-size", type=int, default=4, help="tiles per predict call, both variants")
    add("--threads", type=int, default=2, help="torch threads, both variants")
    add("--tg-workers", type=int, default=1, help="TorchGeo DataLoader worker processes")
    add("--repeats", type=int, default=1)
    add("--strip-px", type=int, default=3, help="half-width of the tile-border strips")
    add("--workdir", default=None)
    add("--json", default=None, help="also write the results here")
    add("--smoke", action="store_true", help="tiny regions (192 px / 384 px), one repeat")
    add("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    for hidden in ("--region", "--out"):
        add(hidden, help=argparse.SUPPRESS)
    add("--region-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.variant = args.child
    if args.smoke:
        args.size_px, args.repeats = 192, 1
    return args


def main(argv: list[str] | None = None) -> None:
    """Generate the regions, run the variants interleaved, compare their masks, print and write the results."""
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    import torchgeo

    started = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vs-torchgeo-"))
    scenes = make_regions(work, args.size_px, args.seed)
    lattice = _lattice(args.model)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {v: {"1x": [], "4x": []} for v in VARIANTS}
    load_start = os.getloadavg()
    for rep in range(args.repeats):
        order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
        for size in ("1x", "4x"):
            for variant in order:  # interleaved: ours, TorchGeo, ours, TorchGeo ...
                runs[variant][size].append(spawn(variant, size, scenes[size], work, args))
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "args": {
            k: v
            for k, v in vars(args).items()
            if k not in ("child", "variant", "region", "region_size", "out")
        },
        "torchgeo_version": torchgeo.__version__,
        "cpu_count": os.cpu_count(),
        "load_avg_start": load_start,
        "regions": {size: {"shape": list(s.shape), "gsd_m": s.transform.a} for size, s in scenes.items()},
        "lattice": {**dataclasses.asdict(lattice), "stride_px": lattice.stride_px},
        "torchgeo_stitching": "average of overlapping tiles' probabilities, then p >= 0.5",
        "summary": summarise(runs, scenes),
        "seams": {size: compare(scenes[size], work, size, lattice, args.strip_px) for size in ("1x", "4x")},
        "load_avg_end": os.getloadavg(),
    }
    results["elapsed_s"] = time.perf_counter() - started
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
