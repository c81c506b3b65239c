"""RISBench reader (introduced with CroBIM; DATA_AND_EVAL.md §5)."""

from __future__ import annotations

import os
from typing import Any

from crobim.data.base import ReferringDataset, read_mask, read_phrase_file, read_rgb
from crobim.data.errors import SampleReadError
from crobim.data.sample import Sample

__all__ = ["RISBENCH_SKIP_TRAIN", "RISBench"]

#: DiCoR's 16 known-bad training files, skipped in training only (``skip_known_bad``).
RISBENCH_SKIP_TRAIN: frozenset[str] = frozenset(
    f"{stem}.png"
    for stem in (
        "train_12443_2 train_11904_8 train_11818_2 train_11785_0 train_11021_1 train_10698_0 train_10222_0 "
        "train_9598_7 train_9405_1 train_8518_1 train_7581_3 train_7222_1 train_7008_0 train_6194_0 "
        "train_6194_1 train_819_1"
    ).split()
)


class RISBench(ReferringDataset):
    """RISBench: 52,472 referring expressions over 512 x 512 DOTA-v2/DIOR crops (GSD 0.1-30 m), 26 categories.

    * Source: HIT-SIRS/CroBIM README (Baidu Netdisk, code ``wnxg``).
    * Format: ``img_rgb/<split>_<imageIdx>_<objectIdx>.png`` (RGB), ``mask/<same name>`` (black background,
      white foreground; binarised with ``> 127``), ``output_phrase_{split}.txt`` with ``<file name with .png>
      <expression>`` per line (the name keeps its ``.png``, unlike RefSegRS). Expressions contain typos and
      double spaces; they are returned as written.
    * Splits: train 26,300 / val 10,013 / test 16,159.
    * Licence: README says CC-BY-4.0, but DOTA is academic-only and DIOR CC BY-NC: treat as non-commercial.
    * Citation: Z. Dong et al., "Cross-Modal Bidirectional Interaction Model for Referring Remote Sensing Image
      Segmentation" (CroBIM), 2024.

    Args:
        root: The folder holding ``img_rgb/``, ``mask/`` and the phrase files.
        split: ``"train"``, ``"val"`` or ``"test"``.
        skip_known_bad: Drop DiCoR's 16 known-bad files; applies to ``split="train"`` only (evaluation keeps
            every sample). The drop is counted in ``num_skipped`` and logged.

    Raises:
        DatasetNotFoundError: If a folder, the phrase file or a listed image/mask is missing.
        DatasetFormatError: If a phrase line has no expression.
    """

    dataset_name = "risbench"
    layout = "img_rgb/, mask/ and output_phrase_{train,val,test}.txt"
    #: Grey values above this are foreground.
    mask_threshold = 127

    def __init__(
        self, root: str | os.PathLike[str], split: str = "train", *, skip_known_bad: bool = True
    ) -> None:
        super().__init__(root, split)
        self.image_dir = self._require("img_rgb")
        self.mask_dir = self._require("mask")
        lines = read_phrase_file(self._require(f"output_phrase_{split}.txt"))
        for lineno, name, text in lines:
            self._records.append(
                {"sample_id": f"{split}-{lineno:06d}", "file_name": name, "text": text, "line": lineno}
            )
        if split == "train" and skip_known_bad:
            keep = [r["file_name"] not in RISBENCH_SKIP_TRAIN for r in self._records]
            self._skip(keep, "DiCoR known-bad training files; pass skip_known_bad=False to keep them")
        names = [(r["sample_id"], r["file_name"]) for r in self._records]
        self._check_listed(self.image_dir, names)
        self._check_listed(self.mask_dir, names)

    def _load(self, record: dict[str, Any]) -> Sample:
        sid = record["sample_id"]
        image = read_rgb(self.image_dir / record["file_name"], sid)
        mask = read_mask(self.mask_dir / record["file_name"], self.mask_threshold, sid)
        if mask.shape != image.shape[:2]:
            raise SampleReadError(
                f"sample {sid} ({record['file_name']}): image is {image.shape[1]}x{image.shape[0]} but mask is "
                f"{mask.shape[1]}x{mask.shape[0]} (W x H); the files do not belong together"
            )
        meta = {
            "sample_id": sid,
            "split": self.split,
            "dataset": self.dataset_name,
            "category": None,
            "file_name": record["file_name"],
            "no_target": not mask.any(),
            "line": record["line"],
        }
        return Sample(image=image, mask=mask, text=record["text"], meta=meta)
