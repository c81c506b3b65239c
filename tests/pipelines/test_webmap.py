"""map.html: self-contained Leaflet map of imagery and per-query polygons, rendered in offline headless Chromium."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Transformer

from pipelines import webmap
from pipelines.map_overlay import MapImagery, map_imagery
from pipelines.palette import query_color
from pipelines.webmap import find_external_references, write_map
from tests.fixtures.browser import color_mask, dump_dom, save_artifact, screenshot

ASSETS = Path(webmap.__file__).parent / "assets"
UTM = "EPSG:32633"
# 1 m pixels, 1000 x 1000, upper-left corner at (500000, 5000000) in UTM 33N.
TRANSFORM = Affine(1.0, 0.0, 500_000.0, 0.0, -1.0, 5_000_000.0)
IMAGERY_RGB = (40, 80, 40)
IMAGERY_HEX = "#285028"
QUERIES = ["all ponds near roads", "buildings", "the river"]


def _utm_box(col0: float, row0: float, col1: float, row1: float) -> shapely.Polygon:
    """A box given in pixel columns/rows of TRANSFORM."""
    x0, y0 = TRANSFORM @ (col0, row0)
    x1, y1 = TRANSFORM @ (col1, row1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _polygons(boxes: dict[str, list[tuple[float, float, float, float]]]) -> gpd.GeoDataFrame:
    rows = []
    for query_id, (query, query_boxes) in enumerate(boxes.items()):
        for k, box in enumerate(query_boxes):
            geometry = _utm_box(*box)
            rows.append(
                {
                    "polygon_id": f"q{query_id}-{k}",
                    "query_id": query_id,
                    "query": query,
                    "score_mean": 0.5 + 0.01 * k,
                    "score_max": 0.9,
                    "area_m2": geometry.area,
                    "geometry": geometry,
                }
            )
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=UTM)


def _imagery() -> MapImagery:
    rgb = np.empty((1000, 1000, 3), dtype=np.uint8)
    rgb[...] = IMAGERY_RGB
    return map_imagery(rgb, UTM, TRANSFORM, max_side_px=600)


def _geojson_features(page: str) -> list[dict]:
    """Every GeoJSON feature embedded in the page."""
    decoder = json.JSONDecoder()
    features = []
    for match in re.finditer(r"_add\(\{", page):
        collection, _ = decoder.raw_decode(page, match.end() - 1)
        features.extend(collection["features"])
    return features


def _page_without_leaflet(page: str) -> str:
    return page.replace(webmap._inline_leaflet_js(), "")


def test_vendored_leaflet_matches_npm_release():
    """The inlined assets are the unmodified files of leaflet@1.9.4 listed in pipelines/assets/README.md."""
    readme = (ASSETS / "README.md").read_text()
    table = dict(re.findall(r"\| `([^`]+)` \| `[^`]+` \| `([0-9a-f]{64})` \|", readme))
    assert set(table) == {
        "leaflet.js",
        "leaflet.css",
        "leaflet-layers.png",
        "leaflet-layers-2x.png",
        "leaflet-marker-icon.png",
        "LEAFLET-LICENSE",
    }
    for name, digest in table.items():
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == digest, name
    assert f'version="{webmap.LEAFLET_VERSION}"' in (ASSETS / "leaflet.js").read_text()


def test_find_external_references():
    page = (
        '<script src="https://cdn.jsdelivr.net/npm/leaflet.js"></script>'
        "<link rel=stylesheet href='http://example.com/a.css'>"
        '<img src="//cdn.example.org/x.png"><style>.a{background:url(https://tiles.example.com/1.png)}</style>'
        '<script src="http://127.0.0.1:8000/local.js"></script><img src="data:image/png;base64,AAAA">'
        '<a href="#top">x</a><link href="http://localhost/b.css">'
    )
    assert find_external_references(page) == [
        "https://cdn.jsdelivr.net/npm/leaflet.js",
        "http://example.com/a.css",
        "//cdn.example.org/x.png",
        "https://tiles.example.com/1.png",
    ]


def test_map_is_self_contained(tmp_path):
    path = tmp_path / "map.html"
    write_map(path, _polygons({QUERIES[0]: [(100, 100, 300, 300)]}), _imagery(), QUERIES)
    page = path.read_text()
    # Leaflet's script and style are inlined, the CDN links folium adds by default are gone.
    assert webmap._inline_leaflet_js() in page
    assert "url(data:image/png;base64," in page and "url(images/" not in page
    for cdn in (
        "cdn.jsdelivr.net",
        "code.jquery.com",
        "cdnjs.cloudflare.com",
        "bootstrapcdn",
        "openstreetmap",
    ):
        assert cdn not in page, cdn
    rest = _page_without_leaflet(page)
    assert find_external_references(rest) == []
    assert not re.search(
        r"""(?:src|href)\s*=\s*["']?https?://(?!127\.0\.0\.1|localhost)""", rest, re.IGNORECASE
    )
    # The vendored library itself only holds the attribution link, which the map replaces by plain text.
    assert find_external_references(webmap._inline_leaflet_js()) == ["https://leafletjs.com"]
    assert f'.attributionControl.setPrefix("Leaflet {webmap.LEAFLET_VERSION}")' in page
    # The imagery is embedded as a PNG data URI.
    assert '"data:image/png;base64,' in page


