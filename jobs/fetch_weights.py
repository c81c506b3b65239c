"""Stage the paper family's pretrained weights for an offline cluster (MODEL.md §8, docs/deploy.md).

Run where the internet is::

    python jobs/fetch_weights.py --out weights --dry-run     # the exact URLs and target files
    python jobs/fetch_weights.py --out weights               # Swin-B 22k, ConvNeXt-B 22k, bert-base-uncased
    python jobs/fetch_weights.py --out weights --only swin-b --only bert-base-uncased

The folder gets the files and a ``manifest.json`` (file, SHA-256, size, source URL, what it is); copy it to the
cluster and point the training config at it with the ``--set`` lines this job prints. Rerunning skips files whose
hash matches the manifest and resumes interrupted downloads. Exit codes: 0 done, 1 a download failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from crobim.cli import add_console_arguments, configure_logging

__all__ = ["build_parser", "main"]

_COMPONENTS = ("swin-b", "convnext-b", "bert-base-uncased")  # the keys of crobim.weight_staging.PAPER_WEIGHTS


def build_parser() -> argparse.ArgumentParser:
    """The job's command line."""
    p = argparse.ArgumentParser(
        prog="fetch_weights.py",
        description="Download the pretrained weights of the paper recipe (Swin-B ImageNet-22k 384 window 12, "
        "ConvNeXt-B ImageNet-22k, bert-base-uncased) into one folder with a manifest.json.",
    )
    p.add_argument("--out", required=True, help="staging folder (created if missing)")
    p.add_argument(
        "--only",
        action="append",
        choices=_COMPONENTS,
        help="stage only this component (repeatable; default: all)",
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="hub or mirror with the <repo>/resolve/main/<file> layout (default: $HF_ENDPOINT, else "
        "https://huggingface.co)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout per request, seconds")
    p.add_argument(
        "--dry-run", action="store_true", help="list the sources and target files; download nothing"
    )
    add_console_arguments(p)
    return p


def _print_plan(plan: list, overrides: list[str]) -> None:
    for item in plan:
        state = "present" if item.exists else "to fetch"
        print(f"{item.url} -> {item.target} ({state})")
    print("then point the training run at them (one weights.backbone line, the run's backbone):")
    for line in overrides:
        print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    from tqdm import tqdm

    from crobim.weight_staging import (
        DEFAULT_BASE_URL,
        WeightStagingError,
        config_overrides,
        plan_staging,
        stage_weights,
    )

    base_url = args.base_url or os.environ.get("HF_ENDPOINT") or DEFAULT_BASE_URL
    try:
        if args.dry_run:
            plan = plan_staging(args.out, base_url=base_url, only=args.only)
            _print_plan(plan, config_overrides(args.out, args.only))
            return 0

        def progress(desc: str, total: int | None, initial: int) -> tqdm:
            return tqdm(
                desc=desc, total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                disable=args.no_progress,
            )  # fmt: skip

        result = stage_weights(
            args.out, base_url=base_url, only=args.only, progress=progress, timeout_s=args.timeout
        )
    except (ValueError, NotADirectoryError) as err:
        print(f"fetch_weights.py: error: {err}", file=sys.stderr)
        return 2
    except WeightStagingError as err:
        print(f"fetch_weights.py: download failed: {err}", file=sys.stderr)
        return 1
    summary = {
        "out": str(result.out),
        "manifest": str(result.manifest),
        "fetched": result.fetched,
        "skipped": result.skipped,
        "train_flags": result.overrides,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
