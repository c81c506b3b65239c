"""SynRS referring expressions, resolved on the scene graph (DATA_AND_EVAL.md §9).

Every expression is checked on the scene graph before it is emitted: a singular expression only when exactly one
instance satisfies it with margins, relational templates only when the target class has at least two instances
(so the category word alone never suffices), multi-target ones when at least two instances (and, for relations,
not all of the class) satisfy them, and no-target ones when the empty set is verified with margins.
"""

from __future__ import annotations

import numpy as np

from crobim.data.synrs.relations import SceneRelations
from crobim.data.synrs.scene import Expression, ExpressionKind, SceneGraph, SynRSParams
from crobim.data.synrs.templates import TEMPLATES, template_probabilities

__all__ = ["make_expressions"]


def _draw(
    rel: SceneRelations, rng: np.random.Generator, kind: ExpressionKind, probs: np.ndarray | None, tries: int
) -> Expression | None:
    """Up to ``tries`` template draws of ``kind`` (``probs`` from ``template_probabilities``) until one applies."""
    templates = tuple(TEMPLATES[kind].values())
    for _ in range(tries):
        # The uniform draw stays rng.integers so that default parameters reproduce earlier datasets' expressions.
        index = (
            int(rng.integers(0, len(templates)))
            if probs is None
            else int(rng.choice(len(templates), p=probs))
        )
        expr = templates[index](rel, rng)
        if expr is not None and len(expr.text.split()) <= rel.p.max_words:
            return expr
    return None


def make_expressions(
    graph: SceneGraph, rng: np.random.Generator, params: SynRSParams | None = None, n: int | None = None
) -> list[Expression]:
    """Draw up to ``n`` verified expressions for a scene, each with a distinct text and target set.

    The type of each expression is drawn with ``p_single``/``p_multi``/``p_none``; when no single-target
    expression can be verified, a multi-target one is tried, and vice versa (no-target draws do not fall back,
    so their share stays at ``p_none`` of the draws).

    Args:
        graph: The scene.
        rng: The scene's generator.
        params: Thresholds and the type mix.
        n: Number of expressions (default ``params.expressions_per_scene``).

    Returns:
        The expressions (possibly fewer than ``n`` for a sparse scene).
    """
    params = params or SynRSParams()
    rel = SceneRelations(graph, params)
    n = params.expressions_per_scene if n is None else n
    kinds: tuple[ExpressionKind, ...] = ("single", "multi", "none")
    kind_probs = np.array([params.p_single, params.p_multi, params.p_none], dtype=np.float64)
    kind_probs /= kind_probs.sum()
    probs = {kind: template_probabilities(params, kind) for kind in kinds}
    out: list[Expression] = []
    seen_text: set[str] = set()
    seen_sets: set[tuple[int, ...]] = set()
    for _ in range(n):
        kind = kinds[int(rng.choice(3, p=kind_probs))]
        order: tuple[ExpressionKind, ...] = (
            (kind,) if kind == "none" else (kind, "multi" if kind == "single" else "single")
        )
        for k in order:
            found = None
            for _attempt in range(4):
                expr = _draw(rel, rng, k, probs[k], tries=6)
                if expr is None:
                    break
                key = tuple(sorted(expr.referents))
                if expr.text in seen_text or (key and key in seen_sets):
                    continue
                found = expr
                break
            if found is not None:
                out.append(found)
                seen_text.add(found.text)
                if found.referents:
                    seen_sets.add(tuple(sorted(found.referents)))
                break
    return out
