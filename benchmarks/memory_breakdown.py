"""Where a region run's memory goes: each process of the tree, its peak RSS, PSS and USS, and the tree's peak sums.

Runs one variant of ``benchmarks/vs_torchgeo.py`` (``ours``: the region job with its local Ray runtime; ``torchgeo``:
the TorchGeo user's loop) on one SynRS region in this process and samples it and its descendants every 0.3 s.
Processes are grouped by what they run (Ray names its workers ``ray::<task or actor>``). PSS shares a page among the
processes that map it, so the PSS sums add up to the tree's footprint; RSS counts a shared page in each process.
The peaks of different processes need not coincide; the last column, each role's PSS in the sample where the tree's
PSS peaked, says what that peak is made of.

Usage: ``.venv/bin/python benchmarks/memory_breakdown.py [--variant ours|torchgeo] [--size-px 384]``
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_KEYS = ("rss", "pss", "uss")


class TreeSampler:
    """Peak RSS/PSS/USS per process (by pid and role) and of the tree's sums, sampled in a thread."""

    def __init__(self, interval_s: float = 0.3) -> None:
        self.interval_s = interval_s
        self.per_process: dict[tuple[int, str], dict[str, int]] = {}
        self.tree = dict.fromkeys(_KEYS, 0)
        # role -> PSS summed over its processes, in the sample with the tree's peak PSS
        self.at_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def role(proc: psutil.Process, me: int) -> str:
        """A short name of what a process runs: the driver, a Ray worker's task or actor, or its command."""
        if proc.pid == me:
            return "driver (this process)"
        cmd = " ".join(proc.cmdline())
        if cmd.startswith("ray::"):
            return re.sub(r"\.\w+$", "", cmd.split()[0])  # ray::Actor.method -> ray::Actor
        return " ".join(Path(part).name if "/" in part else part for part in proc.cmdline()[:3])[:70]

    def _sample(self) -> None:
        me = psutil.Process()
        sums = dict.fromkeys(_KEYS, 0)
        by_role: dict[str, int] = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                info, key = proc.memory_full_info(), (proc.pid, self.role(proc, me.pid))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            old = self.per_process.get(key, dict.fromkeys(_KEYS, 0))
            self.per_process[key] = {k: max(old[k], getattr(info, k)) for k in _KEYS}
            sums = {k: sums[k] + getattr(info, k) for k in _KEYS}
            by_role[key[1]] = by_role.get(key[1], 0) + info.pss
        if sums["pss"] > self.tree["pss"]:
            self.at_peak = by_role
        self.tree = {k: max(self.tree[k], sums[k]) for k in _KEYS}

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval_s)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def report(sampler: TreeSampler) -> str:
    """Per role: process count, the sum of each process's peaks and its PSS at the tree's peak (MB); then the tree."""
    roles: dict[str, dict[str, int]] = {}
    for (_, role), peaks in sampler.per_process.items():
        acc = roles.setdefault(role, {"n": 0, **dict.fromkeys(_KEYS, 0)})
        acc["n"] += 1
        for k in _KEYS:
            acc[k] += peaks[k]
    lines = [f"{'process (role)':72} {'n':>3} {'RSS MB':>8} {'PSS MB':>8} {'USS MB':>8} {'PSS@peak':>8}"]
    for role, acc in sorted(roles.items(), key=lambda kv: -kv[1]["pss"]):
        if acc["rss"]:
            lines.append(
                f"{role[:72]:72} {acc['n']:>3} "
                + " ".join(f"{acc[k] / 2**20:>8.0f}" for k in _KEYS)
                + f" {sampler.at_peak.get(role, 0) / 2**20:>8.0f}"
            )
    tree = " ".join(f"{sampler.tree[k] / 2**20:>8.0f}" for k in _KEYS)
    lines.append(f"{'tree, peak of the sums (one sample)':72} {'':>3} {tree}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Generate the region, run the variant under the sampler, print the run's result and the breakdown."""
    import benchmarks.vs_torchgeo as vs
    from pipelines.demo.region import make_region

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=vs.VARIANTS, default="ours")
    parser.add_argument("--size-px", type=int, default=384, help="region side (2 m pixels)")
    parser.add_argument("--workdir", default=None)
    args, rest = parser.parse_known_args(argv)
    bench = vs.parse_args(["--size-px", str(args.size_px), *rest])
    work = Path(args.workdir or tempfile.mkdtemp(prefix="memory-breakdown-"))
    scene = make_region(work / "region", **vs.region_settings(args.size_px, bench.seed))
    runner = vs.run_ours if args.variant == "ours" else vs.run_torchgeo
    with TreeSampler() as sampler:
        result = runner(scene, work / f"out-{args.variant}", bench)
    print(f"{args.variant} on {scene.shape[0]} x {scene.shape[1]} px: {result}")
    print(report(sampler))


if __name__ == "__main__":
    main()
