"""Self-contained ``map.html`` (PIPELINE.md §4): imagery and per-query polygons on an offline Leaflet map."""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
from importlib import resources
from typing import Any

import folium
import geopandas as gpd
import numpy as np
import shapely
from branca.element import Element, Figure, MacroElement
from folium.template import Template
from rasterio.crs import CRS

from common import storage
from pipelines.map_overlay import MapImagery
from pipelines.palette import query_color

__all__ = ["LEAFLET_VERSION", "find_external_references", "write_map"]

logger = logging.getLogger(__name__)

#: Version of the vendored Leaflet in ``pipelines/assets/`` (see its README.md).
LEAFLET_VERSION = "1.9.4"

#: Columns ``write_map`` reads from the polygons table (PIPELINE.md §4 ``polygons.parquet``).
_REQUIRED_COLUMNS = ("query", "score_mean", "score_max", "area_m2")

_LONLAT = CRS.from_epsg(4326)
# Coordinates in the HTML are rounded to 1e-7 degree (about 1 cm), which keeps the file small.
_COORD_DECIMALS = 7
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_EXTERNAL_REF = re.compile(
    r"""(?:\b(?:src|href|srcset|poster|data)\s*=\s*["']?\s*|url\(\s*["']?\s*|@import\s+["'])((?:https?:)?//[^\s"'()<>]+)""",
    re.IGNORECASE,
)


def _asset_text(name: str) -> str:
    return resources.files("pipelines").joinpath("assets", name).read_text(encoding="utf-8")


def _asset_bytes(name: str) -> bytes:
    return resources.files("pipelines").joinpath("assets", name).read_bytes()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _inline_leaflet_css() -> str:
    """Leaflet's CSS with its image references turned into data URIs."""
    css = _asset_text("leaflet.css")
    for image in ("layers-2x.png", "layers.png", "marker-icon.png"):
        css = css.replace(
            f"url(images/{image})", f"url({_data_uri(_asset_bytes('leaflet-' + image), 'image/png')})"
        )
    if "url(images/" in css:
        raise RuntimeError("leaflet.css references an image that is not vendored in pipelines/assets/")
    return css


def _inline_leaflet_js() -> str:
    """Leaflet's script without its source-map comment (the map file is not shipped)."""
    return re.sub(r"^//# sourceMappingURL=.*$", "", _asset_text("leaflet.js"), flags=re.MULTILINE)


def find_external_references(text: str) -> list[str]:
    """URLs that a browser would fetch from a non-loopback host when loading ``text`` (HTML, CSS or JS).

    Looks at ``src``/``href``/``srcset``/``poster``/``data`` attributes, CSS ``url(...)`` and ``@import``.
    Scheme-relative (``//host/...``) URLs count as external.

    Args:
        text: the document to scan.

    Returns:
        The offending URLs in document order (empty when the document is self-contained).
    """
    found = []
    for match in _EXTERNAL_REF.finditer(text):
        url = match.group(1)
        host = (
            url.split("//", 1)[1].split("/", 1)[0].split(":", 1)[0] if not url.startswith("//[") else "[::1]"
        )
        if host.lower() not in _LOOPBACK_HOSTS:
            found.append(url)
    return found


def _figure(fmap: folium.Map) -> Figure:
    figure = fmap.get_root()
    assert isinstance(figure, Figure), "a folium.Map always sits in a branca Figure"
    return figure


class _OfflineMap(folium.Map):
    """A folium map that references no CDN: Leaflet's script and style are inlined into the page header."""

    # folium's defaults load Leaflet, jQuery, Bootstrap and Font Awesome from CDNs; none of them are needed here.
    default_js: list[tuple[str, str]] = []
    default_css: list[tuple[str, str]] = []

    def render(self, **kwargs: Any) -> Any:
        header = _figure(self).header
        header.add_child(Element(f"<style>{_inline_leaflet_css()}</style>"), name="leaflet_css_inline")
        header.add_child(Element(f"<script>{_inline_leaflet_js()}</script>"), name="leaflet_js_inline")
        return super().render(**kwargs)


class _MapScript(MacroElement):
    """Raw JavaScript run after the map is built; ``{map}`` in ``code`` is replaced by the map's variable name."""

    _template = Template("{% macro script(this, kwargs) %}{{ this.code }}{% endmacro %}")

    def __init__(self, map_name: str, code: str) -> None:
        super().__init__()
        self.code = code.replace("{map}", map_name)


def _format_area(area_m2: float) -> str:
    if area_m2 >= 1e6:
        return f"{area_m2 / 1e6:,.3f} km² ({area_m2:,.0f} m²)"
    return f"{area_m2:,.0f} m² ({area_m2 / 1e4:,.2f} ha)"


def _round_coords(geometry: shapely.Geometry) -> shapely.Geometry:
    return shapely.transform(geometry, lambda xy: np.round(xy, _COORD_DECIMALS))


