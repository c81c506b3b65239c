#!/usr/bin/env python3
"""Write a tiny fake RRSIS-D in the real REFER layout (pickle refs, COCO compressed RLE, JPEG images).

Independent of ``crobim.data``: the RLE encoder below follows cocoapi ``maskApi.c::rleToString`` on its own.
Run ``python tests/data/rrsisd/data.py OUT`` to write a copy; tests call :func:`write`.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64
CATEGORIES = [
    "Expressway-Service-area", "Expressway-toll-station", "airplane", "airport", "baseballfield",
    "basketballcourt", "bridge", "chimney", "dam", "golffield", "groundtrackfield", "harbor", "overpass", "ship",
    "stadium", "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill",
]  # fmt: skip


def rle_encode(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a bool (H, W) mask: column-major runs starting with background."""
    h, w = mask.shape
    flat = mask.T.reshape(-1).astype(np.int8)  # Fortran order
    runs = []
    current, length = 0, 0
    for v in flat:
        if v == current:
            length += 1
        else:
            runs.append(length)
            current, length = v, 1
    runs.append(length)
    chars = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return {"size": [h, w], "counts": "".join(chars)}


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    y1, x1 = y0 + rng.integers(4, h // 2), x0 + rng.integers(4, w // 2)
    if rng.random() < 0.5:
        m[y0:y1, x0:x1] = True
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return m


def write(root: Path, seed: int = 0, *, bad_image: bool = False) -> list[dict]:
    """Write the dataset under ``root``; return the expected samples (split, text, mask, category, ...).

    Layout: ``rrsisd/refs(unc).p``, ``rrsisd/instances.json``, ``images/rrsisd/JPEGImages/*.jpg``. Image
    ``00003.jpg`` is 2 px narrower than its mask (a known RRSIS-D defect); ``01072.jpg`` is on the DiCoR
    skip list (train). With ``bad_image`` one test image is not a JPEG.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "rrsisd").mkdir(parents=True, exist_ok=True)
    img_dir = root / "images" / "rrsisd" / "JPEGImages"
    img_dir.mkdir(parents=True, exist_ok=True)
    plan = [("train", "00001"), ("train", "01072"), ("train", "00002"), ("val", "00004"), ("test", "00003"),
            ("test", "00005"), ("test", "00006")]  # fmt: skip
    images, anns, refs, expected = [], [], [], []
    for k, (split, stem) in enumerate(plan):
        image_id = ann_id = ref_id = k + 1
        file_name = f"{stem}.jpg"
        w_img = SIZE - 2 if stem == "00003" else SIZE
        pixels = rng.integers(0, 256, size=(SIZE, w_img, 3), dtype=np.uint8)
        if bad_image and stem == "00005":
            (img_dir / file_name).write_bytes(b"not a jpeg at all")
        else:
            Image.fromarray(pixels).save(img_dir / file_name, quality=95)
        cat = int(rng.integers(0, 20))
        parts = [_shape_mask(rng, SIZE, SIZE)]
        if stem == "00006":  # two parts: the family keeps pixels covered exactly once
            parts.append(_shape_mask(rng, SIZE, SIZE))
        truth = np.sum([p.astype(int) for p in parts], axis=0) == 1
        ys, xs = np.nonzero(np.logical_or.reduce(parts))
        bbox = [
            int(xs.min()),
            int(ys.min()),
            int(xs.max()) + 1,
            int(ys.max()) + 1,
        ]  # corner format x1,y1,x2,y2
        images.append({"file_name": file_name, "height": SIZE, "width": SIZE, "id": image_id})
        anns.append({"id": ann_id, "image_id": image_id, "categories_id": cat, "bbox": bbox,
                     "segmentation": [rle_encode(p) for p in parts], "area": int(truth.sum())})  # fmt: skip
        n_sent = 2 if stem == "00004" else 1
        sentences = []
        for j in range(n_sent):
            raw = f"the {CATEGORIES[cat].lower()} number {k} sentence {j}"
            sent_id = ref_id * 10 + j
            sentences.append({"raw": raw, "sent": raw.lower(), "tokens": raw.split(), "sent_id": sent_id})
            expected.append({"split": split, "text": raw, "mask": truth, "category": CATEGORIES[cat],
                             "file_name": file_name, "sample_id": f"{ref_id}_{sent_id}", "image_width": w_img,
                             "bbox": bbox, "skip": stem == "01072"})  # fmt: skip
        ref = {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": cat, "split": split,
               "file_name": file_name, "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences}  # fmt: skip
        if k == 0:
            ref["flags"] = {"checked"}  # a set: pickled as __builtin__.set at protocol 2
        refs.append(ref)
    with (root / "rrsisd" / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    instances = {"images": images, "annotations": anns,
                 "categories": [{"id": i, "name": n} for i, n in enumerate(CATEGORIES)]}  # fmt: skip
    (root / "rrsisd" / "instances.json").write_text(json.dumps(instances))
    return expected


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "out"
    print(f"wrote {len(write(out))} samples to {out}")
