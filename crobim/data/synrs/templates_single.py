"""SynRS single-target templates: each names exactly one instance, verified with margins on the scene graph."""

from __future__ import annotations

import numpy as np

from crobim.data.synrs.relations import SceneRelations
from crobim.data.synrs.scene import CLASSES, Expression, Instance
from crobim.data.synrs.template_parts import (
    CELL_PHRASES,
    COLOURED_CLASSES,
    HALVES,
    Template,
    classes_with_at_least,
    direction_phrase,
    direction_sets,
    pick,
    ref_phrase,
    target_and_reference,
)

__all__ = ["SINGLE_TEMPLATES"]


def _t_category(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = [c for c in CLASSES if rel.count(c) == 1]
    if not cands:
        return None
    c = str(pick(rng, cands))
    text = str(pick(rng, [f"the {c}", f"the only {c}", f"the {c} in the image"]))
    return Expression(text, (rel.g.of_class(c)[0].id,), "single", "category", c)


def _t_position(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = classes_with_at_least(rel, 2)
    if not cands:
        return None
    c = str(pick(rng, cands))
    insts = rel.g.of_class(c)
    cells = [rel.cell(i) for i in insts]
    if any(x is None for x in cells):
        return None
    unique = [(cell, i) for cell, i in zip(cells, insts, strict=True) if cells.count(cell) == 1]
    if not unique:
        return None
    cell, inst = unique[int(rng.integers(0, len(unique)))]
    assert cell is not None
    return Expression(f"the {c} {CELL_PHRASES[cell[0]][cell[1]]}", (inst.id,), "single", "position", c)


def _nearest_like(rel: SceneRelations, rng: np.random.Generator, farthest: bool) -> Expression | None:
    pair = target_and_reference(rel, rng, min_count=2)
    if pair is None:
        return None
    c, r = pair
    insts = rel.g.of_class(c)
    d = np.array([rel.distance(i, r) for i in insts])
    order = np.argsort(-d if farthest else d, kind="stable")
    gap = abs(d[order[1]] - d[order[0]])
    if gap < rel.p.nearest_margin * rel.S:
        return None
    refp = ref_phrase(rel, r)
    if farthest:
        text = f"the {c} farthest from {refp}"
    else:
        text = str(pick(rng, [f"the {c} nearest {refp}", f"the {c} closest to {refp}"]))
    return Expression(text, (insts[order[0]].id,), "single", "farthest" if farthest else "nearest", c, r)


def _t_nearest(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    return _nearest_like(rel, rng, farthest=False)


def _t_farthest(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    return _nearest_like(rel, rng, farthest=True)


def _t_direction(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    res = direction_sets(rel, rng, 2)
    if res is None:
        return None
    c, r, direction, yes, _ = res
    if len(yes) != 1:
        return None
    return Expression(f"the {c} {direction_phrase(direction, r)}", (yes[0].id,), "single", "direction", c, r)


def _superlative(insts: list[Instance], largest: bool, ratio: float) -> Instance | None:
    if len(insts) < 2:
        return None
    areas = sorted(((i.area, i.id) for i in insts), reverse=largest)
    a0, a1 = areas[0][0], areas[1][0]
    ok = a0 >= ratio * a1 if largest else a1 >= ratio * a0
    if not ok:
        return None
    return next(i for i in insts if i.id == areas[0][1])


def _t_size(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = classes_with_at_least(rel, 2)
    if not cands:
        return None
    c = str(pick(rng, cands))
    largest = bool(rng.integers(0, 2))
    inst = _superlative(rel.g.of_class(c), largest, rel.p.size_ratio)
    if inst is None:
        return None
    word = str(pick(rng, ["largest", "biggest"])) if largest else "smallest"
    return Expression(f"the {word} {c}", (inst.id,), "single", "size", c)


def _t_size_position(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = classes_with_at_least(rel, 3)
    if not cands:
        return None
    c = str(pick(rng, cands))
    half = str(pick(rng, list(HALVES)))
    insts = rel.g.of_class(c)
    flags = [rel.half(i, half) for i in insts]
    if any(f is None for f in flags):
        return None
    inside = [i for i, f in zip(insts, flags, strict=True) if f]
    largest = bool(rng.integers(0, 2))
    inst = _superlative(inside, largest, rel.p.size_ratio)
    if inst is None:
        return None
    word = "largest" if largest else "smallest"
    return Expression(f"the {word} {c} in the {half} half", (inst.id,), "single", "size_position", c)


def _t_colour(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = [c for c in COLOURED_CLASSES if rel.count(c) >= 2]
    if not cands:
        return None
    c = str(pick(rng, cands))
    insts = rel.g.of_class(c)
    colours = [i.colour for i in insts]
    unique = [i for i in insts if colours.count(i.colour) == 1]
    if not unique:
        return None
    inst = unique[int(rng.integers(0, len(unique)))]
    text = (
        f"the {inst.colour} {c}"
        if c == "field" or rng.random() < 0.5
        else f"the {c} with the {inst.colour} roof"
    )
    return Expression(text, (inst.id,), "single", "colour", c)


#: Single-target templates by the name written to the metadata, in draw-index order.
SINGLE_TEMPLATES: dict[str, Template] = {
    "category": _t_category,
    "position": _t_position,
    "nearest": _t_nearest,
    "farthest": _t_farthest,
    "direction": _t_direction,
    "size": _t_size,
    "size_position": _t_size_position,
    "colour": _t_colour,
}
