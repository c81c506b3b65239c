"""benchmarks/memory_breakdown.py on a tiny region: the region job's process tree, grouped by role, with its sums."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_breakdown_names_the_driver_the_actor_and_the_tree(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/memory_breakdown.py", "--size-px", "192", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("process (role)")) + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("tree, peak of the sums")) + 1
    table = lines[start:end]  # whatever a runtime prints at exit after the table is not part of it
    rows = {line[:72].strip(): [float(v) for v in line[76:].split()] for line in table}
    assert any(
        role.startswith("ray::MapWorker(MapBatches(read_stage)->MapBatches(PredictorActor))") for role in rows
    )
    driver, tree = rows["driver (this process)"], rows["tree, peak of the sums (one sample)"]
    # RSS >= PSS >= USS for every row; the tree's peak holds at least the driver; the roles' PSS at that peak add up
    # to it (each rounded to 1 MB).
    assert all(rss >= pss >= uss > 0 for rss, pss, uss, *_ in rows.values())
    assert tree[1] > driver[1]
    at_peak = [row[3] for role, row in rows.items() if len(row) == 4]
    assert abs(sum(at_peak) - tree[1]) <= len(at_peak) + 1
    assert re.search(r"^ours on 192 x 192 px: \{'tiles': \d+", proc.stdout, re.MULTILINE)
