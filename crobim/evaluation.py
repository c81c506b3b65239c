"""The literature's evaluation protocol (DATA_AND_EVAL.md §7-8) as a library function, plus its reports.

Per sample, batch 1, every sentence: the image goes through ``model.preprocess`` (bilinear to the model's
input size, normalised), the text through ``model.tokenize``; the logits come at the input size (``CroBIM.decode``
upsamples them bilinearly, ``align_corners=True``); the binary mask follows :func:`crobim.inference.binary_mask`
(1 channel: logit > 0; 2 channels: argmax, tie to background; presence gating only when asked, through
:func:`crobim.inference.gate_by_presence`). The loop is :func:`crobim.scoring.score_batches`. The ground truth is resized to the same grid with nearest neighbour
(:func:`crobim.transforms.resize_mask`); IoU is computed there, never at native size. Published tables use a
480 x 480 input; results at other sizes are labelled as such in every report.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crobim.metrics import PRECISION_THRESHOLDS, ReferringMetrics

if TYPE_CHECKING:
    from crobim.data.sample import Sample
    from crobim.modeling.model import CroBIM
    from crobim.scoring import BatchMasks

__all__ = [
    "EXPECTED_TEST_COUNTS",
    "LITERATURE_INPUT_SIZE",
    "EvaluationResult",
    "SampleResult",
    "evaluate",
    "format_markdown",
    "plot_examples",
    "write_report",
]

logger = logging.getLogger(__name__)

#: Test-split sizes of the real benchmarks; a full evaluation must see exactly these (DATA_AND_EVAL.md §7.6).
EXPECTED_TEST_COUNTS: dict[str, int] = {"rrsisd": 3481, "refsegrs": 1817, "risbench": 16159}
#: Input side of the published tables.
LITERATURE_INPUT_SIZE = (480, 480)


@dataclass
class SampleResult:
    """One evaluated sample.

    Attributes:
        index: Position in the dataset.
        sample_id: ``meta["sample_id"]``.
        text: The expression.
        iou: IoU_i on the evaluation grid (0 when the union is empty).
        score: Ranking score: IoU_i, or for a no-target sample 1 if predicted empty else 0 (GRES).
        no_target: The annotation's flag.
        pred_area: Predicted pixels on the evaluation grid.
        gt_area: Ground-truth pixels on the evaluation grid.
        category: ``meta["category"]``.
        presence: sigmoid(presence logit), when the model has the head.
    """

    index: int
    sample_id: str
    text: str
    iou: float
    score: float
    no_target: bool
    pred_area: int
    gt_area: int
    category: str | None = None
    presence: float | None = None


@dataclass
class EvaluationResult:
    """Metrics, protocol settings and per-sample results of one run.

    ``examples`` holds the best and worst samples with their predicted masks (evaluation grid) for the sheet.
    """

    metrics: dict[str, Any]
    protocol: dict[str, Any]
    samples: list[SampleResult]
    best: list[tuple[SampleResult, np.ndarray]] = field(default_factory=list)
    worst: list[tuple[SampleResult, np.ndarray]] = field(default_factory=list)
    #: With a presence head: the metrics with gating off and on (same forward passes), keyed
    #: ``"ungated"`` / ``"gated"``; ``metrics`` is the one that was asked for.
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Examples:
    """The k best and the k worst samples by score, with their packed predicted masks (two bounded min-heaps)."""

    def __init__(self, k: int, size: tuple[int, int]) -> None:
        self.k, self.size = k, size
        self.best: list[tuple[float, int, np.ndarray]] = []  # the k best: (score, -index, packed mask)
        self.worst: list[tuple[float, int, np.ndarray]] = []  # min-heap on -score: the k worst

    def add(self, score: float, index: int, pred: np.ndarray) -> None:
        """Offer one sample; ties keep the earlier index."""
        if self.k <= 0:
            return
        packed = np.packbits(pred)
        for heap, item in ((self.best, (score, -index, packed)), (self.worst, (-score, -index, packed))):
            if len(heap) < self.k:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)

    def unpack(
        self, heap: list[tuple[float, int, np.ndarray]], by_index: dict[int, SampleResult]
    ) -> list[tuple[SampleResult, np.ndarray]]:
        """A heap's samples, best first, with their masks on the evaluation grid."""
        items = sorted(heap, key=lambda t: t[:2], reverse=True)
        count = self.size[0] * self.size[1]
        return [
            (by_index[-idx], np.unpackbits(m, count=count).reshape(self.size).astype(bool))
            for _, idx, m in items
        ]


