"""RefSegRS reader (Yuan et al., TGRS 2024; DATA_AND_EVAL.md §4)."""

from __future__ import annotations

import os
from typing import Any

from crobim.data.base import ReferringDataset, read_mask, read_phrase_file, read_rgb
from crobim.data.errors import SampleReadError
from crobim.data.sample import Sample

__all__ = ["RefSegRS"]


class RefSegRS(ReferringDataset):
    """RefSegRS: 4,420 referring expressions over SkyScapes aerial crops (13 cm GSD, 512 x 512).

    * Source: Hugging Face ``JessicaYuan/RefSegRS`` (``RefSegRS.zip``), GitLab LRZ ``ai4eo/reasoning/rrsis``.
    * Format: ``images/<stem>.tif`` (RGB), ``masks/<stem>.tif`` (8-bit grey 0/255, binarised with ``> 50``),
      ``output_phrase_{split}.txt`` with one sample per line, ``<stem> <expression>`` (stem without extension).
    * Splits: train 2,172 / val 431 / test 1,817 (every line is a sample).
    * Categories (14, not stored per sample): road, vehicle, car, van, building, truck, trailer, bus, road
      marking, bikeway, sidewalk, tree, low vegetation, impervious surface.
    * Licence: CC-BY-4.0.
    * Citation: Z. Yuan, L. Mou, Y. Hua, X. X. Zhu, "RRSIS: Referring Remote Sensing Image Segmentation",
      IEEE TGRS 2024.

    ``no_target`` is taken from mask emptiness at native size (the format has no flag). The re-packed fork
    ``new_dataset2/{images2,masks2}`` with ``output_phrase_test3.txt`` is read by passing ``image_dir``,
    ``mask_dir`` and ``phrase_file``.

    Args:
        root: The folder holding ``images/``, ``masks/`` and the phrase files.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_dir: Image folder under ``root``.
        mask_dir: Mask folder under ``root``.
        phrase_file: Phrase file name; ``{split}`` is replaced by the split.

    Raises:
        DatasetNotFoundError: If a folder, the phrase file or a listed image/mask is missing.
        DatasetFormatError: If a phrase line has no expression.
    """

    dataset_name = "refsegrs"
    layout = "images/, masks/ and output_phrase_{train,val,test}.txt"
    #: Grey values above this are foreground.
    mask_threshold = 50
    #: File suffix appended to the stem for images and masks.
    suffix = ".tif"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        image_dir: str = "images",
        mask_dir: str = "masks",
        phrase_file: str = "output_phrase_{split}.txt",
    ) -> None:
        super().__init__(root, split)
        self.image_dir = self._require(image_dir)
        self.mask_dir = self._require(mask_dir)
        phrase_path = self._require(phrase_file.format(split=split))
        lines = read_phrase_file(phrase_path)
        for lineno, stem, text in lines:
            self._records.append(
                {
                    "sample_id": f"{split}-{lineno:06d}",
                    "stem": stem,
                    "file_name": stem + self.suffix,
                    "text": text,
                    "line": lineno,
                }
            )
        names = [(r["sample_id"], r["file_name"]) for r in self._records]
        self._check_listed(self.image_dir, names)
        self._check_listed(self.mask_dir, names)

    def _meta(self, record: dict[str, Any], mask_empty: bool) -> dict[str, Any]:
        return {
            "sample_id": record["sample_id"],
            "split": self.split,
            "dataset": self.dataset_name,
            "category": None,
            "file_name": record["file_name"],
            "no_target": mask_empty,
            "line": record["line"],
        }

    def _load(self, record: dict[str, Any]) -> Sample:
        sid = record["sample_id"]
        image = read_rgb(self.image_dir / record["file_name"], sid)
        mask = read_mask(self.mask_dir / record["file_name"], self.mask_threshold, sid)
        if mask.shape != image.shape[:2]:
            raise SampleReadError(
                f"sample {sid} ({record['file_name']}): image is {image.shape[1]}x{image.shape[0]} but mask is "
                f"{mask.shape[1]}x{mask.shape[0]} (W x H); the files do not belong together"
            )
        return Sample(image=image, mask=mask, text=record["text"], meta=self._meta(record, not mask.any()))
