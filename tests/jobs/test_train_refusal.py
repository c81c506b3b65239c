"""jobs/train.py refuses a paper config without pretrained weights before Ray starts (issue 24)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_paper_config_without_weights_exits_2_with_the_staging_command(tmp_path):
    # A process of its own: other tests of the session may have started Ray in this one.
    config = str(REPO / "configs" / "swin-b-rrsisd.yaml")
    argv = [sys.executable, "jobs/train.py", "--config", config, "--storage-path", str(tmp_path / "runs")]
    start = time.monotonic()
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    err = result.stderr
    assert result.returncode == 2, err
    assert time.monotonic() - start < 120
    assert (
        "Ray" not in err and not (tmp_path / "runs").exists()
    )  # refused on the driver, before any Ray start
    assert "train.py: configuration error" in err and "random initialisation" in err
    assert "python jobs/fetch_weights.py --out /weights" in err
    assert (
        "--set model_overrides.weights.backbone=/weights/swin_base_patch4_window12_384.ms_in22k.safetensors"
        in err
    )
    assert "--set model_overrides.text.name_or_path=/weights/bert-base-uncased" in err
    assert "--set weights.allow_random_init=true" in err
