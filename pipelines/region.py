"""Region inference (PIPELINE.md §1, §3, §5): plan on the driver, chunks on Ray Data, finalise on the driver.

``search -> freeze -> grid -> chunk plan -> [read -> infer + blend -> write] -> merge polygons -> quicklook ->
run.json``. The bracket is one Ray Data pipeline (``pipelines.region_stages``): CPU read tasks, an actor pool
that loads the model once per actor, and a custom ``Datasink``. Re-running into the same ``--out`` resumes: the
fingerprint must match, chunks with a done marker are skipped, and the finalise step is re-run from the parts,
so ``masks.zarr`` and ``polygons.parquet`` are byte-identical to those of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from pipelines import storage

__all__ = ["RegionJobConfig", "RegionPlan", "RegionResult", "default_lattice", "plan_region", "run_region"]

logger = logging.getLogger(__name__)

#: Project version recorded in the fingerprint (outputs of different versions never mix).
_PROJECT = "crobim-geo"


def default_lattice(tile_size_px: int) -> tuple[int, int]:
    """Default ``(overlap_px, margin_px)`` for a tile side: 128 and 16 at S = 480, scaled with S."""
    margin = max(0, round(tile_size_px / 30))
    overlap = max(2 * margin + 2, 2 * round(tile_size_px * 4 / 15 / 2))
    return overlap, margin


@dataclass(frozen=True)
class RegionJobConfig:
    """Every setting of a region job (``jobs/infer_region.py`` flags; see its ``--help``)."""

    bbox: tuple[float, float, float, float]
    queries: tuple[str, ...]
    out: str
    model: str
    stac_url: str | None = None
    catalog: str | None = None
    collections: tuple[str, ...] = ()
    datetime: str | None = None
    max_cloud: float | None = None
    allow_missing_cloud: bool = False
    prefer: Literal["cloud", "recent"] = "cloud"
    limit: int | None = None
    max_items_per_chunk: int = 4
    max_area_km2: float | None = 250_000.0
    crs: str | None = None
    resolution: float | None = None
    nodata: float | None = None
    chunk_size_px: int = 2048
    tile_size_px: int | None = None
    overlap_px: int | None = None
    margin_px: int | None = None
    blend: Literal["cosine", "clip"] = "cosine"
    threshold: float = 0.5
    min_area_m2: float = 0.0
    simplify_m: float | None = None
    batch_size: int = 4
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    # Reads (decode, warp) and writes (Zarr, polygons) keep a core busy while they run; reserving less
    # oversubscribes small machines and slows the inference actor (docs/benchmarks.md, issue 5).
    read_cpus: float = 1.0
    write_cpus: float = 1.0
    torch_threads: int | None = None
    inference_resource: str | None = None
    max_restarts: int = 3
    read_attempts: int = 5
    read_backoff_s: float = 1.0
    overwrite: bool = False
    html: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        checks: list[tuple[str, Any, bool, str]] = [
            ("chunk_size_px", self.chunk_size_px, self.chunk_size_px >= 32, ">= 32 pixels"),
            ("batch_size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("actors", self.actors, self.actors >= 1, ">= 1"),
            ("gpus_per_actor", self.gpus_per_actor, self.gpus_per_actor >= 0, ">= 0"),
            ("cpus_per_actor", self.cpus_per_actor, self.cpus_per_actor > 0, "> 0"),
            ("read_cpus", self.read_cpus, self.read_cpus > 0, "> 0"),
            ("write_cpus", self.write_cpus, self.write_cpus > 0, "> 0"),
            ("threshold", self.threshold, 0.0 < self.threshold <= 1.0, "in (0, 1]"),
            ("min_area_m2", self.min_area_m2, self.min_area_m2 >= 0, ">= 0"),
            (
                "max_items_per_chunk",
                self.max_items_per_chunk,
                1 <= self.max_items_per_chunk <= 255,
                "in [1, 255]",
            ),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                flag = "--" + name.replace("_px", "").replace("_m2", "").replace("_", "-")
                raise ValueError(f"{flag} = {value} is invalid; expected {expected}")
        if (self.stac_url is None) == (self.catalog is None):
            raise ValueError("give exactly one of --stac-url URL or --catalog FILE")


@dataclass
class RegionPlan:
    """What a run will do: items, grid, lattice and chunks (``--dry-run`` prints :meth:`to_json`)."""

    config: RegionJobConfig
    items: list[Any]
    grid: Any
    lattice: Any
    chunks: list[Any]
    model: dict[str, Any]
    tiles_per_chunk: dict[str, int] = field(default_factory=dict)

    @property
    def pixel_area_m2(self) -> float:
        """Area of one grid pixel in m^2 (metric CRS; approximated at the bbox centre otherwise)."""
        from pyproj import CRS as ProjCRS

        rx, ry = self.grid.resolution
        crs = ProjCRS.from_wkt(self.grid.crs_wkt)
        if crs.is_geographic:
            lat = (self.config.bbox[1] + self.config.bbox[3]) / 2
            return rx * ry * 111_320.0**2 * math.cos(math.radians(lat))
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return rx * ry * factor**2

    def fingerprint_settings(self, items_sha256: str) -> dict[str, Any]:
        """The settings hashed into the run fingerprint (PIPELINE.md §5)."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            project_version = version(_PROJECT)
        except PackageNotFoundError:
            project_version = None
        c = self.config
        return {
            "grid": self.grid.to_dict(),
            "chunk_size_px": c.chunk_size_px,
            "lattice": asdict(self.lattice),
            "blend": c.blend,
            "batch_size": c.batch_size,
            "radiometry": self.radiometry().to_dict(),
            "max_items_per_chunk": c.max_items_per_chunk,
            "queries": list(c.queries),
            "threshold": c.threshold,
            "min_area_m2": c.min_area_m2,
            "simplify_m": c.simplify_m,
            "model": self.model,
            "items_sha256": items_sha256,
            "search": {
                "bbox": list(c.bbox),
                "source": c.stac_url or c.catalog,
                "collections": list(c.collections),
                "datetime": c.datetime,
                "max_cloud": c.max_cloud,
                "allow_missing_cloud": c.allow_missing_cloud,
                "prefer": c.prefer,
                "limit": c.limit,
            },
            "project_version": project_version,
        }

    def radiometry(self) -> Any:
        """The radiometry constants of this run."""
        from pipelines.radiometry import RadiometryConfig

        return RadiometryConfig(nodata=self.config.nodata)

    def to_json(self) -> dict[str, Any]:
        """The plan as printed by ``--dry-run``."""
        from pipelines.stac import bbox_area_km2

        non_empty = [c for c in self.chunks if not c.empty]
        return {
            "queries": list(self.config.queries),
            "items": [_item_summary(it) for it in self.items],
            "crs": {"epsg": self.grid.epsg(), "wkt": self.grid.crs_wkt},
            "resolution": list(self.grid.resolution),
            "grid": {
                "width": self.grid.width,
                "height": self.grid.height,
                "transform": list(self.grid.transform),
            },
            "chunk_size_px": self.config.chunk_size_px,
            "chunks": {
                "total": len(self.chunks),
                "with_imagery": len(non_empty),
                "empty": len(self.chunks) - len(non_empty),
                "capped": sum(1 for c in self.chunks if c.capped),
            },
            "tiles": sum(self.tiles_per_chunk.get(c.chunk_id, 0) for c in non_empty),
            "lattice": asdict(self.lattice),
            "area_km2": {
                "bbox": round(bbox_area_km2(self.config.bbox), 6),
                "grid": round(self.grid.width * self.grid.height * self.pixel_area_m2 / 1e6, 6),
            },
            "model": self.model,
        }


