"""Presence gating (`gate_by_presence`, the one gate of masks and probabilities) and the autocast choice."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from crobim.inference import binary_mask, gate_by_presence
from crobim.precision import PRECISIONS, autocast


def test_gate_by_presence_empties_masks_and_probabilities():
    logits = torch.tensor([[2.0, -0.1], [-3.0, 0.0]])  # (B, Q) = (2, 2); sigmoid(0) = 0.5 is present
    masks = torch.ones(2, 2, 3, 3, dtype=torch.bool)  # (B, Q, H, W)
    gated = gate_by_presence(masks, logits, threshold=0.5)
    assert gated.dtype == torch.bool and gated.shape == masks.shape
    assert gated.flatten(2).all(-1).tolist() == [[True, False], [False, True]]
    prob = torch.full((2, 2, 3, 3), 0.7)
    gated_prob = gate_by_presence(prob, logits, threshold=0.5)
    assert gated_prob.dtype == prob.dtype
    torch.testing.assert_close(gated_prob.flatten(2).amax(-1), torch.tensor([[0.7, 0.0], [0.0, 0.7]]))
    # Paired-forward shape: (B,) logits gate (B, H, W) masks; a higher threshold keeps fewer.
    kept = gate_by_presence(torch.ones(2, 4, 4, dtype=torch.bool), logits[:, 0], 0.85)  # sigmoid(2) = 0.88
    assert kept.flatten(1).all(-1).tolist() == [True, False]


def test_gate_decides_in_float32_under_bf16_logits():
    # sigmoid(-1e-3) = 0.49975 rounds to 0.5 in bfloat16; the gate decides on the float32 value.
    logit = torch.tensor([-1e-3]).to(torch.bfloat16)
    assert not gate_by_presence(torch.ones(1, 2, 2, dtype=torch.bool), logit, 0.5).any()


def test_binary_mask_gating_needs_the_presence_logit():
    from crobim.modeling.model import CroBIMOutput

    out = CroBIMOutput(torch.zeros(1, 1, 2, 2), None, None)
    with pytest.raises(ValueError, match="presence.enabled"):
        binary_mask(out, gate_presence=True)


def test_autocast_choice():
    assert isinstance(autocast("cpu", "auto"), contextlib.nullcontext)
    assert isinstance(autocast(torch.device("cpu"), "fp32"), contextlib.nullcontext)
    forced = autocast("cpu", "bf16")
    assert isinstance(forced, torch.autocast) and forced.fast_dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "CUDA is not available": the choice is still autocast
        assert isinstance(autocast("cuda", "auto"), torch.autocast)
    assert isinstance(autocast("cuda", "fp32"), contextlib.nullcontext)
    assert PRECISIONS == ("auto", "bf16", "fp32")
    with pytest.raises(ValueError, match="fp16"):
        autocast("cpu", "fp16")