class _Scorer:
    """Per-sample bookkeeping of :func:`evaluate`: both gating modes' metrics, the results and the examples."""

    def __init__(
        self, gate_presence: bool, presence_on: bool, empty_area: int, size: tuple[int, int], k: int
    ) -> None:
        self.gate_presence, self.empty_area, self.size = gate_presence, empty_area, size
        self.metrics = ReferringMetrics(empty_area=empty_area)
        # The other gating mode, scored from the same forward passes (DATA_AND_EVAL.md §8: report both).
        self.other = ReferringMetrics(empty_area=empty_area) if presence_on else None
        self.results: list[SampleResult] = []
        self.examples = _Examples(k, size)

    def consume(self, batch: dict[str, Any], masks: BatchMasks) -> None:
        """Score one batch-1 sample (``batch["sample"]`` at position ``batch["index"]``)."""
        from crobim.transforms import resize_mask

        i, sample = batch["index"], batch["sample"]
        pred = masks.pick(self.gate_presence)[0].numpy()
        gt = resize_mask(sample.mask, self.size)
        no_target = bool(sample.meta.get("no_target", False))
        category = sample.meta.get("category")
        iou = float(self.metrics.update(pred, gt, no_target=no_target, category=category))  # type: ignore[arg-type]
        if self.other is not None:
            alt = masks.pick(not self.gate_presence)[0].numpy()
            self.other.update(alt, gt, no_target=no_target, category=category)  # type: ignore[arg-type]
        pred_area = int(pred.sum())
        score = (1.0 if pred_area <= self.empty_area else 0.0) if no_target else iou
        p = float(masks.presence[0]) if masks.presence is not None else None
        self.results.append(SampleResult(i, str(sample.meta.get("sample_id", i)), sample.text, iou, score, no_target,
                                         pred_area, int(gt.sum()), category, p))  # fmt: skip
        self.examples.add(score, i, pred)

    def result(self, protocol: dict[str, Any]) -> EvaluationResult:
        """The metrics of the asked gating mode, both variants (with the presence head) and the examples."""
        primary = self.metrics.compute()
        variants: dict[str, dict[str, Any]] = {}
        if self.other is not None:
            asked, alternative = ("gated", "ungated") if self.gate_presence else ("ungated", "gated")
            variants = {asked: primary, alternative: self.other.compute()}
        by_index = {r.index: r for r in self.results}
        best = self.examples.unpack(self.examples.best, by_index)
        worst = self.examples.unpack(self.examples.worst, by_index)
        return EvaluationResult(primary, protocol, self.results, best, worst, variants)


def _check_request(n_total: int, expected_count: int | None, limit: int | None) -> None:
    if expected_count is not None and n_total != expected_count:
        raise ValueError(
            f"the split has {n_total} samples but the benchmark protocol expects {expected_count}; the dataset "
            "is incomplete or a different version (check the download), or pass --limit for a smoke test"
        )
    if limit is not None and limit <= 0:
        raise ValueError(f"limit={limit} must be a positive number of samples")


