"""Learning benchmark: train the CPU preset on SynRS with jobs/train.py, then evaluate with and without
shuffled expressions (a language ablation).

    python benchmarks/train_learning.py --data data/synrs96 --runs runs --name synrs-learning \
        [--config configs/synrs-learning.yaml] [--set KEY=VALUE ...] [--skip-train] [--demo-out assets/demo-model]

Steps: (1) generate SynRS (seed 0; train/val/test sizes below) unless present; (2) `jobs/train.py` with the
config (Ray Train, the real path), timed; (3) evaluate `<runs>/<name>/best` on the val and test splits with
`crobim.metrics.ReferringMetrics`: oIoU, mIoU (all samples and target samples only), giou_gres, N-acc, T-acc,
presence gating on and off (`crobim.scoring.score_batches`); then the same with the expressions permuted across
samples (seeded). Must show (issue 8): gIoU >= 0.50 and target mIoU >= 0.45; shuffled, both <= 2/3 of that.
Optionally (4) writes the fp16 demo model (`--demo-out`, `crobim.training.export.export_fp16`; its model card is
written by hand from the printed tables) and prints its size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def evaluate(model, reader, *, shuffle_seed: int | None, gate: bool, batch: int = 50) -> dict[str, float]:
    from crobim.metrics import ReferringMetrics
    from crobim.scoring import score_batches
    from crobim.transforms import resize_mask

    every, targets = ReferringMetrics(), ReferringMetrics()
    per_template: dict[str, list[float]] = {}
    n = len(reader)
    texts = [reader.record(i)["text"] for i in range(n)]
    if shuffle_seed is not None:
        perm = np.random.default_rng(shuffle_seed).permutation(n)
        texts = [texts[i] for i in perm]
    size = model.config.input.size

    def batches():
        for start in range(0, n, batch):
            samples = [reader[i] for i in range(start, min(n, start + batch))]
            images = model.preprocess([s.image for s in samples])
            tokens = model.tokenize(texts[start : start + len(samples)])
            yield {"image": images, **tokens, "samples": samples}

    def consume(b, masks):
        pred = masks.pick(gate).numpy()
        for s, p in zip(b["samples"], pred, strict=True):
            gt = resize_mask(s.mask, size)
            every.update(p, gt, no_target=s.no_target)
            if not s.no_target:
                targets.update(p, gt, no_target=False)
            union = int((gt | p).sum())
            iou = 1.0 if union == 0 else int((gt & p).sum()) / union
            per_template.setdefault(str(s.meta.get("template", "?")), []).append(iou)

    score_batches(model, batches(), consume)
    res = every.compute()
    return {
        "oIoU": res["oIoU"],
        "mIoU": res["mIoU"],
        "mIoU_targets": targets.compute()["mIoU"],
        "giou_gres": res["giou_gres"],
        "N_acc": res["N-acc"],
        "T_acc": res["T-acc"],
        "n": res["count"],
        "n_no_target": res["n_no_target"],
        # IoU per SynRS template (no-target ones score 1 for an empty prediction), with the sample count
        "templates": {k: (len(v), float(np.mean(v))) for k, v in sorted(per_template.items())},
    }


def _row(name: str, m: dict) -> str:
    return (
        f"| {name} | {100 * m['oIoU']:.2f} | {100 * m['mIoU']:.2f} | {100 * m['mIoU_targets']:.2f} | "
        f"{100 * m['giou_gres']:.2f} | {100 * (m['N_acc'] or 0):.2f} | {100 * (m['T_acc'] or 0):.2f} |"
    )


def card_tables(report: dict) -> str:
    """The evaluation tables of the demo model card (Markdown): metrics per split / setting, IoU per template."""
    lines = [
        "| Split / setting | oIoU | mIoU | mIoU (targets) | gIoU (GRES) | N-acc | T-acc |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in (
        "val_gated",
        "val_gated_shuffled",
        "val_ungated",
        "test_gated",
        "test_gated_shuffled",
        "test_ungated",
    ):
        if key in report:
            lines.append(_row(key.replace("_", " "), report[key]))
    if "val_gated" in report:
        lines += ["", "| Template (val, gated) | samples | IoU |", "| --- | ---: | ---: |"]
        for name, (count, iou) in report["val_gated"]["templates"].items():
            lines.append(f"| {name} | {count} | {100 * iou:.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/synrs96")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--val", type=int, default=300)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--config", default=str(REPO / "configs" / "synrs-learning.yaml"))
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--name", default="synrs-learning")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--skip-train", action="store_true", help="evaluate an existing <runs>/<name>/best")
    ap.add_argument(
        "--demo-out", default=None, help="also write the fp16 weights of best/ here (the demo model)"
    )
    ap.add_argument("--splits", default="val,test", help="splits to evaluate (comma-separated)")
    ap.add_argument("--budget-s", type=float, default=900.0, help="training wall-time budget to check")
    args = ap.parse_args()

    from crobim.data import SynRS
    from crobim.data.synrs.writer import write_dataset

    data = Path(args.data)
    if not (data / "synrs_info.json").is_file():
        t0 = time.perf_counter()
        write_dataset(
            data,
            seed=args.seed,
            counts={"train": args.train, "val": args.val, "test": args.test},
            size=args.size,
        )
        print(f"generated SynRS in {time.perf_counter() - t0:.0f} s")
    train_s = None
    if not args.skip_train:
        sys.path.insert(0, str(REPO))
        from jobs.train import main as train_main

        argv = [
            "--config",
            args.config,
            "--data-root",
            str(data),
            "--storage-path",
            args.runs,
            "--name",
            args.name,
        ]
        for item in args.overrides:
            argv += ["--set", item]
        t0 = time.perf_counter()
        rc = train_main(argv)
        train_s = time.perf_counter() - t0
        if rc:
            return rc
    from crobim import load_model

    best = Path(args.runs) / args.name / "best"
    if args.skip_train:
        # A stopped run has checkpoints but no export yet: export the best complete one (no Ray needed).
        from crobim.training.export import export_local_run

        export_local_run(Path(args.runs) / args.name)
    model = load_model(best).eval()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    report: dict[str, object] = {
        "train_wall_s": train_s,
        "load_avg_1m": os.getloadavg()[0],
        "best": str(best),
    }
    for split in args.splits.split(","):
        reader = SynRS(data, split)
        for gate in (True, False):
            key = f"{split}_{'gated' if gate else 'ungated'}"
            report[key] = evaluate(model, reader, shuffle_seed=None, gate=gate)
            report[key + "_shuffled"] = evaluate(model, reader, shuffle_seed=123, gate=gate)
    v, vs = report["val_gated"], report["val_gated_shuffled"]
    checks = {
        "giou_gres>=0.50": v["giou_gres"] >= 0.50,
        "mIoU_targets>=0.45": v["mIoU_targets"] >= 0.45,
        "shuffled giou <= 2/3": vs["giou_gres"] <= 2 / 3 * v["giou_gres"],
        "shuffled mIoU_targets <= 2/3": vs["mIoU_targets"] <= 2 / 3 * v["mIoU_targets"],
        "train within budget": train_s is None or train_s <= args.budget_s,
    }
    report["checks"] = checks
    history = json.loads((best / "training_metrics.json").read_text())
    report["best_epoch_metrics"] = history["best"]
    report["epochs_done"] = history["epochs_done"]
    if args.demo_out:
        from crobim.training.export import export_fp16

        report["demo_bytes"] = export_fp16(best, Path(args.demo_out))
    print(json.dumps(report, indent=2, default=float))
    print(card_tables(report))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
