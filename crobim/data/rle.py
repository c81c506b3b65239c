"""COCO run-length encoded masks, decoded in numpy (pycocotools is not a dependency).

Adapted from the reference C implementation, cocodataset/cocoapi ``common/maskApi.c`` (``rleFrString``,
``rleDecode``) at commit 8c9bcc3: runs alternate background/foreground starting with background and walk the
mask in column-major (Fortran) order; the compressed string stores each run as 5-bit groups offset by 48, with
runs after the second stored as deltas to the run two places earlier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["decode_rle", "decode_segmentation", "rle_counts_from_string"]


def rle_counts_from_string(counts: str | bytes) -> np.ndarray:
    """Decode a compressed COCO RLE ``counts`` string into run lengths.

    Args:
        counts: The ``counts`` field (``str`` or ``bytes``).

    Returns:
        int64 run lengths, alternating background and foreground, starting with background.

    Raises:
        ValueError: If the string ends in the middle of a value or decodes to a negative run.
    """
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    p = 0
    n = len(data)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError(f"compressed RLE string ends inside a value at byte {p}: {data[:40]!r}...")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise ValueError(f"compressed RLE decodes to a negative run length {x} at run {len(runs)}")
        runs.append(x)
    return np.asarray(runs, dtype=np.int64)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode one COCO RLE (compressed string or uncompressed list ``counts``) to a bool ``(H, W)`` mask.

    Args:
        rle: ``{"size": [H, W], "counts": str | bytes | list[int]}``.

    Returns:
        The mask, ``(H, W)`` bool.

    Raises:
        ValueError: If the runs do not add up to ``H * W``.
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"RLE must be a dict with 'size' [H, W] and 'counts'; got {str(rle)[:80]}") from err
    runs = (
        rle_counts_from_string(counts)
        if isinstance(counts, str | bytes)
        else np.asarray(counts, dtype=np.int64).reshape(-1)
    )
    total = int(runs.sum())
    if total != h * w or (runs < 0).any():
        raise ValueError(f"RLE runs sum to {total} but size {h}x{w} needs {h * w} pixels")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((w, h)).T.copy()  # column-major (Fortran) order -> (H, W)


def decode_segmentation(segmentation: Sequence[dict[str, Any]] | dict[str, Any]) -> np.ndarray:
    """Decode an annotation's ``segmentation`` the way the RRSIS family does.

    RMSIN/LAVT decode the list to ``(H, W, n)``, sum over the last axis and keep pixels equal to 1, so pixels
    covered by two parts count as background. A single RLE dict is accepted as a list of one.

    Args:
        segmentation: A list of RLE dicts (or one dict).

    Returns:
        The mask, ``(H, W)`` bool.

    Raises:
        ValueError: If the list is empty, holds polygons, or parts have different sizes.
    """
    parts = [segmentation] if isinstance(segmentation, dict) else list(segmentation)
    if not parts:
        raise ValueError("segmentation is an empty list; expected one or more RLE dicts")
    total: np.ndarray | None = None
    for part in parts:
        if not isinstance(part, dict):
            raise ValueError(
                f"segmentation part is {type(part).__name__} (a polygon?); this reader expects RLE dicts"
            )
        m = decode_rle(part).astype(np.uint16)
        if total is None:
            total = m
        elif total.shape != m.shape:
            raise ValueError(f"segmentation parts have different sizes {total.shape} and {m.shape}")
        else:
            total += m
    assert total is not None
    return total == 1
