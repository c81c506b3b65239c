"""The run document (``run.json``, PIPELINE.md §4): settings, grid, inputs, model, counts, timings, throughput."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from common import storage
from pipelines.answers import output_queries
from pipelines.plan import RegionPlan
from pipelines.provenance import file_sha256, fingerprint, write_run_json
from pipelines.software import package_versions
from pipelines.stac import item_summary

__all__ = [
    "RegionResult",
    "chunk_counts",
    "finished_document",
    "recorded_stop",
    "started_document",
    "stopped_document",
    "throughput",
]

#: Longest ``message`` of a run stopped by an exception (the exception's text is cut there).
_MESSAGE_CHARS = 4000

#: Outputs every run writes, relative to ``--out``.
_OUTPUTS = ("masks.zarr", "polygons.parquet", "quicklook.png", "item.json", "inputs/items.parquet")


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


def _utc(seconds: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _catalog_info(plan: RegionPlan) -> dict[str, Any]:
    c = plan.config
    return {
        "stac_url": c.stac_url,
        "catalog": c.catalog,
        "catalog_sha256": file_sha256(c.catalog) if c.catalog is not None else None,
        "search": c.search_settings(),
    }


def started_document(
    plan: RegionPlan, settings: dict[str, Any], resumed: bool, started: float
) -> dict[str, Any]:
    """``run.json`` as written when the run starts (status ``running``)."""
    c = plan.config
    return {
        "status": "running",
        "started_at": _utc(started),
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
        "catalog": _catalog_info(plan),
        "items": [item_summary(it, full=True) for it in plan.items],
        "model": plan.model.info,
        "queries": list(c.queries),
        "query_plan": plan.relation_settings(),
        "output_queries": [
            {"query_id": k, "query": text, "role": role}
            for k, (text, role) in enumerate(output_queries(c.query_plan))
        ],
        "warnings": list(plan.warnings),
        "radiometry": plan.radiometry.to_dict(),
        "versions": package_versions(),
    }


def chunk_counts(
    plan: RegionPlan,
    summaries: dict[str, dict[str, Any]],
    done_this_run: int,
    done_before: set[str],
    failures: list[dict[str, Any]],
    polygons: pd.DataFrame,
) -> dict[str, Any]:
    """``counts`` of ``run.json``: items, chunks by state, tiles, decodes, polygons and imagery area."""
    valid_px = sum(s.get("valid_px", 0) for s in summaries.values())
    return {
        "items": len(plan.items),
        "chunks": {
            "total": len(plan.chunks),
            "empty": sum(1 for ch in plan.chunks if ch.empty),
            "capped": sum(1 for ch in plan.chunks if ch.capped),
            "done": len(summaries),
            "done_this_run": done_this_run,
            "skipped_done_before": len(done_before & set(summaries)),
            "failed": len(failures),
        },
        "tiles": sum(s.get("n_tiles", 0) for s in summaries.values()),
        "tile_query_decodes": sum(s.get("n_decodes", 0) for s in summaries.values()),
        "polygons_before_merge": sum(sum(s.get("part_polygons", [])) for s in summaries.values()),
        "polygons": len(polygons),
        "valid_km2": round(valid_px * plan.pixel_area_m2 / 1e6, 6),
    }


def throughput(plan: RegionPlan, tiles: int, pipeline_s: float) -> dict[str, Any]:
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
        "expressions": len(plan.expressions),
    }


def finished_document(
    doc: dict[str, Any],
    plan: RegionPlan,
    counts: dict[str, Any],
    failures: list[dict[str, Any]],
    timings: dict[str, float],
    rates: dict[str, Any],
    polygons_per_query: dict[str, int],
) -> dict[str, Any]:
    """``run.json`` at the end of the run: the started document plus status, counts, timings and outputs."""
    out = plan.config.out
    names = _OUTPUTS + (("map.html",) if plan.config.html else ())
    return {
        **doc,
        "status": "failed" if failures else "complete",
        "finished_at": _utc(),
        "counts": counts,
        "failures": failures,
        "timings_s": timings,
        "throughput": rates,
        "polygons_per_query": polygons_per_query,
        "outputs": {name: storage.join(out, name) for name in names},
    }


def stopped_document(doc: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """``run.json`` of a run stopped by ``exc``: status ``interrupted`` (Ctrl-C, SIGTERM) or ``failed``, a message.

    Args:
        doc: The started document.
        exc: What stopped the run; a ``KeyboardInterrupt``'s text names the signal (empty: Ctrl-C).
    """
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        if isinstance(exc, SystemExit):
            cause = f"SystemExit({exc.code})"  # Ray's own SIGTERM handler exits this way
        else:
            cause = f"signal {exc}" if str(exc) else "Ctrl-C (SIGINT)"
        status = "interrupted"
        message = (
            f"interrupted by {cause}; rerun the same command (without --overwrite) to resume: chunks with a "
            "done marker are kept"
        )
    else:
        status = "failed"
        text = f"{type(exc).__name__}: {exc}"
        message = text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."
        message += "; rerun the same command to retry: chunks with a done marker are kept"
    return {**doc, "status": status, "message": message, "finished_at": _utc()}


@contextlib.contextmanager
def recorded_stop(out: str, doc: dict[str, Any]) -> Iterator[None]:
    """Rewrite ``run.json`` in ``out`` by :func:`stopped_document` when the body raises, then re-raise."""
    try:
        yield
    except BaseException as exc:
        write_run_json(out, stopped_document(doc, exc))
        raise
