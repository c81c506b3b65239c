"""TrainConfig: YAML round trip, overrides, validation messages, shipped configs."""

from pathlib import Path

import pytest

from crobim.training.config import (
    TrainConfig,
    apply_overrides,
    build_model_config,
    load_train_config,
    parse_override,
)

REPO = Path(__file__).resolve().parents[3]


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig.from_dict({"data": {"root": "/x"}, "schedule": {"epochs": 3, "batch_size": 4}})
    cfg.to_yaml(tmp_path / "c.yaml")
    again = load_train_config(tmp_path / "c.yaml")
    assert again == cfg


def test_parse_override_types():
    assert parse_override("schedule.epochs=2") == ("schedule.epochs", 2)
    assert parse_override("model_overrides.optim.lr=1e-4") == ("model_overrides.optim.lr", 1e-4)
    assert parse_override("run.use_gpu=true") == ("run.use_gpu", True)
    assert parse_override("data.max_train_samples=null") == ("data.max_train_samples", None)
    assert parse_override("model_overrides.input.size=[96, 96]")[1] == [96, 96]
    with pytest.raises(ValueError, match="key=value"):
        parse_override("schedule.epochs")


def test_overrides_apply_and_unknown_keys_fail():
    raw = apply_overrides({}, [("schedule.epochs", 2), ("model_overrides.text.max_len", 16)])
    cfg = TrainConfig.from_dict(raw)
    assert cfg.schedule.epochs == 2 and cfg.model_overrides == {"text.max_len": 16}
    assert build_model_config(cfg).text.max_len == 16
    with pytest.raises(KeyError, match="schedule.epoch"):
        TrainConfig.from_dict(apply_overrides({}, [("schedule.epoch", 2)]))
    with pytest.raises(ValueError, match="text.max_lenn"):
        build_model_config(TrainConfig(model_overrides={"text.max_lenn": 3}))


def test_batch_must_divide_over_workers_and_accumulation():
    with pytest.raises(ValueError, match="not divisible"):
        TrainConfig.from_dict(
            {"schedule": {"batch_size": 6, "grad_accum_steps": 2}, "run": {"num_workers": 2}}
        )
    cfg = TrainConfig.from_dict(
        {"schedule": {"batch_size": 8, "grad_accum_steps": 2}, "run": {"num_workers": 2}}
    )
    assert cfg.micro_batch_size == 2


def test_num_to_keep_protects_latest():
    with pytest.raises(ValueError, match="latest"):
        TrainConfig.from_dict({"run": {"num_to_keep": 1}})


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    # The paper configs refuse random init (tests/crobim/training/test_initial_weights.py); allowed here.
    cfg = load_train_config(path, [("weights.allow_random_init", True)])
    model_cfg = build_model_config(cfg)
    if path.name.startswith(("swin-b", "convnext-b")):
        assert model_cfg.input.size == (480, 480)
        assert cfg.schedule.batch_size == 8
        assert model_cfg.optim.lr == (3e-5 if "rrsisd" in path.name else 5e-5)
        assert model_cfg.text.max_len == (40 if "risbench" in path.name else 20)
        assert cfg.data.dataset in path.name
