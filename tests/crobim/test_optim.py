"""Optimizer groups (coverage, no-decay membership) and the poly schedule (MODEL.md §6)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from crobim import build_model
from crobim.config import get_preset
from crobim.optim import (
    build_optimizer,
    build_scheduler,
    check_group_coverage,
    parameter_groups,
    poly_lr_lambda,
)


@pytest.fixture(scope="module")
def model_and_config():
    config = get_preset("crobim-tiny").replace(presence={"enabled": True}, text={"train_layers": "0-9"})
    return build_model(config), config


def test_every_trainable_parameter_in_exactly_one_group(model_and_config):
    model, config = model_and_config
    optimizer = build_optimizer(model, config)
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(ids) == trainable
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen, "train_layers='0-9' freezes the text embeddings"
    assert not {id(p) for p in frozen} & set(ids)


def test_no_decay_membership(model_and_config):
    model, config = model_and_config
    decay, no_decay = parameter_groups(model, config.optim)
    assert decay["weight_decay"] == config.optim.weight_decay and no_decay["weight_decay"] == 0.0
    nd = set(no_decay["param_names"])
    assert {"capm.prompts", "capm.scale_embed"} <= nd
    assert all(n in nd for n in no_decay["param_names"] if n.endswith(".bias"))
    assert not any(n.endswith(".bias") for n in decay["param_names"])
    assert "text.encoder.encoder.layer.0.attention.output.LayerNorm.weight" in nd
    assert any(n.startswith("backbone.stage_norms.") for n in nd)
    assert "mid.layers.0.text_ffn.fc1.weight" in decay["param_names"]
    assert "lgfa.scales.0.query.0.weight" in decay["param_names"]


def test_coverage_check_catches_duplicates_and_omissions(model_and_config):
    model, config = model_and_config
    params = [p for p in model.parameters() if p.requires_grad]
    # torch itself refuses duplicates, so hand the check a bare object with param_groups
    twice = SimpleNamespace(param_groups=[{"params": params}, {"params": params[:1]}])
    with pytest.raises(ValueError, match="in two groups"):
        check_group_coverage(model, twice)
    with pytest.raises(ValueError, match="missing trainable"):
        check_group_coverage(model, torch.optim.AdamW([{"params": params[1:]}]))


def test_poly_schedule_per_iteration(model_and_config):
    model, config = model_and_config
    factor = poly_lr_lambda(100, 0.9)
    assert factor(0) == 1.0
    assert factor(50) == pytest.approx(0.5**0.9)
    assert factor(100) == 0.0 and factor(150) == 0.0
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, total_iters=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(config.optim.lr * 0.5**0.9)
    with pytest.raises(ValueError, match="total_iters"):
        poly_lr_lambda(0)


def test_warmup_then_poly_with_the_configured_power(model_and_config):
    model, config = model_and_config
    factor = poly_lr_lambda(100, 2.0, warmup_iters=10)
    assert factor(0) == pytest.approx(0.1 * 1.0)
    assert factor(4) == pytest.approx(0.5 * 0.96**2)
    assert factor(50) == pytest.approx(0.25)
    optim = dataclasses.replace(config.optim, poly_power=2.0, warmup_iters=4)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, total_iters=10, optim=optim)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [config.optim.lr * min(1.0, (t + 1) / 4) * (1 - t / 10) ** 2 for t in range(6)]
    assert lrs == pytest.approx(expected)
    with pytest.raises(ValueError, match="warmup_iters"):
        poly_lr_lambda(10, warmup_iters=-1)
