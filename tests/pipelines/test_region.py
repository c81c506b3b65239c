"""End-to-end region job against loopback servers: rustac STAC API + HTTP range server, the shared Ray runtime.

One scene (UTM 18N, 10 m, 256 x 256 px, 16 nodata columns on the left) with red and blue squares at known
positions, one of them cut by a chunk seam; the deterministic colour predictor of ``tests.fixtures.predictors``
(not the project's model), so every expectation is exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from tests.fixtures.region_scenes import Scene, Square, write_scene
from tests.fixtures.servers import CogServer, serve_directory, start_rustac

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
MODEL = "tests.fixtures.predictors:slow_factory"  # no delay unless a test writes flags/delay_s
SQUARES = [
    Square("red", 40, 40, 20, 20),
    Square("red", 140, 60, 40, 20),  # crosses the chunk seam at grid row 160 (scene row 159)
    Square("blue", 180, 180, 20, 30),
]
QUERIES = ["red squares", "blue roofs", "everything"]
CHUNK = 160  # a 258 x 257 px grid: 2 x 2 chunks


@dataclass
class SceneAPI:
    scene: Scene
    url: str
    server: CogServer


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def scene_api(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("region-scene")
    with serve_directory(root / "www") as server:
        scene = write_scene(root / "www", server.href, squares=SQUARES, nodata_cols=16)
        url, proc = start_rustac([scene.item], root / "rustac")
        try:
            yield SceneAPI(scene, url, server)
        finally:
            _stop(proc)


def _argv(
    api: SceneAPI, out: Path, *extra: str, model: str = MODEL, queries: list[str] = QUERIES
) -> list[str]:
    argv = ["--bbox", *map(str, api.scene.lonlat_bbox()), "--stac-url", api.url, "--model", model]
    for q in queries:
        argv += ["--query", q]
    return [
        *argv,
        "--out",
        str(out),
        "--chunk-size",
        str(CHUNK),
        "--batch-size",
        "4",
        "--no-progress",
        *extra,
    ]


def _run(argv: list[str]) -> int:
    from jobs.infer_region import main

    return main(argv)


def _tree_hash(path: Path) -> str:
    """Hash of every file under ``path`` (relative names + bytes), or of the file itself."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def clean_run(ray_local, scene_api: SceneAPI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    assert _run(_argv(scene_api, out)) == 0
    return out


def test_polygons_land_on_the_painted_squares(clean_run: Path, scene_api: SceneAPI):
    gdf = gpd.read_parquet(clean_run / "polygons.parquet")
    assert gdf.crs.to_epsg() == 32618
    expected_cols = ["polygon_id", "query_id", "query", "score_mean", "score_max", "area_m2", "chunk_id"]
    assert set(expected_cols + ["n_chunks", "item_ids", "datetime", "geometry"]) <= set(gdf.columns)
    scene = scene_api.scene
    for query, colour in (("red squares", "red"), ("blue roofs", "blue")):
        got = gdf[gdf["query"] == query].sort_values("polygon_id")
        want = [scene.square_bounds(s) for s in SQUARES if s.colour == colour]
        assert len(got) == len(want), query
        got_bounds = sorted(tuple(b) for b in got.geometry.bounds.to_numpy())
        assert got_bounds == sorted(want)  # exact: pixel edges of a 10 m grid aligned with the scene
        for geom, bounds in zip(got.geometry, got_bounds, strict=True):
            assert geom.equals(shapely.box(*bounds))
        assert np.allclose(got["score_mean"], 1.0) and np.allclose(got["score_max"], 1.0)
        planar = np.array([shapely.box(*b).area for b in got_bounds])
        assert np.allclose(np.sort(got["area_m2"].to_numpy()), np.sort(planar), rtol=2e-3)  # geodesic vs UTM
        assert all(list(ids) == ["scene"] for ids in got["item_ids"])
        assert set(got["datetime"]) == {"2024-06-01T15:00:00Z"}
    seam = gdf[(gdf["query"] == "red squares") & (gdf["n_chunks"] == 2)]
    assert len(seam) == 1  # the square cut by the chunk seam is merged back into one polygon


