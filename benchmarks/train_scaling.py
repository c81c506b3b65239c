"""Training throughput with 1 and 2 Ray Train workers (same global batch), and on a GPU crobim-swin-b at 480 bf16.

    python benchmarks/train_scaling.py --data data/synrs96 [--steps 40] [--gpu]

Each case runs `crobim.training.trainer.run_training` for a fixed number of optimizer steps on SynRS and
reads `train_samples_per_s` (all workers together, measured inside the loop from each worker's first batch on)
and `data_startup_s` (the epoch's wait for its first batch: the Ray Data pipeline starting) from the reported
metrics; the ratio 2-worker / 1-worker is printed side by side. With `--gpu` (needs a CUDA device)
it also trains `crobim-swin-b` at 480 px in bf16 on one GPU worker and samples `nvidia-smi` utilisation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_case(
    data: str, workers: int, steps: int, overrides: dict, threads: int | None, use_gpu: bool = False
) -> dict:
    from crobim.training.config import load_train_config, parse_override
    from crobim.training.trainer import run_training

    with tempfile.TemporaryDirectory() as runs:
        pairs = [
            ("data.root", data),
            ("run.storage_path", runs),
            ("run.name", f"scale-{workers}"),
            ("run.num_workers", workers),
            ("run.use_gpu", use_gpu),
            ("run.cpus_per_worker", 0.8 if not use_gpu else 4),
            ("run.threads_per_worker", threads),
            ("schedule.epochs", 1),
            ("schedule.max_steps", steps),
            ("data.max_val_samples", 16),
        ] + [parse_override(f"{k}={v}") for k, v in overrides.items()]
        cfg = load_train_config(REPO / "configs" / "synrs-learning.yaml", pairs)
        t0 = time.perf_counter()
        summary = run_training(cfg)
        wall = time.perf_counter() - t0
    last = summary.history[-1]
    return {
        "workers": workers,
        "steps": int(last["step"]),
        "samples_per_s": last["train_samples_per_s"],
        "data_startup_s": last["data_startup_s"],
        "epoch_time_s": last["epoch_time_s"],
        "wall_s": wall,
    }


def gpu_utilisation(stop: threading.Event, samples: list[float]) -> None:
    while not stop.is_set():
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            samples.append(float(out.stdout.split()[0]))
        time.sleep(1.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/synrs96")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--gpu", action="store_true")
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=None if args.gpu else 2, log_to_driver=False)
    report: dict[str, object] = {}
    one = run_case(args.data, 1, args.steps, {}, threads=2)
    two = run_case(args.data, 2, args.steps, {}, threads=1)
    report["cpu"] = {
        "1_worker": one,
        "2_workers": two,
        "speedup": two["samples_per_s"] / one["samples_per_s"],
    }
    if args.gpu:
        stop, util = threading.Event(), []
        watcher = threading.Thread(target=gpu_utilisation, args=(stop, util), daemon=True)
        watcher.start()
        swin = run_case(
            args.data,
            1,
            args.steps,
            {"model": "crobim-swin-b", "model_overrides": "{}", "schedule.batch_size": 8},
            threads=None,
            use_gpu=True,
        )
        stop.set()
        report["gpu_swin_b_480_bf16"] = swin | {"gpu_util_mean": sum(util) / max(len(util), 1)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
