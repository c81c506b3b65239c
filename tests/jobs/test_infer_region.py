"""jobs/infer_region.py: --help, --dry-run plan, and clear errors for bad input (no Ray needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.infer_region import build_parser, main
from tests.fixtures.region_scenes import Square, write_scene

REPO = Path(__file__).resolve().parents[2]
MODEL = "tests.fixtures.predictors:factory"


@pytest.fixture
def catalog(tmp_path: Path) -> tuple[Path, tuple[float, float, float, float]]:
    """A one-item catalog file (file mode, no server) over a local COG."""
    scene = write_scene(
        tmp_path / "www", lambda p: str(p), squares=[Square("red", 10, 10, 8, 8)], nodata_cols=16
    )
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [scene.item]}))
    return path, scene.lonlat_bbox()


def _args(catalog: Path, bbox, *extra: str) -> list[str]:
    return ["--bbox", *map(str, bbox), "--catalog", str(catalog), "--model", MODEL, *extra]


def test_help_runs_as_a_script():
    res = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "infer_region.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert res.returncode == 0
    for flag in (
        "--bbox",
        "--query",
        "--stac-url",
        "--catalog",
        "--dry-run",
        "--overwrite",
        "--inference-resource",
    ):
        assert flag in res.stdout


def test_parser_defaults():
    args = build_parser().parse_args(["--bbox", "1", "2", "3", "4", "--query", "a", "--query", "b"])
    assert args.query == ["a", "b"] and args.chunk_size == 2048 and args.threshold == 0.5
    assert args.gpus_per_actor == 0.0 and args.actors == 1 and not args.overwrite


def test_dry_run_prints_the_plan(catalog, capsys, tmp_path):
    path, bbox = catalog
    out = tmp_path / "never-written"
    code = main(_args(path, bbox, "--query", "red", "--query", "blue", "--chunk-size", "128", "--dry-run"))
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert [it["id"] for it in plan["items"]] == ["scene"]
    assert plan["crs"]["epsg"] == 32618 and plan["resolution"] == [10.0, 10.0]
    assert plan["chunks"]["total"] == 9 and plan["chunks"]["with_imagery"] == 9
    assert plan["grid"]["width"] >= 256 and plan["grid"]["height"] >= 256
    assert plan["tiles"] > 0 and plan["lattice"]["tile_size_px"] == 64
    assert 6.0 < plan["area_km2"]["grid"] < 7.0 and plan["queries"] == ["red", "blue"]
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "no --query given"),
        (("--query", "   "), "query 0 is empty"),
        (("--query", "x" * 600), "more than the limit"),
        (("--query", "a", "--query", "a"), "given twice"),
        (("--query", "a", "--batch-size", "0"), "--batch-size = 0 is invalid"),
        (("--query", "a", "--threshold", "1.5"), "--threshold = 1.5 is invalid"),
    ],
)
def test_bad_queries_and_settings_are_refused(catalog, capsys, tmp_path, extra, message):
    path, bbox = catalog
    assert main(_args(path, bbox, "--out", str(tmp_path / "out"), *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ((10.0, 5.0, 11.0, 4.0), "is not below north"),
        ((170.0, 0.0, -170.0, 1.0), "crosses the antimeridian"),
        ((0.0, 0.0, 200.0, 1.0), "outside [-180, 180]"),
        ((-20.0, -20.0, 20.0, 20.0), "exceeds the limit"),
    ],
)
def test_bad_bbox_is_refused(catalog, capsys, tmp_path, bbox, message):
    path, _ = catalog
    assert main(_args(path, bbox, "--query", "a", "--out", str(tmp_path / "out"))) == 2
    assert message in capsys.readouterr().err


def test_empty_search_is_a_clear_error(catalog, capsys, tmp_path):
    path, bbox = catalog
    assert (
        main(_args(path, bbox, "--query", "a", "--datetime", "2001-01-01/2001-12-31", "--out", str(tmp_path)))
        == 2
    )
    err = capsys.readouterr().err
    assert "NoItemsError" in err and "widen the datetime" in err


def test_missing_model_and_out(catalog, capsys):
    path, bbox = catalog
    assert main(["--bbox", *map(str, bbox), "--catalog", str(path), "--query", "a"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "--out" in err


def test_unusable_model_is_refused_before_any_output(catalog, capsys, tmp_path):
    path, bbox = catalog
    base = ["--bbox", *map(str, bbox), "--catalog", str(path), "--query", "a", "--out", str(tmp_path / "o")]
    assert main([*base, "--model", "builtins:object"]) == 2
    assert "does not follow RegionPredictor" in capsys.readouterr().err
    assert main([*base, "--model", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_non_empty_foreign_output_folder_is_refused(catalog, capsys, tmp_path):
    path, bbox = catalog
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("not a region run")
    assert main(_args(path, bbox, "--query", "a", "--out", str(out))) == 2
    assert "holds no finished run state" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
