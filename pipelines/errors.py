"""Exceptions of the geospatial pipeline: catalog, input and read errors with messages that say what to do."""

from __future__ import annotations

__all__ = [
    "AssetNotFoundError",
    "CatalogError",
    "CorruptAssetError",
    "MissingAssetError",
    "NoItemsError",
    "PermanentReadError",
    "PipelineError",
    "RadiometryError",
    "ReadError",
    "TransientReadError",
]


class PipelineError(Exception):
    """Base class of the errors raised by ``pipelines``."""


class CatalogError(PipelineError):
    """A STAC API or catalog file could not be used (unreachable, unsupported, malformed)."""


class NoItemsError(CatalogError, LookupError):
    """A search or filter left zero items."""


class RadiometryError(PipelineError, ValueError):
    """An item offers no usable RGB source, or its values cannot be mapped to 8 bits as described."""


class ReadError(PipelineError):
    """Reading an asset failed; ``href`` names the asset."""

    def __init__(self, message: str, href: str | None = None) -> None:
        super().__init__(message)
        self.href = href


class TransientReadError(ReadError):
    """A read failed for a reason that may pass (HTTP 429/5xx, timeout, truncated transfer): retry it."""


class PermanentReadError(ReadError):
    """A read failed for a reason a retry cannot fix (403/404, corrupt file, missing asset)."""


class AssetNotFoundError(PermanentReadError, FileNotFoundError):
    """The asset URL or path does not exist (HTTP 404 or missing file)."""


class CorruptAssetError(PermanentReadError):
    """The asset exists but is not a readable raster (truncated, not a TIFF, bad compression)."""


class MissingAssetError(PermanentReadError, KeyError):
    """The item lacks the asset the reader needs (for example no ``visual`` and no red/green/blue bands)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