def evaluate(
    model: CroBIM,
    dataset: Sequence[Sample],
    *,
    gate_presence: bool = False,
    limit: int | None = None,
    expected_count: int | None = None,
    empty_area: int = 0,
    num_examples: int = 4,
    progress: bool = True,
    description: str = "evaluate",
) -> EvaluationResult:
    """Run the benchmark protocol over ``dataset`` with batch 1 and every sentence.

    Args:
        model: A CroBIM model; it is put in eval mode and run under ``torch.inference_mode``
            (:func:`crobim.scoring.score_batches`).
        dataset: Indexable samples (any reader of :mod:`crobim.data`).
        gate_presence: Empty the mask where sigmoid(presence) < ``presence.threshold`` (needs the head). Off for
            benchmark tables.
        limit: Evaluate only the first ``limit`` samples (a smoke test, never a benchmark number).
        expected_count: Refuse to start unless the dataset has exactly this many samples (protocol §7.6).
        empty_area: A prediction with at most this many pixels counts as empty (N-acc, T-acc, gIoU).
        num_examples: How many best and worst samples to keep for the sheet.
        progress: Show a tqdm progress bar.
        description: Progress-bar label.

    Returns:
        The metrics (fractions), protocol settings and per-sample results.

    Raises:
        ValueError: If the sample count differs from ``expected_count``, ``limit`` is not positive, or gating
            is asked of a model without a presence head.
    """
    from tqdm import tqdm

    from crobim.scoring import score_batches

    n_total = len(dataset)
    _check_request(n_total, expected_count, limit)
    presence_on = bool(model.config.presence.enabled)
    if gate_presence and not presence_on:
        raise ValueError("gate_presence=True needs a model built with presence.enabled = true")
    threshold = float(model.config.presence.threshold)
    size = (int(model.config.input.size[0]), int(model.config.input.size[1]))
    n = n_total if limit is None else min(limit, n_total)
    scorer = _Scorer(gate_presence, presence_on, empty_area, size, num_examples)

    def batches() -> Iterator[dict[str, Any]]:
        for i in tqdm(range(n), desc=description, unit="sample", disable=not progress):
            sample = dataset[i]
            images = model.preprocess(sample.image)  # (1, 3, S, S)
            tokens = model.tokenize([sample.text])  # (1, L)
            yield {"image": images, **tokens, "index": i, "sample": sample}

    model.eval()
    score_batches(model, batches(), scorer.consume)
    protocol = {
        "input_size": list(size),
        "literature_input_size": size == LITERATURE_INPUT_SIZE,
        "batch_size": 1,
        "sentences": "all",
        "gt_resize": "nearest",
        "logits_resize": "bilinear, align_corners=True",
        "gate_presence": gate_presence,
        "presence_threshold": threshold if presence_on else None,
        "empty_area": empty_area,
        "samples_in_split": n_total,
        "samples_evaluated": n,
        "limited": n < n_total,
        "model": model.config.name if hasattr(model.config, "name") else None,
    }
    return scorer.result(protocol)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"


def format_markdown(result: EvaluationResult, title: str = "Evaluation") -> str:
    """The papers' table (Pr@0.5 ... Pr@0.9, oIoU, mIoU in percent, two decimals) plus the no-target columns.

    N-acc, T-acc and gIoU (GRES) are added when the set holds no-target samples; a per-category table follows
    when categories are known. Non-480 inputs and partial runs are labelled.
    """
    m, p = result.metrics, result.protocol
    cols = [f"Pr@{t}" for t in PRECISION_THRESHOLDS] + ["oIoU", "mIoU"]
    extra = ["N-acc", "T-acc", "giou_gres"] if m.get("n_no_target") else []
    names = {"giou_gres": "gIoU (GRES)"}
    lines = [f"# {title}", ""]
    notes = []
    h, w = p["input_size"]
    if not p["literature_input_size"]:
        notes.append(f"input {h}x{w}, not the literature's 480x480: not comparable with published tables")
    if p["limited"]:
        notes.append(f"partial run: {p['samples_evaluated']} of {p['samples_in_split']} samples")
    if p["gate_presence"]:
        notes.append(f"presence gating on (threshold {p['presence_threshold']})")
    lines.append(f"Samples: {m['count']} ({m['n_target']} target, {m['n_no_target']} no-target); batch 1; "
                 f"input {h}x{w}; ground truth nearest-resized to the input grid.")  # fmt: skip
    for note in notes:
        lines.append(f"**Note:** {note}.")
    lines.append("")
    header = cols + extra
    lines.append("| " + " | ".join(names.get(c, c) for c in header) + " |")
    lines.append("|" + "|".join("---:" for _ in header) + "|")
    lines.append("| " + " | ".join(_pct(m[c]) for c in header) + " |")
    if result.variants:
        thr = p["presence_threshold"]
        lines += [
            "",
            f"## Presence gating (threshold {thr}; the table above is the {'gated' if p['gate_presence'] else 'ungated'} run)",
            "",
        ]
        lines.append(
            "| gating | " + " | ".join(names.get(c, c) for c in cols + ["N-acc", "T-acc", "giou_gres"]) + " |"
        )
        lines.append("|---|" + "|".join("---:" for _ in cols + ["N-acc", "T-acc", "giou_gres"]) + "|")
        for mode in ("ungated", "gated"):
            vm = result.variants[mode]
            lines.append(
                f"| {mode} | "
                + " | ".join(_pct(vm[c]) for c in cols + ["N-acc", "T-acc", "giou_gres"])
                + " |"
            )
    if "per_category" in m:
        lines += ["", "## Per category", ""]
        lines.append("| category | N | " + " | ".join(names.get(c, c) for c in header) + " |")
        lines.append("|---|---:|" + "|".join("---:" for _ in header) + "|")
        for cat, cm in m["per_category"].items():
            lines.append(f"| {cat} | {cm['count']} | " + " | ".join(_pct(cm[c]) for c in header) + " |")
    lines.append("")
    return "\n".join(lines)


