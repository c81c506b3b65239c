"""Parts shared by the SynRS templates: phrase tables, random picks, candidate classes and relation splits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from crobim.data.synrs.relations import LINE_CLASSES, SceneRelations
from crobim.data.synrs.scene import CLASSES, PLURALS, Expression, Instance

__all__ = [
    "CELL_PHRASES",
    "COLOURED_CLASSES",
    "COLOUR_WORDS",
    "HALVES",
    "Template",
    "classes_with_at_least",
    "direction_phrase",
    "direction_sets",
    "near_split",
    "pick",
    "present_classes",
    "ref_phrase",
    "target_and_reference",
]

#: A template: draws one expression from a scene, or ``None`` when it cannot be verified.
Template = Callable[[SceneRelations, np.random.Generator], "Expression | None"]

#: Phrases of the 3 x 3 grid cells, by (row, column).
CELL_PHRASES = (
    ("in the upper left", "at the top", "in the upper right"),
    ("on the left", "in the center", "on the right"),
    ("in the lower left", "at the bottom", "in the lower right"),
)
HALVES = ("upper", "lower", "left", "right")
#: Classes whose instances carry a colour word.
COLOURED_CLASSES = ("building", "field")
COLOUR_WORDS = {"building": ("red", "grey", "white", "brown", "blue"), "field": ("green", "yellow", "brown")}


def ref_phrase(rel: SceneRelations, cls: str, plural: bool = False) -> str:
    """How to name a reference class: "the X" when unique, else "a X" (or the plural)."""
    if rel.count(cls) == 1:
        return f"the {cls}"
    return PLURALS[cls] if plural else f"a {cls}"


def pick(rng: np.random.Generator, options: list) -> object:  # noqa: ANN401
    """One of ``options``, uniformly."""
    return options[int(rng.integers(0, len(options)))]


def classes_with_at_least(rel: SceneRelations, n: int, lines: bool = False) -> list[str]:
    """Classes with at least ``n`` instances; rivers and roads only if ``lines`` (their centroids mean little)."""
    return [c for c in CLASSES if rel.count(c) >= n and (lines or c not in LINE_CLASSES)]


def present_classes(rel: SceneRelations) -> list[str]:
    """Classes with at least one instance, in draw order."""
    return [c for c in CLASSES if rel.count(c) >= 1]


def target_and_reference(
    rel: SceneRelations, rng: np.random.Generator, min_count: int
) -> tuple[str, str] | None:
    """Draw a target class with at least ``min_count`` instances, then a different present reference class."""
    cands = classes_with_at_least(rel, min_count, lines=True)
    if not cands:
        return None
    c = str(pick(rng, cands))
    refs = [r for r in present_classes(rel) if r != c]
    if not refs:
        return None
    return c, str(pick(rng, refs))


def direction_sets(
    rel: SceneRelations, rng: np.random.Generator, min_target: int
) -> tuple[str, str, str, list[Instance], list[Instance]] | None:
    """Pick (class, ref, direction) and split the class into satisfying / clearly-not; ``None`` if ambiguous."""
    cands = classes_with_at_least(rel, min_target)
    refs = [r for r in CLASSES if rel.count(r) == 1]
    if not cands or not refs:
        return None
    c = str(pick(rng, cands))
    refs = [r for r in refs if r != c]
    if not refs:
        return None
    r = str(pick(rng, refs))
    direction = str(pick(rng, ["left", "right", "above", "below"]))
    ref = rel.g.of_class(r)[0]
    thr = rel.p.direction * rel.S
    clear = thr - rel.p.position_margin * rel.S
    yes, no = [], []
    for inst in rel.g.of_class(c):
        off = rel.offset(inst, ref, direction)
        if off is None:
            return None
        if off >= thr:
            yes.append(inst)
        elif off <= clear:
            no.append(inst)
        else:
            return None
    return c, r, direction, yes, no


def direction_phrase(direction: str, r: str) -> str:
    """The phrase for ``direction`` of reference class ``r``, e.g. "left of the road"."""
    return {"left": f"left of the {r}", "right": f"right of the {r}", "above": f"above the {r}"}.get(
        direction, f"below the {r}"
    )


def near_split(rel: SceneRelations, c: str, r: str) -> tuple[list[Instance], list[Instance]] | None:
    """Split class ``c`` into instances clearly near / clearly not near ``r``; ``None`` if one is in the margin."""
    near = rel.p.near * rel.S
    margin = rel.p.near_margin * rel.S
    yes, no = [], []
    for inst in rel.g.of_class(c):
        d = rel.distance(inst, r)
        if d <= near - margin:
            yes.append(inst)
        elif d > near + margin:
            no.append(inst)
        else:
            return None
    return yes, no
