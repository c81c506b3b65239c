"""The run's output as a STAC Item (``<out>/item.json``): assets, the input items it derives from, the model, software.

One Item per run, id from the run fingerprint: geometry and bbox are the output grid's footprint in WGS84; the
datetime range spans the input items'; assets are ``masks.zarr`` (with ``proj:`` code, shape and transform),
``polygons.parquet``, ``run.json``, ``quicklook.png``, ``map.html`` (when written) and the model (``mlm:model``);
``derived_from`` links name every input item read; the model is described with the MLM extension and the software
with the processing extension. Asset hrefs are relative to the Item, so the output folder can be moved or uploaded
as a whole.

:func:`validate_output_item` checks an Item offline against STAC 1.1 (pystac's bundled core schemas) and the
extension schemas vendored in ``pipelines/assets/stac-schemas/`` (see the README there).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pystac
import shapely
import shapely.geometry
import shapely.ops
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pystac.extensions.mlm import (
    InputStructure,
    MLMExtension,
    ModelInput,
    ModelOutput,
    ResultStructure,
    TaskType,
)
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType

from common import storage

if TYPE_CHECKING:
    from pipelines.grid import OutputGrid
    from pipelines.plan import RegionPlan

__all__ = ["ITEM_NAME", "PROCESSING_SCHEMA", "build_output_item", "validate_output_item", "write_output_item"]

logger = logging.getLogger(__name__)

ITEM_NAME = "item.json"
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
#: Vendored schema files, by the URL items and other schemas name them.
_SCHEMA_FILES = {
    "https://stac-extensions.github.io/mlm/v1.4.0/schema.json": "mlm-v1.4.0.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json": "projection-v2.0.0.json",
    PROCESSING_SCHEMA: "processing-v1.2.0.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json": "processing-v1.1.0.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json": "raster-v1.1.0.json",
    "https://stac-extensions.github.io/classification/v1.1.0/schema.json": "classification-v1.1.0.json",
}
#: (asset key, file name, media type, roles); the optional ones are listed when the file exists.
_OUTPUT_ASSETS = (
    ("masks", "masks.zarr", pystac.MediaType.ZARR, ["data"]),
    ("polygons", "polygons.parquet", "application/vnd.apache.parquet", ["data"]),
    ("run", "run.json", pystac.MediaType.JSON, ["metadata"]),
    ("quicklook", "quicklook.png", pystac.MediaType.PNG, ["overview"]),
    ("map", "map.html", pystac.MediaType.HTML, ["overview"]),
)
_REQUIRED_ASSETS = frozenset({"masks", "polygons", "run"})
_SEGMENT_STEPS = 16  # points per footprint edge when reprojecting it to WGS84


def _footprint_wgs84(grid: OutputGrid) -> shapely.Polygon:
    """The grid's outline in WGS84, densified so curved edges (UTM -> lon/lat) stay accurate."""
    minx, miny, maxx, maxy = grid.bounds
    box = shapely.segmentize(
        shapely.box(minx, miny, maxx, maxy), max(maxx - minx, maxy - miny) / _SEGMENT_STEPS
    )
    to_ll = Transformer.from_crs(ProjCRS.from_wkt(grid.crs_wkt), "EPSG:4326", always_xy=True)
    return shapely.ops.transform(to_ll.transform, box)


def _time_range(items: list[pystac.Item]) -> tuple[datetime, datetime]:
    """Earliest start and latest end over the items (``datetime`` or ``start_/end_datetime``)."""
    starts: list[datetime] = []
    ends: list[datetime] = []
    for item in items:
        common = item.common_metadata
        starts.append(item.datetime or common.start_datetime)  # type: ignore[arg-type]
        ends.append(item.datetime or common.end_datetime)  # type: ignore[arg-type]
    if not starts:
        raise ValueError("a run's output item needs at least one input item")
    return min(starts), max(ends)


