"""Planning a region job on the driver (PIPELINE.md §1, §3): items, output grid, tile lattice, chunks and tiles.

Nothing here touches the output folder or starts Ray: ``--dry-run`` prints :meth:`RegionPlan.to_json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pystac

from pipelines.blend import TileLattice, TileWindow, tile_windows
from pipelines.grid import ChunkSpec, OutputGrid, choose_grid, plan_chunks
from pipelines.predict import ResolvedModel, resolve_model
from pipelines.radiometry import RadiometryConfig, has_rgb_source
from pipelines.region_config import RegionJobConfig
from pipelines.stac import bbox_area_km2, item_summary, search_items

__all__ = ["RegionPlan", "plan_region", "search"]


#: Default size (output pixels) below which an object polygon of a relation is speckle: a fragment of a few pixels
#: is a segmentation artefact, not a road a pond can be near (docs/queries.md, measured in docs/benchmarks.md).
OBJECT_MIN_PIXELS = 10

#: Distribution whose version is recorded in the fingerprint (outputs of different versions never mix).
_PROJECT = "crobim-geo"


@dataclass
class RegionPlan:
    """What a run will do: the items, the output grid, the tile lattice, the chunks and each chunk's tiles.

    Attributes:
        config: The job settings.
        items: The items the chunks read (the frozen selection on a run).
        grid: The output grid.
        lattice: The global tile lattice.
        chunks: Every chunk of the grid, empty ones included.
        model: The model's provenance record and tile size.
        tiles: Tile windows of each chunk with imagery, by chunk id (the inference actor runs exactly these).
        warnings: What still runs but will answer worse: tile size against the model's, queries the model cuts
            or cannot read (logged once when planned, printed by ``--dry-run``, kept in ``run.json``).
    """

    config: RegionJobConfig
    items: list[pystac.Item]
    grid: OutputGrid
    lattice: TileLattice
    chunks: list[ChunkSpec]
    model: ResolvedModel
    tiles: dict[str, list[TileWindow]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def pixel_area_m2(self) -> float:
        """Area of one grid pixel in m^2 (at the bbox centre in a geographic CRS)."""
        return self.grid.pixel_area_m2((self.config.bbox[1] + self.config.bbox[3]) / 2)

    @property
    def expressions(self) -> tuple[str, ...]:
        """The distinct referring expressions the model decodes on every tile (``masks.zarr``'s queries)."""
        return self.config.query_plan.expressions

    @property
    def touch_m(self) -> float:
        """``touching`` tolerance in metres: ``--touch-m``, else one output pixel."""
        if self.config.touch_m is not None:
            return self.config.touch_m
        return float(self.pixel_area_m2**0.5)

    @property
    def object_min_area_m2(self) -> float:
        """Relation objects below this area are speckle: ``--object-min-area``, else ten output pixels."""
        if self.config.object_min_area_m2 is not None:
            return self.config.object_min_area_m2
        return float(OBJECT_MIN_PIXELS * self.pixel_area_m2)

    @property
    def radiometry(self) -> RadiometryConfig:
        """The radiometry constants of this run."""
        return RadiometryConfig(nodata=self.config.nodata)

    def todo(self, done: set[str]) -> list[ChunkSpec]:
        """Chunks with imagery that are not in ``done``."""
        return [ch for ch in self.chunks if not ch.empty and ch.chunk_id not in done]

    def fingerprint_settings(self, items_sha256: str) -> dict[str, Any]:
        """The settings hashed into the run fingerprint (PIPELINE.md §5)."""
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
            "radiometry": self.radiometry.to_dict(),
            "max_items_per_chunk": c.max_items_per_chunk,
            # The chunks depend on the decoded expressions only: relations are evaluated when finalising, so a
            # rerun that changes a relation (or --near-m) resumes and re-finalises without decoding again.
            "expressions": list(self.expressions),
            "threshold": c.threshold,
            "min_area_m2": c.min_area_m2,
            "simplify_m": c.simplify_m,
            "model": self.model.info,
            "items_sha256": items_sha256,
            "search": {**c.search_settings(), "source": c.stac_url or c.catalog},
            "project_version": project_version,
        }

    def relation_settings(self) -> dict[str, Any]:
        """Each query's parse, the distinct expressions and the relation parameters (dry-run, ``run.json``)."""
        c = self.config
        return {
            **c.query_plan.to_json(),
            "inside_share": c.inside_share,
            "touch_m": round(self.touch_m, 6),
            "object_min_area_m2": round(self.object_min_area_m2, 6),
        }

    def to_json(self) -> dict[str, Any]:
        """The plan as printed by ``--dry-run``."""
        non_empty = [c for c in self.chunks if not c.empty]
        return {
            "queries": list(self.config.queries),
            "query_plan": self.relation_settings(),
            "items": [item_summary(it) for it in self.items],
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
            "tiles": sum(len(self.tiles.get(c.chunk_id, ())) for c in non_empty),
            "lattice": asdict(self.lattice),
            "area_km2": {
                "bbox": round(bbox_area_km2(self.config.bbox), 6),
                "grid": round(self.grid.width * self.grid.height * self.pixel_area_m2 / 1e6, 6),
            },
            "model": self.model.info,
            "warnings": list(self.warnings),
        }


