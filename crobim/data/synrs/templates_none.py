"""SynRS no-target templates: each names nothing in the scene, with the empty set verified with margins."""

from __future__ import annotations

import numpy as np

from crobim.data.synrs.relations import SceneRelations
from crobim.data.synrs.scene import CLASSES, PLURALS, Expression
from crobim.data.synrs.template_parts import (
    CELL_PHRASES,
    COLOUR_WORDS,
    COLOURED_CLASSES,
    Template,
    direction_phrase,
    direction_sets,
    near_split,
    pick,
    present_classes,
    ref_phrase,
)

__all__ = ["NONE_TEMPLATES"]


def _t_absent(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    absent = [c for c in CLASSES if rel.count(c) == 0]
    if not absent:
        return None
    c = str(pick(rng, absent))
    present = present_classes(rel)
    options = [f"the {c}", f"all {PLURALS[c]}", f"the {c} {CELL_PHRASES[int(rng.integers(0, 3))][int(rng.integers(0, 3))]}",
               f"the largest {c}"]  # fmt: skip
    if present:
        r = str(pick(rng, present))
        options += [
            f"the {c} nearest {ref_phrase(rel, r)}",
            f"all {PLURALS[c]} near {ref_phrase(rel, r, True)}",
        ]
    return Expression(str(pick(rng, options)), (), "none", "absent", c)


def _t_near_none(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = present_classes(rel)
    if len(cands) < 2:
        return None
    c = str(pick(rng, cands))
    r = str(pick(rng, [x for x in cands if x != c]))
    split = near_split(rel, c, r)
    if split is None or split[0]:
        return None
    text = str(
        pick(
            rng,
            [f"all {PLURALS[c]} near {ref_phrase(rel, r, True)}", f"the {c} next to {ref_phrase(rel, r)}"],
        )
    )
    return Expression(text, (), "none", "near_none", c, r)


def _t_cell_none(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = present_classes(rel)
    if not cands:
        return None
    c = str(pick(rng, cands))
    row, col = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    ys = slice(row * rel.h // 3, (row + 1) * rel.h // 3)
    xs = slice(col * rel.w // 3, (col + 1) * rel.w // 3)
    if rel.class_mask(c)[ys, xs].any():
        return None
    text = str(pick(rng, [f"the {c} {CELL_PHRASES[row][col]}", f"all {PLURALS[c]} {CELL_PHRASES[row][col]}"]))
    return Expression(text, (), "none", "cell_none", c)


def _t_colour_none(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = [c for c in COLOURED_CLASSES if rel.count(c) >= 1]
    if not cands:
        return None
    c = str(pick(rng, cands))
    used = {i.colour for i in rel.g.of_class(c)}
    free = [w for w in COLOUR_WORDS[c] if w not in used]
    if not free:
        return None
    return Expression(f"the {pick(rng, free)} {c}", (), "none", "colour_none", c)


def _t_direction_none(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    res = direction_sets(rel, rng, 1)
    if res is None:
        return None
    c, r, direction, yes, _ = res
    if yes:
        return None
    return Expression(f"the {c} {direction_phrase(direction, r)}", (), "none", "direction_none", c, r)


#: No-target templates by the name written to the metadata, in draw-index order.
NONE_TEMPLATES: dict[str, Template] = {
    "absent": _t_absent,
    "near_none": _t_near_none,
    "cell_none": _t_cell_none,
    "colour_none": _t_colour_none,
    "direction_none": _t_direction_none,
}
