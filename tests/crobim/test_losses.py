"""Losses against hand-computed values (MODEL.md §5, §4.2, §10 item 7)."""

from __future__ import annotations

import math

import pytest
import torch

from crobim.config import get_preset
from crobim.losses import CroBIMLoss, dice_per_sample
from crobim.modeling.model import CroBIMOutput


def _config(**sections):
    return get_preset("crobim-tiny").replace(**sections)


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_dice_sum_two_channels_by_hand():
    # one sample, 1 x 2 pixels; fg logit - bg logit = (ln 3, -ln 3) -> fg prob (0.75, 0.25); target (1, 0)
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), -math.log(3.0)]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1.0, 0.0]]])
    s = 1e-6
    p_fg, p_bg = [0.75, 0.25], [0.25, 0.75]
    dice_fg = 1 - (2 * 0.75 + s) / (sum(p_fg) + 1 + s)
    dice_bg = 1 - (2 * 0.75 + s) / (sum(p_bg) + 1 + s)
    # class-weighted CE (weights 0.9 bg, 1.1 fg), weighted mean as torch computes it
    ce = (1.1 * -math.log(0.75) + 0.9 * -math.log(0.75)) / (1.1 + 0.9)
    loss = CroBIMLoss(_config(head={"channels": 2}))(CroBIMOutput(logits, None), target)
    assert loss.parts["dice"].item() == pytest.approx(dice_fg + dice_bg, abs=1e-6)
    assert loss.parts["mask_ce"].item() == pytest.approx(ce, abs=1e-6)
    assert loss.total.item() == pytest.approx(0.9 * ce + 0.1 * (dice_fg + dice_bg), abs=1e-6)
    assert "presence" not in loss.parts


def test_dice_is_summed_over_the_batch_not_averaged():
    logits = torch.tensor([[[[2.0, -1.0]]], [[[0.5, 0.5]]]])  # (2, 1, 1, 2)
    target = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    p0 = [_sig(2.0), _sig(-1.0)]
    p1 = [_sig(0.5), _sig(0.5)]
    d0 = 1 - (2 * p0[0] + 1e-6) / (sum(p0) + 1 + 1e-6)
    d1 = 1 - (2 * sum(p1) + 1e-6) / (sum(p1) + 2 + 1e-6)
    loss = CroBIMLoss(_config())(CroBIMOutput(logits, None), target)
    assert loss.parts["dice"].item() == pytest.approx(d0 + d1, abs=1e-6)
    # pixel-weighted BCE: weights 1.1 on foreground pixels, 0.9 on background
    bce = [-math.log(p0[0]), -math.log(1 - p0[1]), -math.log(p1[0]), -math.log(p1[1])]
    w = [1.1, 0.9, 1.1, 1.1]
    assert loss.parts["mask_ce"].item() == pytest.approx(
        sum(a * b for a, b in zip(w, bce, strict=True)) / sum(w)
    )


def test_dice_skips_empty_targets():
    logits = torch.tensor([[[[2.0, -1.0]]], [[[3.0, 3.0]]]])
    target = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])  # sample 1 has no target
    only_first = dice_per_sample(torch.sigmoid(logits[:1, 0]), target[:1], 1e-6).sum()
    skipping = CroBIMLoss(_config())(CroBIMOutput(logits, None), target)
    assert skipping.parts["dice"].item() == pytest.approx(only_first.item(), abs=1e-7)
    keeping = CroBIMLoss(_config(loss={"dice_skip_empty": False}))(CroBIMOutput(logits, None), target)
    assert keeping.parts["dice"].item() > skipping.parts["dice"].item() + 0.5
    # 2 channels: the background Dice of the empty sample stays, its foreground Dice goes
    two = torch.cat([torch.zeros_like(logits), logits], dim=1)
    loss2 = CroBIMLoss(_config(head={"channels": 2}))(CroBIMOutput(two, None), target)
    prob = two.softmax(dim=1)
    expected = (
        dice_per_sample(prob[:, 0], 1 - target, 1e-6).sum()
        + dice_per_sample(prob[:1, 1], target[:1], 1e-6).sum()
    )
    assert loss2.parts["dice"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_presence_target_comes_from_mask_emptiness():
    logits = torch.zeros(2, 1, 2, 2)
    target = torch.zeros(2, 2, 2)
    target[0, 0, 0] = 1.0
    presence = torch.tensor([1.5, 0.5])
    config = _config(presence={"enabled": True, "loss_weight": 2.0})
    loss = CroBIMLoss(config)(CroBIMOutput(logits, presence), target)
    expected = (-math.log(_sig(1.5)) - math.log(1 - _sig(0.5))) / 2
    assert loss.parts["presence"].item() == pytest.approx(expected, abs=1e-6)
    no_presence = CroBIMLoss(config)(CroBIMOutput(logits, None), target)
    assert loss.total.item() == pytest.approx(no_presence.total.item() + 2.0 * expected, abs=1e-6)
    # an explicit has_target wins over the masks
    flipped = CroBIMLoss(config)(
        CroBIMOutput(logits, presence), target, has_target=torch.tensor([False, True])
    )
    expected_flipped = (-math.log(1 - _sig(1.5)) - math.log(_sig(0.5))) / 2
    assert flipped.parts["presence"].item() == pytest.approx(expected_flipped, abs=1e-6)


def test_ce_only_kind_and_shape_errors():
    logits = torch.randn(2, 2, 4, 4)
    target = (torch.rand(2, 4, 4) > 0.5).float()
    loss = CroBIMLoss(_config(head={"channels": 2}, loss={"kind": "ce"}))(CroBIMOutput(logits, None), target)
    assert "dice" not in loss.parts and loss.total.item() == pytest.approx(loss.parts["mask_ce"].item())
    with pytest.raises(ValueError, match="resize_mask"):
        CroBIMLoss(_config())(CroBIMOutput(torch.zeros(2, 1, 4, 4), None), torch.zeros(2, 8, 8))


@pytest.mark.parametrize("preset", ["crobim-swin-b", "crobim-convnext-b"])
def test_paper_presets_use_the_rmsin_harness(preset):
    """The paper presets' mask loss is Lsan2401/RMSIN loss/loss.py (commit dff69a6) written out: 0.9 x CE with class
    weights [0.9, 1.1] + 0.1 x Dice on softmax / one-hot targets, summed over batch x classes; `loss.kind = "ce"` is
    yz93/LAVT-RIS train.py::criterion (CE with the same weights)."""
    config = get_preset(preset)
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8)
    target = (torch.rand(3, 8, 8) > 0.6).long()
    target[:, 0, 0] = 1  # every sample has a target, as in the paper datasets
    ce = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor([0.9, 1.1]))
    pred = logits.softmax(dim=1)
    one_hot = torch.stack([(target == c).float() for c in range(2)], dim=1)
    dice = (1 - (2 * (pred * one_hot).sum((2, 3)) + 1e-6) / ((pred + one_hot).sum((2, 3)) + 1e-6)).sum()
    loss = CroBIMLoss(config)(CroBIMOutput(logits, None), target.float())
    assert loss.total.item() == pytest.approx((0.9 * ce + 0.1 * dice).item(), rel=1e-5)
    lavt = CroBIMLoss(config.replace(loss={"kind": "ce"}))(CroBIMOutput(logits, None), target.float())
    assert lavt.total.item() == pytest.approx(ce.item(), rel=1e-6)
