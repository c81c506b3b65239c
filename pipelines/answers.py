"""The answers of a region job: decoded expressions and composed relation queries in one table (docs/queries.md).

The seam-merged polygons carry one row per polygon of each decoded expression. Here each row gets its ``role``
("answer" when the expression is itself one of the user's plain queries, else "sub-query"), the relation step
(:mod:`pipelines.relations`) adds the answers of the composed queries (the kept subject polygons, with ``query`` =
the user's text, ``relation``, ``distance_m`` and ``nearest_id``), and ``query_id`` indexes :func:`output_queries`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
from affine import Affine

from pipelines.query_grammar import ParsedQuery, QueryPlan
from pipelines.relations import with_answer_columns

__all__ = ["answer_masks", "compose_answers", "output_queries"]

logger = logging.getLogger(__name__)


def output_queries(plan: QueryPlan) -> list[tuple[str, str]]:
    """(text, role) of every query in the outputs: the user's queries in order, then the sub-queries only.

    ``query_id`` in ``polygons.parquet`` is the position in this list; ``run.json`` records it.
    """
    out = [(q.text, "answer") for q in plan.queries]
    texts = {q.text for q in plan.queries}
    out += [(e, "sub-query") for e in plan.expressions if e not in texts]
    return out


def _decoded_rows(merged: gpd.GeoDataFrame, plan: QueryPlan, ids: dict[str, int]) -> gpd.GeoDataFrame:
    """The merged expression polygons with their role and output ``query_id`` (``ids``: text -> query_id)."""
    plain = {q.text for q in plan.queries if not q.composed}
    texts = merged["query"].astype(str)
    rows = with_answer_columns(merged, np.where(texts.isin(plain), "answer", "sub-query"))
    rows["query_id"] = texts.map(ids).astype(np.int64)
    return rows


def compose_answers(
    merged: gpd.GeoDataFrame,
    merged_uri: str,
    plan: QueryPlan,
    *,
    touch_m: float,
    inside_share: float,
    object_min_area_m2: float = 0.0,
    backend: str = "local",
) -> gpd.GeoDataFrame:
    """The output table: decoded rows with their roles, then the composed queries' answer rows.

    Args:
        merged: Seam-merged polygons of the decoded expressions (``query`` = expression text).
        merged_uri: The GeoParquet file ``merged`` was written to: the relation step reads its cells from it by
            bbox, so no process holds the whole region for it.
        plan: The job's query plan.
        touch_m: ``touching`` tolerance in metres.
        inside_share: Share of a subject's area that must lie in the objects for ``inside``.
        object_min_area_m2: Object polygons smaller than this count for no relation (speckle).
        backend: Where the relation step's cells run: ``"local"`` (here, one after another) or ``"ray"`` (Ray
            tasks; Ray must be up).

    Returns:
        All rows, ordered by ``query_id`` (each query's rows in their own order).
    """
    from pipelines.relations_partitioned import answer_queries

    ids = {text: k for k, (text, _) in enumerate(output_queries(plan))}
    decoded = _decoded_rows(merged, plan, ids)
    composed: Sequence[tuple[int, ParsedQuery]] = [(ids[q.text], q) for q in plan.queries if q.composed]
    if not composed:
        return decoded
    answers = answer_queries(
        merged_uri,
        composed,
        touch_m=touch_m,
        inside_share=inside_share,
        backend=backend,  # type: ignore[arg-type]
        object_min_area_m2=object_min_area_m2,
    )
    for k, query in composed:
        logger.info("%r: %d answer polygons", query.text, int((answers["query_id"] == k).sum()))
    table = pd.concat([decoded, answers[decoded.columns]], ignore_index=True)
    table = table.sort_values("query_id", kind="stable").reset_index(drop=True)
    return gpd.GeoDataFrame(table, geometry="geometry", crs=merged.crs)


def answer_masks(
    expression_masks: np.ndarray,
    plan: QueryPlan,
    polygons: gpd.GeoDataFrame,
    transform: Affine,
) -> np.ndarray:
    """Masks of the user's queries (``plan.queries`` order, their ``query_id``s) at the overview's scale.

    A plain query shows its expression's thresholded mask; a composed query, its answer polygons rasterised.

    Args:
        expression_masks: bool ``(E, h, w)`` per decoded expression (``plan.expressions`` order).
        plan: The job's query plan.
        polygons: The output table (grid CRS).
        transform: The overview's affine transform in the grid CRS.
    """
    from rasterio.features import rasterize

    shape = expression_masks.shape[1:]
    out = []
    for k, query in enumerate(plan.queries):
        if not query.composed:
            out.append(expression_masks[plan.expressions.index(query.subject)])
            continue
        geoms = polygons.geometry[(polygons["query_id"] == k).to_numpy()]
        if len(geoms) == 0 or 0 in shape:
            out.append(np.zeros(shape, dtype=bool))
        else:
            out.append(rasterize(geoms, out_shape=shape, transform=transform, all_touched=True).astype(bool))
    return np.stack(out) if out else np.zeros((0, *shape), dtype=bool)
