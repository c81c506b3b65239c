import numpy as np
import pytest
import torch

from crobim.metrics import ReferringMetrics


def _mask(shape, pixels):
    m = np.zeros(shape, dtype=bool)
    for y, x in pixels:
        m[y, x] = True
    return m


def test_hand_computed_case():
    s = (4, 4)
    cases = [
        # (pred pixels, gt pixels, no_target)
        ([(0, 0), (0, 1), (0, 2), (0, 3)], [(0, 2), (0, 3), (1, 2), (1, 3)], False),  # I=2 U=6
        ([(y, x) for y in range(2) for x in range(4)] + [(2, 0), (2, 1)],) * 2 + (False,),  # I=U=10
        ([], [], True),  # no-target, predicted empty
        ([(3, 3), (3, 2), (3, 1)], [], True),  # no-target, 3 px painted
        ([], [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3)], False),  # target, nothing predicted
        ([(0, 0), (0, 1), (1, 0), (1, 1)], [(0, 0), (0, 1)], False),  # IoU exactly 0.5
    ]
    m = ReferringMetrics()
    ious = [m.update(_mask(s, p), _mask(s, g), no_target=nt) for p, g, nt in cases]
    assert ious == pytest.approx([1 / 3, 1.0, 0.0, 0.0, 0.0, 0.5], abs=1e-12)
    r = m.compute()
    assert r["oIoU"] == pytest.approx(14 / 28, abs=1e-12)
    assert r["mIoU"] == pytest.approx(11 / 36, abs=1e-12)
    assert r["Pr@0.5"] == pytest.approx(2 / 6, abs=1e-12)  # >= 0.5 counts
    for t in (0.6, 0.7, 0.8, 0.9):
        assert r[f"Pr@{t}"] == pytest.approx(1 / 6, abs=1e-12)
    assert r["N-acc"] == pytest.approx(1 / 2, abs=1e-12)
    assert r["T-acc"] == pytest.approx(3 / 4, abs=1e-12)
    assert r["giou_gres"] == pytest.approx(17 / 36, abs=1e-12)
    assert (r["count"], r["n_target"], r["n_no_target"]) == (6, 4, 2)
    assert (r["sum_intersection"], r["sum_union"]) == (14, 28)


def _reference(samples, empty_area=0):
    """Independent computation with Python sets of pixel coordinates."""
    inter_sum = union_sum = 0
    ious, gious = [], []
    n_nt = n_nt_empty = n_t = n_t_nonempty = 0
    for pred, gt, nt in samples:
        p = {tuple(c) for c in np.argwhere(pred)}
        g = {tuple(c) for c in np.argwhere(gt)}
        i, u = len(p & g), len(p | g)
        inter_sum += i
        union_sum += u
        iou = i / u if u else 0.0
        ious.append(iou)
        empty = len(p) <= empty_area
        if nt:
            n_nt += 1
            n_nt_empty += empty
            gious.append(1.0 if empty else 0.0)
        else:
            n_t += 1
            n_t_nonempty += not empty
            gious.append(iou)
    out = {"oIoU": inter_sum / union_sum, "mIoU": sum(ious) / len(ious), "giou_gres": sum(gious) / len(gious),
           "N-acc": n_nt_empty / n_nt, "T-acc": n_t_nonempty / n_t}  # fmt: skip
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        out[f"Pr@{t}"] = sum(x >= t for x in ious) / len(ious)
    return out


@pytest.mark.parametrize("empty_area", [0, 3])
def test_matches_independent_reference_random(empty_area):
    rng = np.random.default_rng(0)
    samples, cats = [], []
    for k in range(120):
        h, w = rng.integers(3, 12, size=2)
        gt = rng.random((h, w)) < rng.uniform(0, 0.6)
        nt = bool(rng.random() < 0.25)
        if nt:
            gt[:] = False
        mode = rng.integers(0, 4)
        pred = (
            gt.copy()
            if mode == 0
            else (np.zeros_like(gt) if mode == 1 else rng.random((h, w)) < rng.uniform(0, 0.7))
        )
        if mode == 3:
            pred |= gt & (rng.random((h, w)) < 0.8)
        samples.append((pred, gt, nt))
        cats.append(["pond", "road", "building"][k % 3])
    m = ReferringMetrics(empty_area=empty_area)
    for (p, g, nt), c in zip(samples, cats, strict=True):
        m.update(p, g, no_target=nt, category=c)
    got = m.compute()
    ref = _reference(samples, empty_area)
    for key, value in ref.items():
        assert abs(got[key] - value) <= 1e-9, key
    for cat in ("pond", "road", "building"):
        sub = [s for s, c in zip(samples, cats, strict=True) if c == cat]
        ref_c = _reference(sub, empty_area)
        for key, value in ref_c.items():
            assert abs(got["per_category"][cat][key] - value) <= 1e-9, (cat, key)


def test_target_only_giou_equals_miou_and_nacc_is_none():
    rng = np.random.default_rng(1)
    m = ReferringMetrics()
    for _ in range(20):
        g = rng.random((8, 8)) < 0.3
        g[0, 0] = True
        m.update(rng.random((8, 8)) < 0.3, g, no_target=False)
    r = m.compute()
    assert r["giou_gres"] == r["mIoU"]
    assert r["N-acc"] is None and r["T-acc"] is not None


def test_batch_torch_and_merge_equal_sequential():
    rng = np.random.default_rng(2)
    preds = rng.random((10, 6, 7)) < 0.4
    gts = rng.random((10, 6, 7)) < 0.4
    nts = [bool(x) for x in rng.random(10) < 0.3]
    gts[np.array(nts)] = False
    cats = [f"c{i % 2}" for i in range(10)]
    seq = ReferringMetrics()
    for i in range(10):
        seq.update(preds[i], gts[i], nts[i], cats[i])
    batched = ReferringMetrics()
    batched.update(torch.from_numpy(preds), torch.from_numpy(gts).to(torch.uint8), nts, cats)
    assert batched.compute() == seq.compute()
    # Two workers, merged through their plain state dicts.
    a, b = ReferringMetrics(), ReferringMetrics()
    a.update(preds[:4], gts[:4], nts[:4], cats[:4])
    b.update(preds[4:], gts[4:], nts[4:], cats[4:])
    assert ReferringMetrics().merge(a.state_dict()).merge(b).compute() == seq.compute()
    # All-reduce of the arrays (sum), as torch.distributed would do.
    ia, fa = a.state_arrays()
    ib, fb = b.state_arrays()
    reduced = ReferringMetrics()
    reduced.load_arrays(torch.from_numpy(ia + ib), torch.from_numpy(fa + fb))
    expected = {k: v for k, v in seq.compute().items() if k != "per_category"}
    assert reduced.compute() == expected


def test_int64_sums_do_not_overflow():
    m = ReferringMetrics()
    big = np.ones((4096, 4096), dtype=bool)
    for _ in range(200):  # 3.4e9 pixels > int32
        m._total.add(big.size, big.size, 1.0, False, False)
    assert m.compute()["sum_union"] == 200 * 4096 * 4096


def test_bad_inputs():
    m = ReferringMetrics()
    with pytest.raises(ValueError, match="shape"):
        m.update(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="outside"):
        m.update(np.full((3, 3), 2), np.zeros((3, 3), bool))
    with pytest.raises(TypeError, match="boolean"):
        m.update(np.zeros((3, 3), np.float32), np.zeros((3, 3), bool))
