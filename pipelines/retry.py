"""Read errors (PIPELINE.md §1.5): GDAL failures classified as transient or permanent; transient ones retried.

:func:`classify_error` reads the whole exception chain (GDAL's detail often sits in a chained exception) and
returns a :class:`~pipelines.errors.ReadError` subclass whose message names the asset and the cause;
:func:`with_retries` retries transient errors with exponential backoff and jitter, and raises permanent ones at once.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from rasterio.errors import RasterioError

from pipelines.errors import (
    AssetNotFoundError,
    CorruptAssetError,
    PermanentReadError,
    ReadError,
    TransientReadError,
)

__all__ = ["classify_error", "with_retries"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT = re.compile(
    r"HTTP response code: (429|5\d\d)|timed out|timeout|Connection (reset|refused|closed)|"
    r"transfer closed|Couldn't connect|Recv failure|Send failure|partial file|"
    r"Could not resolve|SSL|Empty reply|connection was reset",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(r"HTTP response code: 404|No such file or directory|does not exist", re.IGNORECASE)
_FORBIDDEN = re.compile(r"HTTP response code: 40[13]|Access Denied|Forbidden", re.IGNORECASE)
_CORRUPT = re.compile(
    r"not recognized as being in a supported file format|not recognized as a supported file format|"
    r"TIFFReadDirectory|TIFFFetch|IReadBlock failed|Read error|Decompression|ZIPDecode|LZWDecode|"
    r"deflate|inflate|corrupt|Invalid|truncated|Cannot read TIFF header|Not a TIFF|"
    r"TIFFRead|failed to read",
    re.IGNORECASE,
)


def classify_error(exc: BaseException, href: str) -> ReadError:
    """Turn a rasterio/GDAL error into a transient or permanent :class:`ReadError` with a specific message."""
    if isinstance(exc, ReadError):
        return exc
    # GDAL's detail often sits in the chained exception ("Read failed. See previous exception").
    parts: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    text = " <- ".join(parts)
    if _NOT_FOUND.search(text) or isinstance(exc, FileNotFoundError):
        return AssetNotFoundError(f"asset {href} does not exist (HTTP 404 / missing file): {text}", href)
    if _FORBIDDEN.search(text):
        return PermanentReadError(
            f"asset {href} is not accessible (HTTP 401/403): {exc}; check credentials or URL signing", href
        )
    if _TRANSIENT.search(text):
        return TransientReadError(f"transient error reading {href}: {exc}", href)
    if _CORRUPT.search(text):
        return CorruptAssetError(f"asset {href} is corrupt or not a readable GeoTIFF/COG: {text}", href)
    return PermanentReadError(f"reading asset {href} failed: {text}", href)


def with_retries(
    fn: Callable[[int], T],
    href: str,
    attempts: int = 5,
    backoff_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; retry transient errors with exponential backoff and jitter (1, 2, 4, 8 s by default).

    Args:
        fn: The read to run; it receives the attempt number (0 first).
        href: The asset, for messages.
        attempts: Total tries (>= 1).
        backoff_s: First delay; delay k is ``backoff_s * 2**k`` times a jitter factor in [0.5, 1.0].
        sleep: Sleep function (tests pass a no-op).

    Returns:
        What ``fn`` returns.

    Raises:
        PermanentReadError: At once for 403/404/corrupt files.
        TransientReadError: When every attempt failed transiently.
    """
    last: ReadError | None = None
    for attempt in range(attempts):
        try:
            return fn(attempt)
        except (RasterioError, OSError, RuntimeError, ValueError) as exc:
            err = classify_error(exc, href)
            if isinstance(err, PermanentReadError):
                raise err from exc
            last = err
            if attempt + 1 < attempts:
                delay = backoff_s * (2**attempt) * random.uniform(0.5, 1.0)
                logger.warning("%s (attempt %d/%d); retrying in %.2f s", err, attempt + 1, attempts, delay)
                sleep(delay)
    assert last is not None
    raise TransientReadError(f"{last} (gave up after {attempts} attempts)", href) from last
