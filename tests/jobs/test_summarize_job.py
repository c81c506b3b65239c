"""``jobs/summarize.py`` end to end on a tiny output folder written by the pipeline's writers."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest

from jobs.summarize import main
from tests.pipelines.test_summarize import PX_M2, write_outputs


def test_cells_table_and_geoparquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = write_outputs(tmp_path / "run")
    assert main(["--out", str(out), "--cell-m", "32", "--top", "2", "--log-level", "WARNING"]) == 0
    printed = capsys.readouterr().out
    assert "totals per query over 9 cells" in printed and "top 2 cells of 'roofs'" in printed
    table = gpd.read_parquet(out / "summary.parquet")
    assert table.crs.to_epsg() == 32633
    assert table.loc[table["query"] == "roofs", "mask_area_m2"].sum() == 100 * PX_M2


def test_on_ray_with_address(tmp_path: Path, ray_local, capsys: pytest.CaptureFixture[str]) -> None:
    out = write_outputs(tmp_path / "run")
    target = tmp_path / "elsewhere" / "cells.parquet"
    argv = ["--out", str(out), "--cell-m", "32", "--output", str(target), "--address", ray_local.address]
    assert main(argv) == 0
    assert "(ray," in capsys.readouterr().out
    assert gpd.read_parquet(target).loc[lambda t: t["query"] == "roofs", "mask_area_m2"].sum() == 100 * PX_M2


def test_folder_without_masks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path), "--cell-m", "32"]) == 2
    err = capsys.readouterr().err
    assert "masks.zarr not found" in err and "region job's output folder" in err
    assert not (tmp_path / "summary.parquet").exists()


def test_units_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--out", "x"])
    assert exc.value.code == 2
    assert "--cell-m" in capsys.readouterr().err
