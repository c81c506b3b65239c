"""Ctrl-C in the middle of a 16-chunk region job, then the resume command it prints: only the rest is processed,
and the outputs equal those of an uninterrupted run byte for byte.

The interrupted job is a real subprocess (``jobs/infer_region.py``) in its own session that starts its own Ray
runtime; the test sends SIGINT to the whole process group, as a terminal's Ctrl-C does, once a few chunks have
their done marker. Its predictor (``tests.fixtures.predictors:slow_factory``) sleeps per call, so the job cannot
finish before the interrupt lands; the uninterrupted run and the resume run on the shared test runtime, where the
same predictor runs at full speed (the delay is a file in the subprocess's own flags folder).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.fixtures.region_scenes import Square, write_scene

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
MODEL = "tests.fixtures.predictors:slow_factory"
CHUNK = 128  # a 386 x 385 px grid: 4 x 4 chunks, every one with imagery
CHUNKS = 16
DONE_BEFORE_INTERRUPT = 3
SQUARES = [
    *(Square("red", 20 + 90 * i, 30 + 70 * j, 14, 18) for i in range(4) for j in range(5)),
    *(Square("blue", 60 + 90 * i, 10 + 100 * j, 20, 9) for i in range(3) for j in range(3)),
    Square("red", 115, 118, 24, 24),  # across the seams of four chunks
    Square("blue", 250, 300, 12, 40),  # across a row seam
]


def _compare_module() -> ModuleType:
    """``scripts/compare_region_outputs.py``, loaded by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "compare_region_outputs", REPO / "scripts" / "compare_region_outputs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _done(out: Path) -> int:
    folder = out / "_state" / "done"
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def _run(argv: list[str]) -> int:
    from jobs.infer_region import main

    return main(argv)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[float, float, float, float]]:
    """A 384 x 384 px scene (10 m) with squares on and across chunk seams, in a catalog file."""
    root = tmp_path_factory.mktemp("resume-region")
    scene = write_scene(root / "www", lambda p: str(p), shape=(384, 384), squares=SQUARES)
    catalog = root / "items.json"
    catalog.write_text(json.dumps({"type": "FeatureCollection", "features": [scene.item]}))
    return catalog, scene.lonlat_bbox()


def _argv(region: tuple[Path, tuple[float, ...]], out: Path) -> list[str]:
    catalog, bbox = region
    argv = ["--bbox", *map(str, bbox), "--catalog", str(catalog), "--model", MODEL]
    argv += ["--query", "red squares", "--query", "blue roofs", "--out", str(out)]
    return [*argv, "--chunk-size", str(CHUNK), "--batch-size", "4", "--no-progress"]


def _interrupt_after_some_chunks(argv: list[str], out: Path, flags: Path) -> tuple[int, str, list[int]]:
    """Run the job in its own session and Ray runtime, Ctrl-C it after a few chunks; (exit code, stderr, pids)."""
    import psutil

    (flags / "delay_s").write_text(
        "0.3"
    )  # per predict call: >= 1 s per chunk, >= 13 s after the interrupt point
    env = {**os.environ, "PYTHONPATH": str(REPO), "CROBIM_TEST_FLAGS_DIR": str(flags), "RAY_ADDRESS": "local"}
    cmd = [sys.executable, str(REPO / "jobs" / "infer_region.py"), *argv]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 480  # Ray start-up and the first chunks on a loaded 2-core machine
        while time.monotonic() < deadline and proc.poll() is None and _done(out) < DONE_BEFORE_INTERRUPT:
            time.sleep(0.05)
        assert proc.poll() is None, f"the job ended before the interrupt: {proc.communicate()[1][-3000:]}"
        assert _done(out) >= DONE_BEFORE_INTERRUPT, "no chunk finished within 480 s"
        pids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return proc.returncode, err, pids


def _assert_ray_is_gone(pids: list[int]) -> None:
    """Every process the job started (its Ray runtime) has exited; leftovers are killed and fail the test."""
    import psutil

    deadline = time.monotonic() + 60
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [
            pid
            for pid in alive
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
        time.sleep(0.5)
    for pid in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    assert not alive, f"processes of the interrupted job's Ray runtime still run: {alive}"


def test_interrupted_run_resumes_to_the_uninterrupted_outputs(ray_local, region, tmp_path):
    clean = tmp_path / "clean"
    assert _run(_argv(region, clean)) == 0
    out = tmp_path / "out"
    flags = tmp_path / "flags"
    flags.mkdir()
    code, err, pids = _interrupt_after_some_chunks([*_argv(region, out), "--overwrite"], out, flags)
    _assert_ray_is_gone(pids)

    # One line, no traceback, exit 130; run.json tells the truth; the done markers are kept.
    assert code == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and "resume with: " in lines[0], err[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and "Ctrl-C" in run["message"]
    done_before = _done(out)
    assert DONE_BEFORE_INTERRUPT <= done_before < CHUNKS
    assert not (out / "polygons.parquet").exists()

    # The printed command (same arguments, without --overwrite) resumes: only the rest is processed.
    resume = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert resume[:2] == [sys.executable, str(REPO / "jobs" / "infer_region.py")]
    assert resume[2:] == _argv(region, out)
    assert _run(resume[2:]) == 0
    run = json.loads((out / "run.json").read_text())
    chunks = run["counts"]["chunks"]
    assert run["status"] == "complete" and run["resumed"] and "message" not in run
    assert chunks["total"] == chunks["done"] == CHUNKS
    assert chunks["skipped_done_before"] == done_before > 0
    assert chunks["done_this_run"] == CHUNKS - done_before

    # Byte for byte: the polygon table, every masks.zarr file, the quicklook.
    diffs = _compare_module().compare_outputs(clean, out)
    assert not any(diffs.values()), diffs
    assert (out / "polygons.parquet").read_bytes() == (clean / "polygons.parquet").read_bytes()
    zarr_files = _files(out / "masks.zarr")
    assert zarr_files == _files(clean / "masks.zarr") and len(zarr_files) > 2 * CHUNKS
    assert (out / "quicklook.png").read_bytes() == (clean / "quicklook.png").read_bytes()
    assert json.loads((clean / "run.json").read_text())["polygons_per_query"] == run["polygons_per_query"]
