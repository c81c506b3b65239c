"""Output grid and chunk plan (PIPELINE.md §1.3, §1.4): where to read, decided apart from reading."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pystac
import shapely
import shapely.geometry
import shapely.ops
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from pipelines.radiometry import RadiometryConfig, select_rgb_source
from pipelines.stac import BBox

__all__ = ["ChunkSpec", "OutputGrid", "choose_grid", "item_native_grid", "plan_chunks", "utm_crs_for"]

logger = logging.getLogger(__name__)

#: Metres per degree of latitude (used only to carry a resolution into a geographic CRS).
_M_PER_DEG = 111_320.0


@dataclass(frozen=True)
class OutputGrid:
    """A raster grid: CRS (WKT2), north-up affine transform and shape ``(height, width)`` in pixels."""

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @property
    def crs(self) -> CRS:
        """The CRS as a rasterio object."""
        return CRS.from_wkt(self.crs_wkt)

    @property
    def affine(self) -> Affine:
        """The pixel-to-map transform."""
        return Affine(*self.transform)

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size ``(x, y)`` in CRS units, both positive."""
        return abs(self.transform[0]), abs(self.transform[4])

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` in the grid CRS."""
        a, _, c, _, e, f = self.transform
        return c, f + e * self.height, c + a * self.width, f

    def window_transform(self, row_off: int, col_off: int) -> Affine:
        """Transform of a window whose top-left pixel is ``(row_off, col_off)`` (may be negative)."""
        return self.affine @ Affine.translation(col_off, row_off)

    def pixel_area_m2(self, latitude: float = 0.0) -> float:
        """Area of one pixel in m^2: exact in a projected CRS; at ``latitude`` (degrees) in a geographic one."""
        rx, ry = self.resolution
        crs = ProjCRS.from_wkt(self.crs_wkt)
        if crs.is_geographic:
            return rx * ry * 111_320.0**2 * math.cos(math.radians(latitude))
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return rx * ry * factor**2

    def epsg(self) -> int | None:
        """EPSG code of the CRS when it has one."""
        return ProjCRS.from_wkt(self.crs_wkt).to_epsg()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (hashed into the run fingerprint)."""
        return {
            "crs_wkt": self.crs_wkt,
            "transform": list(self.transform),
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutputGrid:
        """Inverse of :meth:`to_dict`."""
        return cls(d["crs_wkt"], tuple(d["transform"]), int(d["width"]), int(d["height"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ChunkSpec:
    """One processing chunk: core window in grid pixels, halo, and candidate items (in selection order)."""

    chunk_id: str
    row: int
    col: int
    row_off: int
    col_off: int
    height: int
    width: int
    halo_px: int
    item_ids: tuple[str, ...] = ()
    #: True when more items met the chunk than ``max_items_per_chunk``.
    capped: bool = False

    @property
    def empty(self) -> bool:
        """No item meets the chunk + halo: nothing to read."""
        return not self.item_ids

    @property
    def read_window(self) -> tuple[int, int, int, int]:
        """``(row_off, col_off, height, width)`` of core + halo in grid pixels (may leave the grid)."""
        h = self.halo_px
        return self.row_off - h, self.col_off - h, self.height + 2 * h, self.width + 2 * h

    def to_dict(self) -> dict[str, Any]:
        """JSON/Arrow-ready row."""
        return {
            "chunk_id": self.chunk_id,
            "row": self.row,
            "col": self.col,
            "row_off": self.row_off,
            "col_off": self.col_off,
            "height": self.height,
            "width": self.width,
            "halo_px": self.halo_px,
            "item_ids": list(self.item_ids),
            "capped": self.capped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChunkSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            chunk_id=str(d["chunk_id"]),
            row=int(d["row"]),
            col=int(d["col"]),
            row_off=int(d["row_off"]),
            col_off=int(d["col_off"]),
            height=int(d["height"]),
            width=int(d["width"]),
            halo_px=int(d["halo_px"]),
            item_ids=tuple(d.get("item_ids") or ()),
            capped=bool(d.get("capped", False)),
        )


def chunk_id(row: int, col: int) -> str:
    """Deterministic chunk id from the chunk's grid position."""
    return f"r{row:05d}c{col:05d}"


def utm_crs_for(lon: float, lat: float) -> CRS:
    """The WGS84 UTM zone (north or south) containing ``(lon, lat)``.

    Plain 6-degree zones, as pyproj's ``query_utm_crs_info`` (EPSG areas of use) answers them (tested),
    at a fraction of its cost (~0.4 s per database query); the MGRS Norway/Svalbard exceptions are not applied.
    """
    if not (-180.0 <= lon <= 180.0 and -80.0 <= lat <= 84.0):
        raise ValueError(f"lon={lon}, lat={lat} is outside the UTM domain (80S..84N); pass an explicit --crs")
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


@dataclass(frozen=True)
class _NativeGrid:
    crs: CRS | None  # None: the item has no projection fields, only STAC's gsd
    transform: Affine | None
    gsd: float | None  # pixel size in CRS units (from proj:transform), or metres when crs is None
    gsd_is_metres: bool = False  # True when the size comes from STAC's ``gsd`` (always metres)


def _asset_crs(fields: dict[str, Any]) -> CRS | None:
    code = fields.get("proj:code") or (f"EPSG:{fields['proj:epsg']}" if fields.get("proj:epsg") else None)
    if code:
        return CRS.from_user_input(code)
    if fields.get("proj:wkt2"):
        return CRS.from_wkt(fields["proj:wkt2"])
    if fields.get("proj:projjson"):
        return CRS.from_user_input(ProjCRS.from_json_dict(fields["proj:projjson"]).to_wkt())
    return None


def item_native_grid(item: pystac.Item, config: RadiometryConfig | None = None) -> _NativeGrid | None:
    """CRS, transform and resolution of the item's RGB assets (``proj:`` fields, asset over item).

    An item without projection fields still gives its resolution through STAC's ``gsd`` (metres).
    """
    try:
        source = select_rgb_source(item, config)
    except Exception:  # no RGB source: the item contributes no grid information
        return None
    best: _NativeGrid | None = None
    for band in source.bands:
        fields = {**item.properties, **item.assets[band.asset_key].extra_fields}
        crs = _asset_crs(fields)
        tr = fields.get("proj:transform") if crs is not None else None
        if tr:
            cand = _NativeGrid(crs, Affine(*tr[:6]), abs(float(tr[0])))
        elif fields.get("gsd"):
            cand = _NativeGrid(crs, None, float(fields["gsd"]), gsd_is_metres=True)
        elif crs is not None:
            cand = _NativeGrid(crs, None, None)
        else:
            continue
        if best is None or (cand.gsd or math.inf) < (best.gsd or math.inf):
            best = cand
    return best


def _is_metric(crs: CRS) -> bool:
    return (
        crs.is_projected
        and abs((crs.linear_units_factor[1] if crs.linear_units_factor else 1.0) - 1.0) < 1e-12
    )


def _resolution_in(target: CRS, natives: Sequence[_NativeGrid], lat: float) -> float | None:
    """Finest native resolution, carried over into the target CRS's units."""
    metres: list[float] = []
    for n in natives:
        if n.gsd is None:
            continue
        if n.gsd_is_metres or n.crs is None:
            metres.append(n.gsd)
        elif n.crs.is_geographic:
            metres.append(n.gsd * _M_PER_DEG * max(math.cos(math.radians(lat)), 1e-6))
        else:
            metres.append(n.gsd * (n.crs.linear_units_factor[1] if n.crs.linear_units_factor else 1.0))
    if not metres:
        return None
    best_m = min(metres)
    if target.is_geographic:
        return best_m / _M_PER_DEG
    factor = target.linear_units_factor[1] if target.linear_units_factor else 1.0
    return best_m / factor


def choose_grid(
    bbox: BBox,
    items: Sequence[pystac.Item] = (),
    crs: CRS | str | int | None = None,
    resolution: float | None = None,
    radiometry: RadiometryConfig | None = None,
) -> OutputGrid:
    """Choose the output grid for a WGS84 bbox.

    CRS: ``crs`` if given; else the items' shared native CRS when it is projected in metres; else the
    UTM zone of the bbox centre. Resolution: ``resolution`` (target CRS units) or the finest native
    resolution among the items' RGB assets (carried over in metres across a reprojection). The bbox is
    transformed with densified edges; the origin snaps outward to multiples of the resolution, or to
    the items' pixel phase when they all share CRS and resolution with the grid.

    Args:
        bbox: ``(west, south, east, north)`` in degrees.
        items: Selected items (their ``proj:`` fields give CRS, transform, resolution).
        crs: Explicit output CRS (``--crs``).
        resolution: Explicit pixel size in target CRS units (``--resolution``).
        radiometry: Used to find the RGB assets whose grid counts.

    Returns:
        The grid.

    Raises:
        ValueError: If no resolution can be found (no ``proj:transform``/``gsd`` and none given).
    """
    w, s, e, n = bbox
    lon_c, lat_c = (w + e) / 2, (s + n) / 2
    natives = [g for g in (item_native_grid(it, radiometry) for it in items) if g is not None]
    if crs is not None:
        target = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    else:
        known = [g.crs for g in natives if g.crs is not None]
        codes = {c.to_wkt() for c in known}
        if known and len(codes) == 1 and len(known) == len(items) and _is_metric(known[0]):
            target = known[0]
        else:
            target = utm_crs_for(lon_c, lat_c)
            if natives and len(codes) > 1:
                logger.info("items use %d CRSs; output grid uses %s (UTM of bbox centre)", len(codes), target)
            if utm_crs_for(w, lat_c) != utm_crs_for(e, lat_c):
                logger.warning(
                    "bbox spans several UTM zones; the grid uses %s. Pass --crs (e.g. an equal-area CRS) to override",
                    target.to_string(),
                )
    res = resolution if resolution is not None else _resolution_in(target, natives, lat_c)
    if res is None:
        raise ValueError(
            "no output resolution: the items carry neither proj:transform nor gsd; "
            "pass --resolution (pixel size in the output CRS's units, metres for UTM)"
        )
    if not res > 0:
        raise ValueError(f"resolution {res} is not a positive pixel size; pass --resolution > 0")
    minx, miny, maxx, maxy = transform_bounds("EPSG:4326", target, w, s, e, n, densify_pts=21)
    # Pixel phase: when every native grid shares the target CRS and resolution, align to it.
    phase_x = phase_y = 0.0
    same = [
        g
        for g in natives
        if g.transform is not None
        and g.crs == target
        and math.isclose(abs(g.transform.a), res, rel_tol=1e-9)
        and math.isclose(abs(g.transform.e), res, rel_tol=1e-9)
    ]
    if natives and len(same) == len(natives):
        phases = {(round(g.transform.c % res, 6), round(g.transform.f % res, 6)) for g in same}  # type: ignore[union-attr]
        if len(phases) == 1:
            phase_x, phase_y = phases.pop()
    x0 = math.floor((minx - phase_x) / res) * res + phase_x
    y1 = math.ceil((maxy - phase_y) / res) * res + phase_y
    width = max(1, math.ceil((maxx - x0) / res - 1e-9))
    height = max(1, math.ceil((y1 - miny) / res - 1e-9))
    return OutputGrid(target.to_wkt(version="WKT2_2019"), (res, 0.0, x0, 0.0, -res, y1), width, height)


def _footprints_in(grid: OutputGrid, items: Sequence[pystac.Item]) -> list[shapely.Geometry | None]:
    """Item footprints reprojected into the grid CRS (densified, so long edges stay accurate)."""
    to_grid = Transformer.from_crs("EPSG:4326", ProjCRS.from_wkt(grid.crs_wkt), always_xy=True)
    out: list[shapely.Geometry | None] = []
    for item in items:
        if item.geometry:
            geom = shapely.geometry.shape(item.geometry)
        elif item.bbox:
            geom = shapely.geometry.box(*item.bbox[:2], *item.bbox[-2:])
        else:
            out.append(None)
            continue
        geom = shapely.segmentize(geom, 0.01)
        out.append(shapely.ops.transform(to_grid.transform, geom).buffer(0))
    return out


def plan_chunks(
    grid: OutputGrid,
    items: Sequence[pystac.Item] = (),
    chunk_size_px: int = 2048,
    halo_px: int = 464,
    max_items_per_chunk: int = 4,
) -> list[ChunkSpec]:
    """Split the grid into chunks (row-major) with deterministic ids and their candidate items.

    Candidates are the items whose footprint meets chunk + halo, in the given (selection) order,
    capped at ``max_items_per_chunk``; a chunk meeting none is empty and is not read.

    Args:
        grid: The output grid.
        items: Selected items, ordered (least cloudy first).
        chunk_size_px: Chunk side C in pixels (edge chunks are smaller).
        halo_px: Halo H in pixels added on every side for reads.
        max_items_per_chunk: Cap on candidates per chunk.

    Returns:
        Chunk specs in row-major order.
    """
    if chunk_size_px < 1 or halo_px < 0 or max_items_per_chunk < 1:
        raise ValueError(
            f"chunk_size_px={chunk_size_px}, halo_px={halo_px}, max_items_per_chunk={max_items_per_chunk}: "
            "need chunk_size_px >= 1, halo_px >= 0, max_items_per_chunk >= 1"
        )
    footprints = _footprints_in(grid, items)
    valid_idx = [i for i, g in enumerate(footprints) if g is not None and not g.is_empty]
    tree = shapely.STRtree([footprints[i] for i in valid_idx]) if valid_idx else None
    a, _, c, _, e, f = grid.transform
    chunks: list[ChunkSpec] = []
    n_rows = math.ceil(grid.height / chunk_size_px)
    n_cols = math.ceil(grid.width / chunk_size_px)
    for r in range(n_rows):
        for col in range(n_cols):
            row_off, col_off = r * chunk_size_px, col * chunk_size_px
            h = min(chunk_size_px, grid.height - row_off)
            w = min(chunk_size_px, grid.width - col_off)
            ids: list[str] = []
            capped = False
            if tree is not None:
                x0 = c + a * (col_off - halo_px)
                x1 = c + a * (col_off + w + halo_px)
                y0 = f + e * (row_off - halo_px)
                y1 = f + e * (row_off + h + halo_px)
                box = shapely.geometry.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
                hits = sorted(valid_idx[j] for j in tree.query(box, predicate="intersects"))
                ids = [items[i].id for i in hits]
                if len(ids) > max_items_per_chunk:
                    ids, capped = ids[:max_items_per_chunk], True
            chunks.append(
                ChunkSpec(chunk_id(r, col), r, col, row_off, col_off, h, w, halo_px, tuple(ids), capped)
            )
    return chunks
