"""Relation queries end to end: parsed, shared sub-queries decoded once, answered after the seam merge in metres.

One scene (UTM 18N, 10 m pixels, 2 x 2 chunks of 160 px) with red and blue squares at known distances, a red and a
blue square both cut by the chunk seam; the deterministic colour predictor of ``tests.fixtures.predictors``
answers each expression by the colour it names, so every distance and every kept polygon is exact. Under
``--relations model`` the same predictor ignores the relation, as a weak model does.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from tests.fixtures.region_scenes import Square, write_scene
from tests.fixtures.servers import serve_directory, start_rustac, stop_process

pytestmark = pytest.mark.ray

MODEL = "tests.fixtures.predictors:factory"
SQUARES = {
    "r_far": Square("red", 20, 20, 10, 10),
    "b_top": Square("blue", 20, 100, 10, 10),
    "r_at_50": Square("red", 20, 85, 10, 10),  # 5 px = exactly 50 m left of b_top
    "r_below": Square("red", 50, 100, 10, 10),  # 200 m below b_top
    "r_seam": Square("red", 150, 60, 20, 10),  # cut by the chunk seam (grid row 160)
    "b_seam": Square("blue", 150, 74, 20, 10),  # cut by the seam too, 40 m right of r_seam
    "r_at_60": Square("red", 200, 200, 10, 10),
    "b_right": Square("blue", 200, 216, 10, 10),  # 60 m right of r_at_60
}
WITHIN = "red squares within 50 m of blue roofs"
NOT_NEAR = "red squares not near blue roofs"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("relations-scene")
    with serve_directory(root / "www") as server:
        written = write_scene(root / "www", server.href, squares=list(SQUARES.values()))
        url, proc = start_rustac([written.item], root / "rustac")
        try:
            yield written, url
        finally:
            stop_process(proc)


def _run(scene, out: Path, queries: list[str], *extra: str) -> dict:
    from jobs.infer_region import main

    written, url = scene
    argv = [
        "--bbox",
        *map(str, written.lonlat_bbox()),
        "--stac-url",
        url,
        "--model",
        MODEL,
        "--out",
        str(out),
    ]
    for q in queries:
        argv += ["--query", q]
    argv += ["--chunk-size", "160", "--near-m", "50", "--no-progress", *extra]
    assert main(argv) == 0
    return json.loads((out / "run.json").read_text())


def _box(scene, name: str) -> shapely.Polygon:
    return shapely.box(*scene[0].square_bounds(SQUARES[name]))


@pytest.fixture(scope="module")
def composed(ray_local, scene, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("composed") / "out"
    return out, _run(scene, out, [WITHIN, NOT_NEAR])


def _answers(out: Path, query: str) -> gpd.GeoDataFrame:
    gdf = gpd.read_parquet(out / "polygons.parquet")
    return gdf[(gdf["query"] == query) & (gdf["role"] == "answer")]


def _kept(scene, answers: gpd.GeoDataFrame) -> set[str]:
    names = set()
    for geom in answers.geometry:
        hits = [n for n in SQUARES if SQUARES[n].colour == "red" and _box(scene, n).equals(geom)]
        assert len(hits) == 1, geom.wkt  # each answer is one whole red square, never clipped
        names.add(hits[0])
    return names


def test_relations_keep_whole_subjects_at_exact_distances(composed, scene):
    out, _ = composed
    within = _answers(out, WITHIN)
    assert _kept(scene, within) == {"r_at_50", "r_seam"}  # 50 m is within 50 m; 60 m and more are not
    assert _kept(scene, _answers(out, NOT_NEAR)) == {"r_far", "r_below", "r_at_60"}
    gdf = gpd.read_parquet(out / "polygons.parquet")
    ids = dict(zip(gdf["polygon_id"], gdf.geometry, strict=True))
    for _, row in within.iterrows():
        # distance_m: to the nearest object polygon, in metres; nearest_id: that polygon's row in the file.
        nearest = ids[row["nearest_id"]]
        assert row["distance_m"] == pytest.approx(row.geometry.distance(nearest), abs=1e-6)
        assert row["relation"] == "within 50 m of all blue roofs"
    seam_row = within[within.geometry.apply(lambda g: g.equals(_box(scene, "r_seam")))].iloc[0]
    assert seam_row["distance_m"] == pytest.approx(40.0, abs=1e-6)
    seam_object = gdf[gdf["polygon_id"] == seam_row["nearest_id"]].iloc[0]
    assert seam_object["n_chunks"] == 2 and seam_object.geometry.equals(_box(scene, "b_seam"))
    far = _answers(out, NOT_NEAR)
    assert np.allclose(sorted(far["distance_m"]), sorted([700.0, 200.0, 60.0]))


def test_sub_queries_are_decoded_once_and_kept_with_their_role(composed):
    out, run = composed
    # Two queries share both expressions: two decodes per tile, not four.
    assert run["query_plan"]["expressions"] == ["all red squares", "all blue roofs"]
    assert run["counts"]["tile_query_decodes"] == 2 * run["counts"]["tiles"] > 0
    gdf = gpd.read_parquet(out / "polygons.parquet")
    sub = gdf[gdf["role"] == "sub-query"]
    assert sorted(set(sub["query"])) == ["all blue roofs", "all red squares"]
    assert (sub["query"] == "all red squares").sum() == 5 and (sub["query"] == "all blue roofs").sum() == 3
    assert [q["query"] for q in run["output_queries"]] == [
        WITHIN,
        NOT_NEAR,
        "all red squares",
        "all blue roofs",
    ]
    for entry in run["output_queries"]:
        assert set(gdf.loc[gdf["query_id"] == entry["query_id"], "query"]) <= {entry["query"]}
    assert run["polygons_per_query"] == {WITHIN: 2, NOT_NEAR: 3}


def test_model_mode_sends_the_text_as_is(ray_local, scene, tmp_path: Path):
    """``--relations model``: one decode per query and tile; this predictor ignores the relation."""
    out = tmp_path / "out"
    run = _run(scene, out, [WITHIN, NOT_NEAR], "--relations", "model")
    assert run["query_plan"]["expressions"] == [WITHIN, NOT_NEAR]
    assert run["counts"]["tile_query_decodes"] == 2 * run["counts"]["tiles"]
    assert len(_answers(out, WITHIN)) == 5 and "distance_m" in gpd.read_parquet(out / "polygons.parquet")


def test_a_new_relation_resumes_without_decoding_again(ray_local, scene, tmp_path: Path):
    """Relations are finalised from the parts: another distance over the same expressions re-decodes nothing."""
    out = tmp_path / "out"
    _run(scene, out, [WITHIN])
    run = _run(scene, out, ["red squares within 65 m of blue roofs"])
    assert run["resumed"] and run["counts"]["chunks"]["done_this_run"] == 0
    assert _kept(scene, _answers(out, "red squares within 65 m of blue roofs")) == {
        "r_at_50",
        "r_seam",
        "r_at_60",
    }


def test_vector_mode_refuses_what_it_cannot_parse(scene, tmp_path: Path, capsys):
    from jobs.infer_region import main

    written, url = scene
    argv = ["--bbox", *map(str, written.lonlat_bbox()), "--stac-url", url, "--model", MODEL]
    argv += [
        "--query",
        "red squares close to blue roofs",
        "--relations",
        "vector",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "red squares close to blue roofs" in err and "near" in err
    assert not (tmp_path / "o").exists()
