"""The offline quickstart's inputs (``jobs/infer_region.py --demo``): demo region, catalog, model and queries.

The demo region is a large georeferenced SynRS mosaic (``pipelines.demo.region``: COGs in UTM 33N, a STAC
ItemCollection, a truth GeoParquet) generated on first use and cached under
``$CROBIM_GEO_CACHE/demo/<version>/`` (default ``~/.cache/crobim-geo``). The job reads its catalog through the real
file-catalog path of ``pipelines.stac`` and runs the shipped demo model (``assets/demo-model/``);
``pipelines.demo.report`` scores the resulting polygons against the truth layer (``demo_report.json``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEMO_OUT",
    "DEMO_QUERIES",
    "DEMO_REGION",
    "DEMO_VERSION",
    "TRUTH_RULES",
    "DemoSetup",
    "cache_root",
    "demo_model_path",
    "demo_torch_threads",
    "prepare_demo",
]

logger = logging.getLogger(__name__)

#: Bump when the demo region recipe changes (the cache folder is per version).
DEMO_VERSION = "1"

#: The demo region: arguments of ``pipelines.demo.region.make_region``. 3 km x 3 km, a 2 x 2 grid of items
#: (a mosaic for the reader), 2 m pixels in UTM 33N; ``unit_px`` is the SynRS scene side the demo model was
#: trained at (``configs/synrs-learning.yaml``: 96 px), so objects have the sizes it knows.
DEMO_REGION: dict[str, Any] = {
    "seed": 2024,
    "size_px": 1536,
    "gsd_m": 2.0,
    "crs": "EPSG:32633",
    "origin": (500_000.0, 5_000_000.0),
    "n_items": (2, 2),
    "unit_px": 96,
}

#: Default demo queries. The first is the headline of the report; each has a truth rule in ``TRUTH_RULES``.
DEMO_QUERIES: tuple[str, ...] = ("all ponds near roads", "all ponds", "all buildings")

#: Query -> (truth column, None) or (None, class): which true objects answer it.
TRUTH_RULES: dict[str, tuple[str | None, str | None]] = {
    "all ponds near roads": ("pond_near_road", None),
    "all buildings near roads": ("building_near_road", None),
    "all buildings near the river": ("building_near_river", None),
    "all trees near ponds": ("tree_near_pond", None),
    "all ponds": (None, "pond"),
    "all buildings": (None, "building"),
    "all trees": (None, "tree"),
    "all fields": (None, "field"),
    "all roads": (None, "road"),
}

#: Output folder of ``--demo`` unless ``--out`` is given.
DEMO_OUT = "out/demo"


def cache_root() -> Path:
    """``$CROBIM_GEO_CACHE`` if set, else ``~/.cache/crobim-geo``."""
    env = os.environ.get("CROBIM_GEO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "crobim-geo"


def demo_model_path() -> Path:
    """The demo checkpoint shipped with the repository (``assets/demo-model/``).

    Raises:
        FileNotFoundError: when the folder or its weights are missing (e.g. an installed wheel, not a clone).
    """
    path = Path(__file__).resolve().parents[2] / "assets" / "demo-model"
    if not (path / "config.json").is_file() and not any(path.glob("*.safetensors")):
        raise FileNotFoundError(
            f"demo model not found at {path}: it ships in the repository's assets/demo-model/ (run from a clone), "
            "or pass --model DIR with a CroBIM checkpoint folder"
        )
    return path


@dataclass(frozen=True)
class DemoSetup:
    """What ``--demo`` runs on: the cached region, its catalog and truth, and the demo model.

    Attributes:
        region_dir: the cached region folder.
        catalog: STAC ItemCollection file (local; the job's ``--catalog``).
        truth: truth GeoParquet (one polygon per object, boolean query columns).
        bbox: the region's WGS84 bbox (west, south, east, north).
        info: the region's ``region.json`` (settings, grid, per-query counts).
    """

    region_dir: Path
    catalog: Path
    truth: Path
    bbox: tuple[float, float, float, float]
    info: dict[str, Any]

    @property
    def near_m(self) -> float:
        """The region's "near" rule in metres (the same for every relation of its truth)."""
        return float(next(iter(self.info["queries"].values()))["near_m"])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (concurrent first uses generate the region once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_demo(cache: str | os.PathLike[str] | None = None) -> DemoSetup:
    """The demo region, generated on first use (about a minute on 2 cores) and reused afterwards.

    Args:
        cache: cache root (default :func:`cache_root`); the region goes to ``<cache>/demo/<DEMO_VERSION>/``.

    Returns:
        The demo setup.
    """
    from pipelines.demo.region import make_region

    root = Path(cache).expanduser() if cache is not None else cache_root()
    region_dir = root / "demo" / DEMO_VERSION
    with _locked(root / "demo" / f"{DEMO_VERSION}.lock"):
        if not (region_dir / "region.json").is_file():
            logger.info("generating the demo region in %s (first use only; about a minute)", region_dir)
        try:
            scene = make_region(region_dir, **DEMO_REGION)
        except FileExistsError:
            # A region of an older generator version in our own cache folder: regenerate it.
            logger.info("demo region in %s was made with other settings; regenerating it", region_dir)
            scene = make_region(region_dir, **DEMO_REGION, overwrite=True)
    west, south, east, north = (float(v) for v in scene.bbox_wgs84)
    return DemoSetup(
        region_dir=scene.out_dir,
        catalog=scene.catalog_path,
        truth=scene.truth_path,
        bbox=(west, south, east, north),
        info=scene.info,
    )


def demo_torch_threads() -> int:
    """Torch threads for the demo's one inference actor: the machine's cores, at most 8 (reads are short)."""
    return max(1, min(os.cpu_count() or 1, 8))
