"""SynRS scene style: base colour tables, colour jitter and the per-scene palette, sun and noise."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["FIELD_COLOURS", "ROOF_COLOURS", "draw_style", "jitter"]

# Base colours (RGB); each scene jitters them, each instance jitters again.
_BACKGROUNDS = ((96, 122, 62), (142, 132, 92), (118, 100, 76), (108, 128, 84))
#: Crop colours by the word that names them in expressions.
FIELD_COLOURS = {"green": (84, 134, 52), "yellow": (192, 172, 92), "brown": (132, 102, 70)}
#: Roof colours by the word that names them in expressions.
ROOF_COLOURS = {
    "red": (172, 72, 60),
    "grey": (142, 142, 148),
    "white": (218, 216, 210),
    "brown": (118, 84, 58),
    "blue": (70, 92, 146),
}


def jitter(rng: np.random.Generator, colour: tuple[float, ...], amount: float) -> tuple[float, float, float]:
    """``colour`` with per-channel noise of up to ``amount`` and a brightness change of up to ``amount`` / 2 %.

    Args:
        rng: The scene's generator.
        colour: RGB base colour.
        amount: Jitter size in 8-bit levels.

    Returns:
        The jittered colour, clipped to ``[0, 255]``.
    """
    c = np.asarray(colour, dtype=np.float64) + rng.uniform(-amount, amount, size=3)
    c = c * rng.uniform(1.0 - amount / 200.0, 1.0 + amount / 200.0)
    r, g, b = (float(v) for v in np.clip(c, 0, 255))
    return r, g, b


def draw_style(rng: np.random.Generator) -> dict[str, Any]:
    """Per-scene colour palette (scene jitter; instances jitter again), sun azimuth and noise level.

    Args:
        rng: The scene's generator.

    Returns:
        Colours by class (``"field"`` and ``"roof"`` by colour word), ``"sun"`` (radians) and ``"noise"``.
    """
    bg = _BACKGROUNDS[int(rng.integers(0, len(_BACKGROUNDS)))]
    return {
        "background": jitter(rng, bg, 14),
        "river": jitter(rng, (44, 74, 98), 12),
        "pond": jitter(rng, (52, 100, 104), 14),
        "road": jitter(rng, (118, 118, 122), 16),
        "parking lot": jitter(rng, (150, 150, 146), 12),
        "tree": jitter(rng, (42, 82, 38), 10),
        "field": {k: jitter(rng, v, 12) for k, v in FIELD_COLOURS.items()},
        "roof": {k: jitter(rng, v, 10) for k, v in ROOF_COLOURS.items()},
        "sun": float(rng.uniform(0, 2 * math.pi)),
        "noise": float(rng.uniform(3.0, 8.0)),
    }