def _legend_html(entries: list[tuple[str, str, int, int]], max_per_query: int) -> str:
    rows = []
    for query, color, shown, total in entries:
        count = f"{total:,} polygon{'s' if total != 1 else ''}"
        if shown < total:
            count = f"{shown:,} largest of {total:,} polygons (cap {max_per_query:,})"
        rows.append(
            '<div style="display:flex;align-items:center;margin:3px 0;">'
            f'<span style="display:inline-block;width:14px;height:14px;margin-right:6px;flex:none;'
            f'border:2px solid {color};background:{color}66;"></span>'
            f"<span><b>{html.escape(query)}</b><br><small>{count}</small></span></div>"
        )
    return (
        '<div class="crobim-legend" style="position:absolute;bottom:24px;right:10px;z-index:1000;max-width:360px;'
        "background:rgba(255,255,255,0.92);padding:6px 10px;border-radius:4px;box-shadow:0 1px 5px rgba(0,0,0,0.4);"
        'font:12px/1.3 sans-serif;color:#222;">'
        '<div style="font-weight:bold;margin-bottom:2px;">Queries</div>' + "".join(rows) + "</div>"
    )


def _query_layers(
    polygons: gpd.GeoDataFrame, queries: list[str], max_per_query: int
) -> list[tuple[str, str, gpd.GeoDataFrame, int]]:
    """Per query: (query, colour, the largest ``max_per_query`` polygons in EPSG:4326 with popup fields, total)."""
    layers = []
    for index, query in enumerate(queries):
        subset = polygons[polygons["query"] == query]
        total = len(subset)
        subset = subset.sort_values("area_m2", ascending=False, kind="stable").head(max_per_query)
        subset = subset.to_crs(_LONLAT)
        table = gpd.GeoDataFrame(
            {
                "query": subset["query"].astype(str).to_numpy(),
                "score": [
                    f"{m:.3f} / {x:.3f}"
                    for m, x in zip(subset["score_mean"], subset["score_max"], strict=True)
                ],
                "area": [_format_area(float(a)) for a in subset["area_m2"]],
                "polygon": (
                    subset["polygon_id"].astype(str).to_numpy()
                    if "polygon_id" in subset.columns
                    else [str(i) for i in subset.index]
                ),
            },
            geometry=[_round_coords(g) for g in subset.geometry],
            crs=_LONLAT,
        )
        _add_relation_fields(table, subset)
        layers.append((query, query_color(index), table, total))
    return layers


def _add_relation_fields(table: gpd.GeoDataFrame, subset: gpd.GeoDataFrame) -> None:
    """Popup fields of a composed query's answers (relation, distance to the nearest object) and the role."""
    if "role" in subset.columns:
        table["role"] = subset["role"].astype(str).to_numpy()
    if "relation" in subset.columns and subset["relation"].notna().any():
        table["relation"] = subset["relation"].fillna("").astype(str).to_numpy()
        table["distance"] = [
            "" if not np.isfinite(d) else f"{d:,.1f} m to {n}"
            for d, n in zip(subset["distance_m"].astype(float), subset["nearest_id"], strict=True)
        ]


def _fit_bounds(
    imagery: MapImagery | None, layers: list[tuple[str, str, gpd.GeoDataFrame, int]]
) -> tuple[float, float, float, float] | None:
    if imagery is not None:
        return imagery.bounds_lonlat
    boxes = [table.total_bounds for _, _, table, _ in layers if len(table)]
    if not boxes:
        return None
    stacked = np.array(boxes)
    return (stacked[:, 0].min(), stacked[:, 1].min(), stacked[:, 2].max(), stacked[:, 3].max())


def _check_polygons(polygons: gpd.GeoDataFrame, queries: list[str], max_per_query: int) -> None:
    """Refuse a polygons table ``write_map`` cannot draw (missing columns or CRS, unknown queries, bad cap)."""
    missing = [c for c in _REQUIRED_COLUMNS if c not in polygons.columns]
    if missing:
        raise KeyError(f"polygons lack column(s) {missing}; write_map needs {list(_REQUIRED_COLUMNS)}")
    if polygons.crs is None:
        raise ValueError("polygons have no CRS; set it (e.g. gdf.set_crs(...)) before writing the map")
    if max_per_query < 1:
        raise ValueError(f"max_per_query must be >= 1, got {max_per_query}")
    unknown = sorted(set(polygons["query"].astype(str)) - set(queries))
    if unknown:
        raise ValueError(f"polygons hold queries {unknown} that are not in queries={queries}")


