"""SynRS referring expressions, resolved on the scene graph (DATA_AND_EVAL.md §9).

Every expression is checked on the scene graph before it is emitted: a singular expression only when exactly one
instance satisfies it with margins, relational templates only when the target class has at least two instances
(so the category word alone never suffices), multi-target ones when at least two instances (and, for relations,
not all of the class) satisfy them, and no-target ones when the empty set is verified with margins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from crobim.data.synrs.scene import CLASSES, PLURALS, Instance, SceneGraph, SynRSParams

__all__ = ["TEMPLATE_NAMES", "Expression", "SceneRelations", "make_expressions", "template_probabilities"]

Kind = Literal["single", "multi", "none"]

_CELLS = (
    ("in the upper left", "at the top", "in the upper right"),
    ("on the left", "in the center", "on the right"),
    ("in the lower left", "at the bottom", "in the lower right"),
)
_HALVES = ("upper", "lower", "left", "right")
_LINES = ("river", "road")
_COLOURED = ("building", "field")
_COLOUR_WORDS = {"building": ("red", "grey", "white", "brown", "blue"), "field": ("green", "yellow", "brown")}


@dataclass(frozen=True)
class Expression:
    """One expression with its verified referents.

    Attributes:
        text: Lowercase expression.
        referents: Instance ids of the target set (empty for no-target).
        kind: ``"single"``, ``"multi"`` or ``"none"``.
        template: Template name.
        target_class: Class the expression is about.
        ref_class: Class of the reference object, if any.
    """

    text: str
    referents: tuple[int, ...]
    kind: Kind
    template: str
    target_class: str
    ref_class: str | None = None


class SceneRelations:
    """Geometry queries on a scene graph with cached distance maps (pixel-set distances via the EDT)."""

    def __init__(self, graph: SceneGraph, params: SynRSParams) -> None:
        self.g = graph
        self.p = params
        self.S = float(graph.unit_px)
        self.h, self.w = graph.shape
        self._dist: dict[str, np.ndarray] = {}
        self._cls_mask: dict[str, np.ndarray] = {}

    def count(self, cls: str) -> int:
        return len(self.g.of_class(cls))

    def class_mask(self, cls: str) -> np.ndarray:
        if cls not in self._cls_mask:
            self._cls_mask[cls] = self.g.mask([i.id for i in self.g.of_class(cls)])
        return self._cls_mask[cls]

    def distance_map(self, cls: str) -> np.ndarray:
        """Distance of every pixel to the nearest pixel of ``cls`` (``inf`` everywhere if absent)."""
        if cls not in self._dist:
            m = self.class_mask(cls)
            self._dist[cls] = (
                ndimage.distance_transform_edt(~m).astype(np.float32)
                if m.any()
                else np.full(m.shape, np.inf, dtype=np.float32)
            )
        return self._dist[cls]

    def distance(self, inst: Instance, ref_cls: str) -> float:
        """Minimum pixel-set distance from ``inst`` to any instance of ``ref_cls``."""
        y0, x0, y1, x1 = inst.bbox
        own = self.g.labels[y0:y1, x0:x1] == inst.id
        return float(self.distance_map(ref_cls)[y0:y1, x0:x1][own].min())

    def cell(self, inst: Instance) -> tuple[int, int] | None:
        """3 x 3 grid cell of the centroid, or ``None`` when it lies within the margin of a grid line."""
        m = self.p.position_margin * self.S
        cy, cx = inst.centroid
        for c, side in ((cy, self.h), (cx, self.w)):
            if min(abs(c - side / 3), abs(c - 2 * side / 3)) < m:
                return None
        return min(2, int(3 * cy / self.h)), min(2, int(3 * cx / self.w))

    def half(self, inst: Instance, half: str) -> bool | None:
        """Whether the centroid is in ``half``; ``None`` within the margin of the middle line."""
        m = self.p.position_margin * self.S
        cy, cx = inst.centroid
        c, side = (cy, self.h) if half in ("upper", "lower") else (cx, self.w)
        if abs(c - side / 2) < m:
            return None
        first = c < side / 2
        return first if half in ("upper", "left") else not first

    def offset(self, inst: Instance, ref: Instance, direction: str) -> float | None:
        """How far ``inst`` lies in ``direction`` of ``ref`` (pixels); ``None`` if undefined.

        Compact references compare centroids. A river or road compares with the reference's pixels in the
        candidate's row (left/right) or column (above/below); undefined if the line does not cross it.
        """
        cy, cx = inst.centroid
        if ref.cls in _LINES:
            ref_mask = self.g.labels == ref.id
            if direction in ("left", "right"):
                xs = np.flatnonzero(ref_mask[min(self.h - 1, int(cy))])
                if xs.size == 0:
                    return None
                return float(xs.min() + 0.5 - cx) if direction == "left" else float(cx - xs.max() - 0.5)
            ys = np.flatnonzero(ref_mask[:, min(self.w - 1, int(cx))])
            if ys.size == 0:
                return None
            return float(ys.min() + 0.5 - cy) if direction == "above" else float(cy - ys.max() - 0.5)
        ry, rx = ref.centroid
        return {"left": rx - cx, "right": cx - rx, "above": ry - cy, "below": cy - ry}[direction]


def _ref_phrase(rel: SceneRelations, cls: str, plural: bool = False) -> str:
    if rel.count(cls) == 1:
        return f"the {cls}"
    return PLURALS[cls] if plural else f"a {cls}"


def _pick(rng: np.random.Generator, options: list) -> object:  # noqa: ANN401
    return options[int(rng.integers(0, len(options)))]


# --- candidate classes -------------------------------------------------------------------------------------


def _classes_min(rel: SceneRelations, n: int, lines: bool = False) -> list[str]:
    """Classes with at least ``n`` instances; rivers and roads only if ``lines`` (their centroids mean little)."""
    return [c for c in CLASSES if rel.count(c) >= n and (lines or c not in _LINES)]


def _present(rel: SceneRelations) -> list[str]:
    return [c for c in CLASSES if rel.count(c) >= 1]


# --- singular templates ------------------------------------------------------------------------------------


def _t_category(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = [c for c in CLASSES if rel.count(c) == 1]
    if not cands:
        return None
    c = str(_pick(rng, cands))
    text = str(_pick(rng, [f"the {c}", f"the only {c}", f"the {c} in the image"]))
    return Expression(text, (rel.g.of_class(c)[0].id,), "single", "category", c)


def _t_position(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = _classes_min(rel, 2)
    if not cands:
        return None
    c = str(_pick(rng, cands))
    insts = rel.g.of_class(c)
    cells = [rel.cell(i) for i in insts]
    if any(x is None for x in cells):
        return None
    unique = [(cell, i) for cell, i in zip(cells, insts, strict=True) if cells.count(cell) == 1]
    if not unique:
        return None
    cell, inst = unique[int(rng.integers(0, len(unique)))]
    assert cell is not None
    return Expression(f"the {c} {_CELLS[cell[0]][cell[1]]}", (inst.id,), "single", "position", c)


def _target_and_reference(
    rel: SceneRelations, rng: np.random.Generator, min_count: int
) -> tuple[str, str] | None:
    """Draw a target class with at least ``min_count`` instances, then a different present reference class."""
    cands = _classes_min(rel, min_count, lines=True)
    if not cands:
        return None
    c = str(_pick(rng, cands))
    refs = [r for r in _present(rel) if r != c]
    if not refs:
        return None
    return c, str(_pick(rng, refs))


def _nearest_like(rel: SceneRelations, rng: np.random.Generator, farthest: bool) -> Expression | None:
    pair = _target_and_reference(rel, rng, min_count=2)
    if pair is None:
        return None
    c, r = pair
    insts = rel.g.of_class(c)
    d = np.array([rel.distance(i, r) for i in insts])
    order = np.argsort(-d if farthest else d, kind="stable")
    gap = abs(d[order[1]] - d[order[0]])
    if gap < rel.p.nearest_margin * rel.S:
        return None
    refp = _ref_phrase(rel, r)
    if farthest:
        text = f"the {c} farthest from {refp}"
    else:
        text = str(_pick(rng, [f"the {c} nearest {refp}", f"the {c} closest to {refp}"]))
    return Expression(text, (insts[order[0]].id,), "single", "farthest" if farthest else "nearest", c, r)


def _t_nearest(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    return _nearest_like(rel, rng, farthest=False)


def _t_farthest(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    return _nearest_like(rel, rng, farthest=True)


def _direction_sets(
    rel: SceneRelations, rng: np.random.Generator, min_target: int
) -> tuple[str, str, str, list[Instance], list[Instance]] | None:
    """Pick (class, ref, direction) and split the class into satisfying / clearly-not; ``None`` if ambiguous."""
    cands = _classes_min(rel, min_target)
    refs = [r for r in CLASSES if rel.count(r) == 1]
    if not cands or not refs:
        return None
    c = str(_pick(rng, cands))
    refs = [r for r in refs if r != c]
    if not refs:
        return None
    r = str(_pick(rng, refs))
    direction = str(_pick(rng, ["left", "right", "above", "below"]))
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


def _dir_phrase(direction: str, r: str) -> str:
    return {"left": f"left of the {r}", "right": f"right of the {r}", "above": f"above the {r}"}.get(
        direction, f"below the {r}"
    )


def _t_direction(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    res = _direction_sets(rel, rng, 2)
    if res is None:
        return None
    c, r, direction, yes, _ = res
    if len(yes) != 1:
        return None
    return Expression(f"the {c} {_dir_phrase(direction, r)}", (yes[0].id,), "single", "direction", c, r)


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
    cands = _classes_min(rel, 2)
    if not cands:
        return None
    c = str(_pick(rng, cands))
    largest = bool(rng.integers(0, 2))
    inst = _superlative(rel.g.of_class(c), largest, rel.p.size_ratio)
    if inst is None:
        return None
    word = str(_pick(rng, ["largest", "biggest"])) if largest else "smallest"
    return Expression(f"the {word} {c}", (inst.id,), "single", "size", c)


def _t_size_position(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = _classes_min(rel, 3)
    if not cands:
        return None
    c = str(_pick(rng, cands))
    half = str(_pick(rng, list(_HALVES)))
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
    cands = [c for c in _COLOURED if rel.count(c) >= 2]
    if not cands:
        return None
    c = str(_pick(rng, cands))
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


# --- multi-target templates --------------------------------------------------------------------------------


def _t_all(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = _classes_min(rel, 2, lines=True)
    if not cands:
        return None
    c = str(_pick(rng, cands))
    ids = tuple(i.id for i in rel.g.of_class(c))
    return Expression(
        str(_pick(rng, [f"all {PLURALS[c]}", f"all the {PLURALS[c]}", f"every {c}"])), ids, "multi", "all", c
    )


def _near_split(rel: SceneRelations, c: str, r: str) -> tuple[list[Instance], list[Instance]] | None:
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


def _t_near(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    pair = _target_and_reference(rel, rng, min_count=3)
    if pair is None:
        return None
    c, r = pair
    split = _near_split(rel, c, r)
    if split is None or len(split[0]) < 2 or not split[1]:
        return None
    text = f"all {PLURALS[c]} near {_ref_phrase(rel, r, plural=True)}"
    return Expression(text, tuple(i.id for i in split[0]), "multi", "near", c, r)


def _t_half(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = _classes_min(rel, 3)
    if not cands:
        return None
    c = str(_pick(rng, cands))
    half = str(_pick(rng, list(_HALVES)))
    flags = [rel.half(i, half) for i in rel.g.of_class(c)]
    if any(f is None for f in flags):
        return None
    ids = tuple(i.id for i, f in zip(rel.g.of_class(c), flags, strict=True) if f)
    if len(ids) < 2 or len(ids) == len(flags):
        return None
    return Expression(f"all {PLURALS[c]} in the {half} half", ids, "multi", "half", c)


def _t_direction_multi(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    res = _direction_sets(rel, rng, 3)
    if res is None:
        return None
    c, r, direction, yes, no = res
    if len(yes) < 2 or not no:
        return None
    ids = tuple(i.id for i in yes)
    return Expression(f"all {PLURALS[c]} {_dir_phrase(direction, r)}", ids, "multi", "direction", c, r)


def _t_colour_multi(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = [c for c in _COLOURED if rel.count(c) >= 3]
    if not cands:
        return None
    c = str(_pick(rng, cands))
    insts = rel.g.of_class(c)
    colour = str(_pick(rng, sorted({str(i.colour) for i in insts})))
    ids = tuple(i.id for i in insts if i.colour == colour)
    if len(ids) < 2 or len(ids) == len(insts):
        return None
    return Expression(f"all {colour} {PLURALS[c]}", ids, "multi", "colour", c)


# --- no-target templates -----------------------------------------------------------------------------------


def _t_absent(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    absent = [c for c in CLASSES if rel.count(c) == 0]
    if not absent:
        return None
    c = str(_pick(rng, absent))
    present = _present(rel)
    options = [f"the {c}", f"all {PLURALS[c]}", f"the {c} {_CELLS[int(rng.integers(0, 3))][int(rng.integers(0, 3))]}",
               f"the largest {c}"]  # fmt: skip
    if present:
        r = str(_pick(rng, present))
        options += [
            f"the {c} nearest {_ref_phrase(rel, r)}",
            f"all {PLURALS[c]} near {_ref_phrase(rel, r, True)}",
        ]
    return Expression(str(_pick(rng, options)), (), "none", "absent", c)


def _t_near_none(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = _present(rel)
    if len(cands) < 2:
        return None
    c = str(_pick(rng, cands))
    r = str(_pick(rng, [x for x in cands if x != c]))
    split = _near_split(rel, c, r)
    if split is None or split[0]:
        return None
    text = str(
        _pick(
            rng,
            [f"all {PLURALS[c]} near {_ref_phrase(rel, r, True)}", f"the {c} next to {_ref_phrase(rel, r)}"],
        )
    )
    return Expression(text, (), "none", "near_none", c, r)


def _t_cell_none(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = _present(rel)
    if not cands:
        return None
    c = str(_pick(rng, cands))
    row, col = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    ys = slice(row * rel.h // 3, (row + 1) * rel.h // 3)
    xs = slice(col * rel.w // 3, (col + 1) * rel.w // 3)
    if rel.class_mask(c)[ys, xs].any():
        return None
    text = str(_pick(rng, [f"the {c} {_CELLS[row][col]}", f"all {PLURALS[c]} {_CELLS[row][col]}"]))
    return Expression(text, (), "none", "cell_none", c)


def _t_colour_none(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    cands = [c for c in _COLOURED if rel.count(c) >= 1]
    if not cands:
        return None
    c = str(_pick(rng, cands))
    used = {i.colour for i in rel.g.of_class(c)}
    free = [w for w in _COLOUR_WORDS[c] if w not in used]
    if not free:
        return None
    return Expression(f"the {_pick(rng, free)} {c}", (), "none", "colour_none", c)


def _t_direction_none(rel: SceneRelations, rng: np.random.Generator) -> Expression | None:
    res = _direction_sets(rel, rng, 1)
    if res is None:
        return None
    c, r, direction, yes, _ = res
    if yes:
        return None
    return Expression(f"the {c} {_dir_phrase(direction, r)}", (), "none", "direction_none", c, r)


Template = Callable[[SceneRelations, np.random.Generator], "Expression | None"]

#: Templates per kind, by the name written to the metadata (``kind/name`` in ``synrs_info.json``).
_TEMPLATES: dict[Kind, dict[str, Template]] = {
    "single": {
        "category": _t_category,
        "position": _t_position,
        "nearest": _t_nearest,
        "farthest": _t_farthest,
        "direction": _t_direction,
        "size": _t_size,
        "size_position": _t_size_position,
        "colour": _t_colour,
    },
    "multi": {
        "all": _t_all,
        "near": _t_near,
        "half": _t_half,
        "direction": _t_direction_multi,
        "colour": _t_colour_multi,
    },
    "none": {
        "absent": _t_absent,
        "near_none": _t_near_none,
        "cell_none": _t_cell_none,
        "colour_none": _t_colour_none,
        "direction_none": _t_direction_none,
    },
}

#: Every ``kind/name`` that ``SynRSParams.template_weights`` may name.
TEMPLATE_NAMES: tuple[str, ...] = tuple(
    f"{kind}/{name}" for kind, table in _TEMPLATES.items() for name in table
)


def template_probabilities(params: SynRSParams, kind: Kind) -> np.ndarray | None:
    """Draw probabilities of ``kind``'s templates from ``params.template_weights``; None when uniform.

    Raises:
        ValueError: for a name not in ``TEMPLATE_NAMES`` or a kind whose weights are all zero.
    """
    weights = dict(params.template_weights)
    unknown = sorted(set(weights) - set(TEMPLATE_NAMES))
    if unknown:
        raise ValueError(f"template_weights names unknown templates {unknown}; known: {list(TEMPLATE_NAMES)}")
    names = list(_TEMPLATES[kind])
    if not any(f"{kind}/{name}" in weights for name in names):
        return None
    w = np.array([weights.get(f"{kind}/{name}", 1.0) for name in names], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError(f"template_weights gives every {kind!r} template weight 0")
    return w / w.sum()


def _draw(
    rel: SceneRelations, rng: np.random.Generator, kind: Kind, probs: np.ndarray | None, tries: int
) -> Expression | None:
    """Up to ``tries`` template draws of ``kind`` (``probs`` from ``template_probabilities``) until one applies."""
    templates = tuple(_TEMPLATES[kind].values())
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
    kinds: tuple[Kind, ...] = ("single", "multi", "none")
    kind_probs = np.array([params.p_single, params.p_multi, params.p_none], dtype=np.float64)
    kind_probs /= kind_probs.sum()
    probs = {kind: template_probabilities(params, kind) for kind in kinds}
    out: list[Expression] = []
    seen_text: set[str] = set()
    seen_sets: set[tuple[int, ...]] = set()
    for _ in range(n):
        kind = kinds[int(rng.choice(3, p=kind_probs))]
        order: tuple[Kind, ...] = (
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
