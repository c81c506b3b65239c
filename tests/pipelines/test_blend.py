"""Global tile lattice and blending: partition of unity, constant fields, chunk-size invariance, clip mode."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.blend import Blender, TileLattice, cut_tiles, tile_windows

LATTICE = TileLattice(tile_size_px=64, overlap_px=24, margin_px=4)  # stride 40, ramp 16, halo 60


def _box_filter_model(tile: np.ndarray) -> np.ndarray:
    """Translation-equivariant toy model: 5x5 mean of channel 0 / 255 (radius 2 <= margin), zero padded."""
    p = ndimage.uniform_filter(tile[..., 0].astype(np.float64) / 255.0, size=5, mode="constant")
    return p[None].astype(np.float32)  # (1, S, S)


def _blend_chunks(image: np.ndarray, chunk_px: int, lattice: TileLattice, mode: str = "cosine") -> np.ndarray:
    """Blend a whole grid chunk by chunk, each chunk reading its core + halo from ``image`` (zero outside)."""
    h, w = image.shape[:2]
    halo = lattice.halo_px
    padded = np.zeros((h + 2 * halo, w + 2 * halo, image.shape[2]), dtype=image.dtype)
    padded[halo : halo + h, halo : halo + w] = image
    out = np.zeros((1, h, w), dtype=np.uint8)
    for r0 in range(0, h, chunk_px):
        for c0 in range(0, w, chunk_px):
            core = (r0, c0, min(chunk_px, h - r0), min(chunk_px, w - c0))
            window = padded[r0 : r0 + core[2] + 2 * halo, c0 : c0 + core[3] + 2 * halo]
            blender = Blender(lattice, core, n_queries=1, mode=mode)
            for win, tile in cut_tiles(
                window, (r0 - halo, c0 - halo), tile_windows(lattice, core), lattice.tile_size_px
            ):
                blender.add(win, _box_filter_model(tile))
            out[:, r0 : r0 + core[2], c0 : c0 + core[3]] = blender.result()
    return out


def test_lattice_geometry():
    lat = TileLattice()  # S=480, V=128, m=16 (PIPELINE.md defaults)
    assert (lat.stride_px, lat.ramp_px, lat.halo_px, lat.origin_px) == (352, 96, 464, -112)
    with pytest.raises(ValueError, match="2m <= V < S"):
        TileLattice(64, 4, 4)


@pytest.mark.parametrize("mode", ["cosine", "clip"])
def test_partition_of_unity(mode):
    """Summed weights of all lattice tiles are 1 at every grid pixel (cosine ramps are complementary)."""
    lat = LATTICE
    w1 = lat.weights_1d(mode)
    n = 500
    total = np.zeros(n)
    for k in lat.tile_range(0, n):
        start = lat.origin_px + k * lat.stride_px
        lo, hi = max(start, 0), min(start + lat.tile_size_px, n)
        total[lo:hi] += w1[lo - start : hi - start]
    np.testing.assert_allclose(total, 1.0, atol=1e-6 if mode == "cosine" else 0)
    # Margins carry no weight; in cosine mode the kept area is floored above 0.
    assert np.all(w1[: lat.margin_px] == 0) and np.all(w1[-lat.margin_px :] == 0)
    if mode == "cosine":
        assert w1[lat.margin_px : -lat.margin_px].min() > 0


def test_constant_field_stays_constant():
    core = (0, 0, 150, 170)
    blender = Blender(LATTICE, core, n_queries=2)
    for win in tile_windows(LATTICE, core):
        blender.add(win, np.stack([np.full((64, 64), 0.6), np.full((64, 64), 0.25)]).astype(np.float32))
    out = blender.result()
    assert np.all(out[0] == round(0.6 * 255)) and np.all(out[1] == round(0.25 * 255))
    valid = np.ones((150, 170), bool)
    valid[:10] = False
    assert np.all(blender.result(valid)[:, :10] == 0)


def test_tiles_fit_in_halo_and_cover_core():
    core = (120, 80, 100, 90)
    wins = tile_windows(LATTICE, core)
    h = LATTICE.halo_px
    for win in wins:
        assert win.row >= core[0] - h and win.row + 64 <= core[0] + core[2] + h
        assert win.col >= core[1] - h and win.col + 64 <= core[1] + core[3] + h
    assert [(w.i, w.j) for w in wins] == sorted((w.i, w.j) for w in wins)  # fixed row-major order


@pytest.mark.parametrize("mode", ["cosine", "clip"])
def test_chunk_size_invariance_and_no_seams(mode):
    """A translation-equivariant model gives the same mosaic for C=256 and C=512 and equals the global result."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(700, 600, 3), dtype=np.uint8)
    small = _blend_chunks(image, 256, LATTICE, mode)
    large = _blend_chunks(image, 512, LATTICE, mode)
    assert np.abs(small.astype(int) - large.astype(int)).max() <= 1
    # Away from the zero-padded grid border the blended tiles reproduce the global filter exactly.
    truth = ndimage.uniform_filter(image[..., 0].astype(np.float64) / 255.0, size=5, mode="constant")
    expected = np.rint(truth * 255).astype(int)
    diff = np.abs(small[0].astype(int) - expected)
    assert diff[3:-3, 3:-3].max() <= 1


def test_cut_tiles_skips_invalid_and_zeroes_invalid_pixels():
    image = np.full((200, 200, 3), 7, np.uint8)
    valid = np.zeros((200, 200), bool)
    valid[100:, 100:] = True
    core = (60, 60, 80, 80)
    wins = tile_windows(LATTICE, core)
    tiles = list(cut_tiles(image, (0, 0), wins, 64, valid))
    assert 0 < len(tiles) < len(wins)
    for win, tile in tiles:
        v = valid[win.row : win.row + 64, win.col : win.col + 64]
        assert np.all(tile[~v] == 0) and np.all(tile[v] == 7)
    with pytest.raises(ValueError, match="halo"):
        list(cut_tiles(image[:50, :50], (0, 0), wins, 64))
