"""One palette: a query has the same colour in quicklook.png and in map.html."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipelines.palette import QUERY_COLORS, query_color, query_rgb
from pipelines.viz import Overview, render_quicklook


def test_hex_and_rgb_are_the_same_colour_and_cycle():
    n = len(QUERY_COLORS)
    assert len(set(QUERY_COLORS)) == n
    for k in range(2 * n + 1):
        assert query_color(k) == QUERY_COLORS[k % n]
        assert "#{:02x}{:02x}{:02x}".format(*query_rgb(k)) == query_color(k)
    assert query_rgb(0) == (255, 0, 255)


def test_quicklook_blends_each_query_in_its_palette_colour():
    h, w = 40, 60
    masks = np.zeros((2, h, w), dtype=bool)
    masks[0, 30:, 40:] = True
    masks[1, 30:, :20] = True
    overview = Overview(rgb=np.zeros((h, w, 3), np.uint8), valid=np.ones((h, w), bool), masks=masks, step=1)
    image = np.asarray(Image.open(io.BytesIO(render_quicklook(overview, ["a", "b"]))).convert("RGB"))
    for k, (row, col) in enumerate(((35, 50), (35, 10))):
        assert tuple(image[row, col]) == tuple(round(0.5 * c) for c in query_rgb(k))  # 50 % over black
    assert tuple(image[35, 30]) == (0, 0, 0)
