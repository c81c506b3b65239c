"""Query colours: one palette for every output that draws queries (``quicklook.png``, ``map.html``).

Query k has the colour ``QUERY_COLORS[k % len(QUERY_COLORS)]`` everywhere: saturated hues that stand out on imagery.
"""

from __future__ import annotations

__all__ = ["QUERY_COLORS", "query_color", "query_rgb"]

#: Colour of each query in order (cycled beyond ten), as ``#rrggbb``.
QUERY_COLORS: tuple[str, ...] = (
    "#ff00ff",
    "#00e5ff",
    "#ffea00",
    "#ff6d00",
    "#76ff03",
    "#ff1744",
    "#d500f9",
    "#2979ff",
    "#ffffff",
    "#00c853",
)


def query_color(index: int) -> str:
    """Colour (``#rrggbb``) of the ``index``-th query."""
    return QUERY_COLORS[index % len(QUERY_COLORS)]


def query_rgb(index: int) -> tuple[int, int, int]:
    """Colour of the ``index``-th query as 8-bit ``(r, g, b)``; the same colour as :func:`query_color`."""
    hex_digits = query_color(index)[1:]
    return int(hex_digits[0:2], 16), int(hex_digits[2:4], 16), int(hex_digits[4:6], 16)
