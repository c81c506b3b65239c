"""benchmarks/vs_torchgeo.py --smoke: our region job and a TorchGeo user's loop on tiny SynRS regions, one JSON.

TorchGeo is in the ``bench`` extra, not the dev dependencies, so the suite skips this test unless it is installed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "torchgeo", reason="torchgeo is not installed: it is in the 'bench' extra (pip install -e '.[bench]')"
)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.ray


def test_vs_torchgeo_smoke_measures_both_variants_on_the_same_pixels(tmp_path):
    out = tmp_path / "vs_torchgeo.json"
    subprocess.run(
        [sys.executable, "benchmarks/vs_torchgeo.py", "--smoke", "--workdir", str(tmp_path / "work"),
         "--json", str(out)],
        cwd=ROOT,
        check=True,
        timeout=840,
    )  # fmt: skip
    result = json.loads(out.read_text())
    summary, lattice = result["summary"], result["lattice"]
    s, stride = lattice["tile_size_px"], lattice["stride_px"]
    for size in ("1x", "4x"):
        h, w = result["regions"][size]["shape"]
        # TorchGeo's grid sampler: ceil((n - S) / stride) + 1 chips per axis, from the bottom-left corner.
        expected = (math.ceil((h - s) / stride) + 1) * (math.ceil((w - s) / stride) + 1)
        assert summary["torchgeo"]["median"][size]["tiles"] == expected
        assert summary["ours"]["median"][size]["tiles"] >= expected
    for variant in ("ours", "torchgeo"):
        assert summary[variant]["marginal_tiles_per_s"] > 0
        assert summary[variant]["median"]["4x"]["peak_tree_rss_mb"] > 100  # a model and torch were loaded
    for size in ("1x", "4x"):
        for query, scores in result["seams"][size]["queries"].items():
            # The same predictor on the same georeferenced pixels: the two masks mostly agree, and both find the
            # true objects (a flipped or shifted stitch, or our grid misread against the scene's, would not).
            assert scores["disagree_interior"] < 0.05, (size, query, scores)
            assert scores["ours"]["iou"] > 0.2 and scores["torchgeo"]["iou"] > 0.2, (size, query, scores)
            # No seams in ours: mask edges fall on our tile borders no more often than by chance.
            assert scores["ours"]["edge_on_border_ratio"] < 1.5, (size, query, scores)
            for variant in ("ours", "torchgeo"):
                for key in ("iou", "iou_border", "iou_interior"):
                    value = scores[variant][key]
                    assert value is None or 0.0 <= value <= 1.0
