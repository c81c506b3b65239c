#!/usr/bin/env python3
"""Write a tiny fake RefSegRS in the real layout (RGB .tif images, 8-bit grey .tif masks, phrase files).

Masks use grey levels around the > 50 threshold (0, 40, 60, 255) so a wrong threshold shows. Independent of
``crobim.data``. Run ``python tests/data/refsegrs/data.py OUT``; tests call :func:`write`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 48


def write(root: Path, seed: int = 0, *, mismatch: bool = False) -> list[dict]:
    """Write the dataset; return expected samples (split, stem, text, mask). ``mismatch``: one mask is 40 px."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    words = ["road", "vehicle", "building", "tree", "low vegetation", "sidewalk"]
    expected = []
    for split, n_images in (("train", 3), ("val", 1), ("test", 2)):
        lines = []
        for i in range(n_images):
            stem = f"{split}{i:03d}_tile"
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
                root / "images" / f"{stem}.tif"
            )
            grey = np.zeros((SIZE, SIZE), dtype=np.uint8)
            y0, x0 = rng.integers(0, SIZE // 2, size=2)
            grey[y0 : y0 + 12, x0 : x0 + 15] = 255
            grey[0:3, :] = 40  # below threshold
            grey[-3:, 5:9] = 60  # above threshold
            side = 40 if (mismatch and split == "test" and i == 1) else SIZE
            Image.fromarray(grey[:side, :side]).save(root / "masks" / f"{stem}.tif")
            for j in range(2 if i == 0 else 1):  # the first image carries two expressions
                text = f"the {words[(i + j) % len(words)]} near the {words[(i + j + 2) % len(words)]}"
                lines.append(f"{stem} {text}\n")
                expected.append({"split": split, "stem": stem, "text": text, "mask": grey > 50})
        (root / f"output_phrase_{split}.txt").write_text("".join(lines))
    return expected


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "out"
    print(f"wrote {len(write(out))} samples to {out}")