def test_nodata_border_gives_no_polygons(clean_run: Path, scene_api: SceneAPI):
    """A query the predictor answers with 1 everywhere yields exactly the valid footprint, not the border."""
    gdf = gpd.read_parquet(clean_run / "polygons.parquet")
    everything = gdf[gdf["query"] == "everything"]
    assert len(everything) == 1
    scene = scene_api.scene
    x0, y0 = scene.transform @ (scene.nodata_cols, 0)
    x1, y1 = scene.transform @ scene.shape[::-1]
    footprint = shapely.box(x0, y1, x1, y0)
    assert everything.geometry.iloc[0].equals(footprint)
    from pipelines.write import open_masks

    valid = open_masks(str(clean_run / "masks.zarr"))["valid"].values
    chunks_with_imagery = {(r // CHUNK, c // CHUNK) for r, c in zip(*np.nonzero(valid), strict=True)}
    assert everything["n_chunks"].iloc[0] == len(chunks_with_imagery) > 1


def test_masks_zarr_matches_the_scene(clean_run: Path, scene_api: SceneAPI):
    import rioxarray  # noqa: F401 (the .rio accessor)

    from pipelines.write import open_masks

    ds = open_masks(str(clean_run / "masks.zarr"))
    assert ds["prob"].dtype == np.uint8 and ds["prob"].dims == ("query", "y", "x")
    assert ds.rio.crs.to_epsg() == 32618
    assert list(ds.attrs["queries"]) == QUERIES
    prob = ds["prob"].values
    valid = ds["valid"].values.astype(bool)
    scene = scene_api.scene
    # Grid row/col of scene pixel (0, 0): the grid snaps to the scene's pixel phase.
    x0, y0 = ds.rio.transform() @ (0, 0)
    r0 = int(round((y0 - scene.transform.f) / 10.0))
    c0 = int(round((scene.transform.c - x0) / 10.0))
    for sq in SQUARES:
        q = 0 if sq.colour == "red" else 1
        rows = slice(r0 + sq.row, r0 + sq.row + sq.height)
        cols = slice(c0 + sq.col, c0 + sq.col + sq.width)
        assert (prob[q, rows, cols] == 255).all()
    assert int((prob[0] == 255).sum()) == sum(s.height * s.width for s in SQUARES if s.colour == "red")
    assert not valid[:, : c0 + scene.nodata_cols].any()  # nodata border stays invalid
    assert (prob[:, ~valid] == 0).all()
    assert (prob[2][valid] == 255).all()


def test_run_json_and_quicklook(clean_run: Path, scene_api: SceneAPI):
    run = json.loads((clean_run / "run.json").read_text())
    assert run["status"] == "complete" and run["failures"] == []
    assert run["queries"] == QUERIES
    assert run["counts"]["chunks"]["done"] == run["counts"]["chunks"]["total"] == 4
    assert run["counts"]["polygons"] == 4
    assert run["polygons_per_query"] == {"red squares": 2, "blue roofs": 1, "everything": 1}
    assert run["counts"]["tile_query_decodes"] == 3 * run["counts"]["tiles"]
    item = run["items"][0]
    assert item["id"] == "scene" and item["asset_hrefs"]["visual"].startswith(scene_api.server.url)
    assert run["model"]["reference"] == MODEL
    assert run["versions"]["ray"] and run["versions"]["torch"]
    assert run["grid"]["epsg"] == 32618 and run["grid"]["chunk_size_px"] == CHUNK
    assert run["timings_s"]["pipeline_s"] > 0 and run["throughput"]["tiles_per_s"] > 0
    png = (clean_run / "quicklook.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (clean_run / "inputs" / "items.parquet").exists()


def test_rerun_resumes_with_nothing_to_do_and_identical_outputs(
    clean_run: Path, scene_api: SceneAPI, tmp_path
):
    import shutil

    copy = tmp_path / "out"
    shutil.copytree(clean_run, copy)
    before = (_tree_hash(copy / "masks.zarr"), _tree_hash(copy / "polygons.parquet"))
    (copy / "polygons.parquet").unlink()  # finalise must rebuild it from the parts
    assert _run(_argv(scene_api, copy)) == 0
    assert (_tree_hash(copy / "masks.zarr"), _tree_hash(copy / "polygons.parquet")) == before
    run = json.loads((copy / "run.json").read_text())
    assert run["resumed"] and run["counts"]["chunks"]["skipped_done_before"] == 4


def test_different_settings_are_refused(clean_run: Path, scene_api: SceneAPI, capsys):
    before = _tree_hash(clean_run)
    assert _run(_argv(scene_api, clean_run, "--threshold", "0.7")) == 2
    err = capsys.readouterr().err
    assert "settings differ" in err and "threshold: 0.5 -> 0.7" in err and "--overwrite" in err
    assert _tree_hash(clean_run) == before


def test_resume_after_killing_the_driver_is_byte_identical(
    ray_local, clean_run: Path, scene_api: SceneAPI, tmp_path
):
    out = tmp_path / "out"
    delay = ray_local.flags_dir / "delay_s"
    delay.write_text("0.4")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "infer_region.py"),
        *_argv(scene_api, out),
        "--address",
        ray_local.address,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        done = out / "_state" / "done"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if done.is_dir() and len(list(done.glob("*.json"))) >= 1:
                break
            time.sleep(0.1)
        assert proc.poll() is None, (
            f"driver ended before it could be killed: {proc.stderr.read().decode()[-3000:]}"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        delay.unlink(missing_ok=True)
    n_done = len(list(done.glob("*.json")))
    assert 1 <= n_done < 4
    assert not (out / "polygons.parquet").exists()
    assert _run(_argv(scene_api, out)) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["resumed"] and run["counts"]["chunks"]["skipped_done_before"] >= n_done
    assert run["counts"]["chunks"]["done_this_run"] == 4 - run["counts"]["chunks"]["skipped_done_before"]
    assert _tree_hash(out / "masks.zarr") == _tree_hash(clean_run / "masks.zarr")
    assert _tree_hash(out / "polygons.parquet") == _tree_hash(clean_run / "polygons.parquet")


def test_actor_crash_is_redone_without_duplicates(ray_local, clean_run: Path, scene_api: SceneAPI, tmp_path):
    flags = ray_local.flags_dir
    (flags / "crash-once").write_text("armed")
    out = tmp_path / "out"
    assert _run(_argv(scene_api, out, model="tests.fixtures.predictors:crash_once_factory")) == 0
    assert not (flags / "crash-once").exists() and list(flags.glob("crashed-*"))  # it did crash, once
    got = gpd.read_parquet(out / "polygons.parquet")
    want = gpd.read_parquet(clean_run / "polygons.parquet")
    assert got["polygon_id"].is_unique and len(got) == len(want)
    assert _tree_hash(out / "polygons.parquet") == _tree_hash(clean_run / "polygons.parquet")
    from pipelines.write import open_masks

    np.testing.assert_array_equal(
        open_masks(str(out / "masks.zarr"))["prob"].values,
        open_masks(str(clean_run / "masks.zarr"))["prob"].values,
    )


def test_corrupt_cog_fails_its_chunks_only(ray_local, tmp_path, capsys):
    """Two scenes side by side, the east one corrupt: its chunks fail with the reason, the rest finish."""
    from pyproj import Transformer

    with serve_directory(tmp_path / "www") as server:
        good = write_scene(tmp_path / "www", server.href, "west", squares=[Square("red", 40, 40, 20, 20)])
        bad = write_scene(
            tmp_path / "www", server.href, "east", origin=(502_560.0, 4_500_000.0), corrupt=True
        )
        url, proc = start_rustac([good.item, bad.item], tmp_path / "rustac")
        try:
            to_ll = Transformer.from_crs("EPSG:32618", "EPSG:4326", always_xy=True)
            w, s = to_ll.transform(500_000.0, 4_497_440.0)
            e, n = to_ll.transform(505_120.0, 4_500_000.0)
            argv = [
                "--bbox",
                str(w),
                str(s),
                str(e),
                str(n),
                "--stac-url",
                url,
                "--model",
                MODEL,
                "--query",
                "red",
            ]
            out = tmp_path / "out"
            argv += ["--out", str(out), "--chunk-size", "128", "--no-progress"]
            assert _run(argv) == 1
        finally:
            _stop(proc)
    err = capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed"
    failed = {f["chunk_id"]: f for f in run["failures"]}
    assert failed and run["counts"]["chunks"]["failed"] == len(failed)
    for cid, f in failed.items():
        assert f["stage"] == "read" and "east.tif" in f["reason"] and "Corrupt" in f["reason"]
        assert f"FAILED chunk {cid}" in err
    assert run["counts"]["chunks"]["done"] + len(failed) == run["counts"]["chunks"]["total"]
    assert all(int(cid[-5:]) >= 1 for cid in failed)  # the west-only column of chunks succeeded
    gdf = gpd.read_parquet(out / "polygons.parquet")
    assert sorted(tuple(b) for b in gdf.geometry.bounds.to_numpy()) == [good.square_bounds(good.squares[0])]


def test_crobim_tiny_checkpoint_end_to_end(ray_local, scene_api: SceneAPI, tmp_path):
    """The real path: a crobim-tiny checkpoint folder, loaded once per actor, hash recorded; map.html on request."""
    import torch

    from crobim.modeling import build_model
    from crobim.weights import save_model
    from pipelines.provenance import folder_sha256
    from pipelines.write import open_masks

    torch.manual_seed(0)
    ckpt = tmp_path / "crobim-tiny"
    save_model(build_model("crobim-tiny"), ckpt)
    out = tmp_path / "out"
    bbox = scene_api.scene.lonlat_bbox(inset_px=64)  # ~128 x 128 px: one chunk, a few 320 px tiles
    argv = [
        "--bbox",
        *map(str, bbox),
        "--stac-url",
        scene_api.url,
        "--model",
        str(ckpt),
        "--query",
        "red roofs",
    ]
    argv += [
        "--query",
        "ponds",
        "--out",
        str(out),
        "--chunk-size",
        "256",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    assert _run([*argv, "--html"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["kind"] == "checkpoint" and run["model"]["sha256"] == folder_sha256(str(ckpt))
    assert run["grid"]["tile_size_px"] == 320 and run["counts"]["tiles"] >= 1
    assert run["counts"]["tile_query_decodes"] == 2 * run["counts"]["tiles"]
    ds = open_masks(str(out / "masks.zarr"))
    prob, valid = ds["prob"].values, ds["valid"].values.astype(bool)
    assert prob.shape[0] == 2 and valid.all() and (prob > 0).any()
    assert (out / "map.html").stat().st_size > 10_000 and (out / "quicklook.png").exists()
