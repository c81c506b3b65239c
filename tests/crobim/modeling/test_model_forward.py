"""CroBIM split forward: shapes at several input sizes, forward == decode(encode_image, encode_text), B x Q decode,
1 image x Q queries == Q stacked copies, padding invariance (MODEL.md §4.1, §4.3, §10 items 1 and 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crobim import build_model
from crobim.config import get_preset
from crobim.errors import ImageFeaturesUnavailableError
from crobim.inference import binary_mask, foreground_probability

EXPRESSIONS = ["the red roof near the road", "a pond", "two large buildings left of the river", "the vehicle"]


def _images(batch: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=gen)


@pytest.mark.parametrize("size", [(320, 320), (480, 480), (512, 512), (512, 384)])
def test_shapes_at_input_sizes(size):
    config = get_preset("crobim-tiny").replace(input={"size": size}, presence={"enabled": True})
    torch.manual_seed(0)
    model = build_model(config).eval()
    tokens = model.tokenize(EXPRESSIONS[:2])
    images = _images(2, size)
    with torch.no_grad():
        img = model.encode_image(images)
        out = model(images, **tokens)
    h, w = size
    assert [tuple(m.shape) for m in img.maps] == [
        (2, c, h // r, w // r) for c, r in zip((24, 32, 48, 64), (4, 8, 16, 32), strict=True)
    ]
    assert out.logits.shape == (2, 1, h, w)
    assert out.presence_logit is not None and out.presence_logit.shape == (2,)
    assert torch.isfinite(out.logits).all()
    # preprocess resizes any uint8 image to the configured size
    pixels = model.preprocess([np.zeros((100, 140, 3), np.uint8), np.full((h, w, 3), 255, np.uint8)])
    assert pixels.shape == (2, 3, h, w) and pixels.dtype == torch.float32


def test_rejects_sizes_not_multiple_of_32(tiny_model):
    with pytest.raises(ValueError, match="input.size"):
        get_preset("crobim-tiny").replace(input={"size": (500, 500)})
    with pytest.raises(ValueError, match="not a multiple of 32"):
        tiny_model.encode_image(torch.zeros(1, 3, 330, 320))


def test_forward_equals_decode_of_encoders(tiny_model):
    tokens = tiny_model.tokenize(EXPRESSIONS[:3])
    images = _images(3, (320, 320), seed=1)
    with torch.no_grad():
        full = tiny_model(images, **tokens)
        img = tiny_model.encode_image(images)
        txt = tiny_model.encode_text(**tokens)
        split = tiny_model.decode(img, txt, pair_index=torch.arange(3))
    assert torch.equal(full.logits, split.logits)
    assert torch.equal(full.presence_logit, split.presence_logit)


def test_one_image_many_queries_matches_stacked_copies(tiny_model):
    tokens = tiny_model.tokenize(EXPRESSIONS)
    image = _images(1, (320, 320), seed=2)
    with torch.no_grad():
        txt = tiny_model.encode_text(**tokens)
        broadcast = tiny_model.decode(tiny_model.encode_image(image), txt)  # (1, Q, C, H, W)
        stacked_img = tiny_model.encode_image(image.expand(4, -1, -1, -1).contiguous())
        stacked = tiny_model.decode(stacked_img, txt, pair_index=torch.arange(4))  # (Q, C, H, W)
        one_row = tiny_model.decode(
            tiny_model.encode_image(image), txt, pair_index=torch.zeros(4, dtype=torch.long)
        )
    assert broadcast.logits.shape == (1, 4, 1, 320, 320)
    assert broadcast.presence_logit.shape == (1, 4)
    torch.testing.assert_close(broadcast.logits[0], stacked.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(broadcast.presence_logit[0], stacked.presence_logit, atol=1e-5, rtol=0)
    torch.testing.assert_close(one_row.logits, stacked.logits, atol=1e-5, rtol=0)
    # different queries really give different masks
    assert not torch.allclose(stacked.logits[0], stacked.logits[1])


def test_many_images_by_many_queries(tiny_model):
    tokens = tiny_model.tokenize(EXPRESSIONS[:3])
    images = _images(2, (320, 320), seed=3)
    with torch.no_grad():
        img = tiny_model.encode_image(images)
        txt = tiny_model.encode_text(**tokens)
        grid = tiny_model.decode(img, txt)
        pair = tiny_model.decode(img, txt.index_select(torch.tensor([2])), pair_index=torch.tensor([1]))
    assert grid.logits.shape == (2, 3, 1, 320, 320)
    assert grid.presence_logit.shape == (2, 3)
    torch.testing.assert_close(grid.logits[1, 2], pair.logits[0], atol=1e-5, rtol=0)
    assert grid.aux.word_attention[0].shape == (6, 80 * 80, tokens["input_ids"].shape[1])
    with pytest.raises(ValueError, match="pair_index"):
        tiny_model.decode(img, txt, pair_index=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        tiny_model.decode(img, txt, pair_index=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("pairs_per_pass", [1, 4, 6, 100])
def test_decoding_in_passes_matches_one_pass(tiny_model, pairs_per_pass):
    tokens = tiny_model.tokenize(EXPRESSIONS[:3])
    images = _images(2, (320, 320), seed=5)
    with torch.no_grad():
        img = tiny_model.encode_image(images)
        txt = tiny_model.encode_text(**tokens)
        whole = tiny_model.decode(img, txt)  # 6 pairs in one pass
        passes = tiny_model.decode(img, txt, pairs_per_pass=pairs_per_pass)
        paired = tiny_model.decode(
            img, txt.index_select(torch.tensor([0, 2])), pair_index=torch.tensor([1, 0])
        )
        paired_passes = tiny_model.decode(
            img, txt.index_select(torch.tensor([0, 2])), pair_index=torch.tensor([1, 0]), pairs_per_pass=1
        )
    assert passes.logits.shape == whole.logits.shape == (2, 3, 1, 320, 320)
    torch.testing.assert_close(passes.logits, whole.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(passes.presence_logit, whole.presence_logit, atol=1e-5, rtol=0)
    for a, b in zip(passes.aux.word_attention, whole.aux.word_attention, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # each pass pairs the right image with the right query
    torch.testing.assert_close(paired_passes.logits, paired.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(paired_passes.logits[0], whole.logits[1, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(paired_passes.logits[1], whole.logits[0, 2], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pairs_per_pass"):
        tiny_model.decode(img, txt, pairs_per_pass=0)


@pytest.mark.parametrize("prompt_position", ["after_padding", "after_sep"])
def test_padding_invariance(prompt_position):
    config = get_preset("crobim-tiny").replace(
        capm={"prompt_position": prompt_position}, presence={"enabled": True}
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    tokens = model.tokenize(["a pond", "the red roof near the road"])
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert ids.shape == (2, 20) and int(mask[0].sum()) == 4  # [CLS] a pond [SEP]
    image = _images(1, (320, 320), seed=4)
    with torch.no_grad():
        img = model.encode_image(image)
        ref = model.decode(img, model.encode_text(ids, mask))
        # shorter padding (L = 8 < max_len): same result
        short = model.decode(img, model.encode_text(ids[:1, :8], mask[:1, :8]))
        # garbage ids under the padding mask: same result
        noisy_ids = ids.clone()
        noisy_ids[mask == 0] = 1037
        noisy = model.decode(img, model.encode_text(noisy_ids, mask))
    torch.testing.assert_close(short.logits[0, 0], ref.logits[0, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short.presence_logit[0, 0], ref.presence_logit[0, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(noisy.logits, ref.logits, atol=1e-5, rtol=1e-5)
    # a real token change does change the output
    changed_ids = ids.clone()
    changed_ids[0, 2] = 2000
    with torch.no_grad():
        changed = model.decode(img, model.encode_text(changed_ids, mask))
    assert not torch.allclose(changed.logits[0, 0], ref.logits[0, 0], atol=1e-4)


def test_text_longer_than_max_len_is_refused(tiny_model):
    ids = torch.ones(1, 25, dtype=torch.long)
    with pytest.raises(ValueError, match="max_len"):
        tiny_model.encode_text(ids, torch.ones_like(ids))
    assert tiny_model.tokenize(["word " * 50])["input_ids"].shape == (1, 20)


def test_pwam_backbone_has_no_image_only_encoder():
    config = get_preset("crobim-tiny").replace(backbone={"in_fusion": "pwam"})
    model = build_model(config).eval()
    tokens = model.tokenize(EXPRESSIONS[:2])
    images = _images(2, (320, 320))
    with pytest.raises(ImageFeaturesUnavailableError, match="in_fusion"):
        model.encode_image(images)
    with torch.no_grad():
        out = model(images, **tokens)
    assert out.logits.shape == (2, 1, 320, 320)


def test_masks_and_probabilities_from_outputs(tiny_model):
    tokens = tiny_model.tokenize(EXPRESSIONS[:2])
    with torch.no_grad():
        out = tiny_model(_images(2, (320, 320), seed=5), **tokens)
    prob = foreground_probability(out.logits)
    assert prob.shape == (2, 320, 320) and 0 <= float(prob.min()) and float(prob.max()) <= 1
    mask = binary_mask(out)
    assert mask.dtype == torch.bool and torch.equal(mask, out.logits[:, 0] > 0)
    gated = binary_mask(out, gate_presence=True, threshold=0.5)
    keep = torch.sigmoid(out.presence_logit) >= 0.5
    assert torch.equal(gated, mask & keep[:, None, None])
    # 2 channels: channel 0 background [1, 1], channel 1 foreground [1, 2]; the tie goes to background
    two = torch.tensor([[1.0, 1.0], [1.0, 2.0]]).reshape(1, 2, 1, 2)
    assert binary_mask(two).tolist() == [[[False, True]]]
    expected = torch.tensor([[[0.5, 1.0 / (1.0 + float(np.exp(-1.0)))]]])
    torch.testing.assert_close(foreground_probability(two), expected)


def test_pixel_word_attention_folds_the_output_projection_into_the_values():
    """``fuse`` applies attn_out to the L values; the paper's order (to the HW attention outputs) gives the same."""
    from crobim.modeling.lgfa import PixelWordAttention

    torch.manual_seed(0)
    pwa = PixelWordAttention(vis_channels=12, text_dim=10, dim=8, out_channels=16).eval()
    fmap, words = torch.randn(3, 12, 5, 7), torch.randn(3, 6, 10)
    word_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    prepared = pwa.prepare(fmap)
    with torch.no_grad():
        fused, attn = pwa.fuse(prepared, words, word_mask)
        residual, query, gate_in = prepared
        per_pixel = (attn @ pwa.value(words)).transpose(1, 2).reshape(3, 8, 5, 7)
        g = pwa.fused_proj(gate_in * pwa.attn_out(per_pixel))
        expected = residual + pwa.gate(g) * g
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    assert attn[1, :, 3:].abs().max() == 0  # padded words get no weight


