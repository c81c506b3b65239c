"""RRSIS-D reader (RMSIN, CVPR 2024; REFER layout; DATA_AND_EVAL.md §2-3)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from crobim.data.base import ReferringDataset, read_rgb
from crobim.data.errors import DatasetFormatError, SampleReadError
from crobim.data.rle import decode_segmentation
from crobim.data.safe_pickle import load_refs
from crobim.data.sample import Sample

__all__ = ["RRSISD", "RRSISD_SKIP_TRAIN"]

logger = logging.getLogger(__name__)

#: DiCoR's 27 known-bad images, skipped in training only (``skip_known_bad``).
RRSISD_SKIP_TRAIN: frozenset[str] = frozenset(
    f"{stem}.jpg"
    for stem in (
        "00413 01072 01664 03661 05125 06728 06861 07239 09319 10579 10653 11147 11898 12492 12630 14464 "
        "14915 15357 15584 15737 17068 18552 18845 20203 20235 21126 22187"
    ).split()
)


class RRSISD(ReferringDataset):
    """RRSIS-D: 17,402 referring expressions over 800 x 800 DIOR images, 20 categories, SAM-refined masks.

    * Source: Lsan2401/RMSIN README (Google Drive folder ``1Xqi3Am2Vgm4a5tHqiV9tfaqKNovcuK3A``, Baidu ``sjoe``).
    * Format (REFER): ``rrsisd/refs(unc).p`` (pickle, loaded with :mod:`crobim.data.safe_pickle`; a
      ``refs(unc).json`` written by :func:`crobim.data.safe_pickle.convert_refs_to_json` is preferred),
      ``rrsisd/instances.json`` (COCO-like; annotations carry ``categories_id`` (sic), corner-format boxes
      ``x1, y1, x2, y2`` and a list of compressed RLEs), ``images/rrsisd/JPEGImages/<file_name>``.
    * Splits: train 12,181 / val 1,740 / test 3,481; one sample per sentence of each ref.
    * Licence: not stated; DIOR imagery is CC BY-NC 4.0, so non-commercial.
    * Citation: S. Liu et al., "Rotated Multi-Scale Interaction Network for Referring Remote Sensing Image
      Segmentation", CVPR 2024.

    The mask follows the family: decode every RLE, sum, keep pixels equal to 1. A few JPEGs are a few pixels
    larger or smaller than their 800 x 800 masks (RMSIN issues #12, #27): by default the image is resized
    (bilinear) to the mask size and the event is logged; ``size_mismatch="error"`` raises instead. Larger
    mismatches (over ``max_size_fix_px`` on a side) always raise.

    Args:
        root: The folder holding ``rrsisd/refs(unc).p``, ``rrsisd/instances.json`` and ``images/rrsisd/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        skip_known_bad: Drop DiCoR's 27 known-bad images; applies to ``split="train"`` only. The drop is
            counted in ``num_skipped`` and logged.
        size_mismatch: ``"resize"`` (image to the mask size) or ``"error"``.
        max_size_fix_px: Largest per-side difference that ``"resize"`` repairs.

    Raises:
        DatasetNotFoundError: If a required file or a listed image is missing.
        UnsafePickleError: If ``refs(unc).p`` names a global outside the allow-list (nothing is executed).
        DatasetFormatError: If the refs or instances do not follow the schema.
    """

    dataset_name = "rrsisd"
    layout = "rrsisd/refs(unc).p, rrsisd/instances.json and images/rrsisd/JPEGImages/"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        skip_known_bad: bool = True,
        size_mismatch: Literal["resize", "error"] = "resize",
        max_size_fix_px: int = 16,
    ) -> None:
        super().__init__(root, split)
        if size_mismatch not in ("resize", "error"):
            raise ValueError(f"size_mismatch={size_mismatch!r}; expected 'resize' or 'error'")
        self.size_mismatch = size_mismatch
        self.max_size_fix_px = max_size_fix_px
        json_refs = self.root / "rrsisd" / "refs(unc).json"
        refs_path = json_refs if json_refs.exists() else self._require(Path("rrsisd") / "refs(unc).p")
        instances_path = self._require(Path("rrsisd") / "instances.json")
        self.image_dir = self._require(Path("images") / "rrsisd" / "JPEGImages")
        refs = load_refs(refs_path)
        with instances_path.open("r", encoding="utf-8") as f:
            instances = json.load(f)
        try:
            images = {int(im["id"]): im for im in instances["images"]}
            anns = {int(a["id"]): a for a in instances["annotations"]}
            categories = {int(c["id"]): str(c["name"]) for c in instances.get("categories", [])}
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetFormatError(
                f"{instances_path}: expected 'images' and 'annotations' lists with 'id' fields ({err})"
            ) from err
        for ref in refs:
            if ref["split"] != split:
                continue
            ann = anns.get(ref["ann_id"])
            if ann is None:
                raise DatasetFormatError(
                    f"{instances_path}: ref {ref['ref_id']} names ann_id {ref['ann_id']}, absent"
                )
            img = images.get(ref["image_id"])
            file_name = str(img["file_name"]) if img is not None else ref["file_name"]
            cat_id = ann.get("categories_id", ann.get("category_id", ref["category_id"]))
            bbox = [float(v) for v in ann.get("bbox", [])]
            for k, sent in enumerate(ref["sentences"]):
                sent_id = int(sent.get("sent_id", ref["sent_ids"][k] if k < len(ref["sent_ids"]) else k))
                self._records.append(
                    {
                        "sample_id": f"{ref['ref_id']}_{sent_id}",
                        "ref_id": ref["ref_id"],
                        "ann_id": ref["ann_id"],
                        "image_id": ref["image_id"],
                        "sent_id": sent_id,
                        "file_name": file_name,
                        "text": sent["raw"],
                        "category_id": int(cat_id),
                        "category": categories.get(int(cat_id)),
                        "bbox_xyxy": bbox,
                        "segmentation": ann["segmentation"],
                    }
                )
        if split == "train" and skip_known_bad:
            keep = [r["file_name"] not in RRSISD_SKIP_TRAIN for r in self._records]
            self._skip(keep, "DiCoR known-bad images; pass skip_known_bad=False to keep them")
        self._check_listed(self.image_dir, [(r["sample_id"], r["file_name"]) for r in self._records])

    def _load(self, record: dict[str, Any]) -> Sample:
        sid = record["sample_id"]
        try:
            mask = decode_segmentation(record["segmentation"])
        except ValueError as err:
            raise SampleReadError(
                f"sample {sid} (ann_id {record['ann_id']}): cannot decode mask: {err}"
            ) from err
        image = read_rgb(self.image_dir / record["file_name"], sid)
        if image.shape[:2] != mask.shape:
            (ih, iw), (mh, mw) = image.shape[:2], mask.shape
            msg = (
                f"sample {sid} ({record['file_name']}): image is {iw}x{ih} but its mask is {mw}x{mh} (W x H)"
            )
            if self.size_mismatch == "error" or max(abs(ih - mh), abs(iw - mw)) > self.max_size_fix_px:
                raise SampleReadError(msg + "; pass size_mismatch='resize' to resize small differences")
            logger.warning("%s; resizing the image to the mask size (known RRSIS-D defect)", msg)
            image = np.asarray(Image.fromarray(image).resize((mw, mh), Image.Resampling.BILINEAR))
        meta = {
            "sample_id": sid,
            "split": self.split,
            "dataset": self.dataset_name,
            "category": record["category"],
            "category_id": record["category_id"],
            "file_name": record["file_name"],
            "no_target": False,
            "ref_id": record["ref_id"],
            "ann_id": record["ann_id"],
            "image_id": record["image_id"],
            "sent_id": record["sent_id"],
            "bbox_xyxy": list(record["bbox_xyxy"]),
        }
        return Sample(image=image, mask=mask, text=record["text"], meta=meta)
