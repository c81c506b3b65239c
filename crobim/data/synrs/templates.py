"""SynRS template table: every template by kind and name, and their draw probabilities."""

from __future__ import annotations

import numpy as np

from crobim.data.synrs.scene import ExpressionKind, SynRSParams
from crobim.data.synrs.template_parts import Template
from crobim.data.synrs.templates_multi import MULTI_TEMPLATES
from crobim.data.synrs.templates_none import NONE_TEMPLATES
from crobim.data.synrs.templates_single import SINGLE_TEMPLATES

__all__ = ["TEMPLATES", "TEMPLATE_NAMES", "template_probabilities"]

#: Templates per kind, by the name written to the metadata (``kind/name`` in ``synrs_info.json``).
TEMPLATES: dict[ExpressionKind, dict[str, Template]] = {
    "single": SINGLE_TEMPLATES,
    "multi": MULTI_TEMPLATES,
    "none": NONE_TEMPLATES,
}

#: Every ``kind/name`` that ``SynRSParams.template_weights`` may name.
TEMPLATE_NAMES: tuple[str, ...] = tuple(
    f"{kind}/{name}" for kind, table in TEMPLATES.items() for name in table
)


def template_probabilities(params: SynRSParams, kind: ExpressionKind) -> np.ndarray | None:
    """Draw probabilities of ``kind``'s templates from ``params.template_weights``; None when uniform.

    Raises:
        ValueError: for a name not in ``TEMPLATE_NAMES`` or a kind whose weights are all zero.
    """
    weights = dict(params.template_weights)
    unknown = sorted(set(weights) - set(TEMPLATE_NAMES))
    if unknown:
        raise ValueError(f"template_weights names unknown templates {unknown}; known: {list(TEMPLATE_NAMES)}")
    names = list(TEMPLATES[kind])
    if not any(f"{kind}/{name}" in weights for name in names):
        return None
    w = np.array([weights.get(f"{kind}/{name}", 1.0) for name in names], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError(f"template_weights gives every {kind!r} template weight 0")
    return w / w.sum()
