import numpy as np
import pytest

from crobim.data.rle import decode_rle, decode_segmentation, rle_counts_from_string
from tests.fixtures.crobim_data import load_generator


# Strings produced by pycocotools.mask.encode for a 25 x 25 mask with mask[a:b, a:b] = 1
# (pytorchcocotools test cases, asserted there against pycocotools itself).
@pytest.mark.parametrize(
    "a,b,counts",
    [(0, 5, "05d00000000d?"), (5, 10, "R45d00000000b;"), (20, 25, "X`05d00000000")],
)
def test_known_pycocotools_strings(a, b, counts):
    expected = np.zeros((25, 25), dtype=bool)
    expected[a:b, a:b] = True
    np.testing.assert_array_equal(decode_rle({"size": [25, 25], "counts": counts}), expected)
    np.testing.assert_array_equal(decode_rle({"size": [25, 25], "counts": counts.encode()}), expected)


def test_uncompressed_counts_are_column_major():
    m = decode_rle({"size": [2, 3], "counts": [1, 2, 3]})
    # Fortran order: (0,0) bg, (1,0) fg, (0,1) fg, then background.
    np.testing.assert_array_equal(m, np.array([[False, True, False], [True, False, False]]))


def test_roundtrip_with_independent_encoder():
    enc = load_generator("rrsisd").rle_encode
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 5), (64, 64), (33, 80)]:
        for p in (0.0, 0.05, 0.5, 1.0):
            m = rng.random(shape) < p
            np.testing.assert_array_equal(decode_rle(enc(m)), m)
    big = np.zeros((800, 800), dtype=bool)
    big[100:700, 3:797] = True  # long runs exercise multi-group and negative deltas
    np.testing.assert_array_equal(decode_rle(enc(big)), big)


def test_bad_rle_errors():
    with pytest.raises(ValueError, match="sum to"):
        decode_rle({"size": [5, 5], "counts": [3, 4]})
    with pytest.raises(ValueError, match="ends inside"):
        rle_counts_from_string("d")
    with pytest.raises(ValueError, match="polygon"):
        decode_segmentation([[1.0, 2.0, 3.0, 4.0]])
