"""The model's readings of the paper family (issue 24, docs/model.md "Readings and their sources"): the A1 stage
fusion adds only LAVT's gated language term, LAVT's PWAM parts behind `lgfa.pwam_*`, and `mid.order`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crobim import build_model
from crobim.config import get_preset
from crobim.modeling.backbone import StageLanguageFusion
from crobim.modeling.lgfa import PixelWordAttention
from crobim.modeling.mid import MID

WORD_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def _lavt_pwam(
    pwam: PixelWordAttention, x: torch.Tensor, words: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """PWAM output m as yz93/LAVT-RIS lib/backbone.py computes it (output projection on the HW attention outputs,
    then the optional InstanceNorm, product with G, optional project_mm), written out op by op."""
    n, _, h, w = x.shape
    q = pwam.query(x).flatten(2).transpose(1, 2)  # (N, d, H, W) -> (N, HW, d)
    scores = q @ pwam.key(words).transpose(1, 2) / pwam.dim**0.5
    attn = scores.masked_fill(mask[:, None, :] == 0, -1e4).softmax(dim=-1)
    out = (attn @ pwam.value(words)).transpose(1, 2).reshape(n, pwam.dim, h, w)  # (N, HW, d) -> (N, d, H, W)
    out = pwam.attn_out(out)
    if isinstance(pwam.attn_out_norm, torch.nn.InstanceNorm2d):
        out = F.instance_norm(out)
    mm = pwam.vis_gate_in(x) * out
    if isinstance(pwam.project_mm, torch.nn.Sequential):
        mm = F.gelu(pwam.project_mm[0](mm))
    return pwam.fused_proj(mm)


@pytest.mark.parametrize("lavt_parts", [False, True])
def test_pwam_stage_adds_only_the_gated_language_term(lavt_parts):
    """A1: stream + gate(m) * m, with m the PWAM output; no re-projection of the (pretrained) stream."""
    torch.manual_seed(0)
    stage = StageLanguageFusion(channels=16, text_dim=8, out_norm=lavt_parts, project_mm=lavt_parts).eval()
    assert stage.pwam.vis_proj is None
    assert not any(k.startswith("pwam.vis_proj") for k in stage.state_dict())
    x, words = torch.randn(2, 16, 5, 6), torch.randn(2, 4, 8)
    with torch.no_grad():
        m = _lavt_pwam(stage.pwam, x, words, WORD_MASK)
        torch.testing.assert_close(
            stage(x, words, WORD_MASK) - x, stage.pwam.gate(m) * m, atol=1e-5, rtol=1e-5
        )
        last = stage.pwam.gate[2]
        last.weight.zero_()
        last.bias.zero_()
        assert torch.equal(stage(x, words, WORD_MASK), x)  # gate 0: the stage is the identity on the stream


def test_pwam_backbone_with_closed_gates_is_the_plain_backbone():
    """With every stage gate at zero, the pwam backbone returns the plain backbone's maps bit for bit."""
    config = get_preset("crobim-tiny").replace(input={"size": (64, 64)}, backbone={"in_fusion": "pwam"})
    torch.manual_seed(0)
    model = build_model(config).eval()
    tokens = model.tokenize(["a pond", "the red roof"])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        words = model.text(tokens["input_ids"], tokens["attention_mask"])  # (B, L, Dt)
        for stage in model.backbone.stage_fusions:
            stage.pwam.gate[2].weight.zero_()
            stage.pwam.gate[2].bias.zero_()
        fused = model.backbone(images, words, tokens["attention_mask"])
        model.backbone.stage_fusions = None
        plain = model.backbone(images)
    assert all(torch.equal(a, b) for a, b in zip(fused, plain, strict=True))


