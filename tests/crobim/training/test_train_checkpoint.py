"""Training checkpoints: safetensors + JSON round trip (model, optimizer, scheduler, RNG), no pickle."""

import json
import random

import numpy as np
import pytest
import torch

from crobim.training.checkpoint import (
    CHECKPOINT_FILES,
    TrainerState,
    load_training_state,
    read_trainer_state,
    save_training_state,
)


def _setup(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(
        [
            {"params": [model[0].weight, model[2].weight], "weight_decay": 0.01},
            {"params": [model[0].bias, model[1].weight, model[1].bias, model[2].bias], "weight_decay": 0.0},
        ],
        lr=1e-2,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (1 - t / 10) ** 0.9)
    return model, opt, sched


def _step(model, opt, sched, x):
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def test_round_trip_continues_identically(tmp_path):
    x = torch.randn(16, 4)
    model, opt, sched = _setup(0)
    for _ in range(3):
        _step(model, opt, sched, x)
    state = TrainerState(epochs_done=3, global_step=3, history=[{"epoch": 1.0, "loss": 0.5}])
    save_training_state(
        tmp_path / "ck", model=model, model_config_json="{}", optimizer=opt, scheduler=sched, state=state
    )
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == sorted(CHECKPOINT_FILES)
    # The reference continues; a fresh copy restores from the folder and must follow the same path.
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    expected_rng = (random.random(), np.random.rand(), torch.rand(1).item())
    ref = [_step(model, opt, sched, x) for _ in range(3)]
    model2, opt2, sched2 = _setup(1)
    loaded = load_training_state(tmp_path / "ck", model=model2, optimizer=opt2, scheduler=sched2)
    assert loaded.epochs_done == 3 and loaded.global_step == 3 and loaded.history == state.history
    assert sched2.last_epoch == 3
    got = [_step(model2, opt2, sched2, x) for _ in range(3)]
    assert got == pytest.approx(ref, rel=1e-6, abs=1e-7)
    # RNG states were restored to those at save time (not those of the reseeded process).
    assert (random.random(), np.random.rand(), torch.rand(1).item()) != expected_rng


def test_rng_states_round_trip(tmp_path):
    model, opt, sched = _setup(0)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_training_state(
        tmp_path / "ck",
        model=model,
        model_config_json="{}",
        optimizer=opt,
        scheduler=sched,
        state=TrainerState(),
    )
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    load_training_state(tmp_path / "ck", model=model)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected


def test_no_pickle_in_checkpoint(tmp_path):
    model, opt, sched = _setup(0)
    _step(model, opt, sched, torch.randn(2, 4))
    out = save_training_state(
        tmp_path / "ck",
        model=model,
        model_config_json="{}",
        optimizer=opt,
        scheduler=sched,
        state=TrainerState(),
    )
    for path in out.iterdir():
        head = path.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"\x80\x02", f"{path.name} looks like a pickle"
        if path.suffix == ".json":
            json.loads(path.read_text())


def test_incomplete_folder_is_refused(tmp_path):
    model, opt, sched = _setup(0)
    out = save_training_state(
        tmp_path / "ck",
        model=model,
        model_config_json="{}",
        optimizer=opt,
        scheduler=sched,
        state=TrainerState(),
    )
    (out / "trainer_state.json").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        read_trainer_state(out)
