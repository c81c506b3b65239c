#!/usr/bin/env python3
"""Write a tiny fake RISBench in the real layout (img_rgb/*.png, mask/*.png, phrase files naming .png files).

Expressions keep the dataset's double spaces. ``train_819_1.png`` is on the DiCoR skip list. Independent of
``crobim.data``. Run ``python tests/data/risbench/data.py OUT``; tests call :func:`write`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 40


def write(root: Path, seed: int = 0) -> list[dict]:
    """Write the dataset; return expected samples (split, file name, text, mask, skip)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "img_rgb").mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(parents=True, exist_ok=True)
    plan = {
        "train": ["train_1_0", "train_819_1", "train_2_3"],
        "val": ["val_7_0"],
        "test": ["test_3_0", "test_3_1"],
    }
    expected = []
    for split, stems in plan.items():
        lines = []
        for stem in stems:
            name = f"{stem}.png"
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
                root / "img_rgb" / name
            )
            m = np.zeros((SIZE, SIZE), dtype=bool)
            y0, x0 = rng.integers(0, SIZE // 2, size=2)
            m[y0 : y0 + 9, x0 : x0 + 7] = True
            rgb = np.repeat((m * 255).astype(np.uint8)[:, :, None], 3, axis=2)  # white on black, saved as RGB
            Image.fromarray(rgb).save(root / "mask" / name)
            text = f"the storage tank  located at the {stem.split('_')[1]} th position of the image"
            lines.append(f"{name} {text}\n")
            expected.append(
                {"split": split, "file_name": name, "text": text, "mask": m, "skip": stem == "train_819_1"}
            )
        (root / f"output_phrase_{split}.txt").write_text("".join(lines))
    return expected


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "out"
    print(f"wrote {len(write(out))} samples to {out}")