def search(config: RegionJobConfig) -> list[pystac.Item]:
    """The items the job's search settings select (API or catalog file), best first.

    Raises:
        ValueError: Bad bbox or search settings.
        pipelines.errors.CatalogError: Unreachable API or unreadable catalog.
        pipelines.errors.NoItemsError: Nothing matches the search.
    """
    return search_items(
        config.bbox,
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


def _check_size(config: RegionJobConfig, grid: OutputGrid, lattice: TileLattice) -> None:
    """Refuse a grid with more tiles than ``--max-tiles`` before its chunks are planned (a typo, not a job).

    Raises:
        ValueError: Naming the grid size, the tile count and the flags to check.
    """
    if config.max_tiles is None:
        return
    tiles = len(lattice.tile_range(0, grid.height)) * len(lattice.tile_range(0, grid.width))
    if tiles <= config.max_tiles:
        return
    res = grid.resolution[0]
    raise ValueError(
        f"the output grid is {grid.width:,} x {grid.height:,} px at {res:g} CRS units per pixel: at least "
        f"{tiles:,} tiles of {lattice.tile_size_px} px, more than --max-tiles {config.max_tiles:,}; check --resolution "
        "(pixel size in the output CRS's units: metres for UTM, not degrees) and --bbox, or raise --max-tiles"
    )


def plan_region(
    config: RegionJobConfig, items: list[pystac.Item] | None = None, model: ResolvedModel | None = None
) -> RegionPlan:
    """Resolve the model, search (unless ``items`` are given), choose the grid, plan chunks and tiles.

    Args:
        config: The job settings.
        items: Items to use instead of searching (the frozen selection).
        model: The model already resolved (default: resolved here, without loading weights).

    Raises:
        ValueError: Bad bbox, queries, model or lattice settings.
        pipelines.errors.CatalogError: Unreachable API or unreadable catalog.
        pipelines.errors.NoItemsError: Nothing matches the search.
    """
    resolved = (
        model
        if model is not None
        else resolve_model(config.model, config.tile_size_px, config.query_plan.expressions)
    )
    lattice = TileLattice.for_tile_size(resolved.tile_size_px, config.overlap_px, config.margin_px)
    selected = list(items) if items is not None else search(config)
    radiometry = RadiometryConfig(nodata=config.nodata)
    grid = choose_grid(
        config.bbox, selected, crs=config.crs, resolution=config.resolution, radiometry=radiometry
    )
    _check_size(config, grid, lattice)
    chunks = plan_chunks(grid, selected, config.chunk_size_px, lattice.halo_px, config.max_items_per_chunk)
    tiles = {
        c.chunk_id: tile_windows(lattice, (c.row_off, c.col_off, c.height, c.width))
        for c in chunks
        if not c.empty
    }
    return RegionPlan(config, selected, grid, lattice, chunks, resolved, tiles, list(resolved.warnings))