def _query_group(query: str, color: str, table: gpd.GeoDataFrame) -> folium.FeatureGroup:
    """One query's layer: its polygons in its colour, with a popup (query, scores, area, id, relation, distance)
    and a tooltip; a sub-query's layer (an input of a relation) starts hidden."""
    sub_query = "role" in table.columns and len(table) > 0 and bool((table["role"] == "sub-query").all())
    label = f"{query} (sub-query)" if sub_query else query
    group = folium.FeatureGroup(name=html.escape(label), show=not sub_query)
    fields = [("query", "Query"), ("relation", "Relation"), ("distance", "Nearest object"),
              ("score", "Score (mean / max)"), ("area", "Area"), ("polygon", "Polygon")]  # fmt: skip
    fields = [(name, alias) for name, alias in fields if name in table.columns]
    if len(table):
        style = {"color": color, "weight": 2, "opacity": 1.0, "fillColor": color, "fillOpacity": 0.3}
        folium.GeoJson(
            table.to_json(drop_id=True),
            control=False,
            style_function=lambda _feature, style=style: style,
            highlight_function=lambda _feature: {"weight": 4, "fillOpacity": 0.5},
            popup=folium.GeoJsonPopup(
                fields=[name for name, _ in fields],
                aliases=[alias for _, alias in fields],
                localize=False,
            ),
            tooltip=folium.GeoJsonTooltip(fields=["query"], labels=False),
        ).add_to(group)
    return group


def _render_offline(fmap: folium.Map) -> str:
    """The page's HTML; refuse it if anything but the vendored Leaflet would be fetched from the network."""
    page = _figure(fmap).render()
    # The vendored library is checked by hash in the tests; everything else must reference nothing external.
    external = find_external_references(page.replace(_inline_leaflet_js(), ""))
    if external:
        raise RuntimeError(
            f"map.html would load external resources {external[:5]}; it must be self-contained"
        )
    return page


def write_map(
    path: str | os.PathLike[str],
    polygons: gpd.GeoDataFrame,
    imagery: MapImagery | None,
    queries: list[str],
    max_per_query: int = 500,
    title: str = "CroBIM-Geo results",
) -> dict[str, Any]:
    """Write a single-file interactive map of the results that opens offline (no CDN, no tile server).

    One layer per query (its own colour, toggled in the layer control), the imagery as an image overlay embedded as
    a PNG data URI, a legend, and a popup per polygon with its query, mean/max score and area.

    Args:
        path: output file, local or s3:// / gs://.
        polygons: GeoDataFrame in any CRS with columns ``query``, ``score_mean``, ``score_max``, ``area_m2`` and
            polygon geometries (``polygon_id`` is shown when present), e.g. ``polygons.parquet``.
        imagery: overlay from ``map_imagery``, or None for polygons only.
        queries: the job's queries, in order; sets colours and legend order (queries without polygons are listed).
        max_per_query: at most this many polygons per query are drawn, the largest by area.
        title: page title.

    Returns:
        Summary: per query, polygons drawn and total; the HTML size in bytes.

    Raises:
        KeyError: when a required column is missing.
        ValueError: when ``polygons`` has no CRS, ``max_per_query`` < 1, or a polygon's query is not in ``queries``.
    """
    _check_polygons(polygons, queries, max_per_query)
    layers = _query_layers(polygons, queries, max_per_query)
    bounds = _fit_bounds(imagery, layers)
    fmap = _OfflineMap(location=None, tiles=None, control_scale=True, zoom_snap=0.25, zoom_delta=0.5)
    _figure(fmap).title = title
    if imagery is not None:
        minx, miny, maxx, maxy = imagery.bounds_lonlat
        folium.raster_layers.ImageOverlay(
            image=_data_uri(imagery.to_png(), "image/png"),
            bounds=[[miny, minx], [maxy, maxx]],
            name="imagery",
            interactive=False,
        ).add_to(fmap)
    for query, color, table, _ in layers:
        _query_group(query, color, table).add_to(fmap)
    folium.LayerControl(collapsed=False).add_to(fmap)
    if bounds is not None:
        minx, miny, maxx, maxy = bounds
        fmap.fit_bounds([[miny, minx], [maxy, maxx]])
    # Plain-text attribution: the default prefix is a link to leafletjs.com.
    fmap.add_child(
        _MapScript(fmap.get_name(), f'{{map}}.attributionControl.setPrefix("Leaflet {LEAFLET_VERSION}");')
    )
    entries = [(query, color, len(table), total) for query, color, table, total in layers]
    _figure(fmap).html.add_child(Element(_legend_html(entries, max_per_query)))

    data = _render_offline(fmap).encode("utf-8")
    storage.write_bytes(path, data)
    summary = {
        "path": os.fspath(path),
        "bytes": len(data),
        "queries": [{"query": q, "color": c, "drawn": n, "total": t} for q, c, n, t in entries],
        "bounds_lonlat": list(bounds) if bounds is not None else None,
    }
    logger.info("wrote %s (%d bytes): %s", path, len(data), json.dumps(summary["queries"]))
    return summary
