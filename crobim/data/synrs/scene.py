"""SynRS data types: scene graph, referring expression and generator parameters (DATA_AND_EVAL.md §9)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "PLURALS",
    "Expression",
    "ExpressionKind",
    "Instance",
    "SceneGraph",
    "SynRSParams",
]

#: Bumped whenever the same seed would produce different bytes.
GENERATOR_VERSION = "synrs-1.2"

#: Classes in draw order (later classes are drawn over earlier ones).
CLASSES: tuple[str, ...] = ("field", "river", "road", "parking lot", "pond", "building", "tree")
PLURALS: dict[str, str] = {c: c + "s" for c in CLASSES}

#: Expression types: one referent, two or more, or none.
ExpressionKind = Literal["single", "multi", "none"]


@dataclass(frozen=True)
class SynRSParams:
    """Every threshold of the generator, as fractions of the scene unit ``S`` unless the name says pixels.

    Written to the metadata of every sample so a dataset documents the rules it was built with.
    """

    #: Multi-target "near": minimum pixel-set distance <= near * S.
    near: float = 0.06
    #: Band around ``near`` in which no candidate may fall (else the expression is ambiguous).
    near_margin: float = 0.02
    #: Singular "nearest"/"farthest": the runner-up is at least this much farther (closer).
    nearest_margin: float = 0.03
    #: Direction relations: centroid offset >= direction * S.
    direction: float = 0.05
    #: Margin for grid cells, halves and direction thresholds.
    position_margin: float = 0.03
    #: Superlatives: area ratio to the runner-up >= this.
    size_ratio: float = 1.25
    #: Instances with fewer visible pixels are dropped.
    min_area_px: int = 12
    #: Expressions per scene (before de-duplication).
    expressions_per_scene: int = 3
    #: Mix of expression types.
    p_single: float = 0.60
    p_multi: float = 0.25
    p_none: float = 0.15
    #: Longest expression in words.
    max_words: int = 18
    #: Per-scene ground-scale jitter of object sizes (benchmark scenes only; thresholds stay relative to S).
    zoom_range: tuple[float, float] = (0.75, 1.3)
    #: Relative draw weights of templates within their kind, as ``(("multi/near", 4.0), ...)`` (a mapping is
    #: accepted too); names as in ``synrs_info.json``'s ``templates``; unnamed templates weigh 1; empty = uniform.
    template_weights: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        weights = self.template_weights
        pairs = weights.items() if isinstance(weights, Mapping) else weights
        normalised = tuple(sorted((str(name), float(w)) for name, w in pairs))
        for name, w in normalised:
            if not (w >= 0.0 and np.isfinite(w)):
                raise ValueError(f"template_weights[{name!r}] = {w}: weights must be finite and >= 0")
        object.__setattr__(self, "template_weights", normalised)

    @classmethod
    def from_overrides(cls, overrides: list[tuple[str, Any]]) -> SynRSParams:
        """Defaults with ``(field, value)`` pairs applied, e.g. ``[("p_multi", 0.4)]``.

        Raises:
            ValueError: for a name that is not a field (the message lists the fields).
        """
        names = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        for key, value in overrides:
            if key not in names:
                raise ValueError(f"unknown SynRS parameter {key!r}; parameters: {names}")
            values[key] = tuple(value) if key == "zoom_range" and isinstance(value, list) else value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for the metadata."""
        return asdict(self)


@dataclass
class Instance:
    """One object of a scene: its class, id and visible-pixel statistics.

    Attributes:
        id: Instance id (1-based; 0 is background in the label map).
        cls: Class name from :data:`CLASSES`.
        area: Visible pixels.
        centroid: ``(y, x)`` in pixels.
        bbox: ``(y0, x0, y1, x1)``, end-exclusive, in pixels.
        colour: Colour word of the material (roofs, crops), or ``None``.
    """

    id: int
    cls: str
    area: int = 0
    centroid: tuple[float, float] = (0.0, 0.0)
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    colour: str | None = None


@dataclass
class SceneGraph:
    """A rendered scene: the image, the instance label map and one :class:`Instance` per id.

    Attributes:
        image: ``(H, W, 3)`` uint8.
        labels: ``(H, W)`` int32 instance ids (0: background).
        instances: Instances ordered by id.
        unit_px: The scene unit ``S`` that object sizes and thresholds are relative to.
    """

    image: np.ndarray
    labels: np.ndarray
    instances: list[Instance]
    unit_px: int
    _by_class: dict[str, list[Instance]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for inst in self.instances:
            self._by_class.setdefault(inst.cls, []).append(inst)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.labels.shape[0], self.labels.shape[1]

    def of_class(self, cls: str) -> list[Instance]:
        """Instances of ``cls`` in id order."""
        return list(self._by_class.get(cls, []))

    def mask(self, ids: list[int] | tuple[int, ...] | set[int]) -> np.ndarray:
        """Union of the visible pixels of ``ids``, ``(H, W)`` bool."""
        if not ids:
            return np.zeros(self.shape, dtype=bool)
        return np.isin(self.labels, np.fromiter(ids, dtype=np.int32))


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
    kind: ExpressionKind
    template: str
    target_class: str
    ref_class: str | None = None
