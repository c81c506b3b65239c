"""`validate` without Ray: the scoring loop plus `ReferringMetrics`, ungated and presence-gated, prefixed `val_`."""

from __future__ import annotations

import torch

from crobim.inference import binary_mask
from crobim.metrics import ReferringMetrics
from crobim.training.validation import validate
from tests.crobim.test_scoring import build_small_model, make_batches


def test_validate_equals_metrics_of_the_direct_forward():
    small_model = build_small_model()
    batches = make_batches(small_model, n=6, batch=4, seed=1)
    got = validate(small_model, batches, device=torch.device("cpu"), precision="fp32", batch_size=4)
    ungated, gated = ReferringMetrics(), ReferringMetrics()
    with torch.inference_mode():
        for b in batches:
            out = small_model(b["image"], b["input_ids"], b["attention_mask"])
            gt, no_target = b["mask"].bool().numpy(), b["no_target"].tolist()
            ungated.update(binary_mask(out).numpy(), gt, no_target=no_target)
            gated.update(binary_mask(out, gate_presence=True, threshold=0.5).numpy(), gt, no_target=no_target)
    assert got["val_oIoU"] == ungated.compute()["oIoU"] and got["val_count"] == 6
    assert got["val_gated_oIoU"] == gated.compute()["oIoU"]
    assert got["val_gated_giou_gres"] == gated.compute()["giou_gres"]
