"""Resume state and provenance (fingerprint, manifest, hashes), run.json on a stop, quicklook and lattice defaults."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.blend import TileLattice
from pipelines.provenance import (
    FingerprintMismatchError,
    RunManifest,
    check_resume,
    claim_output,
    diff_settings,
    fingerprint,
    folder_sha256,
    stored_fingerprint,
    write_fingerprint,
)
from pipelines.region_config import RegionJobConfig
from pipelines.software import package_versions
from pipelines.viz import Thumbnail, assemble_overview, make_thumbnail, render_quicklook, thumbnail_step


def test_fingerprint_is_canonical():
    a = {"grid": {"w": 1, "h": 2}, "queries": ["x"]}
    b = {"queries": ["x"], "grid": {"h": 2, "w": 1}}
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint({**a, "queries": ["y"]})


def test_diff_settings_names_the_keys():
    old = {"threshold": 0.5, "grid": {"width": 10}, "gone": 1}
    new = {"threshold": 0.7, "grid": {"width": 10}, "added": 2}
    assert diff_settings(old, new) == ["added: (absent) -> 2", "gone: 1 -> (absent)", "threshold: 0.5 -> 0.7"]


def test_resume_state_round_trip(tmp_path):
    out = str(tmp_path / "out")
    claim_output(out)
    settings = {"threshold": 0.5, "queries": ["a"]}
    write_fingerprint(out, settings)
    stored = stored_fingerprint(out)
    assert stored is not None
    check_resume(out, stored, settings)  # same settings: resume
    with pytest.raises(FingerprintMismatchError, match=r"threshold: 0.5 -> 0.6"):
        check_resume(out, stored, {**settings, "threshold": 0.6})
    with pytest.raises(FileExistsError, match="not empty"):
        claim_output(out)
    claim_output(out, overwrite=True)
    assert stored_fingerprint(out) is None


def test_manifest_done_clears_failed(tmp_path):
    m = RunManifest(str(tmp_path))
    assert m.done_ids() == [] and m.failed_ids() == []
    m.mark_failed("r00000c00001", "CorruptAssetError: bad", "read")
    assert m.failed_ids() == ["r00000c00001"]
    assert m.read_failed("r00000c00001")["reason"] == "CorruptAssetError: bad"
    m.mark_done("r00000c00001", {"n_tiles": 3})
    m.mark_done("r00000c00000", {"n_tiles": 4})
    assert m.done_ids() == ["r00000c00000", "r00000c00001"] and m.failed_ids() == []
    assert m.read_done("r00000c00000") == {"n_tiles": 4}


def test_folder_sha256_tracks_content_and_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"123")
    (tmp_path / "config.json").write_text("{}")
    h = folder_sha256(str(tmp_path))
    assert h == folder_sha256(str(tmp_path))
    (tmp_path / "a" / "w.bin").write_bytes(b"124")
    assert folder_sha256(str(tmp_path)) != h
    with pytest.raises(FileNotFoundError):
        folder_sha256(str(tmp_path / "missing"))


def test_package_versions_names_the_stack():
    v = package_versions()
    for key in (
        "python",
        "ray",
        "torch",
        "rasterio",
        "gdal",
        "zarr",
        "xarray",
        "geopandas",
        "pyarrow",
        "numpy",
    ):
        assert v[key], key


def test_default_lattice_matches_the_spec_at_480():
    lattice = TileLattice.for_tile_size(480)
    assert (lattice.overlap_px, lattice.margin_px) == (128, 16)
    for s in (64, 320, 512):
        lattice = TileLattice.for_tile_size(s)
        assert 2 * lattice.margin_px < lattice.overlap_px < s
    assert TileLattice.for_tile_size(480, overlap_px=96, margin_px=8) == TileLattice(480, 96, 8)


def test_thumbnails_tile_the_overview_exactly():
    """Thumbnails sampled on the grid lattice, from any chunking, assemble to the same overview."""
    rng = np.random.default_rng(0)
    h, w, step = 70, 50, 3
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    prob = rng.integers(0, 256, (2, h, w), dtype=np.uint8)
    valid = rng.random((h, w)) > 0.2

    def overview(chunk: int):
        thumbs = []
        for r in range(0, h, chunk):
            for c in range(0, w, chunk):
                sl = (slice(r, r + chunk), slice(c, c + chunk))
                th = make_thumbnail(rgb[sl], prob[(slice(None), *sl)], valid[sl], r, c, step, 128)
                thumbs.append(Thumbnail.from_bytes(th.to_bytes()))
        return assemble_overview(thumbs, (h, w), step, 2)

    a, b = overview(16), overview(25)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.rgb, rgb[::step, ::step])
    np.testing.assert_array_equal(a.masks, prob[:, ::step, ::step] >= 128)
    png = render_quicklook(a, ["roofs", "ponds"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert thumbnail_step((70, 50)) == 1 and thumbnail_step((10_000, 4096)) == 5


@pytest.fixture
def region_config(tmp_path: Path) -> RegionJobConfig:
    """A small job on a one-item catalog file (no Ray needed up to the chunk pipeline)."""
    from tests.fixtures.region_scenes import Square, write_scene

    scene = write_scene(tmp_path / "www", lambda p: str(p), squares=[Square("red", 10, 10, 8, 8)])
    catalog = tmp_path / "items.json"
    catalog.write_text(json.dumps({"type": "FeatureCollection", "features": [scene.item]}))
    return RegionJobConfig(
        bbox=scene.lonlat_bbox(),
        queries=("red",),
        out=str(tmp_path / "out"),
        model="tests.fixtures.predictors:factory",
        catalog=str(catalog),
        chunk_size_px=128,
        progress=False,
    )


def _stop_with(monkeypatch: pytest.MonkeyPatch, stop: BaseException | None) -> None:
    """Make the chunk pipeline (``region._execute``) stop the run: raise ``stop``, or send this process SIGTERM."""
    import pipelines.region

    def execute(*args: object) -> float:
        if stop is not None:
            raise stop
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        raise AssertionError("SIGTERM did not interrupt the run")

    monkeypatch.setattr(pipelines.region, "_execute", execute)


def _run_json(config: RegionJobConfig) -> dict:
    return json.loads((Path(config.out) / "run.json").read_text())


def test_an_exception_leaves_run_json_failed_with_a_message(region_config, monkeypatch):
    from pipelines.region import prepare_run, run_region

    _stop_with(monkeypatch, RuntimeError("ActorDiedError: the inference actor died"))
    with pytest.raises(RuntimeError, match="actor died"):
        run_region(region_config)
    run = _run_json(region_config)
    assert run["status"] == "failed" and run["finished_at"]
    assert run["message"].startswith("RuntimeError: ActorDiedError: the inference actor died")
    assert "rerun the same command" in run["message"] and "counts" not in run
    assert prepare_run(region_config)[2]  # the folder still resumes with the same settings


@pytest.mark.parametrize(
    ("stop", "cause"),
    [(KeyboardInterrupt(), "Ctrl-C (SIGINT)"), (None, "signal SIGTERM")],
    ids=["ctrl-c", "sigterm"],
)
def test_an_interrupt_leaves_run_json_interrupted(region_config, monkeypatch, stop, cause):
    from pipelines.region import run_region

    handler = signal.getsignal(signal.SIGTERM)
    _stop_with(monkeypatch, stop)
    with pytest.raises(KeyboardInterrupt):
        run_region(region_config)
    run = _run_json(region_config)
    assert run["status"] == "interrupted" and f"interrupted by {cause}" in run["message"]
    assert "without --overwrite" in run["message"]
    assert signal.getsignal(signal.SIGTERM) is handler  # the run's SIGTERM handler is gone again


def test_ctrl_c_in_the_job_prints_one_line_with_the_resume_command(region_config, monkeypatch, capsys):
    from jobs.infer_region import main

    _stop_with(monkeypatch, KeyboardInterrupt())
    c = region_config
    argv = ["--bbox", *map(str, c.bbox), "--catalog", str(c.catalog), "--model", c.model, "--query", "red"]
    argv += ["--out", c.out, "--chunk-size", "128", "--no-progress", "--overwrite"]
    assert main(argv) == 130
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert "interrupted by Ctrl-C" in lines[0] and "resume with: " in lines[0]
    command = lines[0].split("resume with: ", 1)[1]
    assert command.startswith(sys.executable) and f"--out {c.out}" in command
    assert "--overwrite" not in command and command.endswith("--no-progress")
    assert _run_json(c)["status"] == "interrupted"


def test_resume_command_drops_overwrite_only():
    from pipelines.region import resume_command

    cmd = resume_command(
        ["--overw", "--query", "ponds near roads", "--overwrite", "--overlap", "8"], "job.py"
    )
    assert cmd == f"{sys.executable} job.py --query 'ponds near roads' --overlap 8"


def test_package_versions_read_the_cuda_build_without_importing_torch():
    """The driver records torch's CUDA build but does not load torch (~0.5 GB) to do it."""
    import subprocess

    import torch

    code = "import json, sys; from pipelines.software import package_versions as p; v = p(); "
    code += "print(json.dumps([v['cuda'], v['torch'], 'torch' in sys.modules]))"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert json.loads(proc.stdout) == [torch.version.cuda, torch.__version__.split("+")[0], False]
