"""Exports without Ray: the fp16 copy of a `crobim.save_model` folder (the demo model), and the run's storage paths."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.crobim.test_scoring import build_small_model


def test_export_fp16_halves_the_float_weights_and_keeps_the_card(tmp_path):
    from crobim import load_model, save_model
    from crobim.training.export import export_fp16

    best = tmp_path / "best"
    save_model(build_small_model(), best)
    (best / "training_metrics.json").write_text(json.dumps({"best": {}}))
    out = tmp_path / "demo"
    out.mkdir()
    (out / "MODEL_CARD.md").write_text("hand-written card\n")
    (out / "stale.txt").write_text("from an earlier export")
    size = export_fp16(best, out)
    assert (out / "MODEL_CARD.md").read_text() == "hand-written card\n"
    assert not (out / "training_metrics.json").exists() and not (out / "stale.txt").exists()
    assert size == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    full, half = load_file(str(best / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert full.keys() == half.keys()
    for key, value in full.items():
        expected = value.half() if value.is_floating_point() else value
        assert half[key].dtype == expected.dtype and torch.equal(half[key], expected), key
    assert (out / "config.json").read_text() == (best / "config.json").read_text()
    assert load_model(out).config == load_model(best).config


def test_local_storage_paths_and_file_uris_name_the_same_folder(tmp_path, monkeypatch):
    from crobim.training.config import TrainConfig
    from crobim.training.trainer import build_run_config

    monkeypatch.chdir(tmp_path)
    for storage in ("runs", str(tmp_path / "runs"), f"file://{tmp_path / 'runs'}"):
        cfg = TrainConfig.from_dict({"run": {"name": "n", "storage_path": storage}})
        run = build_run_config(cfg)
        assert Path(run.storage_path) == (tmp_path / "runs").resolve(), storage
        assert run.storage_filesystem is None