def _input_href(item: pystac.Item, stac_url: str | None, catalog: str | None) -> str:
    """The input item's own ``self`` href, else its STAC API URL, else the catalog file it came from with the item's
    id as the fragment (``catalog.json#<id>``), so every input has its own link."""
    link = item.get_single_link("self")
    if link is not None:
        return link.get_href(transform_href=False) or ""
    if stac_url and item.collection_id:
        return f"{stac_url.rstrip('/')}/collections/{item.collection_id}/items/{item.id}"
    if stac_url:
        return f"{stac_url.rstrip('/')}/search?ids={item.id}"
    return f"{catalog}#{quote(item.id, safe='')}" if catalog else f"#{quote(item.id, safe='')}"


def _add_assets(item: pystac.Item, out: str, grid: OutputGrid) -> None:
    """The output files as assets (relative hrefs), ``proj:`` on the masks asset."""
    for key, name, media_type, roles in _OUTPUT_ASSETS:
        if key not in _REQUIRED_ASSETS and not storage.exists(storage.join(out, name)):
            continue
        item.add_asset(key, pystac.Asset(f"./{name}", media_type=media_type, roles=list(roles)))
    ProjectionExtension.add_to(item)
    proj = ProjectionExtension.ext(item.assets["masks"])
    epsg = grid.epsg()
    proj.apply(
        code=f"EPSG:{epsg}" if epsg is not None else None,
        wkt2=None if epsg is not None else grid.crs_wkt,
        shape=[grid.height, grid.width],
        transform=[float(v) for v in grid.transform],
        bbox=list(grid.bounds),
    )


def _mlm_name(name: str) -> str:
    """``name`` in the characters ``mlm:name`` allows (a factory's ``module:function`` -> ``module.function``)."""
    cleaned = re.sub(r"[^a-zA-Z0-9_.\-\s]", ".", name).strip(" .-_")
    return cleaned if re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_.\-\s]+[a-zA-Z0-9]", cleaned) else "CroBIM"


def _add_model(item: pystac.Item, plan: RegionPlan, versions: dict[str, Any]) -> None:
    """The model with the MLM extension: RGB tiles and a query in, one probability mask per query out."""
    info = plan.model.info
    size = plan.lattice.tile_size_px
    checkpoint = info.get("kind") == "checkpoint"
    rgb = ModelInput.create(
        name="RGB tile",
        bands=["red", "green", "blue"],
        input=InputStructure.create(
            [-1, 3, size, size], ["batch", "channel", "height", "width"], DataType.FLOAT32
        ),
        description=f"{size} x {size} px tiles of the input items' RGB (8-bit mapped, then normalised)",
    )
    query = ModelInput.create(
        name="query",
        bands=[],
        input=InputStructure.create([-1, -1], ["batch", "token"], DataType.INT64),
        description="the referring expression, tokenised; one per entry of crobim:queries",
    )
    mask = ModelOutput.create(
        name="masks",
        tasks=[TaskType.SEMANTIC_SEGMENTATION],
        result=ResultStructure.create(
            [-1, 1, size, size], ["batch", "channel", "height", "width"], DataType.FLOAT32
        ),
        description="probability that a pixel is what the query names; blended and written as round(255 p) "
        "uint8 to masks.zarr 'prob' (query, y, x), thresholded into polygons.parquet",
    )
    MLMExtension.ext(item, add_if_missing=True).apply(
        name=_mlm_name(str(info.get("name") or info.get("reference") or "CroBIM")),
        architecture="CroBIM",
        tasks=[TaskType.SEMANTIC_SEGMENTATION],
        input=[rgb, query],
        output=[mask],
        framework="pytorch",
        framework_version=versions.get("torch"),
    )
    # STAC 1.1 bands: MLM resolves the input's band names through the Item's; STAC allows those only when an
    # asset has bands too (the model's, which reads them).
    bands = [{"name": b, "description": f"{b} of the input imagery"} for b in ("red", "green", "blue")]
    item.properties["bands"] = bands
    href = str(info.get("path") or info.get("reference") or "")
    model = pystac.Asset(href, title="CroBIM model", roles=["mlm:model"], extra_fields={"bands": bands})
    model.extra_fields["mlm:artifact_type"] = "crobim.save_model" if checkpoint else "python-factory"
    if info.get("sha256"):
        model.extra_fields["crobim:sha256"] = info["sha256"]  # the checkpoint folder's hash (run fingerprint)
    item.add_asset("model", model)