@dataclass
class RegionResult:
    """What a run did; ``run_json`` is the document written to ``run.json``."""

    out: str
    status: str
    counts: dict[str, Any]
    failures: list[dict[str, Any]]
    polygons_per_query: dict[str, int]
    timings_s: dict[str, float]
    run_json: dict[str, Any]

    @property
    def ok(self) -> bool:
        """No chunk failed."""
        return not self.failures


def _item_summary(item: Any, full: bool = False) -> dict[str, Any]:
    props = item.properties
    out: dict[str, Any] = {
        "id": item.id,
        "collection": item.collection_id,
        "datetime": props.get("datetime") or props.get("start_datetime"),
        "cloud_cover": props.get("eo:cloud_cover"),
    }
    if full:
        self_link = item.get_single_link("self")
        out["self_href"] = self_link.href if self_link is not None else None
        out["asset_hrefs"] = {k: a.href for k, a in sorted(item.assets.items())}
    return out


def _resolve_model(config: RegionJobConfig) -> tuple[dict[str, Any], int]:
    """Model identity for provenance and the fingerprint, and its tile size, without loading weights."""
    from pipelines.predict import _check_predictor, _import_factory, parse_model_spec
    from pipelines.provenance import folder_sha256

    spec = parse_model_spec(config.model)
    if spec.kind == "factory":
        factory = _import_factory(spec.value)
        info: dict[str, Any] = {"kind": "factory", "reference": spec.value, "sha256": None}
        if config.tile_size_px is not None:
            return info, config.tile_size_px
        predictor = _check_predictor(factory(), f"factory {spec.value}")
        return info, int(predictor.tile_size)
    config_uri = storage.join(spec.value, "config.json")
    if not storage.exists(config_uri):
        raise FileNotFoundError(
            f"--model {spec.value} has no config.json; give a folder written by CroBIM.save_pretrained"
        )
    model_config = storage.read_json(config_uri)
    size = (model_config.get("input") or {}).get("size") or [480, 480]
    info = {
        "kind": "checkpoint",
        "path": spec.value,
        "sha256": folder_sha256(spec.value),
        "name": model_config.get("name"),
        "config": model_config,
    }
    return info, int(config.tile_size_px or size[0])


