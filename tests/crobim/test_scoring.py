"""The one scoring loop: `forward_batch`, `predict_masks` and `score_batches` (eval mode, inference mode, pass-through)."""

from __future__ import annotations

import pytest
import torch

from crobim import build_model
from crobim.config import get_preset
from crobim.inference import binary_mask
from crobim.scoring import BatchMasks, score_batches

TEXTS = ["the red roof", "a pond", "the road on the left", "two buildings", "the vehicle", "all trees"]


def build_small_model():
    """`crobim-tiny` at 64 px with the presence head (threshold 0.5), seeded, in eval mode."""
    cfg = get_preset("crobim-tiny").replace(
        presence={"enabled": True, "threshold": 0.5}, input={"size": (64, 64)}
    )
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def small_model():
    return build_small_model()


def make_batches(model, n: int = 5, batch: int = 2, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        out.append(
            {
                "image": torch.randn(b, 3, 64, 64, generator=g),
                **model.tokenize(TEXTS[start : start + b]),
                "mask": (torch.rand(b, 64, 64, generator=g) > 0.7).to(torch.uint8),
                "no_target": torch.tensor([i % 3 == 0 for i in range(start, start + b)]),
                "rows": list(range(start, start + b)),  # not a tensor: passed through unchanged
            }
        )
    return out


def test_score_batches_runs_every_batch_in_inference_mode_and_restores_the_mode(small_model):
    batches = make_batches(small_model)
    seen: list[tuple[list[int], BatchMasks, bool]] = []
    small_model.train()
    try:
        score_batches(
            small_model,
            batches,
            lambda b, m: seen.append((b["rows"], m, torch.is_inference_mode_enabled())),
            device=torch.device("cpu"),
        )
        assert small_model.training
    finally:
        small_model.eval()
    assert [rows for rows, _, _ in seen] == [[0, 1], [2, 3], [4]]
    assert all(inference for _, _, inference in seen)
    for batch, (_, masks, _) in zip(batches, seen, strict=True):
        with torch.inference_mode():
            out = small_model(batch["image"], batch["input_ids"], batch["attention_mask"])
        assert torch.equal(masks.masks, binary_mask(out))
        assert torch.equal(masks.gated, binary_mask(out, gate_presence=True, threshold=0.5))
        torch.testing.assert_close(masks.presence, torch.sigmoid(out.presence_logit), rtol=0, atol=0)
        assert torch.equal(masks.pick(True), masks.gated) and torch.equal(masks.pick(False), masks.masks)
