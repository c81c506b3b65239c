"""The model's fast paths keep its outputs: fused attention (SDPA) in the pixel-word attention, the channels-last
layout, ``CroBIM.compile_parts``, and a ``decode`` without host syncs (benchmarks/fast_paths.py measures them)."""

from __future__ import annotations

import pytest
import torch

from crobim import build_model
from crobim.config import get_preset
from crobim.modeling.lgfa import PixelWordAttention, word_attention

EXPRESSIONS = ["the red roof near the road", "a pond", "two large buildings left of the river"]


def _reference_word_attention(q, k, v, word_mask):
    """The former computation of PixelWordAttention: padding filled with -1e4, then softmax."""
    scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
    attn = scores.masked_fill(word_mask[:, None, :] == 0, -1e4).softmax(dim=-1)
    return attn @ v, attn


def test_word_attention_matches_the_former_softmax_with_and_without_weights():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(4, 35, 16, generator=gen),
        torch.randn(4, 6, 16, generator=gen),
        torch.randn(4, 6, 12, generator=gen),
    )
    # full, padded, one word, no word at all (never produced by tokenize: [CLS] is always there)
    word_mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0] * 6])
    expected, expected_attn = _reference_word_attention(q, k, v, word_mask)
    explicit, attn = word_attention(q, k, v, word_mask, need_weights=True)
    fused, none = word_attention(q, k, v, word_mask, need_weights=False)
    assert none is None and attn is not None
    torch.testing.assert_close(attn, expected_attn, atol=1e-6, rtol=0)
    torch.testing.assert_close(explicit, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=0)
    assert torch.isfinite(fused).all() and attn[1, :, 3:].abs().max() == 0
    # a row with no word attends uniformly, as the -1e4 fill gave, in both paths
    torch.testing.assert_close(attn[3], torch.full((35, 6), 1 / 6))
    torch.testing.assert_close(fused[3], v[3].mean(dim=0).expand(35, -1), atol=1e-6, rtol=0)


def test_language_term_without_weights_is_the_same_term():
    """The in-backbone fusion (``need_weights=False``, SDPA) gives the term that LGFA's path (weights) gives."""
    torch.manual_seed(0)
    pwa = PixelWordAttention(vis_channels=12, text_dim=10, dim=8, out_channels=8, residual=False).eval()
    fmap, words = torch.randn(2, 12, 5, 7), torch.randn(2, 6, 10)
    word_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        query, gate_in = pwa.query(fmap), pwa.vis_gate_in(fmap)
        with_weights, attn = pwa.language_term(query, gate_in, words, word_mask)
        fused, none = pwa.language_term(query, gate_in, words, word_mask, need_weights=False)
    assert none is None and attn.shape == (2, 35, 6)
    torch.testing.assert_close(fused, with_weights, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "preset_overrides", [{}, {"lgfa": {"out_stride": 8}, "backbone": {"in_fusion": "pwam"}}]
)
def test_channels_last_gives_the_same_outputs(preset_overrides):
    config = get_preset("crobim-tiny").replace(input={"size": (64, 64)}, presence={"enabled": True})
    torch.manual_seed(0)
    model = build_model(config.replace(**preset_overrides)).eval()
    tokens = model.tokenize(EXPRESSIONS)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images, **tokens)
        model.to(memory_format=torch.channels_last)
        assert model.backbone.stage_norms is not None
        out = model(images.contiguous(memory_format=torch.channels_last), **tokens)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.presence_logit, expected.presence_logit, atol=1e-5, rtol=1e-5)


def test_decode_builds_its_pairs_without_reading_device_values(tiny_model):
    """B x Q decode equals decoding each pair (the pair rows come from expand, not from values read back), and a
    pair_index is checked on the host, where reading it costs no sync."""
    tokens = tiny_model.tokenize(EXPRESSIONS)
    images = torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        img, txt = tiny_model.encode_image(images), tiny_model.encode_text(**tokens)
        grid = tiny_model.decode(img, txt)
        pairs = tiny_model.decode(
            img, txt.index_select(torch.tensor([2, 0])), pair_index=torch.tensor([0, 1])
        )
    assert grid.aux.image_index.tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(pairs.logits[0], grid.logits[0, 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(pairs.logits[1], grid.logits[1, 0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pair_index values"):
        tiny_model.decode(img, txt, pair_index=torch.tensor([0, 2, 1]))


@pytest.mark.slow
def test_compiled_parts_give_the_same_outputs():
    """``compile_parts`` (inductor, on the CPU here) keeps the outputs and the parameter names."""
    config = get_preset("crobim-tiny").replace(input={"size": (64, 64)}, presence={"enabled": True})
    torch.manual_seed(0)
    model = build_model(config).eval()
    names = list(model.state_dict())
    tokens = model.tokenize(EXPRESSIONS[:2])
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = model.decode(model.encode_image(images), model.encode_text(**tokens))
        model.compile_parts()
        out = model.decode(model.encode_image(images), model.encode_text(**tokens))
    assert list(model.state_dict()) == names
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.presence_logit, expected.presence_logit, atol=1e-4, rtol=1e-4)
