"""Verified backbone loads (issue 24, MODEL.md §8): real-format files with random values in timm's layout and the
original releases' layouts (Microsoft Swin-B 22k 384, Facebook ConvNeXt-B 22k), made from a randomly initialised
model's state dict by the inverse of timm's ``checkpoint_filter_fn``. The load tests use the real architectures
(building one takes about 2 s here); the error tests use the same key layouts at a tiny width (``TINY_*``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from crobim.errors import CheckpointError
from crobim.modeling.backbone import create_timm_features
from crobim.pretrained import PAPER_BACKBONE_TAGS, hub_backbone_name
from crobim.pretrained_layouts import ORIGINAL_LAYOUTS, detect_layout, family_filter

SWIN = "swin_base_patch4_window12_384"
CONVNEXT = "convnext_base"

#: Same key layout as Swin-B window 12 (depths 2/2/18/2, heads 4/8/16/32, window 12) at width 16 instead of 128.
TINY_SWIN = {"embed_dim": 16}
#: Same key layout as ConvNeXt-B (depths 3/3/27/3) at widths 8..64 instead of 128..1024.
TINY_CONVNEXT = {"dims": (8, 16, 32, 64)}
#: ImageNet-22k classifier width of both releases.
IN22K_CLASSES = 21841


def timm_state(name: str, num_classes: int = IN22K_CLASSES, **kwargs) -> dict[str, torch.Tensor]:
    """A randomly initialised full timm model's state dict (by default the 22k classifier), timm's layout."""
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def to_microsoft_swin(
    state: dict[str, torch.Tensor], *, window: int = 12, img: int = 384
) -> dict[str, torch.Tensor]:
    """timm -> the layout of ``swin_base_patch4_window12_384_22k.pth``: PatchMerging at the end of the previous stage,
    ``head.*``, and the ``relative_position_index`` / ``attn_mask`` buffers the original code saves."""
    out: dict[str, torch.Tensor] = {}
    tokens = window * window
    for key, value in state.items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[key.replace("head.fc.", "head.")] = value
        match = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$", key)
        if match is None:
            continue
        stage, block = int(match.group(1)), int(match.group(2))
        out[f"layers.{stage}.blocks.{block}.attn.relative_position_index"] = torch.randint(
            0, (2 * window - 1) ** 2, (tokens, tokens)
        )
        side = img // (4 * 2**stage)
        if block % 2 == 1 and side > window:  # shifted blocks; the last stage is one window at 384 (no mask)
            out[f"layers.{stage}.blocks.{block}.attn_mask"] = torch.zeros(
                (side // window) ** 2, tokens, tokens
            )
    return out


def to_facebook_convnext(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm -> the layout of ``convnext_base_22k_224.pth``: ``downsample_layers.*``, ``stages.N.M.*``, ``dwconv``,
    ``pwconv1/2``, a final ``norm`` and ``head``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.replace("stem.", "downsample_layers.0.")
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        key = key.replace("head.norm.", "norm.").replace("head.fc.", "head.")
        out[key] = value
    return out


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write ``state`` as safetensors (the format ``weights.backbone`` reads)."""
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def build(name: str, path: Path | None, *, size: int = 480, hub: bool = False, **model_kwargs):
    """``create_timm_features`` as ``crobim.modeling.build`` calls it for the paper presets."""
    pretrained = None
    if path is not None:
        pretrained = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
    elif hub:
        pretrained = {"pretrained": True}
    return create_timm_features(
        name,
        out_indices=(0, 1, 2, 3),
        img_size=(size, size),
        drop_path_rate=0.3,
        model_kwargs=model_kwargs,
        pretrained_kwargs=pretrained,
    )


