"""STAC item files (PIPELINE.md §1.1): catalog files read in file mode, and the frozen selection of a run.

A catalog file is an ItemCollection JSON, NDJSON of items or stac-geoparquet, local or on object storage; asset
hrefs written relative to the file are made absolute. A run freezes its selected items to stac-geoparquet
(``out/inputs/items.parquet``) and every later step reads that file, never a fresh search.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pystac
import shapely.geometry

from common import storage
from pipelines.errors import CatalogError
from pipelines.stac_selection import DatetimeRange

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pds

__all__ = ["RowFilter", "freeze_items", "load_catalog", "load_items", "row_filter_expression"]

#: Widening of the datetime interval pushed down to Arrow: timestamps there may be truncated to their unit.
_DATETIME_PAD = dt.timedelta(seconds=1)


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


def load_catalog(
    uri: str,
    *,
    bbox: Sequence[float] | None = None,
    datetime: DatetimeRange | None = None,
    collections: Sequence[str] | None = None,
    max_cloud: float | None = None,
    allow_missing_cloud: bool = False,
) -> list[pystac.Item]:
    """Load the items of a catalog file: ItemCollection JSON, NDJSON, or stac-geoparquet.

    The filters only spare work: a stac-geoparquet file is read with them pushed down to Arrow (row groups whose
    statistics cannot match are skipped, other rows are dropped before they become items); JSON files load whole.
    Either way the result is a superset of what :func:`pipelines.stac_selection.filter_items` keeps with the same
    filters, so callers apply that function to get the exact selection.

    Args:
        uri: Local path or object-store URI (s3://, gs://, ...).
        bbox: WGS84 ``(west, south, east, north)`` the footprint must meet.
        datetime: Interval the item's datetime (or ``start_datetime``/``end_datetime``) must meet.
        collections: Collection ids to keep.
        max_cloud: Largest ``eo:cloud_cover`` in percent.
        allow_missing_cloud: Keep items without ``eo:cloud_cover`` when ``max_cloud`` is set.

    Returns:
        The items, in file order.

    Raises:
        CatalogError: If the file is missing, unreadable, or holds something else than items.
    """
    where = RowFilter(
        tuple(bbox) if bbox is not None else None,
        datetime,
        tuple(collections) if collections else None,
        max_cloud,
        allow_missing_cloud,
    )
    if uri.endswith((".parquet", ".geoparquet")):
        return _load_geoparquet(uri, None, where)
    data = _read_catalog_bytes(uri)
    if data[:4] == b"PAR1":
        return _load_geoparquet(uri, data, where)
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


@dataclass(frozen=True)
class RowFilter:
    """The search filters a stac-geoparquet read can push down to Arrow (see :func:`row_filter_expression`)."""

    bbox: tuple[float, ...] | None = None
    datetime: DatetimeRange | None = None
    collections: tuple[str, ...] | None = None
    max_cloud: float | None = None
    allow_missing_cloud: bool = False


def row_filter_expression(schema: pa.Schema, where: RowFilter) -> pds.Expression | None:
    """An Arrow filter on stac-geoparquet columns that keeps every row ``filter_items`` could keep.

    Conservative by construction: a column of an unexpected type, a bbox crossing the antimeridian, a missing bbox
    or an item dated by ``start_datetime``/``end_datetime`` is never dropped here; the exact test stays in
    :func:`pipelines.stac_selection.filter_items`.

    Args:
        schema: The file's Arrow schema.
        where: The search filters.

    Returns:
        The expression, or ``None`` when nothing can be pushed down.
    """
    import pyarrow.compute as pc

    parts = [
        _bbox_expression(schema, where.bbox),
        _datetime_expression(schema, where.datetime),
        _cloud_expression(schema, where.max_cloud, where.allow_missing_cloud),
    ]
    if where.collections:
        if "collection" not in schema.names:
            parts.append(pc.scalar(False))  # every item lacks a collection id: none is allowed
        elif _is_string(schema.field("collection").type):
            parts.append(pc.field("collection").isin(list(where.collections)))
    expr = None
    for part in parts:
        if part is not None:
            expr = part if expr is None else expr & part
    return expr


def _is_string(t: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _bbox_expression(schema: pa.Schema, bbox: tuple[float, ...] | None) -> pds.Expression | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if bbox is None or "bbox" not in schema.names:
        return None
    t = schema.field("bbox").type
    if not pa.types.is_struct(t) or not {"xmin", "ymin", "xmax", "ymax"} <= {f.name for f in t}:
        return None
    w, s, e, n = bbox
    xmin, ymin, xmax, ymax = (pc.field("bbox", k) for k in ("xmin", "ymin", "xmax", "ymax"))
    # xmin > xmax: the item crosses the antimeridian; its footprint decides (in filter_items).
    x_ok = ((xmin <= e) & (xmax >= w)) | (xmin > xmax)
    return (x_ok & (ymin <= n) & (ymax >= s)) | xmin.is_null() | ymin.is_null()


def _datetime_expression(schema: pa.Schema, rng: DatetimeRange | None) -> pds.Expression | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if rng is None or (rng.start is None and rng.end is None):
        return None
    columns = ("datetime", "start_datetime", "end_datetime")
    types = {c: schema.field(c).type for c in columns if c in schema.names}
    if "datetime" not in types or not all(pa.types.is_timestamp(t) for t in types.values()):
        return None

    def meets(first: str, last: str) -> pds.Expression:
        cond = pc.scalar(True)
        if rng.end is not None:
            cond = cond & (pc.field(first) <= _timestamp(rng.end + _DATETIME_PAD, types[first]))
        if rng.start is not None:
            cond = cond & (pc.field(last) >= _timestamp(rng.start - _DATETIME_PAD, types[last]))
        return cond

    expr = meets("datetime", "datetime")
    if "start_datetime" in types and "end_datetime" in types:
        expr = expr | meets("start_datetime", "end_datetime")
    return expr


def _timestamp(value: dt.datetime, t: pa.TimestampType) -> pa.Scalar:
    """``value`` (UTC) as a scalar of the column's timestamp type (naive columns hold UTC, as filter_items reads)."""
    import pyarrow as pa

    value = value.astimezone(dt.UTC)
    if t.tz is None:
        value = value.replace(tzinfo=None)
    return pa.scalar(value, type=pa.timestamp("us", tz=t.tz)).cast(t, safe=False)


def _cloud_expression(
    schema: pa.Schema, max_cloud: float | None, allow_missing: bool
) -> pds.Expression | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if max_cloud is None:
        return None
    t = schema.field("eo:cloud_cover").type if "eo:cloud_cover" in schema.names else pa.null()
    if pa.types.is_null(t):
        return None if allow_missing else pc.scalar(False)  # no item has a cloud cover
    if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        return None
    cloud = pc.field("eo:cloud_cover")
    cond = cloud <= max_cloud
    if pa.types.is_floating(t):
        cond = cond | pc.is_nan(cloud)  # float("nan") > max_cloud is False: filter_items keeps it
    return cond | cloud.is_null() if allow_missing else cond


def _read_catalog_bytes(uri: str) -> bytes:
    try:
        return storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise CatalogError(f"catalog file {uri} does not exist; check --catalog") from exc
    except OSError as exc:
        raise CatalogError(f"catalog file {uri} could not be read: {exc}") from exc


def _load_geoparquet(uri: str, data: bytes | None, where: RowFilter) -> list[pystac.Item]:
    """Items of a stac-geoparquet file (``data``: its bytes, when already read), filtered in Arrow first."""
    import pyarrow as pa
    import pyarrow.dataset as pds
    import stac_geoparquet.arrow

    from common.storage_adapters import arrow_fs

    try:
        if data is None:
            fs, path = arrow_fs(uri)
            fragment = pds.ParquetFileFormat().make_fragment(path, filesystem=fs)
        else:
            fragment = pds.ParquetFileFormat().make_fragment(pa.BufferReader(data))
        scanner = fragment.scanner(filter=row_filter_expression(fragment.physical_schema, where))
        return _items_from_dicts(stac_geoparquet.arrow.stac_table_to_items(scanner.to_reader()), uri)
    except CatalogError:
        raise
    except FileNotFoundError as exc:
        raise CatalogError(f"catalog file {uri} does not exist; check --catalog") from exc
    except OSError as exc:
        raise CatalogError(f"catalog file {uri} could not be read: {exc}") from exc
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise CatalogError(f"catalog file {uri} is not valid stac-geoparquet: {exc}") from exc


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
