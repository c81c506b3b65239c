"""The region job's local Ray runtime (``pipelines.execute.ray_runtime``): no dashboard unless asked for one.

Run in a fresh interpreter: the test session's own runtime is up already, and ``ray_runtime`` then starts nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_CODE = """
import json, ray
from pipelines.execute import ray_runtime

seen = []
for dashboard in (False, True):
    with ray_runtime(None, dashboard=dashboard):
        seen.append(ray._private.worker.global_worker.node.webui_url)
    seen.append(ray.is_initialized())
print(json.dumps(seen))
"""


def test_a_local_runtime_has_no_dashboard_unless_asked_and_is_shut_down_after():
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", _CODE], capture_output=True, text=True, cwd=root, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    without, down_1, with_dashboard, down_2 = json.loads(proc.stdout.splitlines()[-1])
    assert without == "" and with_dashboard.rsplit(":", 1)[-1].isdigit()
    assert down_1 is False and down_2 is False
