"""Shared machinery of the referring-segmentation readers: the index, file checks and image/mask decoding."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from crobim.data.errors import DatasetFormatError, DatasetNotFoundError, SampleReadError
from crobim.data.sample import Sample

__all__ = ["ReferringDataset", "read_mask", "read_rgb", "read_phrase_file"]

logger = logging.getLogger(__name__)


def read_rgb(path: str | os.PathLike[str], sample_id: str) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB, naming the sample on failure."""
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I", "F"):
                raise SampleReadError(
                    f"sample {sample_id}: image {path} has mode {im.mode}; expected 8-bit RGB (or grey/palette)"
                )
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError) as err:
        if isinstance(err, SampleReadError):
            raise
        raise SampleReadError(f"sample {sample_id}: cannot read image {path}: {err}") from err


def read_mask(path: str | os.PathLike[str], threshold: int, sample_id: str) -> np.ndarray:
    """Read a grey (or RGB) mask file and binarise it with ``value > threshold``."""
    try:
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise SampleReadError(f"sample {sample_id}: cannot read mask {path}: {err}") from err
    return grey > threshold


def read_phrase_file(path: Path) -> list[tuple[int, str, str]]:
    """Parse ``output_phrase_{split}.txt``: ``<name> <expression words...>`` per line.

    Returns:
        ``(line_number, name, text)`` per non-empty line; ``text`` keeps inner whitespace as written.

    Raises:
        DatasetFormatError: For a line that has a name but no expression.
    """
    out: list[tuple[int, str, str]] = []
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.strip().split(None, 1)
            if len(parts) != 2 or not parts[1].strip():
                raise DatasetFormatError(f"{path}:{lineno}: expected '<name> <expression>', got {line!r}")
            out.append((lineno, parts[0], parts[1].strip()))
    return out


class ReferringDataset(Sequence[Sample]):
    """Base of the readers: a sequence of :class:`Sample` built from a plain-data index (so readers pickle).

    Subclasses fill ``self._records`` (one dict per sample) in ``__init__`` and implement :meth:`_load`.
    """

    #: Short dataset name written to ``meta["dataset"]``.
    dataset_name: str = ""
    #: Valid split names.
    splits: tuple[str, ...] = ("train", "val", "test")
    #: Human description of the folder ``root`` must point at (used in errors).
    layout: str = ""

    def __init__(self, root: str | os.PathLike[str], split: str) -> None:
        if split not in self.splits:
            raise ValueError(
                f"{type(self).__name__}: split {split!r} is not one of {self.splits}; pass e.g. split='test'"
            )
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DatasetNotFoundError(type(self).__name__, self.root, "a dataset folder", self.layout)
        self._records: list[dict[str, Any]] = []
        #: Samples dropped by a skip list (training only), counted and logged.
        self.num_skipped = 0

    def _require(self, relpath: str | Path) -> Path:
        """Return ``root / relpath`` or raise :class:`DatasetNotFoundError` naming it."""
        path = self.root / relpath
        if not path.exists():
            raise DatasetNotFoundError(type(self).__name__, self.root, str(relpath), self.layout)
        return path

    def _check_listed(self, folder: Path, names: list[tuple[str, str]]) -> None:
        """Check that every ``(sample_id, file name)`` exists in ``folder`` (one directory listing)."""
        present = set(os.listdir(folder))
        missing = [(sid, name) for sid, name in names if name not in present]
        if missing:
            sid, name = missing[0]
            rel = folder.relative_to(self.root) / name
            raise DatasetNotFoundError(
                type(self).__name__,
                self.root,
                f"{rel} (sample {sid}; {len(missing)} of {len(names)} listed files are missing)",
                self.layout,
            )

    def _skip(self, keep: list[bool], reason: str) -> None:
        """Drop records where ``keep`` is False; count and log the drop."""
        dropped = len(keep) - sum(keep)
        self._records = [r for r, k in zip(self._records, keep, strict=True) if k]
        self.num_skipped += dropped
        if dropped:
            logger.warning(
                "%s(%s): skipped %d samples (%s)", type(self).__name__, self.split, dropped, reason
            )

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError(f"{type(self).__name__} takes an integer index, not a slice")
        n = len(self._records)
        if not -n <= index < n:
            raise IndexError(
                f"{type(self).__name__}({self.split}) index {index} out of range for {n} samples"
            )
        return self._load(self._records[index % n])

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def record(self, index: int) -> dict[str, Any]:
        """The index entry of sample ``index`` (ids, file names, text) without reading any pixels."""
        return dict(self._records[index])

    def image_key(self, index: int) -> str:
        """A key that samples showing the same image share (their decoded pixels are identical): the image file
        name. Training uses it to keep an image's expressions together and encode the image once per batch."""
        return str(self._records[index]["file_name"])

    @property
    def texts(self) -> list[str]:
        """All expressions of the split, in order."""
        return [r["text"] for r in self._records]

    def verify(self) -> list[str]:
        """Open every sample once; return one message per sample that fails (empty list: all good)."""
        problems = []
        for i in range(len(self)):
            try:
                self[i]
            except (SampleReadError, OSError, ValueError) as err:
                problems.append(str(err))
        return problems

    def _load(self, record: dict[str, Any]) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self)})"