def _processing_fields(plan: RegionPlan, document: dict[str, Any]) -> dict[str, Any]:
    """``processing:`` fields: software versions, lineage, processing time."""
    versions = document.get("versions") or {}
    software = {name: str(v) for name, v in sorted(versions.items()) if v is not None and name != "gpu"}
    c = plan.config
    lineage = (
        f"CroBIM referring segmentation of {len(plan.items)} input item(s) for {len(c.queries)} query(ies) "
        f"on a {plan.lattice.tile_size_px} px tile lattice (overlap {plan.lattice.overlap_px} px, "
        f"{c.blend} blending) over the output grid; probabilities written to masks.zarr, thresholded and "
        "merged across chunk seams into polygons.parquet"
    )
    when = document.get("finished_at") or document.get("started_at")
    when = when or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"processing:software": software, "processing:lineage": lineage, "processing:datetime": when}


def build_output_item(out: str, plan: RegionPlan, document: dict[str, Any]) -> pystac.Item:
    """The run's STAC Item (see the module docstring); ``document`` is the final ``run.json``.

    Raises:
        ValueError: If the plan has no input items.
    """
    start, end = _time_range(plan.items)
    footprint = _footprint_wgs84(plan.grid)
    item = pystac.Item(
        id=f"crobim-geo-{document['fingerprint']}",
        geometry=shapely.geometry.mapping(footprint),
        bbox=list(footprint.bounds),
        datetime=start if start == end else None,
        properties={},
        start_datetime=start,
        end_datetime=end,
    )
    item.common_metadata.title = f"CroBIM-Geo: {', '.join(plan.config.queries)}"
    item.properties["crobim:queries"] = list(plan.config.queries)
    item.properties["crobim:status"] = document.get("status")
    _add_assets(item, out, plan.grid)
    _add_model(item, plan, document.get("versions") or {})
    item.stac_extensions.append(PROCESSING_SCHEMA)
    item.properties.update(_processing_fields(plan, document))
    c = plan.config
    for source in plan.items:
        href = _input_href(source, c.stac_url, c.catalog)
        item.add_link(pystac.Link("derived_from", href, pystac.MediaType.GEOJSON, title=source.id))
    return item


def write_output_item(out: str, plan: RegionPlan, document: dict[str, Any]) -> str:
    """Write ``<out>/item.json`` (after ``run.json`` is final) and return its URI.

    Args:
        out: The run's output folder (local or object storage).
        plan: The run's plan (items, grid, model).
        document: The final ``run.json`` contents.
    """
    item = build_output_item(out, plan, document)
    uri = storage.join(out, ITEM_NAME)
    storage.write_json(uri, item.to_dict(include_self_link=False, transform_hrefs=False))
    logger.info("wrote the output STAC item %s (%d input items)", uri, len(plan.items))
    return uri


class _OfflineValidator(pystac.validation.JsonSchemaSTACValidator):
    """pystac's validator with the vendored extension schemas in its cache: nothing is fetched."""

    def __init__(self) -> None:
        super().__init__()
        folder = resources.files("pipelines") / "assets" / "stac-schemas"
        for url, name in _SCHEMA_FILES.items():
            schema = json.loads((folder / name).read_text())
            self.schema_cache[url] = schema
            own = str(schema.get("$id", "")).rstrip("#")
            if own and own != url:  # a schema whose $id names another version (processing v1.1.0)
                self.schema_cache.setdefault(own, schema)

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        key = schema_uri.rstrip("#")
        if key not in self.schema_cache:
            raise pystac.validation.GetSchemaError(schema_uri, LookupError("schema not vendored (offline)"))
        return self.schema_cache[key]


def validate_output_item(item: pystac.Item | dict[str, Any]) -> list[str]:
    """Validate an Item offline against STAC core and its extensions' schemas; return the schema URIs used.

    Raises:
        pystac.errors.STACValidationError: If the Item is invalid.
        pystac.validation.GetSchemaError: If it declares an extension whose schema is not vendored.
    """
    d = (
        item.to_dict(include_self_link=False, transform_hrefs=False)
        if isinstance(item, pystac.Item)
        else item
    )
    return list(pystac.validation.validate_dict(d, validator=_OfflineValidator()))
