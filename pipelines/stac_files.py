"""STAC item files (PIPELINE.md §1.1): catalog files read in file mode, and the frozen selection of a run.

A catalog file is an ItemCollection JSON, NDJSON of items or stac-geoparquet, local or on object storage; asset
hrefs written relative to the file are made absolute. A run freezes its selected items to stac-geoparquet
(``out/inputs/items.parquet``) and every later step reads that file, never a fresh search.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pystac
import shapely.geometry

from common import storage
from pipelines.errors import CatalogError

__all__ = ["freeze_items", "load_catalog", "load_items"]


def _items_from_dicts(dicts: Iterable[dict[str, Any]], source: str) -> list[pystac.Item]:
    items = []
    for i, d in enumerate(dicts):
        if d.get("type") != "Feature":
            raise CatalogError(f"catalog {source}: entry {i} is not a STAC Item (type={d.get('type')!r})")
        item = pystac.Item.from_dict(d, preserve_dict=False, migrate=False)
        for asset in item.assets.values():
            asset.href = _absolute_href(asset.href, source)
        items.append(item)
    return items


def _absolute_href(href: str, source: str) -> str:
    """Resolve an asset href written relative to the catalog file (static catalogs do this)."""
    if "://" in href or href.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", href):
        return href
    base = source.rsplit("/", 1)[0] if "/" in source else "."
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, href))}"
    return os.path.normpath(os.path.join(os.path.abspath(base), href))


def load_catalog(uri: str) -> list[pystac.Item]:
    """Load every item of a catalog file: ItemCollection JSON, NDJSON, or stac-geoparquet.

    Args:
        uri: Local path or object-store URI (s3://, gs://, ...).

    Returns:
        The items, in file order.

    Raises:
        CatalogError: If the file is missing, unreadable, or holds something else than items.
    """
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise CatalogError(f"catalog file {uri} does not exist; check --catalog") from exc
    except OSError as exc:
        raise CatalogError(f"catalog file {uri} could not be read: {exc}") from exc
    if data[:4] == b"PAR1" or uri.endswith((".parquet", ".geoparquet")):
        return _load_geoparquet(data, uri)
    text = data.decode("utf-8").strip()
    if not text:
        raise CatalogError(f"catalog file {uri} is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        try:
            lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise CatalogError(
                f"catalog file {uri} is neither JSON, NDJSON nor stac-geoparquet: {exc}"
            ) from exc
        return _items_from_dicts(lines, uri)
    if isinstance(doc, list):
        return _items_from_dicts(doc, uri)
    if doc.get("type") == "FeatureCollection":
        return _items_from_dicts(doc.get("features", []), uri)
    if doc.get("type") == "Feature":
        return _items_from_dicts([doc], uri)
    raise CatalogError(
        f"catalog file {uri} has type {doc.get('type')!r}; expected an ItemCollection (FeatureCollection), "
        "NDJSON of items or stac-geoparquet. A static catalog.json is not searchable: export its items first"
    )


def _load_geoparquet(data: bytes, uri: str) -> list[pystac.Item]:
    import pyarrow.parquet as pq
    import stac_geoparquet.arrow

    try:
        table = pq.read_table(io.BytesIO(data))
        dicts = list(stac_geoparquet.arrow.stac_table_to_items(table))
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise CatalogError(f"catalog file {uri} is not valid stac-geoparquet: {exc}") from exc
    return _items_from_dicts(dicts, uri)


def freeze_items(items: Sequence[pystac.Item], uri: str) -> str:
    """Write the selected items (full JSON) to a stac-geoparquet file, in order.

    Args:
        items: Items to freeze.
        uri: Destination (local path or object-store URI), e.g. ``out/inputs/items.parquet``.

    Returns:
        ``uri``.
    """
    import pyarrow.parquet as pq
    import stac_geoparquet.arrow

    dicts = []
    for it in items:
        d = it.to_dict(transform_hrefs=False)
        if d.get("geometry") is None and it.bbox:
            # stac-geoparquet needs a geometry; the bbox is the footprint such items are searched by.
            d["bbox"] = list(it.bbox)
            d["geometry"] = shapely.geometry.mapping(shapely.geometry.box(*it.bbox[:2], *it.bbox[-2:]))
        dicts.append(d)
    table = stac_geoparquet.arrow.parse_stac_items_to_arrow(dicts).read_all()
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    _write_uri_bytes(uri, buf.getvalue())
    return uri


def _write_uri_bytes(uri: str, data: bytes) -> None:
    parent = uri.rsplit("/", 1)[0]
    if parent and parent != uri:
        storage.makedirs(parent)
    storage.write_bytes(uri, data)


def load_items(uri: str) -> list[pystac.Item]:
    """Read items frozen by :func:`freeze_items` (order kept)."""
    return load_catalog(uri)