def plot_examples(result: EvaluationResult, dataset: Sequence[Sample], path: str | os.PathLike[str]) -> Path:
    """PNG sheet of the best and worst samples: image, truth and prediction (evaluation grid) with the text."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from crobim.transforms import resize_mask

    rows = [("best", r, m) for r, m in result.best] + [("worst", r, m) for r, m in result.worst]
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 3, figsize=(9, 3.2 * n), squeeze=False)
    for k, (kind, res, pred) in enumerate(rows):
        sample = dataset[res.index]
        size = pred.shape
        gt = resize_mask(sample.mask, size)
        h, w = sample.image.shape[:2]
        ax_img, ax_gt, ax_pred = axes[k]
        ax_img.imshow(sample.image)
        wrapped = "\n".join(textwrap.wrap(res.text, 38)[:3])
        ax_img.set_title(f"{kind}: {res.sample_id}\n{wrapped}", fontsize=7, loc="left")
        for ax, mask, label in ((ax_gt, gt, "truth"), (ax_pred, pred, "prediction")):
            ax.imshow(sample.image, extent=(0, w, h, 0))
            overlay = np.zeros((*mask.shape, 4), dtype=float)
            overlay[mask] = (1.0, 0.1, 0.1, 0.55) if label == "prediction" else (0.1, 1.0, 0.2, 0.55)
            ax.imshow(overlay, extent=(0, w, h, 0), interpolation="nearest")
            extra = " (no target)" if res.no_target and label == "truth" else ""
            info = f"IoU {res.iou:.3f}" if not res.no_target else f"score {res.score:.0f}"
            ax.set_title(f"{label}{extra}" + (f" - {info}" if label == "prediction" else ""), fontsize=8)
        for ax in axes[k]:
            ax.set_xticks([])
            ax.set_yticks([])
    if not rows:
        axes[0][0].text(0.5, 0.5, "no samples", ha="center")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def write_report(
    result: EvaluationResult,
    dataset: Sequence[Sample],
    out_dir: str | os.PathLike[str],
    *,
    title: str = "Evaluation",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md``, ``per_sample.jsonl`` and ``examples.png`` into ``out_dir``.

    Returns:
        Output name -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "metrics": result.metrics,
        "protocol": result.protocol,
        "variants": result.variants,
        **(extra or {}),
    }
    paths = {
        "metrics.json": out / "metrics.json",
        "metrics.md": out / "metrics.md",
        "per_sample.jsonl": out / "per_sample.jsonl",
        "examples.png": out / "examples.png",
    }
    paths["metrics.json"].write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    paths["metrics.md"].write_text(format_markdown(result, title))
    with paths["per_sample.jsonl"].open("w", encoding="utf-8") as f:
        for r in result.samples:
            f.write(json.dumps(asdict(r), sort_keys=True) + "\n")
    plot_examples(result, dataset, paths["examples.png"])
    return paths
