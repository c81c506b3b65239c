"""RGB asset choice and 8-bit radiometry (PIPELINE.md §1.6): fixed, documented mappings, never per-tile stretches."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pystac

from pipelines.errors import MissingAssetError, RadiometryError

__all__ = [
    "BandSource",
    "RGBSource",
    "RadiometryConfig",
    "has_rgb_source",
    "select_rgb_source",
    "to_uint8",
]

logger = logging.getLogger(__name__)

_RGB = ("red", "green", "blue")
_LOW_RES_ROLES = {"overview", "thumbnail"}
_RASTER_MIME = ("image/tiff", "image/vnd.stac.geotiff", "application/x-geotiff", "image/jp2")


@dataclass(frozen=True)
class RadiometryConfig:
    """Constants of the reflectance -> 8-bit mapping; recorded in run.json.

    Sentinel-2 L2A (and any asset with ``raster:bands`` scale/offset) becomes reflectance
    ``DN * scale + offset``; reflectance ``stretch_min..stretch_max`` maps linearly to 0..255, clipped and
    rounded. 0..0.3 is the usual true-colour range for surface reflectance (bright sand and
    cloud saturate, vegetation and water stay distinguishable).
    """

    #: Reflectance shown as 0.
    stretch_min: float = 0.0
    #: Reflectance shown as 255.
    stretch_max: float = 0.3
    #: User override of the nodata value of every band (``--nodata``).
    nodata: float | None = None
    #: User-supplied scale for non-uint8 data without ``raster:bands`` scale.
    scale: float | None = None
    #: User-supplied offset for non-uint8 data without ``raster:bands`` offset.
    offset: float | None = None

    def __post_init__(self) -> None:
        if not self.stretch_max > self.stretch_min:
            raise ValueError(
                f"radiometry stretch_max {self.stretch_max} must be above stretch_min {self.stretch_min}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for run.json and fingerprints."""
        return {
            "stretch_min": self.stretch_min,
            "stretch_max": self.stretch_max,
            "nodata": self.nodata,
            "scale": self.scale,
            "offset": self.offset,
        }


@dataclass(frozen=True)
class BandSource:
    """One band to read: file, 1-based band index, and its ``raster:bands`` description."""

    asset_key: str
    href: str
    band_index: int
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None
    data_type: str | None = None


@dataclass(frozen=True)
class RGBSource:
    """Where an item's red, green and blue come from, and how they become uint8."""

    item_id: str
    kind: Literal["visual", "multiband", "bands"]
    bands: tuple[BandSource, BandSource, BandSource]
    #: ``"passthrough"`` for uint8 data, ``"reflectance"`` for scaled data stretched with fixed constants.
    mode: Literal["passthrough", "reflectance"] = "passthrough"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def hrefs(self) -> list[str]:
        """Distinct files to open, in band order."""
        out: list[str] = []
        for b in self.bands:
            if b.href not in out:
                out.append(b.href)
        return out


def _band_entries(asset: pystac.Asset) -> list[dict[str, Any]]:
    """Per-band dicts of an asset, merging ``eo:bands``, ``raster:bands`` and STAC 1.1 ``bands``."""
    extra = asset.extra_fields
    eo = extra.get("eo:bands") or []
    raster = extra.get("raster:bands") or []
    v11 = extra.get("bands") or []
    n = max(len(eo), len(raster), len(v11))
    out = []
    for i in range(n):
        entry: dict[str, Any] = {}
        if i < len(v11):
            b = v11[i]
            entry["common_name"] = b.get("eo:common_name")
            entry["scale"] = b.get("raster:scale", b.get("scale"))
            entry["offset"] = b.get("raster:offset", b.get("offset"))
            entry["nodata"] = b.get("nodata")
            entry["data_type"] = b.get("data_type")
        if i < len(eo):
            entry["common_name"] = eo[i].get("common_name") or entry.get("common_name")
        if i < len(raster):
            r = raster[i]
            for k in ("scale", "offset", "nodata", "data_type"):
                if r.get(k) is not None:
                    entry[k] = r[k]
        out.append(entry)
    # Asset-level STAC 1.1 fields apply to every band.
    for k, src in (("nodata", "nodata"), ("data_type", "data_type")):
        if extra.get(src) is not None:
            for entry in out or [{}]:
                entry.setdefault(k, extra[src])
    return out


def _is_raster(asset: pystac.Asset) -> bool:
    media = (asset.media_type or "").lower()
    return not media or media.startswith(_RASTER_MIME)


def _prefer_key(key: str, asset: pystac.Asset) -> tuple[int, int, str]:
    """Sort key among duplicates: COG over JP2, finer gsd first, then name."""
    media = (asset.media_type or "").lower()
    gsd = asset.extra_fields.get("gsd") or 0
    return (0 if "tiff" in media else 1, int(gsd * 100), key)


def _band(
    key: str, asset: pystac.Asset, index: int, entry: dict[str, Any], cfg: RadiometryConfig
) -> BandSource:
    nodata = cfg.nodata if cfg.nodata is not None else entry.get("nodata")
    if isinstance(nodata, str):  # "nan", "inf" are allowed by the raster extension
        nodata = float(nodata)
    return BandSource(
        asset_key=key,
        href=asset.get_absolute_href() or asset.href,
        band_index=index,
        scale=entry.get("scale"),
        offset=entry.get("offset"),
        nodata=nodata,
        data_type=entry.get("data_type"),
    )


