"""Export of a finished run: the best checkpoint as a `crobim.save_model` folder, `metrics.csv` and a
loss / oIoU curve (PIPELINE.md §7), and the fp16 copy of an exported model. Works for local folders and
s3:// / gs:// run URIs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from crobim.training.checkpoint import read_trainer_state

__all__ = [
    "BEST_DIR",
    "CURVES_PNG",
    "METRICS_CSV",
    "TrainingSummary",
    "export_best",
    "export_fp16",
    "export_local_run",
    "load_model_from_checkpoint",
    "plot_curves",
    "write_metrics_csv",
]

logger = logging.getLogger(__name__)

#: Names under `<storage_path>/<name>/`: the exported model folder, the per-epoch table and the curves.
BEST_DIR = "best"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"


@dataclass
class TrainingSummary:
    """What a finished run produced.

    Attributes:
        run_uri: `<storage_path>/<name>`.
        best_uri: the exported `best/` folder.
        best_metrics: metrics of the best epoch (by `val_oIoU`).
        history: one metrics dict per epoch, in order.
        epochs_done: completed epochs.
        global_step: optimizer steps taken.
    """

    run_uri: str
    best_uri: str
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    epochs_done: int
    global_step: int


def load_model_from_checkpoint(checkpoint_dir: str | Path) -> Any:  # noqa: ANN401
    """Build the CroBIM stored in a training checkpoint folder (strict weight load)."""
    from crobim.config import CroBIMConfig
    from crobim.weights import build_and_load

    folder = Path(checkpoint_dir)
    return build_and_load(CroBIMConfig.from_json(folder / "config.json"), folder / "model.safetensors").eval()


def write_metrics_csv(history: list[dict[str, float]]) -> str:
    """One row per epoch, columns = the union of metric names (epoch first)."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    keys = sorted(keys, key=lambda k: (k not in ("epoch", "step"), k != "epoch", k))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in keys})
    return buf.getvalue()


def plot_curves(history: list[dict[str, float]], path: str | Path, title: str = "") -> None:
    """Training loss and validation oIoU / mIoU / gIoU per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row.get("loss", float("nan")) for row in history], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    for key, label in (("val_oIoU", "oIoU"), ("val_mIoU", "mIoU"), ("val_giou_gres", "gIoU (GRES)")):
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            ax_iou.plot(epochs, [float("nan") if v is None else v for v in values], marker="o", label=label)
    ax_iou.set_xlabel("epoch")
    ax_iou.set_ylabel("validation")
    ax_iou.set_ylim(0, 1)
    ax_iou.grid(alpha=0.3)
    ax_iou.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def export_best(best_dir: Path, latest_dir: Path, run_uri: str) -> TrainingSummary:
    """Write `<run_uri>/best/` (`crobim.save_model`), `<run_uri>/metrics.csv` and `<run_uri>/curves.png`.

    The local `best/` is replaced atomically (written beside it, then renamed); on object stores the
    files are uploaded after they are complete.

    Args:
        best_dir: the best training checkpoint (local copy).
        latest_dir: the latest training checkpoint (its history covers every epoch).
        run_uri: `<storage_path>/<name>`.

    Returns:
        The run's summary.
    """
    from common import storage, storage_adapters
    from crobim.weights import save_model

    best_state = read_trainer_state(best_dir)
    latest_state = read_trainer_state(latest_dir)
    history = latest_state.history
    model = load_model_from_checkpoint(best_dir)
    best_metrics = best_state.history[-1] if best_state.history else {}
    with tempfile.TemporaryDirectory(prefix="crobim-export-") as tmp:
        staged = Path(tmp) / BEST_DIR
        with torch.no_grad():
            save_model(model, staged)
        (staged / "training_metrics.json").write_text(
            json.dumps({"best": best_metrics, "epochs_done": latest_state.epochs_done}, indent=2)
        )
        (Path(tmp) / METRICS_CSV).write_text(write_metrics_csv(history))
        plot_curves(history, Path(tmp) / CURVES_PNG, title=run_uri.rstrip("/").rsplit("/", 1)[-1])
        best_uri = storage.join(run_uri, BEST_DIR)
        if storage.is_remote(run_uri):
            if storage.exists(best_uri):
                storage.remove(best_uri, recursive=True)
            storage_adapters.upload_dir(staged, best_uri)
            for name in (METRICS_CSV, CURVES_PNG):
                storage.write_bytes(storage.join(run_uri, name), (Path(tmp) / name).read_bytes())
        else:
            run_dir = Path(run_uri)
            run_dir.mkdir(parents=True, exist_ok=True)
            target = run_dir / BEST_DIR
            incoming = run_dir / (BEST_DIR + ".incoming")
            old = run_dir / (BEST_DIR + ".old")
            shutil.rmtree(incoming, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
            shutil.copytree(staged, incoming)
            if target.exists():
                target.rename(old)
            incoming.rename(target)
            shutil.rmtree(old, ignore_errors=True)
            for name in (METRICS_CSV, CURVES_PNG):
                shutil.copyfile(Path(tmp) / name, run_dir / name)
    logger.info("exported best checkpoint (epoch %s) to %s", best_metrics.get("epoch"), best_uri)
    return TrainingSummary(
        run_uri=run_uri,
        best_uri=best_uri,
        best_metrics=best_metrics,
        history=history,
        epochs_done=latest_state.epochs_done,
        global_step=latest_state.global_step,
    )


def export_local_run(run_dir: str | Path) -> TrainingSummary:
    """Export a local run folder without Ray (e.g. after the driver was stopped): best by `val_oIoU` among the
    complete `checkpoint_*` folders, history from the one with the most steps.

    Raises:
        FileNotFoundError: if the folder holds no complete checkpoint.
    """
    folder = Path(run_dir)
    complete = []
    for ckpt in sorted(p for p in folder.glob("checkpoint_*") if p.is_dir()):
        try:
            complete.append((ckpt, read_trainer_state(ckpt)))
        except FileNotFoundError:
            logger.warning("skipping incomplete checkpoint %s", ckpt)
    if not complete:
        raise FileNotFoundError(f"no complete checkpoint_* folder under {str(folder)!r}")
    best = max(complete, key=lambda cs: (cs[1].history[-1].get("val_oIoU", float("-inf")), cs[1].global_step))
    latest = max(complete, key=lambda cs: cs[1].global_step)
    return export_best(best[0], latest[0], str(folder))


def export_fp16(model_dir: str | Path, out: str | Path) -> int:
    """Copy a `crobim.save_model` folder with its floating-point weights stored as fp16, then check that it loads.

    The config and the text-encoder config stay as they are (the loader casts the weights on load);
    `training_metrics.json` is left out, and a hand-written `MODEL_CARD.md` already in `out` is kept.

    Args:
        model_dir: the folder to copy (e.g. `<storage_path>/<name>/best`).
        out: the folder to write; replaced if it exists.

    Returns:
        The bytes of the written folder.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from crobim.weights import load_model

    target = Path(out)
    card = target / "MODEL_CARD.md"
    card_text = card.read_text() if card.is_file() else None
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("training_metrics.json"))
    if card_text is not None:
        card.write_text(card_text)
    weights = target / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata=metadata)
    load_model(target)
    return sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
