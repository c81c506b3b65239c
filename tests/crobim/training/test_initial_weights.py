"""The paper configs refuse to train from random initialisation unless asked (weights.allow_random_init, issue 24)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crobim.config import CroBIMConfig, get_preset
from crobim.training.config import TrainConfig, build_model_config, check_initial_weights, load_train_config

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
PAPER_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name.startswith(("swin-b", "convnext-b")))
OTHER_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p not in PAPER_CONFIGS)
STAGED = {
    "swin-b": "/weights/swin_base_patch4_window12_384.ms_in22k.safetensors",
    "convnext-b": "/weights/convnext_base.fb_in22k.safetensors",
}


def test_there_are_six_paper_configs():
    assert len(PAPER_CONFIGS) == 6 and OTHER_CONFIGS


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.name)
def test_a_paper_config_without_weights_refuses_with_the_staging_command(path):
    with pytest.raises(ValueError) as info:
        load_train_config(path)
    message = str(info.value)
    family = "swin-b" if path.name.startswith("swin-b") else "convnext-b"
    assert "random initialisation" in message
    assert "weights.backbone and text.name_or_path are empty" in message
    assert "python jobs/fetch_weights.py --out /weights" in message
    assert f"--set model_overrides.weights.backbone={STAGED[family]}" in message
    assert "--set model_overrides.text.name_or_path=/weights/bert-base-uncased" in message
    assert "--set weights.allow_random_init=true" in message
    other = "convnext" if family == "swin-b" else "swin_base"
    assert other not in message  # only the run's own backbone


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.name)
def test_a_paper_config_with_staged_weights_or_the_opt_in_trains(path):
    family = "swin-b" if path.name.startswith("swin-b") else "convnext-b"
    staged = load_train_config(
        path,
        [
            ("model_overrides.weights.backbone", STAGED[family]),
            ("model_overrides.text.name_or_path", "/weights/bert-base-uncased"),
        ],
    )
    model_cfg = build_model_config(staged)
    assert model_cfg.weights.backbone == STAGED[family] and not model_cfg.weights.allow_random_init
    for key in ("weights.allow_random_init", "model_overrides.weights.allow_random_init"):
        cfg = load_train_config(path, [(key, True)])
        assert build_model_config(cfg).weights.allow_random_init is True


def test_only_the_empty_key_is_named():
    path = CONFIGS / "convnext-b-rrsisd.yaml"
    with pytest.raises(ValueError, match=r"text.name_or_path is empty") as info:
        load_train_config(path, [("model_overrides.weights.backbone", STAGED["convnext-b"])])
    assert "weights.backbone and" not in str(info.value)
    with pytest.raises(ValueError, match=r"weights.backbone is empty"):
        load_train_config(path, [("model_overrides.text.name_or_path", "/weights/bert-base-uncased")])


def test_a_run_from_a_saved_checkpoint_is_not_refused(tmp_path):
    cfg = load_train_config(
        CONFIGS / "swin-b-rrsisd.yaml", [("weights.allow_random_init", True), ("init_weights", str(tmp_path))]
    )
    model_cfg = build_model_config(cfg).replace(weights={"allow_random_init": False})
    check_initial_weights(cfg, model_cfg)  # init_weights: the weights come from the checkpoint
    with pytest.raises(ValueError, match="random initialisation"):
        check_initial_weights(TrainConfig(model="crobim-swin-b"), model_cfg)


@pytest.mark.parametrize("path", OTHER_CONFIGS, ids=lambda p: p.name)
def test_synrs_and_tiny_configs_are_unaffected(path):
    cfg = load_train_config(path)
    model_cfg = build_model_config(cfg)
    assert model_cfg.weights.allow_random_init is True
    assert model_cfg.weights.backbone is None  # still random init, as before


def test_presets_set_the_paper_reading_and_the_default_keeps_old_behaviour():
    for name in ("crobim-swin-b", "crobim-convnext-b", "crobim-region"):
        assert get_preset(name).weights.allow_random_init is False, name
    for name in ("crobim-tiny", "crobim-minilm"):
        assert get_preset(name).weights.allow_random_init is True, name
    # A checkpoint's config.json from before the key (the demo model) keeps today's behaviour.
    raw = json.loads((REPO / "assets" / "demo-model" / "config.json").read_text())
    assert "allow_random_init" not in raw["weights"]
    assert CroBIMConfig.from_dict(raw).weights.allow_random_init is True
    with pytest.raises(ValueError, match="weights.allow_random_init"):
        get_preset("crobim-tiny").replace(weights={"allow_random_init": "no"})


def test_loading_a_checkpoint_never_checks_it(tmp_path):
    """``load_model`` drops ``weights.backbone``; a paper-style ``allow_random_init: false`` must still load."""
    import torch

    from crobim import build_model, load_model, save_model

    config = get_preset("crobim-tiny").replace(input={"size": (64, 64)}, weights={"allow_random_init": False})
    torch.manual_seed(0)
    save_model(build_model(config), tmp_path / "ckpt")
    model = load_model(tmp_path / "ckpt")
    assert model.config.weights.allow_random_init is False and model.config.weights.backbone is None
