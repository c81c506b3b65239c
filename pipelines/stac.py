"""STAC search, item selection and freezing (PIPELINE.md §1.1, §1.2): API or catalog file, same filters either way."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import os
import posixpath
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pystac
import shapely.geometry
from pyproj import Geod

from pipelines import storage
from pipelines.errors import CatalogError, NoItemsError

__all__ = [
    "BBox",
    "DatetimeRange",
    "bbox_area_km2",
    "filter_items",
    "freeze_items",
    "load_catalog",
    "load_items",
    "parse_datetime_range",
    "search_items",
    "sort_items",
    "validate_bbox",
]

logger = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]
"""``(minx, miny, maxx, maxy)`` in WGS84 degrees (west, south, east, north)."""

#: Safety cap on items fetched from an API before client-side filtering.
MAX_FETCH = 10_000
#: Seconds to wait for a STAC API response.
API_TIMEOUT_S = 30.0
#: Default cap on the search area (km^2); ``--max-area-km2`` overrides it.
DEFAULT_MAX_AREA_KM2 = 250_000.0

_QUERY_CONFORMANCE = re.compile(r"/item-search#query$")
_FILTER_CONFORMANCE = re.compile(r"/item-search#filter$")
_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class DatetimeRange:
    """Closed UTC interval; ``None`` ends are open."""

    start: dt.datetime | None
    end: dt.datetime | None

    def to_stac(self) -> str:
        """The STAC API form ``start/end`` with ``..`` for open ends."""

        def fmt(t: dt.datetime | None) -> str:
            return ".." if t is None else t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        return f"{fmt(self.start)}/{fmt(self.end)}"

    def overlaps(self, start: dt.datetime, end: dt.datetime) -> bool:
        """Whether ``[start, end]`` meets this interval."""
        return (self.end is None or start <= self.end) and (self.start is None or end >= self.start)


def _parse_instant(text: str, upper: bool) -> dt.datetime:
    """Parse a full or partial ISO 8601 instant; partial dates expand to their first/last instant."""
    text = text.strip()
    m = re.fullmatch(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", text)
    if m:
        year, month, day = int(m[1]), int(m[2] or 1), int(m[3] or 1)
        start = dt.datetime(year, month, day, tzinfo=dt.UTC)
        if not upper:
            return start
        if m[3]:
            nxt = start + dt.timedelta(days=1)
        elif m[2]:
            nxt = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=dt.UTC)
        else:
            nxt = dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
        return nxt - dt.timedelta(microseconds=1)
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"datetime {text!r} is not ISO 8601; use e.g. 2025-07-01, 2025-07-01T10:00:00Z or 2025-07-01/2025-07-31"
        ) from exc
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def parse_datetime_range(
    value: str | dt.datetime | Sequence[Any] | DatetimeRange | None,
) -> DatetimeRange | None:
    """Parse ``"a/b"`` (``..`` or empty for open), a single instant or partial date, or a ``(start, end)`` pair.

    Args:
        value: The datetime filter as given by the user.

    Returns:
        The closed UTC interval, or ``None`` for no filter.

    Raises:
        ValueError: If a part is not ISO 8601 or the start is after the end.
    """
    if value is None or isinstance(value, DatetimeRange):
        return value
    if isinstance(value, dt.datetime):
        t = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        return DatetimeRange(t, t)
    if isinstance(value, str):
        parts = value.split("/") if "/" in value else [value, value]
    else:
        parts = list(value)
    if len(parts) != 2:
        raise ValueError(f"datetime {value!r} must be one instant or 'start/end'")

    def one(p: Any, upper: bool) -> dt.datetime | None:
        if p is None or (isinstance(p, str) and p.strip() in ("", "..")):
            return None
        if isinstance(p, dt.datetime):
            return p.replace(tzinfo=dt.UTC) if p.tzinfo is None else p.astimezone(dt.UTC)
        return _parse_instant(str(p), upper)

    rng = DatetimeRange(one(parts[0], False), one(parts[1], True))
    if rng.start and rng.end and rng.start > rng.end:
        raise ValueError(f"datetime range {value!r} starts after it ends; swap the two ends")
    return rng


def bbox_area_km2(bbox: BBox) -> float:
    """Geodesic area of a WGS84 bbox in km^2."""
    w, s, e, n = bbox
    area, _ = _GEOD.polygon_area_perimeter([w, e, e, w], [s, s, n, n])
    return abs(area) / 1e6


def validate_bbox(bbox: Sequence[float], max_area_km2: float | None = None) -> BBox:
    """Check a WGS84 bbox ``(west, south, east, north)``.

    Args:
        bbox: Four numbers in degrees.
        max_area_km2: Largest accepted geodesic area (``None``: no limit).

    Returns:
        The bbox as a tuple of floats.

    Raises:
        ValueError: If it does not have four finite numbers, is out of range, inverted, crosses the
            antimeridian (not supported in v1) or is larger than ``max_area_km2``.
    """
    values = list(bbox)
    if len(values) != 4:
        raise ValueError(f"bbox {values!r} must have 4 numbers: west south east north (degrees)")
    try:
        w, s, e, n = (float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bbox {values!r} must have 4 numbers: west south east north (degrees)") from exc
    names = ("west", "south", "east", "north")
    for name, v in zip(names, (w, s, e, n), strict=True):
        if not math.isfinite(v):
            raise ValueError(f"bbox {name} = {v} is not a finite number")
    for name, v in (("west", w), ("east", e)):
        if not -180.0 <= v <= 180.0:
            raise ValueError(f"bbox {name} = {v} is outside [-180, 180]; give longitudes in WGS84 degrees")
    for name, v in (("south", s), ("north", n)):
        if not -90.0 <= v <= 90.0:
            raise ValueError(f"bbox {name} = {v} is outside [-90, 90]; give latitudes in WGS84 degrees")
    if s >= n:
        raise ValueError(f"bbox south {s} is not below north {n}; the order is west south east north")
    if w > e:
        raise ValueError(
            f"bbox west {w} > east {e}: it crosses the antimeridian, which is not supported; "
            "split it into two runs at 180 degrees"
        )
    if w == e:
        raise ValueError(f"bbox west {w} equals east {e}; the bbox has no width")
    result: BBox = (w, s, e, n)
    if max_area_km2 is not None:
        area = bbox_area_km2(result)
        if area > max_area_km2:
            raise ValueError(
                f"bbox area {area:,.0f} km^2 exceeds the limit of {max_area_km2:,.0f} km^2; "
                "use a smaller bbox or raise --max-area-km2"
            )
    return result


def _item_interval(item: pystac.Item) -> tuple[dt.datetime, dt.datetime] | None:
    props = item.properties
    start = props.get("start_datetime")
    end = props.get("end_datetime")
    if start and end:
        return _parse_instant(start, False), _parse_instant(end, True)
    if item.datetime is None:
        return None
    t = item.datetime if item.datetime.tzinfo else item.datetime.replace(tzinfo=dt.UTC)
    t = t.astimezone(dt.UTC)
    return t, t


def _cloud(item: pystac.Item) -> float | None:
    value = item.properties.get("eo:cloud_cover")
    return None if value is None else float(value)


def _processing_rank(item: pystac.Item) -> tuple[str, str]:
    """Higher is newer: processing baseline/version, then update time."""
    props = item.properties
    version = str(props.get("s2:processing_baseline") or props.get("processing:version") or "")
    updated = str(props.get("updated") or props.get("created") or "")
    return version, updated


def _acquisition_key(item: pystac.Item) -> tuple[str, ...]:
    """Items sharing this key are reprocessed copies of one acquisition."""
    props = item.properties
    tile = props.get("grid:code") or props.get("s2:mgrs_tile")
    datatake = props.get("s2:datatake_id")
    if tile and datatake:
        # Earth Search datatake ids end with the processing baseline; strip it.
        return (item.collection_id or "", str(tile), str(datatake).rsplit("_N", 1)[0])
    return (item.collection_id or "", "id", item.id)


def deduplicate(items: Iterable[pystac.Item]) -> list[pystac.Item]:
    """Drop repeated ids and older reprocessed copies of one acquisition (keep the newest processing)."""
    best: dict[tuple[str, ...], pystac.Item] = {}
    seen_ids: dict[str, tuple[str, ...]] = {}
    for item in items:
        key = _acquisition_key(item)
        if item.id in seen_ids and seen_ids[item.id] != key:
            key = seen_ids[item.id]
        seen_ids[item.id] = key
        current = best.get(key)
        if current is None or _processing_rank(item) > _processing_rank(current):
            best[key] = item
    return list(best.values())


def sort_items(
    items: Iterable[pystac.Item], prefer: Literal["cloud", "recent"] = "cloud"
) -> list[pystac.Item]:
    """Total order: least cloudy, then most recent, then id (``prefer="recent"`` swaps the first two)."""

    def key(item: pystac.Item) -> tuple[float, float, str]:
        cloud = _cloud(item)
        interval = _item_interval(item)
        ts = interval[1].timestamp() if interval else -math.inf
        cloud_key = math.inf if cloud is None else cloud
        return (-ts, cloud_key, item.id) if prefer == "recent" else (cloud_key, -ts, item.id)

    if prefer not in ("cloud", "recent"):
        raise ValueError(f"prefer {prefer!r} must be 'cloud' or 'recent'")
    return sorted(items, key=key)


def _footprint(item: pystac.Item) -> shapely.geometry.base.BaseGeometry | None:
    if item.geometry:
        return shapely.geometry.shape(item.geometry)
    if item.bbox:
        return shapely.geometry.box(*item.bbox[:2], *item.bbox[-2:]) if len(item.bbox) == 4 else None
    return None


def filter_items(
    items: Iterable[pystac.Item],
    bbox: BBox | None = None,
    datetime: str | DatetimeRange | None = None,
    collections: Sequence[str] | None = None,
    max_cloud: float | None = None,
    allow_missing_cloud: bool = False,
    required_assets: Callable[[pystac.Item], bool] | None = None,
) -> list[pystac.Item]:
    """Keep the items that satisfy every filter (the client-side half of a search; order preserved).

    Args:
        items: Candidate items.
        bbox: WGS84 bbox the footprint must intersect.
        datetime: Interval (see :func:`parse_datetime_range`); ``start_datetime``/``end_datetime`` honoured.
        collections: Allowed collection ids.
        max_cloud: Largest accepted ``eo:cloud_cover`` (percent).
        allow_missing_cloud: Keep items without ``eo:cloud_cover`` when ``max_cloud`` is set.
        required_assets: Predicate an item must pass (e.g. "has an RGB source").

    Returns:
        The matching items.
    """
    rng = parse_datetime_range(datetime)
    region = shapely.geometry.box(*bbox) if bbox is not None else None
    allowed = set(collections) if collections else None
    out: list[pystac.Item] = []
    for item in items:
        if allowed is not None and item.collection_id not in allowed:
            continue
        if region is not None:
            fp = _footprint(item)
            if fp is None or not fp.intersects(region):
                continue
        if rng is not None:
            interval = _item_interval(item)
            if interval is None or not rng.overlaps(*interval):
                continue
        if max_cloud is not None:
            cloud = _cloud(item)
            if cloud is None and not allow_missing_cloud:
                continue
            if cloud is not None and cloud > max_cloud:
                continue
        if required_assets is not None and not required_assets(item):
            continue
        out.append(item)
    return out


def _read_uri_bytes(uri: str) -> bytes:
    """Read a local path or object-store URI."""
    return storage.read_bytes(uri)


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
        data = _read_uri_bytes(uri)
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


def _search_api(
    url: str,
    bbox: BBox,
    datetime: DatetimeRange | None,
    collections: Sequence[str] | None,
    max_cloud: float | None,
    modifier: Callable[..., Any] | None,
    request_modifier: Callable[..., Any] | None,
) -> list[pystac.Item]:
    import pystac_client
    from pystac_client.exceptions import APIError

    try:
        client = pystac_client.Client.open(
            url, modifier=modifier, request_modifier=request_modifier, timeout=API_TIMEOUT_S
        )
    except (APIError, OSError, ValueError) as exc:
        raise CatalogError(
            f"STAC API at {url} is unreachable or not a STAC API ({type(exc).__name__}: {exc}); "
            "check --stac-url, or use a catalog file with --catalog"
        ) from exc
    except (
        Exception
    ) as exc:  # requests' ConnectionError derives from OSError; anything else is also fatal here
        raise CatalogError(f"STAC API at {url} could not be opened ({type(exc).__name__}: {exc})") from exc
    if not client.conforms_to(pystac_client.ConformanceClasses.ITEM_SEARCH):
        raise CatalogError(
            f"{url} does not offer STAC item search (a static catalog.json is not searchable); "
            "point --stac-url at an API root or use --catalog with an items file"
        )
    kwargs: dict[str, Any] = {
        "bbox": list(bbox),
        "max_items": MAX_FETCH,
        "limit": 100,
    }
    if collections:
        kwargs["collections"] = list(collections)
    if datetime is not None:
        kwargs["datetime"] = datetime.to_stac()
    if max_cloud is not None:
        if client.conforms_to(pystac_client.ConformanceClasses.FILTER):
            kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud]}
            kwargs["filter_lang"] = "cql2-json"
        elif client.conforms_to(pystac_client.ConformanceClasses.QUERY):
            kwargs["query"] = {"eo:cloud_cover": {"lte": max_cloud}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DoesNotConformTo notices: filters are re-applied client-side
            search = client.search(**kwargs)
            items = list(search.items())
    except (APIError, OSError) as exc:
        raise CatalogError(f"search at {url} failed ({type(exc).__name__}: {exc})") from exc
    if len(items) >= MAX_FETCH:
        logger.warning("search at %s hit the fetch cap of %d items; narrow bbox or datetime", url, MAX_FETCH)
    return items


def search_items(
    bbox: Sequence[float],
    *,
    stac_url: str | None = None,
    catalog: str | None = None,
    collections: Sequence[str] | None = None,
    datetime: str | DatetimeRange | None = None,
    max_cloud: float | None = None,
    allow_missing_cloud: bool = False,
    limit: int | None = None,
    prefer: Literal["cloud", "recent"] = "cloud",
    max_area_km2: float | None = DEFAULT_MAX_AREA_KM2,
    required_assets: Callable[[pystac.Item], bool] | None = None,
    modifier: Callable[..., Any] | None = None,
    request_modifier: Callable[..., Any] | None = None,
) -> list[pystac.Item]:
    """Search a STAC API or a catalog file; filter, de-duplicate and order the result.

    Server-side ``filter``/``query`` on cloud cover is sent only when the API advertises it; every
    filter is re-applied here, so the result is the same whatever the server supports.

    Args:
        bbox: WGS84 ``(west, south, east, north)``.
        stac_url: STAC API root (API mode).
        catalog: Catalog file (ItemCollection JSON, NDJSON or stac-geoparquet; file mode).
        collections: Collection ids to keep.
        datetime: ``"start/end"`` or one instant/partial date.
        max_cloud: Largest ``eo:cloud_cover`` in percent.
        allow_missing_cloud: Keep items that lack ``eo:cloud_cover`` when ``max_cloud`` is set.
        limit: Keep at most this many items after ordering.
        prefer: ``"cloud"`` (least cloudy first) or ``"recent"`` (most recent first).
        max_area_km2: Refuse larger bboxes (``None``: no limit).
        required_assets: Predicate every kept item must pass.
        modifier: pystac-client result modifier, called on every item (e.g.
            ``planetary_computer.sign_inplace`` for signed asset URLs).
        request_modifier: pystac-client request modifier (e.g. headers or request signing).

    Returns:
        The selected items, ordered.

    Raises:
        ValueError: For a bad bbox, datetime, limit or an ambiguous source.
        CatalogError: For an unreachable API or unreadable catalog.
        NoItemsError: If nothing matches.
    """
    box = validate_bbox(bbox, max_area_km2)
    rng = parse_datetime_range(datetime)
    if (stac_url is None) == (catalog is None):
        raise ValueError("give exactly one of stac_url (--stac-url) or catalog (--catalog)")
    if limit is not None and limit < 1:
        raise ValueError(f"limit {limit} must be a positive integer")
    if stac_url is not None:
        candidates = _search_api(stac_url, box, rng, collections, max_cloud, modifier, request_modifier)
        source = stac_url
    else:
        assert catalog is not None
        candidates = load_catalog(catalog)
        source = catalog
    kept = filter_items(candidates, box, rng, collections, max_cloud, allow_missing_cloud, required_assets)
    ordered = sort_items(deduplicate(kept), prefer)
    if limit is not None:
        ordered = ordered[:limit]
    if not ordered:
        raise NoItemsError(
            f"no items in {source} match bbox={list(box)}, datetime={rng.to_stac() if rng else None}, "
            f"collections={list(collections) if collections else None}, max_cloud={max_cloud} "
            f"({len(candidates)} candidates before filtering); widen the datetime or bbox, raise --max-cloud, "
            "or pass --allow-missing-cloud"
        )
    logger.info("selected %d of %d candidate items from %s", len(ordered), len(candidates), source)
    return ordered


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
