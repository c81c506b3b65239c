"""Evaluate a CroBIM checkpoint with the literature's protocol (DATA_AND_EVAL.md §7-8).

Example::

    python jobs/evaluate.py --checkpoint runs/best --dataset rrsisd --root data/refer/data --split test --out eval/

Writes ``metrics.json``, ``metrics.md`` (papers' column order, percent), ``per_sample.jsonl`` and
``examples.png`` (best and worst predictions). On a real benchmark's test split the run refuses an incomplete
dataset (the sample count must match the paper). Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

from crobim.cli import add_console_arguments, configure_logging

__all__ = ["build_parser", "main"]

DATASET_CHOICES = ("rrsisd", "refsegrs", "risbench", "synrs")


def build_parser() -> argparse.ArgumentParser:
    """The job's command line."""
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Benchmark a CroBIM checkpoint: batch 1, every sentence, ground truth resized to the model input.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="folder written by crobim.save_model")
    p.add_argument("--dataset", required=True, choices=DATASET_CHOICES, help="reader")
    p.add_argument("--root", required=True, help="dataset folder as unpacked (see crobim.data readers)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split")
    p.add_argument("--out", required=True, help="output folder for the reports")
    p.add_argument("--gate-presence", action="store_true", help="empty masks the presence head rejects")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples (smoke test)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--empty-area", type=int, default=0, help="predictions with <= this many pixels are empty")
    p.add_argument("--examples", type=int, default=4, help="best and worst samples in examples.png")
    p.add_argument("--overwrite", action="store_true", help="replace reports already in --out")
    add_console_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    from pathlib import Path

    from crobim import load_model
    from crobim.data import DATASETS
    from crobim.errors import CheckpointError
    from crobim.evaluation import EXPECTED_TEST_COUNTS, evaluate, format_markdown, write_report

    out = Path(args.out)
    if (out / "metrics.json").exists() and not args.overwrite:
        print(f"error: {out / 'metrics.json'} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        dataset = DATASETS[args.dataset](args.root, args.split)
        model = load_model(args.checkpoint, map_location=args.device)
        expected = (
            EXPECTED_TEST_COUNTS.get(args.dataset) if args.split == "test" and args.limit is None else None
        )
        result = evaluate(
            model,
            dataset,
            gate_presence=args.gate_presence,
            limit=args.limit,
            expected_count=expected,
            empty_area=args.empty_area,
            num_examples=args.examples,
            progress=not args.no_progress,
            description=f"{args.dataset}/{args.split}",
        )
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    title = f"{args.dataset} {args.split}: {Path(args.checkpoint).name}"
    extra = {"dataset": args.dataset, "split": args.split, "checkpoint": str(args.checkpoint)}
    write_report(result, dataset, out, title=title, extra=extra)
    print(format_markdown(result, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