def plan_region(
    config: RegionJobConfig,
    items: list[Any] | None = None,
    model: tuple[dict[str, Any], int] | None = None,
) -> RegionPlan:
    """Search (unless ``items`` are given, e.g. the frozen selection), choose the grid, plan chunks and tiles.

    Args:
        config: The job settings.
        items: Items to use instead of searching.
        model: ``(model info, tile size)`` already resolved (default: resolved here, without loading weights).

    Raises:
        ValueError: Bad bbox, queries or lattice settings.
        pipelines.errors.CatalogError: Unreachable API or unreadable catalog.
        pipelines.errors.NoItemsError: Nothing matches the search.
    """
    from pipelines.blend import TileLattice, tile_windows
    from pipelines.grid import choose_grid, plan_chunks
    from pipelines.predict import validate_queries
    from pipelines.radiometry import RadiometryConfig, has_rgb_source
    from pipelines.stac import search_items, validate_bbox

    validate_queries(list(config.queries))
    bbox = validate_bbox(config.bbox, config.max_area_km2)
    model_info, tile_size = model if model is not None else _resolve_model(config)
    overlap, margin = default_lattice(tile_size)
    lattice = TileLattice(
        tile_size_px=tile_size,
        overlap_px=config.overlap_px if config.overlap_px is not None else overlap,
        margin_px=config.margin_px if config.margin_px is not None else margin,
    )
    if items is None:
        items = search_items(
            bbox,
            stac_url=config.stac_url,
            catalog=config.catalog,
            collections=list(config.collections) or None,
            datetime=config.datetime,
            max_cloud=config.max_cloud,
            allow_missing_cloud=config.allow_missing_cloud,
            limit=config.limit,
            prefer=config.prefer,
            max_area_km2=config.max_area_km2,
            required_assets=has_rgb_source,
        )
    radiometry = RadiometryConfig(nodata=config.nodata)
    grid = choose_grid(bbox, items, crs=config.crs, resolution=config.resolution, radiometry=radiometry)
    chunks = plan_chunks(grid, items, config.chunk_size_px, lattice.halo_px, config.max_items_per_chunk)
    tiles = {
        c.chunk_id: len(tile_windows(lattice, (c.row_off, c.col_off, c.height, c.width)))
        for c in chunks
        if not c.empty
    }
    return RegionPlan(config, list(items), grid, lattice, chunks, model_info, tiles)


def _items_sha256(items: list[Any]) -> str:
    import hashlib

    from pipelines.provenance import canonical_json

    return hashlib.sha256(canonical_json([it.to_dict(transform_hrefs=False) for it in items])).hexdigest()


def _prepare(config: RegionJobConfig) -> tuple[RegionPlan, dict[str, Any], bool]:
    """Fresh start or resume: returns the plan on the frozen items, the fingerprint settings, and ``resumed``."""
    from pipelines.provenance import check_resume, claim_output, stored_fingerprint, write_fingerprint
    from pipelines.stac import freeze_items, load_items

    items_uri = storage.join(config.out, "inputs", "items.parquet")
    stored = None if config.overwrite else stored_fingerprint(config.out)
    if stored is not None:
        if not storage.exists(items_uri):
            raise FileNotFoundError(
                f"{items_uri} is missing: the output folder is damaged; rerun with --overwrite"
            )
        plan = plan_region(config, load_items(items_uri))  # never a fresh search on resume (§1.1)
        settings = plan.fingerprint_settings(_items_sha256(plan.items))
        check_resume(config.out, stored, settings)
        return plan, settings, True
    searched = plan_region(config)  # validates everything before the output folder is touched
    claim_output(config.out, overwrite=config.overwrite)
    freeze_items(searched.items, items_uri)
    frozen = load_items(items_uri)  # exactly what a resume will read
    plan = plan_region(config, frozen, model=(searched.model, searched.lattice.tile_size_px))
    settings = plan.fingerprint_settings(_items_sha256(plan.items))
    write_fingerprint(config.out, settings)
    return plan, settings, False


