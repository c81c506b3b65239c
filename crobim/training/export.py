"""Export of a finished run: the best checkpoint as a `save_pretrained` folder, `metrics.csv` and a
loss / oIoU curve (PIPELINE.md §7). Works for local folders and s3:// / gs:// run URIs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from crobim.training.checkpoint import read_trainer_state

__all__ = [
    "export_best",
    "export_local_run",
    "load_model_from_checkpoint",
    "plot_curves",
    "write_metrics_csv",
]

logger = logging.getLogger(__name__)


def load_model_from_checkpoint(checkpoint_dir: str | Path) -> Any:  # noqa: ANN401
    """Build the CroBIM stored in a training checkpoint folder (strict weight load)."""
    from crobim import build_model
    from crobim.config import CroBIMConfig

    folder = Path(checkpoint_dir)
    model = build_model(CroBIMConfig.from_json(folder / "config.json"))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()


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


def export_best(best_dir: Path, latest_dir: Path, run_uri: str) -> Any:  # noqa: ANN401
    """Write `<run_uri>/best/` (save_pretrained), `<run_uri>/metrics.csv` and `<run_uri>/curves.png`.

    The local `best/` is replaced atomically (written beside it, then renamed); on object stores the
    files are uploaded after they are complete.

    Args:
        best_dir: the best training checkpoint (local copy).
        latest_dir: the latest training checkpoint (its history covers every epoch).
        run_uri: `<storage_path>/<name>`.

    Returns:
        A `crobim.training.trainer.TrainingSummary`.
    """
    from crobim.training.trainer import BEST_DIR, CURVES_PNG, METRICS_CSV, TrainingSummary
    from pipelines import storage

    best_state = read_trainer_state(best_dir)
    latest_state = read_trainer_state(latest_dir)
    history = latest_state.history
    model = load_model_from_checkpoint(best_dir)
    best_metrics = best_state.history[-1] if best_state.history else {}
    with tempfile.TemporaryDirectory(prefix="crobim-export-") as tmp:
        staged = Path(tmp) / BEST_DIR
        with torch.no_grad():
            model.save_pretrained(staged)
        (staged / "training_metrics.json").write_text(
            json.dumps({"best": best_metrics, "epochs_done": latest_state.epochs_done}, indent=2)
        )
        (Path(tmp) / METRICS_CSV).write_text(write_metrics_csv(history))
        plot_curves(history, Path(tmp) / CURVES_PNG, title=run_uri.rstrip("/").rsplit("/", 1)[-1])
        best_uri = storage.join(run_uri, BEST_DIR)
        if storage.is_remote(run_uri):
            if storage.exists(best_uri):
                storage.remove(best_uri, recursive=True)
            storage.upload_dir(staged, best_uri)
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


def export_local_run(run_dir: str | Path) -> Any:  # noqa: ANN401
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
