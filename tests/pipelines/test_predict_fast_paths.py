"""CroBIMPredictor's opt-in fast paths keep its answers: the channels-last layout (benchmarks/fast_paths.py)."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.predict import CroBIMPredictor


def _model():
    from crobim import build_model, get_preset

    torch.manual_seed(0)
    return build_model(
        get_preset("crobim-tiny").replace(presence={"enabled": True}, input={"size": (64, 64)})
    )


def test_channels_last_predictor_gives_the_same_probabilities():
    tiles = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    queries = ["red roofs", "ponds"]
    default = CroBIMPredictor(_model(), device="cpu")
    fast = CroBIMPredictor(_model(), device="cpu", channels_last=True)
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(
        fast.predict(tiles, queries), default.predict(tiles, queries), atol=1e-5, rtol=0
    )
