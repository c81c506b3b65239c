"""Read errors: GDAL messages classified as transient or permanent, exponential backoff with jitter."""

from __future__ import annotations

import pytest
import rasterio

from pipelines.errors import AssetNotFoundError, CorruptAssetError, PermanentReadError, TransientReadError
from pipelines.retry import classify_error, with_retries


def test_retries_give_up_and_classification():
    calls: list[int] = []
    delays: list[float] = []

    def always_503(attempt: int) -> None:
        calls.append(1)
        raise rasterio.errors.RasterioIOError("HTTP response code: 503")

    with pytest.raises(TransientReadError, match="gave up after 5 attempts"):
        with_retries(always_503, "http://x/a.tif", attempts=5, backoff_s=1.0, sleep=delays.append)
    assert len(calls) == 5 and len(delays) == 4
    for k, d in enumerate(delays):  # exponential backoff with jitter in [0.5, 1] x 2^k
        assert 0.5 * 2**k <= d <= 2**k
    assert isinstance(classify_error(OSError("HTTP response code: 403"), "u"), PermanentReadError)
    assert isinstance(classify_error(OSError("HTTP response code: 404"), "u"), AssetNotFoundError)
    assert isinstance(classify_error(OSError("HTTP response code: 429"), "u"), TransientReadError)
    assert isinstance(classify_error(OSError("Operation timed out"), "u"), TransientReadError)


def test_classification_reads_the_exception_chain_and_keeps_read_errors():
    try:
        try:
            raise OSError("TIFFReadDirectory: Failed to read directory")
        except OSError as inner:
            raise rasterio.errors.RasterioIOError("Read failed. See previous exception") from inner
    except rasterio.errors.RasterioIOError as exc:
        err = classify_error(exc, "http://x/b.tif")
    assert isinstance(err, CorruptAssetError) and err.href == "http://x/b.tif"
    assert "TIFFReadDirectory" in str(err)
    assert isinstance(classify_error(FileNotFoundError("gone"), "u"), AssetNotFoundError)
    known = TransientReadError("already classified", "u")
    assert classify_error(known, "other") is known


def test_permanent_errors_are_not_retried():
    calls: list[int] = []

    def forbidden(attempt: int) -> None:
        calls.append(attempt)
        raise rasterio.errors.RasterioIOError("HTTP response code: 403")

    with pytest.raises(PermanentReadError, match="not accessible"):
        with_retries(forbidden, "http://x/c.tif", attempts=5, sleep=lambda _: None)
    assert calls == [0]
    assert with_retries(lambda attempt: attempt + 41, "u", attempts=1) == 41
