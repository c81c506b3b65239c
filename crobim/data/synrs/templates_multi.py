"""SynRS multi-target templates: each names at least two instances (and, for relations, not all of the class)."""

from __future__ import annotations

import numpy as np

from crobim.data.synrs.relations import SceneRelations
from crobim.data.synrs.scene import PLURALS, Expression
from crobim.data.synrs.template_parts import (
    COLOURED_CLASSES,
    HALVES,
    Template,
    classes_with_at_least,
    direction_phrase,
    direction_sets,
    near_split,
    pick,
    ref_phrase,
    target_and_reference,
)

__all__ = ["MULTI_TEMPLATES"]


def _t_all(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = classes_with_at_least(rel, 2, lines=True)
    if not cands:
        return None
    c = str(pick(rng, cands))
    ids = tuple(i.id for i in rel.g.of_class(c))
    return Expression(
        str(pick(rng, [f"all {PLURALS[c]}", f"all the {PLURALS[c]}", f"every {c}"])), ids, "multi", "all", c
    )


def _t_near(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    pair = target_and_reference(rel, rng, min_count=3)
    if pair is None:
        return None
    c, r = pair
    split = near_split(rel, c, r)
    if split is None or len(split[0]) < 2 or not split[1]:
        return None
    text = f"all {PLURALS[c]} near {ref_phrase(rel, r, plural=True)}"
    return Expression(text, tuple(i.id for i in split[0]), "multi", "near", c, r)


def _t_half(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = classes_with_at_least(rel, 3)
    if not cands:
        return None
    c = str(pick(rng, cands))
    half = str(pick(rng, list(HALVES)))
    flags = [rel.half(i, half) for i in rel.g.of_class(c)]
    if any(f is None for f in flags):
        return None
    ids = tuple(i.id for i, f in zip(rel.g.of_class(c), flags, strict=True) if f)
    if len(ids) < 2 or len(ids) == len(flags):
        return None
    return Expression(f"all {PLURALS[c]} in the {half} half", ids, "multi", "half", c)


def _t_direction_multi(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    res = direction_sets(rel, rng, 3)
    if res is None:
        return None
    c, r, direction, yes, no = res
    if len(yes) < 2 or not no:
        return None
    ids = tuple(i.id for i in yes)
    return Expression(f"all {PLURALS[c]} {direction_phrase(direction, r)}", ids, "multi", "direction", c, r)


def _t_colour_multi(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = [c for c in COLOURED_CLASSES if rel.count(c) >= 3]
    if not cands:
        return None
    c = str(pick(rng, cands))
    insts = rel.g.of_class(c)
    colour = str(pick(rng, sorted({str(i.colour) for i in insts})))
    ids = tuple(i.id for i in insts if i.colour == colour)
    if len(ids) < 2 or len(ids) == len(insts):
        return None
    return Expression(f"all {colour} {PLURALS[c]}", ids, "multi", "colour", c)


#: Multi-target templates by the name written to the metadata, in draw-index order.
MULTI_TEMPLATES: dict[str, Template] = {
    "all": _t_all,
    "near": _t_near,
    "half": _t_half,
    "direction": _t_direction_multi,
    "colour": _t_colour_multi,
}
