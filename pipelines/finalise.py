"""Finalising a region run on the driver: merge the polygon parts across seams, answer the relations, then
``polygons.parquet``, ``quicklook.png`` and ``map.html``."""

from __future__ import annotations

import geopandas as gpd
from affine import Affine

from common import storage
from pipelines.answers import answer_masks, compose_answers, output_queries
from pipelines.geoparquet import write_geoparquet
from pipelines.merge_polygons import merge_parts
from pipelines.plan import RegionPlan
from pipelines.stac import item_summary
from pipelines.viz import Thumbnail, assemble_overview, render_quicklook

__all__ = ["finalise_outputs"]


def finalise_outputs(
    plan: RegionPlan, done: list[str], thumb_step: int, backend: str = "local"
) -> gpd.GeoDataFrame:
    """Write ``polygons.parquet`` from the done chunks' parts, ``quicklook.png`` and (``--html``) ``map.html``.

    Re-run from the parts on every run, so a resumed run's files equal an uninterrupted run's.

    Args:
        plan: The run's plan.
        done: Ids of the chunks whose parts are complete.
        thumb_step: Quicklook sampling step (grid pixels).
        backend: Where the relation step's partitions run (``"ray"`` when Ray is up, else ``"local"``).

    Returns:
        The output table: decoded polygons and the composed queries' answers.
    """
    c = plan.config
    parts = [storage.join(c.out, "_parts", "polygons", f"{cid}.parquet") for cid in done]
    datetimes = {it.id: item_summary(it)["datetime"] for it in plan.items}
    out_uri = storage.join(c.out, "polygons.parquet")
    merged = merge_parts(parts, out_uri, plan.grid.crs_wkt, c.min_area_m2, c.simplify_m, datetimes)
    query_plan = c.query_plan
    polygons = compose_answers(
        merged,
        out_uri,
        query_plan,
        touch_m=plan.touch_m,
        inside_share=c.inside_share,
        object_min_area_m2=plan.object_min_area_m2,
        backend=backend,
    )
    write_geoparquet(polygons, out_uri, covering_bbox=True)
    names = [text for text, _ in output_queries(query_plan)]
    thumbs = (
        Thumbnail.from_bytes(storage.read_bytes(storage.join(c.out, "_parts", "thumbs", f"{cid}.npz")))
        for cid in done
    )
    overview = assemble_overview(thumbs, plan.grid.shape, thumb_step, len(plan.expressions))
    transform = plan.grid.affine @ Affine.scale(thumb_step)
    overview.masks = answer_masks(overview.masks, query_plan, polygons, transform)  # the user's queries only
    storage.write_bytes(storage.join(c.out, "quicklook.png"), render_quicklook(overview, list(c.queries)))
    if c.html:
        from pipelines.map_overlay import map_imagery
        from pipelines.webmap import write_map

        imagery = None
        if overview.valid.any():
            imagery = map_imagery(overview.rgb, plan.grid.crs, transform, overview.valid)
        write_map(storage.join(c.out, "map.html"), polygons, imagery, names)
    return polygons