def assert_loaded(body, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of the feature body equals the timm-layout source tensor it came from."""
    loaded = body.state_dict()
    for key, value in loaded.items():
        source = re.sub(r"^(stem|stages|layers)_(\d+)", r"\1.\2", key)
        assert torch.equal(value, state[source]), key
    assert len(loaded) > 90


@pytest.mark.parametrize("original", [False, True], ids=["timm", "original"])
@pytest.mark.parametrize(
    ("name", "inverse"),
    [(SWIN, to_microsoft_swin), (CONVNEXT, to_facebook_convnext)],
    ids=["swin-b", "convnext-b"],
)
def test_real_size_files_load_and_are_verified(tmp_path, name, inverse, original):
    state = timm_state(name, **({"img_size": 384} if name == SWIN else {}))
    written = inverse(state) if original else state
    assert (detect_layout(name, written) != "timm") == original
    body = build(name, save(written, tmp_path / "backbone.safetensors"))  # the preset's 480 px, drop path 0.3
    assert_loaded(body, state)


@pytest.mark.parametrize(
    ("name", "inverse", "tiny"),
    [(SWIN, to_microsoft_swin, TINY_SWIN), (CONVNEXT, to_facebook_convnext, TINY_CONVNEXT)],
)
def test_each_original_layout_maps_back_through_timms_filter(name, inverse, tiny):
    """One filter per source: timm's own checkpoint_filter_fn of the family inverts our fake of the release."""
    kwargs = {**tiny, **({"img_size": 384} if name == SWIN else {})}
    state = timm_state(name, **kwargs)
    with torch.device("meta"):
        reference = timm.create_model(name, num_classes=IN22K_CLASSES, **kwargs)
    original = inverse(state)
    assert ORIGINAL_LAYOUTS[family_filter(name).__module__.rsplit(".", 1)[-1]][1] in original
    mapped = family_filter(name)(original, reference)
    assert mapped.keys() == state.keys()
    assert all(torch.equal(mapped[k], state[k]) for k in state)


def test_truncated_file_is_named(tmp_path):
    path = save(timm_state(SWIN, 10, img_size=384, **TINY_SWIN), tmp_path / "swin.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated.*copy the file again|swin.safetensors.*truncated"):
        build(SWIN, path, **TINY_SWIN)


def test_pickled_checkpoint_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "swin_base_patch4_window12_384_22k.pth"
    torch.save({"model": {"norm.weight": torch.ones(2)}}, path)
    with pytest.raises(CheckpointError, match=r"not safetensors.*never unpickles"):
        build(SWIN, path, **TINY_SWIN)


@pytest.mark.parametrize(
    ("name", "inverse", "tiny", "prefix"),
    [
        (SWIN, lambda s: s, TINY_SWIN, "module."),
        (SWIN, to_microsoft_swin, TINY_SWIN, "model."),
        (CONVNEXT, lambda s: s, TINY_CONVNEXT, "backbone."),
        (CONVNEXT, to_facebook_convnext, TINY_CONVNEXT, "encoder."),
    ],
    ids=["swin-timm", "swin-microsoft", "convnext-timm", "convnext-facebook"],
)
def test_stray_prefix_is_named(tmp_path, name, inverse, tiny, prefix):
    state = inverse(timm_state(name, 10, **({"img_size": 384} if name == SWIN else {}), **tiny))
    path = save({prefix + k: v for k, v in state.items()}, tmp_path / "prefixed.safetensors")
    with pytest.raises(
        CheckpointError, match=rf"prefixed.safetensors.*prefix '{re.escape(prefix)}'.*strip it"
    ):
        build(name, path, **tiny)


def test_stray_prefix_is_named_for_a_family_without_a_filter(tmp_path):
    state = timm_state("resnet18")
    path = save({"module." + k: v for k, v in state.items()}, tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys.*unexpected keys.*prefix 'module\.'"):
        create_timm_features(
            "resnet18",
            out_indices=(1, 2, 3, 4),
            img_size=(64, 64),
            drop_path_rate=0.0,
            pretrained_kwargs={"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}},
        )


@pytest.mark.parametrize(
    ("name", "inverse", "tiny", "stage"),
    [
        (SWIN, lambda s: s, TINY_SWIN, r"^layers\.3\."),
        (SWIN, to_microsoft_swin, TINY_SWIN, r"^layers\.3\."),
        (CONVNEXT, lambda s: s, TINY_CONVNEXT, r"^stages\.3\."),
        (CONVNEXT, to_facebook_convnext, TINY_CONVNEXT, r"^(stages|downsample_layers)\.3\."),
    ],
    ids=["swin-timm", "swin-microsoft", "convnext-timm", "convnext-facebook"],
)
def test_missing_stage_is_named(tmp_path, name, inverse, tiny, stage):
    state = inverse(timm_state(name, 10, **({"img_size": 384} if name == SWIN else {}), **tiny))
    path = save(
        {k: v for k, v in state.items() if not re.match(stage, k)}, tmp_path / "no_stage3.safetensors"
    )
    stage_key = "layers.3." if name == SWIN else "stages.3."
    with pytest.raises(CheckpointError, match=rf"\d+ missing keys \['{re.escape(stage_key)}.*and \d+ more"):
        build(name, path, **tiny)


def test_wrong_width_is_named_with_shapes(tmp_path):
    path = save(timm_state(CONVNEXT, 10, dims=(16, 32, 64, 128)), tmp_path / "wide.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches \[.*'stages.0.blocks.0.conv_dw.bias: file \(16,\) vs model \(8,\)'",
    ):
        build(CONVNEXT, path, **TINY_CONVNEXT)


def test_unexpected_keys_beyond_the_classifier_are_errors(tmp_path):
    state = timm_state(CONVNEXT, **TINY_CONVNEXT)
    state["head.fc.weight"] = torch.zeros(10, 64)  # another classifier width is fine
    state["head.fc.bias"] = torch.zeros(10)
    del state["head.norm.weight"], state["head.norm.bias"]  # the final norm features_only drops may be absent
    body = build(CONVNEXT, save(state, tmp_path / "ok.safetensors"), **TINY_CONVNEXT)
    assert_loaded(body, state)
    state["projector.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \['projector.weight'\]"):
        build(CONVNEXT, save(state, tmp_path / "extra.safetensors"), **TINY_CONVNEXT)


def test_hub_asks_timm_for_the_paper_familys_tags(monkeypatch):
    assert PAPER_BACKBONE_TAGS == {SWIN: f"{SWIN}.ms_in22k", CONVNEXT: f"{CONVNEXT}.fb_in22k"}
    urls = {name: timm.models.get_pretrained_cfg(tag).url for name, tag in PAPER_BACKBONE_TAGS.items()}
    assert urls[SWIN].endswith("/v1.0.0/swin_base_patch4_window12_384_22k.pth")
    assert urls[CONVNEXT].endswith("/convnext_base_22k_224.pth")
    assert hub_backbone_name("resnet18") == "resnet18"
    asked = []
    real_create = timm.create_model

    def fake_create(model_name, pretrained=False, **kwargs):
        if pretrained:  # stands in for the download: a random full model of the tag's architecture
            asked.append(model_name)
            return real_create(model_name.split(".")[0], num_classes=IN22K_CLASSES, **kwargs)
        return real_create(model_name, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake_create)
    for name, tiny in ((SWIN, TINY_SWIN), (CONVNEXT, TINY_CONVNEXT)):
        torch.manual_seed(0)
        build(name, None, size=384, hub=True, **tiny)
        after_hub = torch.rand(4)
        torch.manual_seed(0)
        build(name, None, size=384, **tiny)
        assert torch.equal(after_hub, torch.rand(4)), (
            "the hub load must not change the seeded draws that follow"
        )
    assert asked == [PAPER_BACKBONE_TAGS[SWIN], PAPER_BACKBONE_TAGS[CONVNEXT]]