@pytest.mark.parametrize("out_stride", [4, 8])
def test_every_lgfa_scale_works_on_the_working_grid_or_coarser(out_stride):
    """At ``lgfa.out_stride`` 8, F1 (stride 4) is brought to the stride-8 grid before its word attention."""
    model = build_model(get_preset("crobim-tiny").replace(lgfa={"out_stride": out_stride})).eval()
    tokens = model.tokenize(EXPRESSIONS[:2])
    with torch.no_grad():
        out = model(_images(2, (320, 320), seed=6), **tokens)
    grid = (320 // out_stride) ** 2
    native = [80 * 80, 40 * 40, 20 * 20, 10 * 10]  # test_convnext's strides 4, 8, 16, 32 at 320 px
    assert [a.shape[1] for a in out.aux.word_attention] == [min(n, grid) for n in native]
    assert out.logits.shape == (2, 1, 320, 320)


def test_forward_with_pair_index_encodes_each_image_once(tiny_model):
    """Several expressions of one image: ``forward(..., pair_index)`` equals the forward over repeated images."""
    tokens = tiny_model.tokenize(EXPRESSIONS)
    images = _images(2, (320, 320), seed=7)
    pair_index = torch.tensor([1, 0, 1, 1])
    seen = []
    hook = tiny_model.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            shared = tiny_model(images, **tokens, pair_index=pair_index)
            repeated = tiny_model(images.index_select(0, pair_index), **tokens)
    finally:
        hook.remove()
    assert seen == [2, 4]
    torch.testing.assert_close(shared.logits, repeated.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.presence_logit, repeated.presence_logit, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pair_index"):
        tiny_model(images, **tokens)
    # a PWAM backbone needs the text, so it encodes the repeated images instead; the outputs are the same
    pwam = build_model(get_preset("crobim-tiny").replace(backbone={"in_fusion": "pwam"})).eval()
    with torch.no_grad():
        shared = pwam(images, **tokens, pair_index=pair_index)
        repeated = pwam(images.index_select(0, pair_index), **tokens)
    torch.testing.assert_close(shared.logits, repeated.logits, atol=1e-5, rtol=0)


def test_one_tokenizer_for_the_model_and_data_loading(tiny_model):
    """``CroBIM.tokenize`` and the numpy path of data loading are the same function: identical ids."""
    from crobim.transforms import tokenize

    texts = ["the pond", "a very long description " * 10]
    max_len = tiny_model.config.text.max_len
    as_torch = tokenize(tiny_model.tokenizer, texts, max_len=max_len, return_tensors="pt")
    as_numpy = tokenize(tiny_model.tokenizer, texts, max_len=max_len, return_tensors="np")
    from_model = tiny_model.tokenize(texts)
    for key in ("input_ids", "attention_mask"):
        assert as_torch[key].dtype == torch.long and as_numpy[key].dtype == np.int64
        assert as_torch[key].shape == (2, max_len)
        assert torch.equal(as_torch[key], torch.from_numpy(as_numpy[key]))
        assert torch.equal(from_model[key].cpu(), as_torch[key])
    single = tokenize(tiny_model.tokenizer, "the pond", max_len=max_len)
    assert torch.equal(single["input_ids"], as_torch["input_ids"][:1])
    with pytest.raises(ValueError, match="return_tensors"):
        tokenize(tiny_model.tokenizer, texts, max_len=max_len, return_tensors="tf")
