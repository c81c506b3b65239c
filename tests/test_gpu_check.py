"""benchmarks/gpu_check.py --smoke: the GPU machine's script runs end to end on the CPU and writes its JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _numbers(value: object) -> list[float]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def test_gpu_check_smoke_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out)],
        cwd=REPO,
        check=True,
        timeout=600,
    )
    result = json.loads(out.read_text())
    assert {"environment", "options", "models", "skipped", "elapsed_s"} <= set(result)
    env = result["environment"]
    assert env["device_type"] == "cpu" and {"torch", "timm", "transformers", "safetensors"} <= set(env)
    assert result["options"]["smoke"] is True and result["options"]["size"] == 64
    assert set(result["models"]) == {"crobim-tiny", "crobim-tiny+region"}
    for label, entry in result["models"].items():
        assert {"build_s", "params_m", "throughput", "queries", "train_step", "channels_last"} <= set(
            entry
        ), label
        assert [row["batch"] for row in entry["throughput"]] == [1, 2]
        assert all(row["status"] == "ok" and row["images_per_s"] > 0 for row in entry["throughput"])
        assert [row["queries"] for row in entry["queries"]] == [1, 2, 4]
        assert all(row["decode_ms_per_pair"] > 0 and row["tiles_per_s"] > 0 for row in entry["queries"])
        assert entry["train_step"]["status"] == "ok" and entry["train_step"]["samples_per_s"] > 0
    # the uint8 batch preprocessed by the model equals the former CPU preprocessing
    assert result["models"]["crobim-tiny"]["input_transfer"]["max_abs_diff"] == 0.0
    # compile runs only on CUDA, and a section that does not run is named
    assert {(s["section"], s["model"]) for s in result["skipped"]} == {
        ("compile", "crobim-tiny"),
        ("compile", "crobim-tiny+region"),
    }
    numbers = _numbers(result["models"])
    assert numbers and all(math.isfinite(n) for n in numbers)