@pytest.mark.parametrize(
    ("out_norm", "project_mm"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_pixel_word_attention_matches_lavt_pwam(out_norm, project_mm):
    """LGFA's F' = vis_proj(x) + gate(m) * m with m = LAVT's PWAM; the output projection applied to the L values
    (our shortcut) equals LAVT's projection of the HW outputs, also before the InstanceNorm."""
    torch.manual_seed(0)
    pwam = PixelWordAttention(
        vis_channels=12, text_dim=8, dim=16, out_channels=16, out_norm=out_norm, project_mm=project_mm
    ).eval()
    x, words = torch.randn(2, 12, 5, 6), torch.randn(2, 4, 8)
    with torch.no_grad():
        fused, attn = pwam.fuse(pwam.prepare(x), words, WORD_MASK)
        m = _lavt_pwam(pwam, x, words, WORD_MASK)
        torch.testing.assert_close(fused, pwam.vis_proj(x) + pwam.gate(m) * m, atol=1e-5, rtol=1e-5)
    assert attn.shape == (2, 30, 4) and torch.all(attn[0, :, 3] < 1e-6)
    keys = set(pwam.state_dict())
    assert any(k.startswith("project_mm.") for k in keys) == project_mm
    assert not any(
        k.startswith("attn_out_norm.") for k in keys
    )  # no affine parameters, as LAVT's InstanceNorm1d


def test_pwam_flags_off_keep_the_state_dict_keys():
    """Configs without the new keys (the demo model's) build the same tensors as before the flags existed."""
    config = get_preset("crobim-tiny")
    on = config.replace(lgfa={"pwam_out_norm": True, "pwam_project_mm": True})
    with torch.device("meta"):
        keys_off = set(build_model(config).state_dict())
        keys_on = set(build_model(on).state_dict())
    assert not any("project_mm" in k or "attn_out_norm" in k for k in keys_off)
    assert keys_on - keys_off == {
        f"lgfa.scales.{i}.project_mm.0.{p}" for i in range(4) for p in ("weight", "bias")
    }


def _mid(order: str, depth: int = 2) -> MID:
    torch.manual_seed(0)
    return MID(
        dim=16,
        text_dim=8,
        depth=depth,
        num_heads=2,
        text_ffn_ratio=2,
        pixel_ffn=True,
        pixel_ffn_ratio=2,
        order=order,  # type: ignore[arg-type]
    ).eval()


def test_mid_order_runs_the_steps_in_the_asked_order():
    visual, text, mask = torch.randn(2, 16, 4, 5), torch.randn(2, 6, 8), torch.ones(2, 6)
    calls: dict[str, list[str]] = {}
    for order in ("text_first", "pixels_first"):
        mid = _mid(order, depth=1)
        seen: list[str] = []
        layer = mid.layers[0]
        layer.text_to_pixel_attn.register_forward_hook(lambda *_, s=seen: s.append("text attends to pixels"))
        layer.pixel_to_text_attn.register_forward_hook(lambda *_, s=seen: s.append("pixels attend to text"))
        with torch.no_grad():
            mid(visual, text, mask)
        calls[order] = seen
    assert calls["text_first"] == ["text attends to pixels", "pixels attend to text"]
    assert calls["pixels_first"] == ["pixels attend to text", "text attends to pixels"]


def test_mid_order_keeps_the_parameter_names_and_changes_the_output():
    """Both orders have the same parameters (so checkpoints load either way); the order changes the result."""
    text_first, pixels_first = _mid("text_first"), _mid("pixels_first")
    assert text_first.state_dict().keys() == pixels_first.state_dict().keys()
    for name in ("text_to_pixel_attn", "pixel_to_text_attn"):
        assert any(k.startswith(f"layers.0.{name}.") for k in text_first.state_dict())
    pixels_first.load_state_dict(text_first.state_dict())
    visual, text, mask = torch.randn(2, 16, 4, 5), torch.randn(2, 6, 8), torch.ones(2, 6)
    with torch.no_grad():
        z_a, q_a = text_first(visual, text, mask)
        z_b, q_b = pixels_first(visual, text, mask)
    assert z_a.shape == z_b.shape and q_a.shape == q_b.shape
    assert not torch.allclose(z_a, z_b) and not torch.allclose(q_a, q_b)
