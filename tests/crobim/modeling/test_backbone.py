"""Backbone wrapper: the Swin (channels-last) path is permuted to NCHW and checked against feature_info; ConvNeXt
stays NCHW (MODEL.md §3.3, §10 item 2)."""

from __future__ import annotations

import pytest
import torch

from crobim import build_model
from crobim.config import get_preset

REDUCED_SWIN = {
    "name": "swin_tiny_patch4_window7_224",
    "out_indices": (0, 1, 2, 3),
    "drop_path_rate": 0.1,
    "model_kwargs": {"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]},
}


@pytest.mark.parametrize("size", [(224, 224), (320, 256)])
def test_reduced_swin_is_permuted_to_nchw(size):
    config = get_preset("crobim-tiny").replace(backbone=REDUCED_SWIN, input={"size": size})
    model = build_model(config).eval()
    assert model.backbone.channels_last
    assert model.backbone.channels == (32, 64, 128, 256)
    h, w = size
    with torch.no_grad():
        img = model.encode_image(torch.randn(2, 3, h, w))
        out = model.decode(img, model.encode_text(**model.tokenize(["a pond"])))
    assert [tuple(m.shape) for m in img.maps] == [
        (2, 32, h // 4, w // 4),
        (2, 64, h // 8, w // 8),
        (2, 128, h // 16, w // 16),
        (2, 256, h // 32, w // 32),
    ]
    assert out.logits.shape == (2, 1, 1, h, w)


def test_reduced_swin_trains_every_parameter():
    config = get_preset("crobim-tiny").replace(backbone=REDUCED_SWIN, input={"size": (224, 224)})
    torch.manual_seed(0)
    model = build_model(config).train()
    out = model(torch.randn(2, 3, 224, 224), **model.tokenize(["a pond", "the road"]))
    out.logits.sum().backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing


def test_channel_check_uses_feature_info(monkeypatch):
    config = get_preset("crobim-tiny").replace(backbone=REDUCED_SWIN, input={"size": (224, 224)})
    model = build_model(config).eval()
    # Pretend the layout flag were wrong: the channel assertion must catch it instead of guessing from shapes.
    monkeypatch.setattr(model.backbone, "channels_last", False)
    with pytest.raises(AssertionError, match="feature_info"):
        model.encode_image(torch.randn(1, 3, 224, 224))


def test_convnext_is_nchw(tiny_model):
    assert not tiny_model.backbone.channels_last
    assert tiny_model.backbone.reductions == (4, 8, 16, 32)


def test_unknown_backbone_name_is_refused():
    config = get_preset("crobim-tiny").replace(backbone={"name": "not_a_model"})
    with pytest.raises(ValueError, match="not a timm model"):
        build_model(config)
