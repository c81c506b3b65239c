"""Referring-segmentation metrics: oIoU, mIoU, Pr@X and the GRES no-target extension (DATA_AND_EVAL.md §7-8).

Definitions (per sample i, on the evaluation grid): I_i = |P ∩ G|, U_i = |P ∪ G|, IoU_i = I_i / U_i and
IoU_i = 0 when U_i = 0 (family rule). oIoU = Σ I / Σ U (int64 sums), mIoU = mean IoU_i, Pr@X = share of samples
with IoU_i >= X. No-target extension (GRES): a prediction is empty when its area <= ``empty_area`` pixels;
N-acc = no-target samples predicted empty / no-target samples; T-acc = target samples predicted non-empty /
target samples; ``giou_gres`` = mean over all samples of IoU_i, where a no-target sample scores 1 if predicted
empty and 0 otherwise. The state is a handful of sums, so workers can merge or all-reduce it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

__all__ = ["PRECISION_THRESHOLDS", "ReferringMetrics"]

#: IoU thresholds of the Pr@X columns.
PRECISION_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)

# Integer state: I sum, U sum, samples, Pr@X hits (5), target samples, no-target samples, no-target predicted
# empty, target predicted non-empty.
_INT_FIELDS = (
    ("sum_i", "sum_u", "count")
    + tuple(f"pr@{t}" for t in PRECISION_THRESHOLDS)
    + (
        "n_target",
        "n_no_target",
        "no_target_empty",
        "target_nonempty",
    )
)
# Float state: Σ IoU_i, Σ gIoU_i (GRES).
_FLOAT_FIELDS = ("sum_iou", "sum_giou")


def _as_bool(x: Any, name: str) -> np.ndarray:  # noqa: ANN401 - numpy array or torch tensor
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "biu":
            raise TypeError(f"{name} must be a boolean (or 0/1 integer) mask; got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"{name} holds values outside {{0, 1}}; binarise it first")
        arr = arr.astype(bool)
    return arr


class _State:
    """Running sums of one group of samples (all samples or one category)."""

    __slots__ = ("ints", "floats")

    def __init__(self) -> None:
        self.ints = np.zeros(len(_INT_FIELDS), dtype=np.int64)
        self.floats = np.zeros(len(_FLOAT_FIELDS), dtype=np.float64)

    def add(self, inter: int, union: int, iou: float, no_target: bool, pred_empty: bool) -> None:
        giou = (1.0 if pred_empty else 0.0) if no_target else iou
        hits = [iou >= t for t in PRECISION_THRESHOLDS]
        self.ints += np.array(
            [
                inter,
                union,
                1,
                *hits,
                int(not no_target),
                int(no_target),
                int(no_target and pred_empty),
                int((not no_target) and (not pred_empty)),
            ],  # fmt: skip
            dtype=np.int64,
        )
        self.floats += np.array([iou, giou], dtype=np.float64)

    def merge(self, other: _State) -> None:
        self.ints += other.ints
        self.floats += other.floats

    def compute(self) -> dict[str, float | int | None]:
        v = dict(zip(_INT_FIELDS, (int(x) for x in self.ints), strict=True))
        f = dict(zip(_FLOAT_FIELDS, (float(x) for x in self.floats), strict=True))
        n = v["count"]
        out: dict[str, float | int | None] = {
            "oIoU": v["sum_i"] / v["sum_u"] if v["sum_u"] else 0.0,
            "mIoU": f["sum_iou"] / n if n else 0.0,
        }
        for t in PRECISION_THRESHOLDS:
            out[f"Pr@{t}"] = v[f"pr@{t}"] / n if n else 0.0
        out["N-acc"] = v["no_target_empty"] / v["n_no_target"] if v["n_no_target"] else None
        out["T-acc"] = v["target_nonempty"] / v["n_target"] if v["n_target"] else None
        out["giou_gres"] = f["sum_giou"] / n if n else 0.0
        out["count"] = n
        out["n_target"] = v["n_target"]
        out["n_no_target"] = v["n_no_target"]
        out["sum_intersection"] = v["sum_i"]
        out["sum_union"] = v["sum_u"]
        return out


class ReferringMetrics:
    """Accumulates the referring-segmentation metrics sample by sample.

    Example::

        metrics = ReferringMetrics()
        for pred, sample in ...:
            metrics.update(pred, gt, no_target=sample.meta["no_target"], category=sample.meta["category"])
        metrics.compute()  # {"oIoU": ..., "mIoU": ..., "Pr@0.5": ..., "N-acc": ..., "per_category": {...}}

    Distributed validation: every worker accumulates its own instance, then either ``merge`` the instances
    (e.g. after ``all_gather_object`` of :meth:`state_dict`) or all-reduce :meth:`state_arrays` (sum) when the
    categories are not needed.

    Args:
        empty_area: A prediction with at most this many foreground pixels counts as empty (``eval.empty_area``).
    """

    def __init__(self, empty_area: int = 0) -> None:
        if empty_area < 0:
            raise ValueError(f"empty_area={empty_area} must be >= 0 pixels")
        self.empty_area = int(empty_area)
        self._total = _State()
        self._per_category: dict[Hashable, _State] = {}

    def reset(self) -> None:
        """Forget all samples."""
        self._total = _State()
        self._per_category = {}

    def update(
        self,
        pred_mask: Any,  # noqa: ANN401 - numpy array or torch tensor
        gt_mask: Any,  # noqa: ANN401
        no_target: bool | Iterable[bool] | None = None,
        category: Hashable | Iterable[Hashable] | None = None,
    ) -> float | list[float]:
        """Add one sample ``(H, W)`` or a batch ``(B, H, W)``.

        Args:
            pred_mask: Predicted boolean mask(s), on the same grid as ``gt_mask``.
            gt_mask: Ground-truth boolean mask(s).
            no_target: The annotation's flag (per sample for a batch). ``None`` falls back to "ground truth is
                empty", which is only correct when the mask was not resized; pass the flag when you have it.
            category: Category name or id (per sample for a batch), for the per-category breakdown.

        Returns:
            IoU_i of the sample (a list for a batch).

        Raises:
            ValueError: If the shapes differ or are not 2-D/3-D.
        """
        pred = _as_bool(pred_mask, "pred_mask")
        gt = _as_bool(gt_mask, "gt_mask")
        if pred.shape != gt.shape:
            raise ValueError(
                f"pred_mask shape {pred.shape} != gt_mask shape {gt.shape}; resize to the same grid"
            )
        if pred.ndim == 2:
            return self._update_one(pred, gt, no_target, category)  # type: ignore[arg-type]
        if pred.ndim != 3:
            raise ValueError(f"masks must be (H, W) or (B, H, W); got shape {pred.shape}")
        b = pred.shape[0]
        if no_target is None or isinstance(no_target, bool | np.bool_):
            flags = [None if no_target is None else bool(no_target)] * b
        else:
            flags = [bool(x) for x in no_target]
        if isinstance(category, list | tuple | np.ndarray):
            cats: list[Hashable] = list(category)
        else:
            cats = [category] * b  # type: ignore[list-item]  # one category for the whole batch
        if len(flags) != b or len(cats) != b:
            raise ValueError(f"batch of {b} masks needs {b} no_target flags and categories")
        return [self._update_one(pred[i], gt[i], flags[i], cats[i]) for i in range(b)]

    def _update_one(
        self, pred: np.ndarray, gt: np.ndarray, no_target: bool | None, category: Hashable
    ) -> float:
        inter = int(np.count_nonzero(pred & gt))
        union = int(np.count_nonzero(pred | gt))
        iou = inter / union if union else 0.0
        nt = (not gt.any()) if no_target is None else bool(no_target)
        empty = int(np.count_nonzero(pred)) <= self.empty_area
        self._total.add(inter, union, iou, nt, empty)
        if category is not None:
            self._per_category.setdefault(category, _State()).add(inter, union, iou, nt, empty)
        return iou

    def compute(self) -> dict[str, Any]:
        """Metrics as fractions in [0, 1].

        Returns:
            ``oIoU``, ``mIoU``, ``Pr@0.5`` ... ``Pr@0.9``, ``N-acc`` and ``T-acc`` (``None`` when the set has no
            no-target / target samples), ``giou_gres``, ``count``, ``n_target``, ``n_no_target``, the int64 sums,
            and ``per_category`` (same keys per category) when categories were given.
        """
        out: dict[str, Any] = dict(self._total.compute())
        if self._per_category:
            out["per_category"] = {
                str(k): s.compute() for k, s in sorted(self._per_category.items(), key=lambda kv: str(kv[0]))
            }
        return out

    def __len__(self) -> int:
        return int(self._total.ints[_INT_FIELDS.index("count")])

    # --- distributed helpers -------------------------------------------------------------------------------

    def state_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(int64 sums, float64 sums)`` of all samples; all-reduce both with SUM, then :meth:`load_arrays`."""
        return self._total.ints.copy(), self._total.floats.copy()

    def load_arrays(self, ints: Any, floats: Any) -> None:  # noqa: ANN401 - numpy arrays or tensors
        """Replace the overall sums (the per-category breakdown is cleared: it is not in the arrays)."""
        ints_np = np.asarray(ints.cpu() if hasattr(ints, "cpu") else ints, dtype=np.int64).reshape(-1)
        floats_np = np.asarray(floats.cpu() if hasattr(floats, "cpu") else floats, dtype=np.float64).reshape(
            -1
        )
        if ints_np.shape != (len(_INT_FIELDS),) or floats_np.shape != (len(_FLOAT_FIELDS),):
            raise ValueError(f"expected arrays of {len(_INT_FIELDS)} ints and {len(_FLOAT_FIELDS)} floats")
        self._total.ints = ints_np.copy()
        self._total.floats = floats_np.copy()
        self._per_category = {}

    def state_dict(self) -> dict[str, Any]:
        """Plain, picklable state (overall and per-category sums)."""
        return {
            "empty_area": self.empty_area,
            "total": {"ints": self._total.ints.tolist(), "floats": self._total.floats.tolist()},
            "per_category": {
                k: {"ints": s.ints.tolist(), "floats": s.floats.tolist()}
                for k, s in self._per_category.items()
            },
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ReferringMetrics:
        """Rebuild an instance from :meth:`state_dict`."""
        m = cls(empty_area=int(state["empty_area"]))
        m._total.ints = np.asarray(state["total"]["ints"], dtype=np.int64)
        m._total.floats = np.asarray(state["total"]["floats"], dtype=np.float64)
        for k, s in state["per_category"].items():
            st = _State()
            st.ints = np.asarray(s["ints"], dtype=np.int64)
            st.floats = np.asarray(s["floats"], dtype=np.float64)
            m._per_category[k] = st
        return m

    def merge(self, other: ReferringMetrics | dict[str, Any]) -> ReferringMetrics:
        """Add another instance's samples (or its :meth:`state_dict`) to this one; returns ``self``."""
        if isinstance(other, dict):
            other = ReferringMetrics.from_state_dict(other)
        if other.empty_area != self.empty_area:
            raise ValueError(
                f"cannot merge metrics with empty_area {other.empty_area} into {self.empty_area}"
            )
        self._total.merge(other._total)
        for k, s in other._per_category.items():
            self._per_category.setdefault(k, _State()).merge(s)
        return self