def test_polygons_capped_reprojected_with_popup_fields(tmp_path):
    boxes = {
        QUERIES[0]: [(10 + 100 * k, 10, 10 + 100 * k + 10 * (k + 1), 10 + 10 * (k + 1)) for k in range(7)],
        QUERIES[1]: [(500, 500, 540, 540)],
    }
    polygons = _polygons(boxes)
    path = tmp_path / "map.html"
    summary = write_map(path, polygons, None, QUERIES, max_per_query=3)
    assert [(q["query"], q["drawn"], q["total"]) for q in summary["queries"]] == [
        (QUERIES[0], 3, 7),
        (QUERIES[1], 1, 1),
        (QUERIES[2], 0, 0),
    ]
    page = path.read_text()
    features = _geojson_features(page)
    # Only the 3 largest of query 0 (k = 6, 5, 4), plus query 1's one polygon.
    assert sorted(f["properties"]["polygon"] for f in features) == ["q0-4", "q0-5", "q0-6", "q1-0"]
    largest = next(f for f in features if f["properties"]["polygon"] == "q0-6")
    assert largest["properties"]["query"] == QUERIES[0]
    assert largest["properties"]["score"] == "0.560 / 0.900"
    assert largest["properties"]["area"] == "4,900 m² (0.49 ha)"
    # Coordinates are lon/lat: the box corners come back to UTM within 2 cm.
    to_utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
    ring = np.array(largest["geometry"]["coordinates"][0])
    x, y = to_utm.transform(ring[:, 0], ring[:, 1])
    expected = _utm_box(*boxes[QUERIES[0]][6])
    assert shapely.hausdorff_distance(shapely.Polygon(np.c_[x, y]), expected) < 0.02
    # Legend: every query, its colour, and the cap.
    assert "3 largest of 7 polygons (cap 3)" in page
    assert "0 polygons" in page
    for k, query in enumerate(QUERIES):
        assert query in page and query_color(k) in page
    # Popups show query, score and area.
    assert '"Score (mean / max)"' in page and '"Area"' in page


def test_query_text_is_escaped(tmp_path):
    query = '<img src=x onerror="alert(1)"> & ponds'
    path = tmp_path / "map.html"
    write_map(path, _polygons({query: [(0, 0, 50, 50)]}), None, [query])
    page = path.read_text()
    assert "&lt;img src=x onerror=&#x27;alert(1)&#x27;&gt;" in page or "&lt;img src=x onerror=&quot;" in page
    assert '<img src=x onerror="alert(1)">' not in page


def test_write_map_rejects_bad_input(tmp_path):
    polygons = _polygons({QUERIES[0]: [(0, 0, 10, 10)]})
    with pytest.raises(KeyError, match="score_max"):
        write_map(tmp_path / "a.html", polygons.drop(columns=["score_max"]), None, QUERIES)
    with pytest.raises(ValueError, match="not in queries"):
        write_map(tmp_path / "a.html", polygons, None, ["buildings"])
    with pytest.raises(ValueError, match="no CRS"):
        write_map(tmp_path / "a.html", polygons.set_crs(None, allow_override=True), None, QUERIES)
    with pytest.raises(ValueError, match="max_per_query"):
        write_map(tmp_path / "a.html", polygons, None, QUERIES, max_per_query=0)


