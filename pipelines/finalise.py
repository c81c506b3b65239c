"""Finalising a region run on the driver: merge the polygon parts across seams, then quicklook.png and map.html."""

from __future__ import annotations

import geopandas as gpd
from affine import Affine

from common import storage
from pipelines.merge_polygons import merge_parts
from pipelines.plan import RegionPlan
from pipelines.stac import item_summary
from pipelines.viz import Thumbnail, assemble_overview, render_quicklook

__all__ = ["finalise_outputs"]


def finalise_outputs(plan: RegionPlan, done: list[str], thumb_step: int) -> gpd.GeoDataFrame:
    """Write ``polygons.parquet`` from the done chunks' parts, ``quicklook.png`` and (``--html``) ``map.html``.

    Re-run from the parts on every run, so a resumed run's files equal an uninterrupted run's.

    Args:
        plan: The run's plan.
        done: Ids of the chunks whose parts are complete.
        thumb_step: Quicklook sampling step (grid pixels).

    Returns:
        The merged polygons.
    """
    c = plan.config
    parts = [storage.join(c.out, "_parts", "polygons", f"{cid}.parquet") for cid in done]
    datetimes = {it.id: item_summary(it)["datetime"] for it in plan.items}
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
        from pipelines.map_overlay import map_imagery
        from pipelines.webmap import write_map

        imagery = None
        if overview.valid.any():
            transform = plan.grid.affine @ Affine.scale(thumb_step)
            imagery = map_imagery(overview.rgb, plan.grid.crs, transform, overview.valid)
        write_map(storage.join(c.out, "map.html"), polygons, imagery, list(c.queries))
    return polygons
