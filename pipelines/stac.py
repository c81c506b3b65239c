"""STAC search (PIPELINE.md §1.1): bbox checks, API or catalog-file search, the selected items in order.

API mode goes through pystac-client; file mode reads a catalog file (``pipelines.stac_files``). Either way the
candidates pass the same filters, de-duplication and order (``pipelines.stac_selection``).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import pystac

if TYPE_CHECKING:
    import pystac_client

from pipelines.errors import CatalogError, NoItemsError
from pipelines.stac_files import load_catalog
from pipelines.stac_selection import (
    DatetimeRange,
    deduplicate,
    filter_items,
    parse_datetime_range,
    sort_items,
)

__all__ = [
    "BBox",
    "bbox_area_km2",
    "check_source",
    "conforms_to_sort",
    "item_summary",
    "search_items",
    "sortby_for",
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


def _zone_area_per_radian_m2(lat_deg: float) -> float:
    """Ellipsoidal area between the equator and ``lat_deg`` per radian of longitude (WGS84), signed."""
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    e = math.sqrt(e2)
    sin_lat = math.sin(math.radians(lat_deg))
    b2 = a * a * (1 - e2)
    return b2 / 2 * (sin_lat / (1 - e2 * sin_lat**2) + math.atanh(e * sin_lat) / e)


def bbox_area_km2(bbox: BBox) -> float:
    """Area in km^2 on the WGS84 ellipsoid of a lon/lat box (bounded by meridians and parallels).

    Exact for any size, a box spanning all 360 degrees of longitude or the whole globe included (510,065,622 km^2).
    """
    w, s, e, n = bbox
    width_rad = math.radians(abs(e - w))
    return width_rad * abs(_zone_area_per_radian_m2(n) - _zone_area_per_radian_m2(s)) / 1e6


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
        if e + 360.0 - w <= 180.0:
            raise ValueError(
                f"bbox west {w} > east {e}: it crosses the antimeridian, which is not supported; "
                "split it into two runs at 180 degrees"
            )
        raise ValueError(
            f"bbox west {w} > east {e}: west and east look swapped; the order is west south east north "
            f"(e.g. --bbox {e} {s} {w} {n})"
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


def check_source(stac_url: str | None, catalog: str | None) -> None:
    """Check that exactly one item source is given: a STAC API or a catalog file.

    Args:
        stac_url: STAC API root (``--stac-url``), or None.
        catalog: Catalog file (``--catalog``), or None.

    Raises:
        ValueError: If both or neither are given.
    """
    if (stac_url is None) == (catalog is None):
        raise ValueError("give exactly one of --stac-url URL or --catalog FILE")


#: Conformance classes of the STAC API sort extension (v1.0.0 and its betas and release candidates).
_SORT_CONFORMANCE = re.compile(r"^https://api\.stacspec\.org/v1\.0\.0(-(rc|beta)\.\d+)?/item-search#sort$")


def conforms_to_sort(conforms_to: Sequence[str]) -> bool:
    """Whether a STAC API's ``conformsTo`` list declares the item-search sort extension (``sortby``)."""
    return any(_SORT_CONFORMANCE.match(str(c).strip()) for c in conforms_to)


def sortby_for(prefer: Literal["cloud", "recent"]) -> list[str]:
    """The ``sortby`` fields of the selection order (least cloudy or most recent first; the other one next)."""
    if prefer == "recent":
        return ["-properties.datetime", "+properties.eo:cloud_cover"]
    return ["+properties.eo:cloud_cover", "-properties.datetime"]


def _search_kwargs(
    client: pystac_client.Client,
    bbox: BBox,
    datetime: DatetimeRange | None,
    collections: Sequence[str] | None,
    max_cloud: float | None,
    prefer: Literal["cloud", "recent"],
) -> dict[str, Any]:
    """pystac-client search arguments: server-side filters and sort where the API declares them."""
    import pystac_client

    kwargs: dict[str, Any] = {"bbox": list(bbox), "max_items": MAX_FETCH, "limit": 100}
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
    if conforms_to_sort(client.get_conforms_to()):
        # So that a search hitting MAX_FETCH drops the items the selection would rank last.
        kwargs["sortby"] = sortby_for(prefer)
    else:
        logger.debug("STAC API %s does not declare the sort extension: no sortby sent", client.self_href)
    return kwargs


def _search_api(
    url: str,
    bbox: BBox,
    datetime: DatetimeRange | None,
    collections: Sequence[str] | None,
    max_cloud: float | None,
    prefer: Literal["cloud", "recent"],
    modifiers: tuple[Callable[..., Any] | None, Callable[..., Any] | None],
) -> list[pystac.Item]:
    import pystac_client
    from pystac_client.exceptions import APIError

    modifier, request_modifier = modifiers
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
    kwargs = _search_kwargs(client, bbox, datetime, collections, max_cloud, prefer)
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
    check_source(stac_url, catalog)
    if limit is not None and limit < 1:
        raise ValueError(f"limit {limit} must be a positive integer")
    if stac_url is not None:
        modifiers = (modifier, request_modifier)
        candidates = _search_api(stac_url, box, rng, collections, max_cloud, prefer, modifiers)
        source = stac_url
    else:
        assert catalog is not None
        candidates = load_catalog(
            catalog,
            bbox=box,
            datetime=rng,
            collections=collections,
            max_cloud=max_cloud,
            allow_missing_cloud=allow_missing_cloud,
        )
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


def item_summary(item: pystac.Item, full: bool = False) -> dict[str, Any]:
    """What run.json records of an item: id, collection, datetime and cloud cover.

    Args:
        item: The item.
        full: Also record its ``self`` link and every asset href (sorted by asset key).

    Returns:
        ``{"id", "collection", "datetime", "cloud_cover"}``, plus ``"self_href"`` and ``"asset_hrefs"`` when ``full``.
    """
    props = item.properties
    out: dict[str, Any] = {
        "id": item.id,
        "collection": item.collection_id,
        "datetime": props.get("datetime") or props.get("start_datetime"),
        "cloud_cover": props.get("eo:cloud_cover"),
    }
    if full:
        self_link = item.get_single_link("self")
        # As stored: resolving it against the item's root link would fetch the catalog root over the network.
        out["self_href"] = self_link.get_href(transform_href=False) if self_link is not None else None
        out["asset_hrefs"] = {k: a.href for k, a in sorted(item.assets.items())}
    return out
