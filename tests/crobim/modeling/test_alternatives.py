"""Every ambiguity flag A1-A10 (and our additions) builds and runs one training step in which every trainable
parameter gets a finite, non-zero gradient and sits in exactly one optimizer group (MODEL.md §3.9, §6, §10 items 4
and 8)."""

from __future__ import annotations

import pytest
import torch

from crobim import build_model
from crobim.config import get_preset
from crobim.losses import CroBIMLoss
from crobim.optim import build_optimizer, check_group_coverage

SIZE = (128, 128)

ALTERNATIVES = {
    "default+presence": {"presence": {"enabled": True}},
    "default-no-presence": {"presence": {"enabled": False}},
    "A1-pwam": {"backbone": {"in_fusion": "pwam"}},
    "A2-one-pass": {"text": {"two_pass": False}},
    "A3-grid1": {"capm": {"pool_grid": 1}},
    "A3-grid8": {"capm": {"pool_grid": 8, "layers": 2}},
    "A4-prompts16": {"capm": {"num_prompts": 16}},
    "A5-after-sep": {"capm": {"prompt_position": "after_sep"}},
    "A6-stride8": {"lgfa": {"out_stride": 8}},
    "A7-residual": {"lgfa": {"compensation": "residual"}},
    "A7-se": {"lgfa": {"compensation": "se"}},
    "A7-complementary": {"lgfa": {"compensation": "complementary"}},
    "A8-depth1": {"mid": {"depth": 1, "pixel_ffn": False}},
    "A8-depth4": {"mid": {"depth": 4}},
    "A9-two-channels": {"head": {"channels": 2}, "loss": {"kind": "ce_dice_mean"}},
    "A9-tokens-product": {"head": {"channels": 2, "product": "tokens"}, "loss": {"kind": "ce"}},
    "A10-max-len-50": {"text": {"max_len": 50}},
    "bert-layers-0-9": {"text": {"train_layers": "0-9"}},
    "paper-readings": {
        "head": {"channels": 2},
        "loss": {"kind": "ce_dice_sum", "class_weights": (0.9, 1.1)},
        "lgfa": {"pwam_out_norm": True, "pwam_project_mm": True},
        "mid": {"order": "text_first"},
    },
    "A1-pwam-lavt-parts": {
        "backbone": {"in_fusion": "pwam"},
        "lgfa": {"pwam_out_norm": True, "pwam_project_mm": True},
    },
    "mid-pixels-first": {"mid": {"order": "pixels_first"}},
}


def _one_step(overrides: dict) -> None:
    sections = {"input": {"size": SIZE}, "presence": {"enabled": True}}
    for key, value in overrides.items():
        sections[key] = {**sections.get(key, {}), **value}
    config = get_preset("crobim-tiny").replace(**sections)
    torch.manual_seed(0)
    model = build_model(config).train()
    optimizer = build_optimizer(model, config)
    check_group_coverage(model, optimizer)
    tokens = model.tokenize(["the small red roof left of the road", "a pond"])
    images = torch.randn(2, 3, *SIZE)
    masks = torch.zeros(2, *SIZE)
    masks[0, 20:60, 30:90] = 1.0  # sample 0 has a target, sample 1 has none
    out = model(images, **tokens)
    assert out.logits.shape == (2, config.head.channels, *SIZE)
    loss = CroBIMLoss(config)(out, masks, has_target=torch.tensor([True, False]))
    assert torch.isfinite(loss.total)
    loss.total.backward()
    bad = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any())
    ]
    assert not bad, f"parameters without a finite non-zero gradient: {bad}"
    frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen_with_grad
    before = model.mask_head.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    optimizer.step()
    after = model.mask_head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", list(ALTERNATIVES))
def test_alternative_trains_one_step(name):
    _one_step(ALTERNATIVES[name])


def test_bert_layers_0_9_freezes_embeddings():
    config = get_preset("crobim-tiny").replace(text={"train_layers": "0-9", "num_layers": 12, "num_heads": 2})
    model = build_model(config)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "text.encoder.embeddings.word_embeddings.weight" in frozen
    assert any(n.startswith("text.encoder.encoder.layer.11.") for n in frozen)
    assert not any(n.startswith("text.encoder.encoder.layer.9.") for n in frozen)
    assert all(n.startswith("text.encoder.") for n in frozen)
