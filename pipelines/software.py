"""The software a run used (``run.json`` "versions"): Python, GDAL, CUDA, the GPU and the packages' versions."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["package_versions"]

#: Distributions whose versions go into run.json (absent ones are recorded as null).
_PACKAGES = (
    "crobim-geo",
    "ray",
    "torch",
    "torchvision",
    "transformers",
    "timm",
    "rasterio",
    "xarray",
    "zarr",
    "geopandas",
    "shapely",
    "pyproj",
    "pyarrow",
    "numpy",
    "odc-stac",
    "pystac",
    "pystac-client",
    "stac-geoparquet",
)


def package_versions() -> dict[str, str | None]:
    """Python, GDAL (rasterio's), CUDA and the versions of the packages a run depends on."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        import rasterio

        out["gdal"] = rasterio.__gdal_version__
    except ImportError:
        out["gdal"] = None
    out["cuda"], out["gpu"] = _cuda_and_gpu()
    return out


def _cuda_and_gpu() -> tuple[str | None, str | None]:
    """The CUDA version torch was built with and this machine's first GPU, without importing torch here.

    The driver of a region job never runs the model, so it does not load torch (~0.5 GB) to record them: the CUDA
    version is read from torch's ``version.py`` and the GPU from ``nvidia-smi`` (torch's answer if it is loaded).
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None, None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        text = ""
    found = re.search(r"^cuda\b[^=]*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    gpu = None
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            names = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.split("\n")  # fmt: skip
            gpu = names[0].strip() or None
    return (found.group(1) if found else None), gpu
