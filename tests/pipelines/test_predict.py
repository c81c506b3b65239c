"""RegionPredictor protocol, --model parsing and loading, and the CroBIM predictor (text once, image once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.predict import (
    CroBIMPredictor,
    RegionPredictor,
    load_predictor,
    parse_model_spec,
)
from pipelines.provenance import folder_sha256


@pytest.fixture(scope="module")
def tiny():
    from crobim import get_preset
    from crobim.modeling import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CI has 2 cores shared with other work: oversubscribed threads crawl
    torch.manual_seed(0)
    # crobim-tiny with the presence head, at 128 px so the tests stay fast on CPU.
    config = get_preset("crobim-tiny").replace(presence={"enabled": True}, input={"size": (128, 128)})
    yield build_model(config).eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny, tmp_path_factory):
    from crobim.weights import save_model

    path = tmp_path_factory.mktemp("ckpt") / "crobim-tiny"
    save_model(tiny, path)
    return path


def _tiles(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_parse_model_spec(tmp_path):
    assert parse_model_spec("tests.fixtures.predictors:factory").kind == "factory"
    assert parse_model_spec(str(tmp_path)).kind == "checkpoint"
    assert parse_model_spec("s3://bucket/ckpt").kind == "checkpoint"
    with pytest.raises(ValueError, match="neither an existing checkpoint folder"):
        parse_model_spec("no/such/folder")


def test_factory_predictor_follows_the_protocol():
    pred = load_predictor("tests.fixtures.predictors:factory")
    assert isinstance(pred, RegionPredictor) and pred.tile_size == 64
    tiles = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    tiles[0, :10, :10] = (250, 10, 10)
    out = pred.predict(tiles, ["red", "blue"])
    assert out.shape == (2, 2, 64, 64) and out.dtype == np.float32
    assert out[0, 0, :10, :10].all() and out[0, 0].sum() == 100 and out[:, 1].sum() == 0


def test_factory_errors_are_clear():
    with pytest.raises(ValueError, match="cannot be imported"):
        load_predictor("no_such_module_xyz:factory")
    with pytest.raises(ValueError, match="has no callable 'nope'"):
        load_predictor("tests.fixtures.predictors:nope")
    with pytest.raises(TypeError, match="does not follow RegionPredictor"):
        load_predictor("builtins:object")


def test_crobim_encodes_text_once_and_each_tile_once(tiny, monkeypatch):
    calls = {"image": 0, "text": 0, "decode_pairs": 0, "pairs_per_pass": set()}
    encode_image, encode_text, decode = tiny.encode_image, tiny.encode_text, tiny.decode

    def spy_image(pixels):
        calls["image"] += pixels.shape[0]
        return encode_image(pixels)

    def spy_text(ids, mask):
        calls["text"] += ids.shape[0]
        return encode_text(ids, mask)

    def spy_decode(img, txt, pair_index=None, pairs_per_pass=None, output_size=None):
        calls["decode_pairs"] += len(img) * len(txt)
        calls["pairs_per_pass"].add(pairs_per_pass)
        return decode(img, txt, pair_index, pairs_per_pass, output_size)

    monkeypatch.setattr(tiny, "encode_image", spy_image)
    monkeypatch.setattr(tiny, "encode_text", spy_text)
    monkeypatch.setattr(tiny, "decode", spy_decode)
    pred = CroBIMPredictor(tiny, device="cpu")
    queries = ["red roofs", "ponds", "roads"]
    tiles = _tiles(2, pred.tile_size)
    out1 = pred.predict(tiles, queries)
    out2 = pred.predict(_tiles(2, pred.tile_size, seed=1), queries)
    assert out1.shape == (2, 3, pred.tile_size, pred.tile_size) and out1.dtype == np.float32
    assert (out1 >= 0).all() and (out1 <= 1).all() and not np.array_equal(out1, out2)
    # text once per query, image once per tile; on CPU the pairs are decoded one at a time
    assert calls == {"image": 4, "text": 3, "decode_pairs": 12, "pairs_per_pass": {1}}


def test_crobim_multi_query_equals_single_queries(tiny):
    pred = CroBIMPredictor(tiny, device="cpu", gate_presence=False)
    tiles = _tiles(2, pred.tile_size, seed=2)
    both = pred.predict(tiles, ["red roofs", "ponds"])
    np.testing.assert_allclose(both[:, :1], pred.predict(tiles, ["red roofs"]), atol=1e-5)
    np.testing.assert_allclose(both[:, 1:], pred.predict(tiles, ["ponds"]), atol=1e-5)
    one_pass = CroBIMPredictor(tiny, device="cpu", gate_presence=False, pairs_per_pass=4)
    np.testing.assert_allclose(one_pass.predict(tiles, ["red roofs", "ponds"]), both, atol=1e-5)


def test_crobim_without_feature_caching_equals_cached(tiny):
    from crobim.modeling import build_model

    torch.manual_seed(0)
    uncached_model = build_model(tiny.config.replace(runtime={"cache_image_features": False})).eval()
    uncached_model.load_state_dict(tiny.state_dict())
    tiles, queries = _tiles(2, 128, seed=4), ["red roofs", "ponds", "roads"]
    cached = CroBIMPredictor(tiny, device="cpu")
    uncached = CroBIMPredictor(uncached_model, device="cpu")
    assert cached.cache_image_features and not uncached.cache_image_features
    expected = cached.predict(tiles, queries)
    np.testing.assert_allclose(uncached.predict(tiles, queries), expected, atol=1e-5)
    assert uncached.counts["image_encodes"] == 6 and cached.counts["image_encodes"] == 2
    two_per_pass = CroBIMPredictor(uncached_model, device="cpu", pairs_per_pass=2)
    np.testing.assert_allclose(two_per_pass.predict(tiles, queries), expected, atol=1e-5)


def test_crobim_pwam_backbone_runs_one_forward_per_pair(tiny):
    from crobim.inference import foreground_probability
    from crobim.modeling import build_model

    # In-backbone fusion makes the image features depend on the query: encode_image refuses, so the predictor must
    # not cache them, and each pair's output must equal that pair's own forward.
    torch.manual_seed(0)
    pwam = build_model(tiny.config.replace(backbone={"in_fusion": "pwam"})).eval()
    pred = CroBIMPredictor(pwam, device="cpu", gate_presence=False)
    assert not pred.cache_image_features
    tiles, queries = _tiles(2, 128, seed=5), ["red roofs", "ponds"]
    out = pred.predict(tiles, queries)
    assert out.shape == (2, 2, 128, 128)
    with torch.inference_mode():
        tok = pwam.tokenize(queries[1:])
        single = pwam(pwam.preprocess(tiles[1:]), tok["input_ids"], tok["attention_mask"])
        expected = foreground_probability(single.logits).numpy()
    np.testing.assert_allclose(out[1, 1], expected[0], atol=1e-5)
    assert not np.allclose(out[1, 0], out[1, 1])


def test_crobim_presence_gating(tiny):
    tiles = _tiles(3, 128, seed=3)
    queries = ["red roofs", "ponds"]
    with torch.inference_mode():
        tok = tiny.tokenize(queries)
        out = tiny.decode(tiny.encode_image(tiny.preprocess(tiles)), tiny.encode_text(**tok))
        presence = torch.sigmoid(out.presence_logit).numpy()  # (B, Q)
    threshold = float(np.median(presence))  # half the pairs are gated
    gated = CroBIMPredictor(tiny, device="cpu")
    gated.presence_threshold = threshold
    plain = CroBIMPredictor(tiny, device="cpu", gate_presence=False)
    g, p = gated.predict(tiles, queries), plain.predict(tiles, queries)
    absent = presence < threshold
    assert absent.any() and (~absent).any()
    assert (g[absent] == 0).all()
    np.testing.assert_array_equal(g[~absent], p[~absent])


def test_load_checkpoint_checks_the_hash(tiny_checkpoint):
    sha = folder_sha256(str(tiny_checkpoint))
    pred = load_predictor(str(tiny_checkpoint), device="cpu", expected_sha256=sha)
    assert isinstance(pred, CroBIMPredictor) and pred.tile_size == 128
    with pytest.raises(ValueError, match="changed since the job started"):
        load_predictor(str(tiny_checkpoint), device="cpu", expected_sha256="0" * 64)


def test_tiles_of_another_size_are_answered_at_their_size_with_one_resize(tiny):
    """--tile-size other than the model's: tiles go in at the model's size, logits come back once at the tile size."""
    from crobim.inference import foreground_probability

    tiles, queries = _tiles(2, 96, seed=6), ["red roofs", "ponds"]
    pred = CroBIMPredictor(tiny, device="cpu", gate_presence=False)
    out = pred.predict(tiles, queries)
    assert out.shape == (2, 2, 96, 96)
    with torch.inference_mode():
        tok = tiny.tokenize(queries)
        direct = tiny.decode(
            tiny.encode_image(tiny.preprocess(tiles)), tiny.encode_text(**tok), output_size=(96, 96)
        )
        native = tiny.decode(tiny.encode_image(tiny.preprocess(tiles)), tiny.encode_text(**tok))
    np.testing.assert_allclose(out, foreground_probability(direct.logits).numpy(), atol=1e-6)
    assert native.logits.shape[-2:] == (128, 128)