def _mode(
    bands: tuple[BandSource, ...], item_id: str, cfg: RadiometryConfig
) -> Literal["passthrough", "reflectance"]:
    types = {b.data_type for b in bands}
    scaled = any(b.scale is not None or b.offset is not None for b in bands)
    if scaled or cfg.scale is not None or cfg.offset is not None:
        return "reflectance"
    if types <= {"uint8", None}:
        return "passthrough"
    raise RadiometryError(
        f"item {item_id}: RGB bands have data type {sorted(t for t in types if t)} and no raster:bands "
        "scale/offset; pass --scale and --offset (e.g. 0.0001 and 0 for reflectance DN) to map them to 8 bits"
    )


def select_rgb_source(item: pystac.Item, config: RadiometryConfig | None = None) -> RGBSource:
    """Choose the assets giving red, green and blue for ``item``.

    Preference: a ``visual``/true-colour asset (key ``visual`` or role ``visual``) with three bands;
    then one multi-band asset whose ``eo:bands`` name red, green and blue (NAIP's 4-band ``image``);
    then three single-band assets found by ``eo:bands`` common names (Sentinel-2 ``red``/``green``/``blue``).

    Args:
        item: The STAC item.
        config: Radiometry overrides (nodata, scale, offset).

    Returns:
        The chosen bands and their 8-bit mapping mode.

    Raises:
        MissingAssetError: If no RGB source exists; the message lists the item's assets.
        RadiometryError: If the bands are not uint8 and no scale/offset is known.
    """
    cfg = config or RadiometryConfig()
    assets = {k: a for k, a in item.assets.items() if _is_raster(a)}
    # 1. Visual / true-colour asset.
    visual = [
        (k, a)
        for k, a in assets.items()
        if k in ("visual", "true_color", "truecolor", "tci") or "visual" in (a.roles or [])
    ]
    for key, asset in sorted(visual, key=lambda ka: _prefer_key(*ka)):
        entries = _band_entries(asset)
        names = [e.get("common_name") for e in entries]
        if entries and not all(c in names for c in _RGB):
            continue
        idx = [names.index(c) + 1 for c in _RGB] if entries else [1, 2, 3]
        bands = tuple(_band(key, asset, i, entries[i - 1] if entries else {}, cfg) for i in idx)
        return RGBSource(item.id, "visual", bands, _mode(bands, item.id, cfg))  # type: ignore[arg-type]
    # 2. One multi-band asset holding red, green and blue (NAIP "image": R, G, B, NIR); previews excluded.
    full_res = {k: a for k, a in assets.items() if not _LOW_RES_ROLES & set(a.roles or [])}
    for key, asset in sorted(full_res.items(), key=lambda ka: _prefer_key(*ka)):
        entries = _band_entries(asset)
        names = [e.get("common_name") for e in entries]
        if len(entries) >= 3 and all(c in names for c in _RGB):
            bands = tuple(_band(key, asset, names.index(c) + 1, entries[names.index(c)], cfg) for c in _RGB)
            return RGBSource(item.id, "multiband", bands, _mode(bands, item.id, cfg))  # type: ignore[arg-type]
    # 3. Single-band assets by common name.
    found: dict[str, BandSource] = {}
    for key, asset in sorted(full_res.items(), key=lambda ka: _prefer_key(*ka)):
        entries = _band_entries(asset)
        if len(entries) != 1:
            continue
        name = entries[0].get("common_name")
        if name in _RGB and name not in found:
            found[name] = _band(key, asset, 1, entries[0], cfg)
    if all(c in found for c in _RGB):
        bands = (found["red"], found["green"], found["blue"])
        return RGBSource(item.id, "bands", bands, _mode(bands, item.id, cfg))
    raise MissingAssetError(
        f"item {item.id} has no RGB source: no 'visual' asset and no assets whose eo:bands common names "
        f"give red, green and blue (assets: {sorted(item.assets)}); choose another collection or item"
    )


def has_rgb_source(item: pystac.Item) -> bool:
    """Whether :func:`select_rgb_source` finds an RGB source (a ``required_assets`` predicate for search)."""
    try:
        select_rgb_source(item)
    except (MissingAssetError, RadiometryError):
        return False
    return True


def to_uint8(values: np.ndarray, source: RGBSource, config: RadiometryConfig | None = None) -> np.ndarray:
    """Map raw band values ``(3, H, W)`` to uint8 true colour with the source's fixed mapping.

    ``passthrough``: uint8 values are returned as they are. ``reflectance``: ``DN * scale + offset``
    per band (``raster:bands``, else the config's scale/offset), then ``stretch_min..stretch_max`` linearly
    to 0..255, clipped, rounded to nearest (float32 arithmetic). No statistic of ``values`` is used, so every tile and chunk
    maps the same DN to the same byte. Invalid pixels are the caller's business (the valid mask).

    Args:
        values: Raw values in band order red, green, blue, shape ``(3, H, W)``.
        source: The item's RGB source.
        config: Stretch constants and overrides.

    Returns:
        uint8 array ``(3, H, W)``.
    """
    cfg = config or RadiometryConfig()
    if values.ndim != 3 or values.shape[0] != 3:
        raise ValueError(f"values must have shape (3, H, W); got {values.shape}")
    if source.mode == "passthrough":
        if values.dtype != np.uint8:
            raise RadiometryError(
                f"item {source.item_id}: expected uint8 values for a pass-through source, got {values.dtype}"
            )
        return values
    out = np.empty(values.shape, dtype=np.uint8)
    span = cfg.stretch_max - cfg.stretch_min
    for i, band in enumerate(source.bands):
        scale = band.scale if band.scale is not None else (cfg.scale if cfg.scale is not None else 1.0)
        offset = band.offset if band.offset is not None else (cfg.offset if cfg.offset is not None else 0.0)
        refl = values[i].astype(np.float32) * np.float32(scale) + np.float32(offset)
        scaled = (refl - np.float32(cfg.stretch_min)) * np.float32(255.0 / span)
        out[i] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out
