"""Whole-model checkpoints: save/load round trip, corrupt and mismatched checkpoints, retired config keys, the
strict build-and-load (MODEL.md §8, §10 item 6)."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from crobim import build_model, load_model, save_model
from crobim.config import get_preset
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
    save_model(model, folder)
    return model, folder


def test_round_trip_gives_identical_outputs(saved, no_network):
    model, folder = saved
    assert {"config.json", "model.safetensors", "text_encoder_config.json", "tokenizer"} <= {
        p.name for p in folder.iterdir()
    }
    assert (folder / "tokenizer" / "tokenizer_config.json").is_file()
    loaded = load_model(folder).eval()
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
    with pytest.raises(CheckpointError, match=r"model.safetensors is truncated: its header describes"):
        load_model(bad)


def test_pickle_renamed_to_safetensors_is_named_by_load_model(saved, tmp_path):
    import pickle

    _, folder = saved
    bad = tmp_path / "pickled"
    bad.mkdir()
    for path in folder.iterdir():
        if path.is_file():
            (bad / path.name).write_bytes(path.read_bytes())
    (bad / "tokenizer").symlink_to(folder / "tokenizer")
    (bad / "model.safetensors").write_bytes(pickle.dumps({"weight": [0.0, 1.0]}))  # never loaded
    with pytest.raises(CheckpointError, match="is a PyTorch pickle file, not safetensors") as info:
        load_model(bad)
    assert "truncated" not in str(info.value)


def test_missing_file_gives_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(tmp_path)


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
        load_model(bad)


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
    assert load_model(old).config.optim.warmup_iters == 0


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
        load_model(bad)
    message = str(info.value)
    assert "mask_head.query_mlps.0.fc1.weight" in message and "leftover.weight" in message
    assert "1 missing keys" in message and "1 unexpected keys" in message


def test_build_and_load_is_strict(saved, tmp_path):
    """The one build-then-load step: identical outputs from the saved tensors, CheckpointError on a bad file."""
    from crobim.weights import WEIGHTS_NAME, build_and_load

    model, folder = saved
    loaded = build_and_load(model.config, folder / WEIGHTS_NAME).eval()
    images, tokens = torch.randn(1, 3, 128, 128), model.tokenize(["a pond"])
    with torch.no_grad():
        assert torch.equal(model(images, **tokens).logits, loaded(images, **tokens).logits)
    other = model.config.replace(presence={"enabled": False})
    with pytest.raises(CheckpointError, match="unexpected keys"):
        build_and_load(other, folder / WEIGHTS_NAME)


def test_demo_model_with_retired_presence_keys_loads(no_network):
    """assets/demo-model/config.json (and the config stored with its weights) still carry the retired
    presence.neg_ratio / presence.swap_negatives keys: they are dropped, and only they."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "assets" / "demo-model"
    assert "neg_ratio" in json.loads((folder / "config.json").read_text())["presence"]
    model = load_model(folder)
    assert not hasattr(model.config.presence, "neg_ratio")
    assert "neg_ratio" not in model.config.to_dict()["presence"]
    data = json.loads((folder / "config.json").read_text())
    data["presence"]["not_a_key"] = 1
    with pytest.raises(ValueError, match=r"presence\.not_a_key"):
        type(model.config).from_dict(data)


def _folder_parts(folder):
    from crobim.weights import text_encoder_config

    return {
        "text_config": text_encoder_config(json.loads((folder / "text_encoder_config.json").read_text())),
        "tokenizer_dir": folder / "tokenizer",
    }


def _header(path):
    from crobim.safetensors_header import read_safetensors_header

    with open(path, "rb") as fh:
        return read_safetensors_header(fh, source=str(path))


def test_expected_tensors_are_the_built_models_without_building_it(saved):
    """The meta-device build gives every name and shape of the real state dict and draws no random number."""
    from crobim.weights import expected_tensors

    model, folder = saved
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    expected = expected_tensors(model.config, **_folder_parts(folder))
    assert torch.equal(torch.rand(3), before)
    assert expected == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert expected == {k: shape for k, (_, shape) in _header(folder / "model.safetensors").tensors.items()}


def test_check_checkpoint_header_passes_a_good_folder_and_finds_what_load_model_would(saved, tmp_path):
    from crobim.weights import check_checkpoint_header

    model, folder = saved
    parts = _folder_parts(folder)
    check_checkpoint_header(model.config, _header(folder / "model.safetensors"), source=str(folder), **parts)
    edited = model.config.replace(mid={"depth": 3})
    with pytest.raises(
        CheckpointError, match=r"config.json does not match the config saved with the weights"
    ):
        check_checkpoint_header(edited, _header(folder / "model.safetensors"), source=str(folder), **parts)
    # Without a stored config (weights saved by other code), the tensors themselves are compared.
    tensors = load_file(str(folder / "model.safetensors"))
    stripped = tmp_path / "model.safetensors"
    save_file(tensors, str(stripped))
    with pytest.raises(
        CheckpointError, match=r"model.safetensors does not match the model: 32 missing keys \[.mid.layers.2."
    ):
        check_checkpoint_header(edited, _header(stripped), source=str(folder), **parts)


def test_a_missing_stage_a_module_prefix_and_a_shape_are_named(saved, tmp_path):
    from crobim.weights import check_checkpoint_header, compare_tensors

    model, folder = saved
    parts = _folder_parts(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    no_stage = {k: v for k, v in tensors.items() if not k.startswith("backbone.body.stages_3.")}
    save_file(no_stage, str(tmp_path / "a.safetensors"))
    with pytest.raises(CheckpointError) as info:
        check_checkpoint_header(model.config, _header(tmp_path / "a.safetensors"), source="ckpt", **parts)
    lost = len(tensors) - len(no_stage)
    message = str(info.value)
    assert (
        lost > 10
        and f"{lost} missing keys ['backbone.body.stages_3." in message
        and f"and {lost - 5} more" in message
    )
    assert "0 unexpected keys []" in message and "prefix" not in message

    prefixed = {f"module.{k}": v for k, v in tensors.items()}
    save_file(prefixed, str(tmp_path / "b.safetensors"))
    with pytest.raises(CheckpointError, match=r"Every checkpoint key carries the prefix 'module.'"):
        check_checkpoint_header(model.config, _header(tmp_path / "b.safetensors"), source="ckpt", **parts)

    key = "mask_head.query_mlps.0.fc1.weight"
    reshaped = dict(tensors) | {key: torch.zeros(3, 3)}
    save_file(reshaped, str(tmp_path / "c.safetensors"))
    with pytest.raises(CheckpointError, match=rf"1 shape mismatches \['{key}: checkpoint \(3, 3\) vs model"):
        check_checkpoint_header(model.config, _header(tmp_path / "c.safetensors"), source="ckpt", **parts)

    # One comparison serves both: the loaded state dict says the same as the header.
    with pytest.raises(CheckpointError, match=r"Every checkpoint key carries the prefix 'module.'"):
        compare_tensors(
            {k: v.shape for k, v in tensors.items()}, {k: v.shape for k, v in prefixed.items()}, source="x"
        )