def test_map_renders_offline_in_chromium(tmp_path):
    """Open map.html in headless Chromium with networking disabled; the polygons are drawn where they belong."""
    boxes = {QUERIES[0]: [(100, 100, 300, 300)], QUERIES[1]: [(700, 750, 800, 850)]}
    polygons = _polygons(boxes)
    imagery = _imagery()
    html_path = tmp_path / "map.html"
    write_map(html_path, polygons, imagery, QUERIES)
    png = screenshot(html_path, tmp_path / "map.png", size=(1200, 800))
    artifact = save_artifact(tmp_path / "map.png", "webmap_render.png")
    print(f"screenshot: {artifact}")

    # The imagery overlay is drawn: its colour covers a large rectangle.
    background = color_mask(png, IMAGERY_HEX, tolerance=6)
    rows, cols = np.nonzero(background)
    assert background.sum() > 100_000, "imagery overlay not drawn"
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1

    # Each query's outline colour appears around the screen position of its polygon, computed from the overlay's
    # drawn rectangle by Leaflet's linear stretch in Web Mercator.
    to_merc = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    utm_to_merc = Transformer.from_crs(UTM, "EPSG:3857", always_xy=True)
    minx, miny, maxx, maxy = imagery.bounds_lonlat
    (mx0, mx1), (my0, my1) = to_merc.transform([minx, maxx], [miny, maxy])
    for query_id, (query, query_boxes) in enumerate(boxes.items()):
        # Only the imagery rectangle: the legend's swatches carry the same colours.
        outline = color_mask(png, query_color(query_id), tolerance=12)
        outline[:top] = outline[bottom:] = False
        outline[:, :left] = outline[:, right:] = False
        assert outline.sum() > 200, f"no polygon outline of {query!r} in the screenshot"
        (bx0, by0, bx1, by1) = _utm_box(*query_boxes[0]).bounds
        (ex0, ex1), (ey0, ey1) = utm_to_merc.transform([bx0, bx1], [by0, by1])
        exp_left = left + (ex0 - mx0) / (mx1 - mx0) * (right - left)
        exp_right = left + (ex1 - mx0) / (mx1 - mx0) * (right - left)
        exp_top = top + (my1 - ey1) / (my1 - my0) * (bottom - top)
        exp_bottom = top + (my1 - ey0) / (my1 - my0) * (bottom - top)
        r, c = np.nonzero(outline)
        assert abs(c.min() - exp_left) <= 3 and abs(c.max() + 1 - exp_right) <= 3, query
        assert abs(r.min() - exp_top) <= 3 and abs(r.max() + 1 - exp_bottom) <= 3, query
        # The fill is drawn too: the box interior is tinted (neither pure imagery nor pure outline colour).
        cr, cc = int((exp_top + exp_bottom) / 2), int((exp_left + exp_right) / 2)
        assert not background[cr, cc] and not outline[cr, cc]

    # Leaflet built one interactive SVG path per polygon.
    dom = dump_dom(html_path)
    paths = re.findall(r'<path class="leaflet-interactive" stroke="(#[0-9a-f]{6})"', dom)
    assert sorted(paths) == sorted([query_color(0), query_color(1)])


def test_chromium_check_fails_when_leaflet_comes_from_a_cdn(tmp_path):
    """Negative control: the same map with Leaflet linked from a CDN draws nothing with networking disabled."""
    html_path = tmp_path / "map.html"
    write_map(html_path, _polygons({QUERIES[0]: [(100, 100, 300, 300)]}), _imagery(), QUERIES)
    page = html_path.read_text().replace(
        f"<script>{webmap._inline_leaflet_js()}</script>",
        '<script src="https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.js"></script>',
    )
    cdn_path = tmp_path / "map_cdn.html"
    cdn_path.write_text(page)
    assert find_external_references(page) == ["https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.js"]
    png = screenshot(cdn_path, tmp_path / "map_cdn.png", size=(1200, 800))
    assert color_mask(png, IMAGERY_HEX, tolerance=6).sum() == 0
    # The legend (plain HTML, bottom right) still shows its swatch; the map area has no polygon colour at all.
    assert color_mask(png, query_color(0))[:, :900].sum() == 0
    assert '<path class="leaflet-interactive"' not in dump_dom(cdn_path)
