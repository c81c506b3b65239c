"""CroBIMConfig: presets, JSON/YAML round trip, validation messages, light import (MODEL.md §2, §3.9)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crobim.config import CroBIMConfig, get_preset, list_presets

#: Where each ambiguity flag lives in the config (MODEL.md §3.9).
FLAG_KEYS = {
    "A1": ("backbone", "in_fusion"),
    "A2": ("text", "two_pass"),
    "A3": ("capm", "pool_grid"),
    "A4": ("capm", "num_prompts"),
    "A5": ("capm", "prompt_position"),
    "A6": ("lgfa", "out_stride"),
    "A7": ("lgfa", "compensation"),
    "A8": ("mid", "depth"),
    "A9": ("head", "channels"),
    "A10": ("text", "max_len"),
}


def test_presets_exist():
    assert {"crobim-swin-b", "crobim-convnext-b", "crobim-tiny", "crobim-minilm", "crobim-region"} <= set(
        list_presets()
    )
    with pytest.raises(KeyError, match="available presets"):
        get_preset("crobim-huge")


@pytest.mark.parametrize(
    "name", ["crobim-swin-b", "crobim-convnext-b", "crobim-tiny", "crobim-minilm", "crobim-region"]
)
def test_round_trip_json_and_yaml(name, tmp_path):
    config = get_preset(name)
    assert CroBIMConfig.from_json(config.to_json()) == config
    assert CroBIMConfig.from_yaml(config.to_yaml()) == config
    config.to_yaml(tmp_path / "c.yaml")
    config.to_json(tmp_path / "c.json")
    assert CroBIMConfig.from_yaml(tmp_path / "c.yaml") == config
    assert CroBIMConfig.from_json(tmp_path / "c.json") == config


def test_region_preset_is_the_swin_setting_at_stride_8_with_presence():
    expected = get_preset("crobim-swin-b").replace(
        lgfa={"out_stride": 8}, presence={"enabled": True}, name="crobim-region"
    )
    assert get_preset("crobim-region") == expected


def test_defaults_are_the_paper_setting():
    config = get_preset("crobim-swin-b")
    assert config.input.size == (480, 480)
    assert config.backbone.name == "swin_base_patch4_window12_384" and config.backbone.drop_path_rate == 0.3
    assert (config.text.hidden_size, config.text.num_layers, config.text.max_len) == (768, 12, 20)
    assert (config.capm.pool_grid, config.capm.num_prompts, config.lgfa.dim, config.mid.depth) == (
        4,
        4,
        256,
        3,
    )
    assert not config.presence.enabled
    for section, key in FLAG_KEYS.values():
        assert hasattr(getattr(config, section), key)


@pytest.mark.parametrize("name", ["crobim-swin-b", "crobim-convnext-b", "crobim-region"])
def test_paper_presets_follow_the_lavt_rmsin_readings(name):
    """The paper presets set the family's readings explicitly (docs/model.md): the LAVT/RMSIN harness (2-channel
    head, 0.9 x CE with class weights 0.9 / 1.1 + 0.1 x Dice summed), LAVT's PWAM parts, MID as drawn."""
    config = get_preset(name)
    assert config.head.channels == 2
    assert (config.loss.kind, config.loss.ce_weight, config.loss.dice_weight) == ("ce_dice_sum", 0.9, 0.1)
    assert config.loss.class_weights == (0.9, 1.1)
    assert config.lgfa.pwam_out_norm and config.lgfa.pwam_project_mm
    assert config.mid.order == "text_first"


@pytest.mark.parametrize("name", ["crobim-tiny", "crobim-minilm"])
def test_new_reading_flags_default_to_the_old_network(name):
    """Configs and checkpoints written before the flags existed keep their network: the dataclass defaults (and the
    small presets) are the 1-channel head, no PWAM InstanceNorm / project_mm, text step first."""
    config = get_preset(name)
    assert config.head.channels == 1
    assert not config.lgfa.pwam_out_norm and not config.lgfa.pwam_project_mm
    assert config.mid.order == "text_first"
    data = config.to_dict()
    for section, key in (("lgfa", "pwam_out_norm"), ("lgfa", "pwam_project_mm"), ("mid", "order")):
        del data[section][key]
    assert CroBIMConfig.from_dict(data) == config


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"lgfa": {"compensation": "magic"}},
            r"lgfa.compensation = 'magic' .*\['gated', 'residual', 'se', 'complementary'\]",
        ),
        ({"lgfa": {"out_stride": 16}}, r"lgfa.out_stride = 16 .*\[4, 8\]"),
        ({"head": {"channels": 3}}, r"head.channels = 3 .*\[1, 2\]"),
        ({"mid": {"order": "l2v"}}, r"mid.order = 'l2v' .*\['text_first', 'pixels_first'\]"),
        ({"lgfa": {"pwam_project_mm": 1}}, r"lgfa.pwam_project_mm = 1 .*boolean"),
        ({"backbone": {"in_fusion": "early"}}, r"backbone.in_fusion = 'early' .*\['plain', 'pwam'\]"),
        ({"input": {"size": [480, 500]}}, r"input.size = \(480, 500\) .*multiples of 32"),
        ({"text": {"max_len": "20"}}, r"text.max_len = '20' .*an integer"),
        ({"capm": {"num_prompts": 0}}, r"capm.num_prompts = 0 .*positive"),
        ({"text": {"two_pass": "yes"}}, r"text.two_pass = 'yes' .*boolean"),
        ({"capm": {"colour": 1}}, r"unknown config key\(s\) \['capm.colour'\]"),
        ({"presence": {"threshold": 1.5}}, r"presence.threshold = 1.5"),
    ],
)
def test_validation_names_key_value_and_allowed_set(sections, message):
    with pytest.raises(ValueError, match=message):
        get_preset("crobim-tiny").replace(**sections)


def test_size_accepts_an_int_and_non_square():
    assert get_preset("crobim-tiny").replace(input={"size": 512}).input.size == (512, 512)
    assert get_preset("crobim-tiny").replace(input={"size": [512, 384]}).input.size == (512, 384)


def test_import_is_light():
    code = (
        "import sys, crobim;"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'import crobim loaded torch';"
        "import crobim.inference, crobim.transforms, crobim.losses, crobim.optim, crobim.weights, crobim.modeling;"
        "heavy = [m for m in ('ray', 'rasterio', 'osgeo', 'geopandas', 'zarr', 'pyarrow') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_retired_presence_keys_are_dropped_on_load_and_nothing_else():
    """presence.neg_ratio / presence.swap_negatives were never read: configs that still carry them load (they are
    dropped and not written again); any other unknown key stays an error."""
    data = get_preset("crobim-tiny").to_dict()
    assert "neg_ratio" not in data["presence"] and "swap_negatives" not in data["presence"]
    old = data | {"presence": data["presence"] | {"neg_ratio": 0.25, "swap_negatives": False}}
    assert CroBIMConfig.from_dict(old) == get_preset("crobim-tiny")
    assert old["presence"]["neg_ratio"] == 0.25  # the caller's dict is left alone
    with pytest.raises(ValueError, match=r"presence\.neg_rate"):
        CroBIMConfig.from_dict(data | {"presence": data["presence"] | {"neg_rate": 0.25}})
