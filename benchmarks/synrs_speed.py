"""SynRS generation and georeferenced-region speed against their targets (wall and CPU time, one run).

    python benchmarks/synrs_speed.py [--samples 2000] [--size 128] [--region 2048]

Targets (issue 3): ~2000 samples at 128-160 px well under a minute; a 2048 px region in under 30 s.
"""

import argparse
import tempfile
import time
from pathlib import Path

from crobim.data import SynRS
from crobim.data.synrs import write_dataset
from pipelines.demo.region import make_region


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--region", type=int, default=2048)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synrs"
        summary, wall, cpu = _timed(lambda: write_dataset(root, 0, {"train": args.samples}, args.size))
        print(f"SynRS {args.samples} samples @ {args.size}px: wall {wall:.1f} s, cpu {cpu:.1f} s, "
              f"{args.samples / wall:.0f} samples/s; target 60 s -> wall ratio {wall / 60:.2f}, cpu ratio {cpu / 60:.2f}; "
              f"no-target share {summary['no_target_share']:.3f}")  # fmt: skip
        ds = SynRS(root, "train")
        _, wall, cpu = _timed(lambda: [ds[i] for i in range(min(500, len(ds)))])
        print(f"SynRS reader: {min(500, len(ds)) / wall:.0f} samples/s (wall), cpu {cpu:.2f} s")
        _, wall, cpu = _timed(lambda: make_region(Path(tmp) / "region", seed=0, size_px=args.region))
        print(f"region {args.region}px (COG + instances + GeoParquet + STAC): wall {wall:.1f} s, cpu {cpu:.1f} s; "
              f"target 30 s -> wall ratio {wall / 30:.2f}, cpu ratio {cpu / 30:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
