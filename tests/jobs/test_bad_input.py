"""Bad input through the region job as a user types it: one table, each case with its exit code and message.

Every refusal happens on the driver before Ray starts and before the output folder is touched, in one line with no
traceback, in well under a minute. Warnings are for what still runs. The Ctrl-C case (exit 130, run.json
"interrupted", one line with the resume command) runs as a real SIGINT in ``tests/pipelines/test_region_state.py``
and ``tests/pipelines/test_region_resume.py``; damaged checkpoints are covered one by one in
``tests/pipelines/test_model_checks.py``.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs.infer_region import main
from tests.fixtures.region_scenes import Square, write_scene

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "assets" / "demo-model"
FACTORY = "tests.fixtures.predictors:factory"


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, tuple[float, float, float, float], dict]:
    """A one-item catalog file over a local COG (UTM 18N, 10 m pixels)."""
    written = write_scene(tmp_path / "www", lambda p: str(p), squares=[Square("red", 10, 10, 8, 8)])
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [written.item]}))
    return path, written.lonlat_bbox(), written.item


def _demo_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, folder)
    return folder


def _truncated(tmp_path: Path) -> str:
    folder = _demo_copy(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return str(folder)


def _pickled(tmp_path: Path) -> str:
    folder = _demo_copy(tmp_path)
    (folder / "model.safetensors").write_bytes(pickle.dumps({"weight": [0.0] * 16}))  # written, never loaded
    return str(folder)


def _unknown_key(tmp_path: Path) -> str:
    folder = _demo_copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["head"]["not_a_key"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _foreign_folder(tmp_path: Path) -> str:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "important.txt").write_text("mine")
    (out / "sub" / "notes.md").write_text("mine too")
    return str(out)


def _a_file(tmp_path: Path) -> str:
    path = tmp_path / "afile.txt"
    path.write_text("mine")
    return str(path)


def _argv(catalog: Path, bbox, query: str, model: str) -> list[str]:
    return ["--bbox", *map(str, bbox), "--catalog", str(catalog), "--query", query, "--model", model]


# (case id, extra flags (given the tmp folder), --bbox override, expected exit code, expected text in stderr)
Case = tuple[str, Callable[[Path], list[str]], tuple[float, ...] | None, int, str]
CASES: list[Case] = [
    (
        "overwrite-foreign-folder",
        lambda t: ["--out", _foreign_folder(t), "--overwrite"],
        None,
        2,
        "nothing was deleted",
    ),
    ("out-is-a-file", lambda t: ["--out", _a_file(t), "--overwrite"], None, 2, "is a file, not a folder"),
    ("world-bbox", lambda t: [], (-180.0, -90.0, 180.0, 90.0), 2, "510,065,622 km^2 exceeds the limit"),
    ("near-world-bbox", lambda t: [], (-179.9, -89.0, 179.9, 89.0), 2, "509,703,911 km^2 exceeds the limit"),
    ("resolution-in-degrees", lambda t: ["--resolution", "0.001"], None, 2, "more than --max-tiles"),
    ("negative-resolution", lambda t: ["--resolution", "-2"], None, 2, "--resolution = -2.0 is invalid"),
    ("swapped-bbox", lambda t: [], (-74.0, 40.0, -74.1, 40.1), 2, "west and east look swapped"),
    ("antimeridian-bbox", lambda t: [], (170.0, 0.0, -170.0, 1.0), 2, "crosses the antimeridian"),
    ("tile-size-0", lambda t: ["--tile-size", "0"], None, 2, "--tile-size = 0 is invalid"),
    ("tile-size-7", lambda t: ["--tile-size", "7"], None, 2, "--tile-size 7 px is too small"),
    ("empty-query", lambda t: ["--query", "   "], None, 2, "query 1 is empty"),
    ("query-over-500-chars", lambda t: ["--query", "x" * 600], None, 2, "more than the limit"),
    ("truncated-checkpoint", lambda t: ["--model", _truncated(t)], None, 2, "is truncated"),
    ("pickle-as-safetensors", lambda t: ["--model", _pickled(t)], None, 2, "is a PyTorch pickle file"),
    ("config-with-unknown-key", lambda t: ["--model", _unknown_key(t)], None, 2, "not_a_key"),
]


@pytest.mark.parametrize(("case", "flags", "bbox", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_on_the_driver(scene, tmp_path, capsys, case, flags, bbox, code, message):
    import ray

    catalog, scene_bbox, _ = scene
    extra = flags(tmp_path)
    argv = ["--bbox", *map(str, bbox or scene_bbox), "--catalog", str(catalog), "--query", "red"]
    argv += ["--model", FACTORY] if "--model" not in extra else []
    argv += ["--out", str(tmp_path / "new-out")] if "--out" not in extra else []
    ray_was_up = ray.is_initialized()  # other tests of the session may have started a runtime
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "www" not in p.parts}
    start = time.monotonic()
    assert main([*argv, *extra]) == code
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # A run creates its output folder before it starts Ray: no folder, no Ray start.
    assert ray.is_initialized() == ray_was_up
    assert not (tmp_path / "new-out").exists()
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "www" not in p.parts}
    assert after == before  # nothing the user had was deleted or changed


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "the large red roofed building with a white chimney standing along the narrow winding road that "
            "leads to the old harbour behind the church on the hill",
            "the model reads the first",
        ),
        ("建筑物", "no word of it is in the model's vocabulary"),
        ("?!", "only punctuation"),
    ],
    ids=["long-query", "unknown-words", "punctuation-only"],
)
def test_queries_the_model_cannot_read_well_are_warned_about(scene, tmp_path, capsys, caplog, query, message):
    catalog, bbox, _ = scene
    argv = _argv(catalog, bbox, query, str(DEMO_MODEL))
    assert main([*argv, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert any(message in w for w in plan["warnings"]), plan["warnings"]
    assert message in caplog.text


def test_a_tile_size_other_than_the_models_is_warned_about(scene, capsys):
    catalog, bbox, _ = scene
    argv = _argv(catalog, bbox, "red", str(DEMO_MODEL))
    assert main([*argv, "--tile-size", "192", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["lattice"]["tile_size_px"] == 192
    assert any("192" in w and "96" in w for w in plan["warnings"]), plan["warnings"]


def test_items_without_the_projection_extension_use_their_gsd(scene, tmp_path, capsys):
    catalog, bbox, item = scene
    item = json.loads(json.dumps(item))
    item["stac_extensions"] = [e for e in item.get("stac_extensions", []) if "projection" not in e]
    for fields in (item["properties"], *item["assets"].values()):
        for key in [k for k in fields if k.startswith("proj:")]:
            del fields[key]
    item["properties"]["gsd"] = 20.0
    catalog.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    argv = _argv(catalog, bbox, "red", FACTORY)
    assert main([*argv, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["resolution"] == [20.0, 20.0]


def test_make_synthetic_names_the_negative_count(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "jobs/make_synthetic.py",
            "--train",
            "-5",
            "--val",
            "2",
            "--out",
            str(tmp_path / "s"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "--train -5: sample counts cannot be negative" in result.stderr
    assert not (tmp_path / "s").exists()