def _ensure_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local runtime unless Ray is already up; True when started here."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(
        address=address,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
        log_to_driver=True,
    )
    return True


def _execute(plan: RegionPlan, todo: list[Any], thumb_step: int) -> float:
    """Run the Ray Data pipeline over ``todo`` chunks; returns its wall time in seconds."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext
    from ray.data._internal.execution.interfaces import ExecutionResources

    from pipelines.region_stages import PredictorActor, RegionDatasink, read_stage

    c = plan.config
    ctx = DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.wait_for_min_actors_s, ctx.enable_progress_bars)
    saved_limits = ctx.execution_options.resource_limits
    ctx.execution_options.preserve_order = False  # writes are keyed by chunk id
    ctx.wait_for_min_actors_s = 1800  # model loads may be slow (ray-project/ray#40604)
    ctx.enable_progress_bars = c.progress
    ctx.execution_options.resource_limits = ExecutionResources.for_limits(object_store_memory=2 * 1024**3)
    min_area_px = int(math.floor(c.min_area_m2 / plan.pixel_area_m2)) if c.min_area_m2 > 0 else 0
    threads = c.torch_threads or max(1, round(c.cpus_per_actor))
    rows = [{"chunk": json.dumps(ch.to_dict(), sort_keys=True)} for ch in todo]
    start = time.perf_counter()
    try:
        ds: Any = ray.data.from_items(rows, override_num_blocks=len(rows))  # one chunk per block
        ds = ds.map_batches(
            read_stage,
            batch_size=1,
            batch_format="numpy",
            num_cpus=c.read_cpus,
            fn_kwargs={
                "grid": plan.grid.to_dict(),
                "items_uri": storage.join(c.out, "inputs", "items.parquet"),
                "radiometry": plan.radiometry().to_dict(),
                "attempts": c.read_attempts,
                "backoff_s": c.read_backoff_s,
            },
        )
        with warnings.catch_warnings():
            # max_restarts/max_task_retries travel as ray_remote_args, deprecated from Ray 2.61 (pinned < 2.61).
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
            ds = ds.map_batches(
                PredictorActor,
                batch_size=1,
                batch_format="numpy",
                zero_copy_batch=True,
                compute=ActorPoolStrategy(min_size=1, max_size=c.actors, max_tasks_in_flight_per_actor=2),
                fn_constructor_kwargs={
                    "model": c.model,
                    "model_sha256": plan.model.get("sha256"),
                    "queries": list(c.queries),
                    "lattice": asdict(plan.lattice),
                    "blend": c.blend,
                    "batch_size": c.batch_size,
                    "thumb_step": thumb_step,
                    "threshold": c.threshold,
                    "torch_threads": threads,
                    "device": "cuda" if c.gpus_per_actor > 0 else "cpu",
                },
                num_cpus=c.cpus_per_actor,
                # num_gpus=0 would still be a GPU request (ray-project/ray#45201): CPU runs pass None.
                num_gpus=c.gpus_per_actor or None,
                resources={c.inference_resource: 1} if c.inference_resource else None,
                max_restarts=c.max_restarts,
                max_task_retries=c.max_restarts,
            )
        sink = RegionDatasink(c.out, plan.grid.to_dict(), list(c.queries), c.threshold, min_area_px)
        ds.write_datasink(sink, ray_remote_args={"num_cpus": c.write_cpus})
    finally:
        ctx.execution_options.preserve_order, ctx.wait_for_min_actors_s, ctx.enable_progress_bars = saved
        ctx.execution_options.resource_limits = saved_limits
    return time.perf_counter() - start


def _finalise(plan: RegionPlan, done: list[str], thumb_step: int) -> tuple[Any, float]:
    """Merge polygon parts, write quicklook.png (and map.html); returns the polygons and the time taken."""
    from affine import Affine

    from pipelines.vector import merge_parts
    from pipelines.viz import Thumbnail, assemble_overview, render_quicklook

    c = plan.config
    start = time.perf_counter()
    parts = [storage.join(c.out, "_parts", "polygons", f"{cid}.parquet") for cid in done]
    datetimes = {it.id: _item_summary(it)["datetime"] for it in plan.items}
    polygons = merge_parts(
        parts,
        storage.join(c.out, "polygons.parquet"),
        plan.grid.crs_wkt,
        c.min_area_m2,
        c.simplify_m,
        datetimes,
    )
    thumbs = (
        Thumbnail.from_bytes(storage.read_bytes(storage.join(c.out, "_parts", "thumbs", f"{cid}.npz")))
        for cid in done
    )
    overview = assemble_overview(thumbs, plan.grid.shape, thumb_step, len(c.queries))
    storage.write_bytes(storage.join(c.out, "quicklook.png"), render_quicklook(overview, list(c.queries)))
    if c.html:
        from pipelines.webmap import map_imagery, write_map

        imagery = None
        if overview.valid.any():
            transform = plan.grid.affine * Affine.scale(thumb_step)
            imagery = map_imagery(overview.rgb, plan.grid.crs, transform, overview.valid)
        write_map(storage.join(c.out, "map.html"), polygons, imagery, list(c.queries))
    return polygons, time.perf_counter() - start


def _catalog_info(config: RegionJobConfig) -> dict[str, Any]:
    from pipelines.provenance import file_sha256

    info: dict[str, Any] = {"stac_url": config.stac_url, "catalog": config.catalog, "catalog_sha256": None}
    if config.catalog is not None:
        info["catalog_sha256"] = file_sha256(config.catalog)
    info["search"] = {
        "bbox": list(config.bbox),
        "collections": list(config.collections),
        "datetime": config.datetime,
        "max_cloud": config.max_cloud,
        "allow_missing_cloud": config.allow_missing_cloud,
        "prefer": config.prefer,
        "limit": config.limit,
    }
    return info


def _run_document(
    plan: RegionPlan, settings: dict[str, Any], resumed: bool, started: float
) -> dict[str, Any]:
    from pipelines.provenance import fingerprint, package_versions

    c = plan.config
    return {
        "status": "running",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "resumed": resumed,
        "arguments": asdict(c),
        "fingerprint": fingerprint(settings),
        "settings": settings,
        "grid": {
            **plan.grid.to_dict(),
            "epsg": plan.grid.epsg(),
            "chunk_size_px": c.chunk_size_px,
            "halo_px": plan.lattice.halo_px,
            "tile_size_px": plan.lattice.tile_size_px,
            "overlap_px": plan.lattice.overlap_px,
            "margin_px": plan.lattice.margin_px,
            "blend": c.blend,
        },
        "catalog": _catalog_info(c),
        "items": [_item_summary(it, full=True) for it in plan.items],
        "model": plan.model,
        "queries": list(c.queries),
        "radiometry": plan.radiometry().to_dict(),
        "versions": package_versions(),
    }


def run_region(config: RegionJobConfig, address: str | None = None) -> RegionResult:
    """Run (or resume) a region job into ``config.out``.

    Args:
        config: The job settings.
        address: Ray address when Ray is not initialised yet (None: a local runtime).

    Returns:
        Counts, failures, polygons per query and timings; ``run.json`` holds the same and more.

    Raises:
        ValueError, FileNotFoundError, FileExistsError, pipelines.errors.CatalogError: bad input, or an
            output folder that holds another run (see :mod:`pipelines.provenance`).
    """
    from pipelines.provenance import RunManifest, write_run_json
    from pipelines.viz import thumbnail_step
    from pipelines.write import create_zarr_template

    started = time.time()
    t0 = time.perf_counter()
    plan, settings, resumed = _prepare(config)
    doc = _run_document(plan, settings, resumed, started)
    write_run_json(config.out, doc)
    create_zarr_template(
        storage.join(config.out, "masks.zarr"),
        plan.grid,
        list(config.queries),
        zarr_chunk_px=config.chunk_size_px,
        attrs={"crobim:fingerprint": doc["fingerprint"]},
    )
    manifest = RunManifest(config.out)
    done_before = set(manifest.done_ids())
    todo = [ch for ch in plan.chunks if not ch.empty and ch.chunk_id not in done_before]
    plan_s = time.perf_counter() - t0
    thumb_step = thumbnail_step(plan.grid.shape)
    logger.info(
        "%s: %d chunks (%d empty, %d already done), %d to process",
        "resuming" if resumed else "starting",
        len(plan.chunks),
        sum(1 for ch in plan.chunks if ch.empty),
        len(done_before),
        len(todo),
    )
    pipeline_s = 0.0
    if todo:
        ray_started = _ensure_ray(address)
        try:
            pipeline_s = _execute(plan, todo, thumb_step)
        finally:
            if ray_started:
                import ray

                ray.shutdown()
    planned = {ch.chunk_id for ch in plan.chunks}
    done = [cid for cid in manifest.done_ids() if cid in planned]
    failed_ids = [cid for cid in manifest.failed_ids() if cid in planned and cid not in set(done)]
    failures = [manifest.read_failed(cid) for cid in failed_ids]
    polygons, finalise_s = _finalise(plan, done, thumb_step)
    summaries = {cid: manifest.read_done(cid) for cid in done}
    this_run = [summaries[cid] for cid in done if cid not in done_before]
    counts = _counts(plan, summaries, this_run, done_before, failures, polygons)
    tiles_now = sum(s.get("n_tiles", 0) for s in this_run)
    timings = {
        "plan_s": round(plan_s, 3),
        "pipeline_s": round(pipeline_s, 3),
        "finalise_s": round(finalise_s, 3),
        "total_s": round(time.perf_counter() - t0, 3),
        "read_task_s": round(sum(s.get("read_s", 0.0) for s in this_run), 3),
        "infer_actor_s": round(sum(s.get("infer_s", 0.0) for s in this_run), 3),
        "write_task_s": round(sum(s.get("write_s", 0.0) for s in this_run), 3),
    }
    throughput = _throughput(plan, tiles_now, pipeline_s)
    per_query = {q: int((polygons["query_id"] == k).sum()) for k, q in enumerate(config.queries)}
    status = "failed" if failures else "complete"
    doc.update(
        status=status,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        counts=counts,
        failures=failures,
        timings_s=timings,
        throughput=throughput,
        polygons_per_query=per_query,
        outputs={
            name: storage.join(config.out, name)
            for name in ("masks.zarr", "polygons.parquet", "quicklook.png", "inputs/items.parquet")
        }
        | ({"map.html": storage.join(config.out, "map.html")} if config.html else {}),
    )
    write_run_json(config.out, doc)
    return RegionResult(config.out, status, counts, failures, per_query, {**timings, **throughput}, doc)


def _counts(
    plan: RegionPlan,
    summaries: dict[str, dict[str, Any]],
    this_run: list[dict[str, Any]],
    done_before: set[str],
    failures: list[dict[str, Any]],
    polygons: Any,
) -> dict[str, Any]:
    valid_px = sum(s.get("valid_px", 0) for s in summaries.values())
    return {
        "items": len(plan.items),
        "chunks": {
            "total": len(plan.chunks),
            "empty": sum(1 for ch in plan.chunks if ch.empty),
            "capped": sum(1 for ch in plan.chunks if ch.capped),
            "done": len(summaries),
            "done_this_run": len(this_run),
            "skipped_done_before": len(done_before & set(summaries)),
            "failed": len(failures),
        },
        "tiles": sum(s.get("n_tiles", 0) for s in summaries.values()),
        "tile_query_decodes": sum(s.get("n_decodes", 0) for s in summaries.values()),
        "polygons_before_merge": sum(sum(s.get("part_polygons", [])) for s in summaries.values()),
        "polygons": len(polygons),
        "valid_km2": round(valid_px * plan.pixel_area_m2 / 1e6, 6),
    }


def _throughput(plan: RegionPlan, tiles: int, pipeline_s: float) -> dict[str, Any]:
    """tiles/s of this run and km^2/h by PIPELINE.md §6 (stride footprint, chunk-border factor rho)."""
    c = plan.config
    lat = plan.lattice
    rho = ((c.chunk_size_px + lat.tile_size_px - 2 * lat.margin_px) / c.chunk_size_px) ** 2
    tiles_per_s = tiles / pipeline_s if pipeline_s > 0 else 0.0
    stride_area_km2 = lat.stride_px**2 * plan.pixel_area_m2 / 1e6
    gpus = c.actors * c.gpus_per_actor
    return {
        "tiles_per_s": round(tiles_per_s, 4),
        "tiles_per_s_per_gpu": round(tiles_per_s / gpus, 4) if gpus > 0 else None,
        "km2_per_h": round(tiles_per_s * stride_area_km2 * 3600 / rho, 4),
        "rho": round(rho, 4),
        "gsd_m": round(float(np.sqrt(plan.pixel_area_m2)), 6),
        "queries": len(c.queries),
    }
