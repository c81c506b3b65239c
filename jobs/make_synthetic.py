"""Generate SynRS, the synthetic referring benchmark, in the RefSegRS layout (DATA_AND_EVAL.md §9).

Example::

    python jobs/make_synthetic.py --out data/synrs --seed 0 --train 2000 --val 200 --test 200 --size 128
    python jobs/make_synthetic.py --out data/synrs-near --seed 1 --train 3000 --size 96 \
        --set p_multi=0.6 --set p_single=0.25 --set "template_weights={multi/near: 50, none/near_none: 3}"

Counts are samples (expressions); scenes are drawn until each split has its count. The same seed, counts,
size and generator version give byte-identical files. Exit codes: 0 done, 2 bad input or existing output.
"""

from __future__ import annotations

import argparse
import json
import sys

from crobim.cli import add_console_arguments, configure_logging

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The job's command line."""
    p = argparse.ArgumentParser(
        prog="make_synthetic.py",
        description="Write a SynRS dataset (images/, masks/, output_phrase_{split}.txt, synrs_meta.jsonl).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="root seed")
    p.add_argument("--train", type=int, default=0, help="training samples (expressions)")
    p.add_argument("--val", type=int, default=0, help="validation samples")
    p.add_argument("--test", type=int, default=0, help="test samples")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (multiple of 8, 64-4096)")
    p.add_argument(
        "--set",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a SynRSParams field, value read as YAML (e.g. p_multi=0.4, 'template_weights={multi/near: 4}'); "
        "repeatable",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    add_console_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    from tqdm import tqdm

    from crobim.data.synrs import SynRSParams, write_dataset
    from crobim.training.config import parse_override

    try:
        params = SynRSParams.from_overrides([parse_override(text) for text in args.params])
    except (ValueError, TypeError) as err:
        print(f"error: bad --set: {err}", file=sys.stderr)
        return 2
    counts = {"train": args.train, "val": args.val, "test": args.test}
    negative = [f"--{split} {n}" for split, n in counts.items() if n < 0]
    if negative:
        print(
            f"error: {', '.join(negative)}: sample counts cannot be negative; give 0 or more", file=sys.stderr
        )
        return 2
    if sum(counts.values()) <= 0:
        print("error: ask for at least one sample (--train/--val/--test N)", file=sys.stderr)
        return 2
    with tqdm(total=sum(counts.values()), unit="sample", desc="SynRS", disable=args.no_progress) as bar:
        try:
            summary = write_dataset(
                args.out,
                args.seed,
                counts,
                args.size,
                params=params,
                overwrite=args.overwrite,
                progress=bar.update,
            )
        except (ValueError, FileExistsError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    short = {
        k: summary[k]
        for k in ("generator_version", "seed", "size", "samples", "scenes", "kinds", "no_target_share")
    }
    print(json.dumps(short, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
