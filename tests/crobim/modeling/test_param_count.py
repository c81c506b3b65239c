"""The paper-sized presets build offline and land in 195-235 M parameters (MODEL.md §7, §10 item 5); one 480 x 480
forward runs (slow: real random init of 210 M parameters; benchmarks/model_throughput.py also runs it)."""

from __future__ import annotations

import logging

import pytest
import torch

from crobim import build_model

logger = logging.getLogger(__name__)

PAPER_PRESETS = ["crobim-swin-b", "crobim-convnext-b"]


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_parameter_count(name):
    # The meta device builds the same modules without spending seconds on random initialisation.
    with torch.device("meta"):
        model = build_model(name)
    total = sum(p.numel() for p in model.parameters())
    breakdown = {k: round(sum(p.numel() for p in m.parameters()) / 1e6, 2) for k, m in model.named_children()}
    logger.info("%s: %.2f M parameters %s", name, total / 1e6, breakdown)
    assert 195e6 <= total <= 235e6, (total, breakdown)
    assert 100 <= breakdown["text"] <= 115 and 80 <= breakdown["backbone"] <= 95
    assert model.text.hidden_size == 768 and model.text.encoder.pooler is None
    assert model.tokenize(["a pond"])["input_ids"].shape == (1, 20)


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_forward_at_480(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    tokens = model.tokenize(["the large white building"])
    with torch.no_grad():
        out = model(torch.randn(1, 3, 480, 480), **tokens)
    assert out.logits.shape == (1, model.config.head.channels, 480, 480) and torch.isfinite(out.logits).all()
