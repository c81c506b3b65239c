import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from crobim.data import RefSegRS, SynRS
from crobim.data.synrs import (
    TEMPLATE_NAMES,
    SynRSParams,
    generate_split,
    render_scene,
    scene_rng,
    template_probabilities,
    write_dataset,
)


def _tree_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    counts = {"train": 12, "val": 4, "test": 4}
    write_dataset(tmp_path / "a", seed=7, counts=counts, size=64)
    write_dataset(tmp_path / "b", seed=7, counts=counts, size=64)
    write_dataset(tmp_path / "c", seed=8, counts=counts, size=64)
    assert _tree_sha256(tmp_path / "a") == _tree_sha256(tmp_path / "b")
    assert _tree_sha256(tmp_path / "a") != _tree_sha256(tmp_path / "c")


def test_scene_does_not_depend_on_split_sizes_and_splits_differ():
    a = render_scene(scene_rng(3, "train", 5), 64)
    b = render_scene(scene_rng(3, "train", 5), 64)
    c = render_scene(scene_rng(3, "val", 5), 64)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    small = [s for s, _, _ in generate_split(3, "test", 6, 64)]
    large = {s: g for s, g, _ in generate_split(3, "test", 30, 64)}
    for s, g, _ in generate_split(3, "test", 6, 64):
        np.testing.assert_array_equal(g.labels, large[s].labels)
    assert small


def test_refsegrs_reader_reads_output_unchanged(synrs_small):
    for split, n in (("train", 40), ("val", 12), ("test", 16)):
        plain = RefSegRS(synrs_small, split)
        syn = SynRS(synrs_small, split)
        assert len(plain) == len(syn) == n
    s_plain, s_syn = RefSegRS(synrs_small, "train")[3], SynRS(synrs_small, "train")[3]
    np.testing.assert_array_equal(s_plain.mask, s_syn.mask)
    assert s_plain.text == s_syn.text and s_plain.image.shape == (96, 96, 3)


def test_masks_match_the_scene_graph_and_flags(synrs_small):
    ds = SynRS(synrs_small, "val")
    for sample in ds:
        m = sample.meta
        graph = render_scene(scene_rng(0, "val", m["scene"]), 96)
        np.testing.assert_array_equal(sample.mask, graph.mask(m["referent_ids"]))
        assert sample.no_target == (m["kind"] == "none") == (not sample.mask.any())
        if m["kind"] == "single":
            assert len(m["referent_ids"]) == 1
        elif m["kind"] == "multi":
            assert len(m["referent_ids"]) >= 2
        if m["referent_ids"]:
            assert {graph.instances[i - 1].cls for i in m["referent_ids"]} == {m["category"]}
        assert len(sample.text.split()) <= 18 and sample.text == sample.text.lower()


def _sample_pool(n=450, size=96):
    return [(s, g, e) for s, g, e in generate_split(11, "train", n, size)]


@pytest.fixture(scope="module")
def pool():
    return _sample_pool()


def test_no_target_share_and_mix(pool):
    kinds = [e.kind for _, _, exprs in pool for e in exprs]
    share = kinds.count("none") / len(kinds)
    assert 0.10 <= share <= 0.20, share
    assert kinds.count("multi") / len(kinds) >= 0.15
    templates = {e.template for _, _, exprs in pool for e in exprs}
    assert {"nearest", "direction", "position", "size", "near", "absent"} <= templates


def test_template_weights_shift_the_mix_and_leave_the_scenes():
    params = SynRSParams(p_single=0.25, p_multi=0.6, template_weights={"multi/near": 50, "none/near_none": 3})
    assert params.template_weights == (("multi/near", 50.0), ("none/near_none", 3.0))
    assert template_probabilities(SynRSParams(), "multi") is None
    probs = template_probabilities(params, "multi")
    assert probs is not None and probs[1] == pytest.approx(50 / 54)
    default = list(generate_split(5, "train", 150, 96))
    weighted = list(generate_split(5, "train", 150, 96, params))
    for (_, a, _), (_, b, _) in zip(default, weighted, strict=False):
        np.testing.assert_array_equal(a.image, b.image)  # scenes are drawn before the expressions

    def share(split, template):
        templates = [e.template for _, _, exprs in split for e in exprs]
        return templates.count(template) / len(templates)

    assert share(weighted, "near") >= 3 * max(share(default, "near"), 0.01)
    assert share(weighted, "near_none") > share(default, "near_none")


@pytest.mark.parametrize(
    "weights, match",
    [({"multi/nearby": 2}, "unknown templates"), ({"multi/near": -1}, ">= 0"), ({n: 0 for n in TEMPLATE_NAMES if n.startswith("none/")}, "weight 0")],
)  # fmt: skip
def test_bad_template_weights_are_refused(weights, match):
    with pytest.raises(ValueError, match=match):
        params = SynRSParams(template_weights=weights)
        for kind in ("single", "multi", "none"):
            template_probabilities(params, kind)


def test_singular_nearest_has_margin(pool):
    p = SynRSParams()
    checked = 0
    for _, g, exprs in pool:
        for e in exprs:
            if e.template != "nearest":
                continue
            ref = ndimage.distance_transform_edt(~g.mask([i.id for i in g.instances if i.cls == e.ref_class]))
            d = sorted(float(ref[g.labels == i.id].min()) for i in g.instances if i.cls == e.target_class)
            target = float(ref[g.labels == e.referents[0]].min())
            assert target == d[0] and d[1] - d[0] >= p.nearest_margin * g.unit_px
            checked += 1
    assert checked >= 5


def _iou(p, g):
    u = np.count_nonzero(p | g)
    return np.count_nonzero(p & g) / u if u else 0.0


def test_text_blind_predictor_cannot_reach_high_miou(pool):
    """Best single mask per image, chosen with the answers in hand but ignoring the text."""
    blind, perfect = [], []
    for _, g, exprs in pool:
        truths = [g.mask(e.referents) for e in exprs]
        candidates = truths + [np.logical_or.reduce(truths), np.zeros_like(truths[0])]
        candidates += [
            g.mask([i.id for i in g.instances if i.cls == c]) for c in {i.cls for i in g.instances}
        ]
        best = max(float(np.mean([_iou(c, t) for t in truths])) for c in candidates)
        blind += [best] * len(truths)
        perfect += [_iou(t, t) for t in truths]
    blind_miou, perfect_miou = float(np.mean(blind)), float(np.mean(perfect))
    assert perfect_miou > 0.8
    assert blind_miou < 0.45, blind_miou
    assert blind_miou < 0.55 * perfect_miou


def test_existing_output_refused(tmp_path):
    write_dataset(tmp_path, seed=0, counts={"test": 2}, size=64)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_dataset(tmp_path, seed=0, counts={"test": 2}, size=64)
    write_dataset(tmp_path, seed=1, counts={"val": 3}, size=64, overwrite=True)
    assert not (tmp_path / "output_phrase_test.txt").read_text()
    with pytest.raises(ValueError, match="multiple of 8"):
        write_dataset(tmp_path / "x", seed=0, counts={"test": 2}, size=100)


def test_mosaic_keeps_object_scale():
    g = render_scene(scene_rng(0, "test", 0), 512, unit_px=128)
    small = defaultdict(list)
    for inst in g.instances:
        small[inst.cls].append(inst.area)
    assert len(g.instances) > 40
    assert np.median(small["building"]) < 0.01 * 512 * 512
