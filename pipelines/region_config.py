"""The settings of a region job (``jobs/infer_region.py`` flags), checked when they are made."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from pipelines.queries import validate_queries
from pipelines.query_grammar import DEFAULT_NEAR_M, QueryPlan, RelationsMode, plan_queries
from pipelines.stac import check_source, validate_bbox

__all__ = ["RegionJobConfig"]


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
    max_tiles: int | None = 1_000_000
    crs: str | None = None
    resolution: float | None = None
    nodata: float | None = None
    chunk_size_px: int = 2048
    tile_size_px: int | None = None
    overlap_px: int | None = None
    margin_px: int | None = None
    blend: Literal["cosine", "clip"] = "cosine"
    threshold: float = 0.5
    relations: RelationsMode = "auto"
    near_m: float = DEFAULT_NEAR_M
    inside_share: float = 0.5
    touch_m: float | None = None
    object_min_area_m2: float | None = None
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
    channels_last: bool = False
    compile_model: bool = False
    inference_resource: str | None = None
    read_attempts: int = 5
    read_backoff_s: float = 1.0
    overwrite: bool = False
    html: bool = False
    progress: bool = True
    dashboard: bool = False

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
            (
                "resolution",
                self.resolution,
                self.resolution is None or self.resolution > 0,
                "> 0 (CRS units)",
            ),
            (
                "tile_size_px",
                self.tile_size_px,
                self.tile_size_px is None or self.tile_size_px > 0,
                "> 0 pixels",
            ),
            ("overlap_px", self.overlap_px, self.overlap_px is None or self.overlap_px >= 0, ">= 0 pixels"),
            ("margin_px", self.margin_px, self.margin_px is None or self.margin_px >= 0, ">= 0 pixels"),
            ("max_tiles", self.max_tiles, self.max_tiles is None or self.max_tiles >= 1, ">= 1"),
            ("max_area_km2", self.max_area_km2, self.max_area_km2 is None or self.max_area_km2 > 0, "> 0"),
            ("min_area_m2", self.min_area_m2, self.min_area_m2 >= 0, ">= 0"),
            ("near_m", self.near_m, self.near_m > 0, "> 0 metres"),
            ("inside_share", self.inside_share, 0.0 < self.inside_share <= 1.0, "in (0, 1]"),
            ("touch_m", self.touch_m, self.touch_m is None or self.touch_m >= 0, ">= 0 metres"),
            (
                "object_min_area_m2",
                self.object_min_area_m2,
                self.object_min_area_m2 is None or self.object_min_area_m2 >= 0,
                ">= 0 m^2",
            ),
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
        check_source(self.stac_url, self.catalog)
        # Queries and bbox are checked and normalised here, once: the plan and the search take them as they are.
        object.__setattr__(self, "queries", tuple(validate_queries(list(self.queries))))
        object.__setattr__(self, "bbox", validate_bbox(self.bbox, self.max_area_km2))
        _ = self.query_plan  # a query --relations vector cannot parse is refused here, with the grammar

    @functools.cached_property
    def query_plan(self) -> QueryPlan:
        """Each query's parse (plain, or subject + relations) and the distinct expressions the model decodes."""
        return plan_queries(list(self.queries), self.relations, self.near_m)

    def search_settings(self) -> dict[str, Any]:
        """The search part of the settings (hashed into the fingerprint, recorded in run.json)."""
        return {
            "bbox": list(self.bbox),
            "collections": list(self.collections),
            "datetime": self.datetime,
            "max_cloud": self.max_cloud,
            "allow_missing_cloud": self.allow_missing_cloud,
            "prefer": self.prefer,
            "limit": self.limit,
        }
