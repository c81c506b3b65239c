"""Train CroBIM on Ray Train (PIPELINE.md §7): `python jobs/train.py --config configs/X.yaml [flags]`.

Runs locally (starts Ray) or on a cluster (`--address`, `RAY_ADDRESS`, or under `ray job submit`).
Re-running with the same `--storage-path` and `--name` resumes from the latest checkpoint. At the end
the best checkpoint (by validation oIoU) is exported to `<storage-path>/<name>/best/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from crobim.cli import add_console_arguments, configure_logging


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags; every flag maps onto a `TrainConfig` key."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train CroBIM with Ray Train (DDP over --num-workers workers); resumes runs by name.",
    )
    p.add_argument("--config", help="training config YAML (configs/*.yaml); defaults apply without it")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set schedule.batch_size=16 --set model_overrides.optim.lr=5e-5 "
        "(repeatable; values are YAML)",
    )
    p.add_argument("--num-workers", type=int, help="Ray Train workers (run.num_workers)")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker (run.use_gpu)")
    p.add_argument("--storage-path", help="local folder or s3:// / gs:// URI for checkpoints and best/")
    p.add_argument("--name", help="run name; the same storage path and name resume the run")
    p.add_argument("--max-epochs", type=int, help="epochs (schedule.epochs)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (schedule.max_steps)")
    p.add_argument("--data-root", help="dataset root folder (data.root)")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (ray://HOST:10001 or HOST:6379); default $RAY_ADDRESS, else a local Ray",
    )
    add_console_arguments(p, progress=False)
    return p


def _flag_overrides(args: argparse.Namespace) -> list[tuple[str, object]]:
    from crobim.training.config import parse_override

    pairs = [parse_override(text) for text in args.overrides]
    flags = {
        "run.num_workers": args.num_workers,
        "run.use_gpu": args.use_gpu,
        "run.storage_path": args.storage_path,
        "run.name": args.name,
        "schedule.epochs": args.max_epochs,
        "schedule.max_steps": args.max_steps,
        "data.root": args.data_root,
    }
    return pairs + [(k, v) for k, v in flags.items() if v is not None]


def _init_ray(ray: object, address: str | None, attempts: int = 3) -> None:
    """`ray.init`, retried when a local start misses Ray's fixed 30 s raylet registration window (busy machine)."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, log_to_driver=True)  # type: ignore[attr-defined]
            return
        except Exception as err:  # Ray raises a bare Exception for a slow node start
            if address is not None or "timed out during startup" not in str(err) or attempt == attempts:
                raise
            logging.getLogger("jobs.train").warning(
                "local Ray start timed out (attempt %d); retrying", attempt
            )
            ray.shutdown()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    """Parse flags, connect to Ray, train (or resume), export the best checkpoint, print a summary."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)

    import ray

    from crobim.errors import CheckpointError
    from crobim.training.config import load_train_config
    from crobim.training.trainer import run_training

    try:
        cfg = load_train_config(args.config, _flag_overrides(args))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        print(f"train.py: configuration error: {err}", file=sys.stderr)
        return 2
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        _init_ray(ray, address)
    try:
        summary = run_training(cfg)
    except (CheckpointError, FileNotFoundError) as err:  # bad input, found before any worker starts
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    best = summary.best_metrics
    print(
        json.dumps(
            {
                "run": summary.run_uri,
                "best": summary.best_uri,
                "epochs_done": summary.epochs_done,
                "global_step": summary.global_step,
                "best_epoch": best.get("epoch"),
                "val_oIoU": best.get("val_oIoU"),
                "val_mIoU": best.get("val_mIoU"),
                "val_giou_gres": best.get("val_giou_gres"),
                "val_N_acc": best.get("val_N_acc"),
                "val_T_acc": best.get("val_T_acc"),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
