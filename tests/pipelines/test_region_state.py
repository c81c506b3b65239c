"""Resume state and provenance (fingerprint, manifest, hashes), quicklook thumbnails and lattice defaults."""

from __future__ import annotations

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
    package_versions,
    stored_fingerprint,
    write_fingerprint,
)
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
