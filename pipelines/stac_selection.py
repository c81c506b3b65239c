"""STAC item selection (PIPELINE.md §1.2): datetime intervals, client-side filters, de-duplication, total order.

The same functions serve API and file mode, so a search returns the same items whatever the server supports.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pystac
import shapely.geometry

__all__ = ["DatetimeRange", "deduplicate", "filter_items", "parse_datetime_range", "sort_items"]


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
    bbox: tuple[float, float, float, float] | None = None,
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
