"""Compare two region-job output folders: polygons, mask chunk bytes and the demo report's numbers.

Used to show that a change leaves a job's answers untouched (e.g. the quickstart before and after a refactor)::

    python scripts/compare_region_outputs.py out/demo-before out/demo-after

Compares ``polygons.parquet`` row by row (every column, geometry as WKB), every chunk file of ``masks.zarr``
byte for byte (metadata documents compared as JSON, minus run-specific attributes) and every number in
``demo_report.json`` when both folders have one. Prints one line per output and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: Attributes that name a run rather than describe its answer.
_RUN_ATTRS = ("crobim:fingerprint",)


def compare_polygons(a: Path, b: Path) -> list[str]:
    """Differences between two ``polygons.parquet`` tables (empty when equal)."""
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.schema.names != tb.schema.names:
        return [f"columns differ: {ta.schema.names} vs {tb.schema.names}"]
    if ta.num_rows != tb.num_rows:
        return [f"row counts differ: {ta.num_rows} vs {tb.num_rows}"]
    return [f"column {name!r} differs" for name in ta.schema.names if not ta[name].equals(tb[name])]


def _strip_run_attrs(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _strip_run_attrs(v) for k, v in doc.items() if k not in _RUN_ATTRS}
    if isinstance(doc, list):
        return [_strip_run_attrs(v) for v in doc]
    return doc


def compare_zarr(a: Path, b: Path) -> list[str]:
    """Differences between two ``masks.zarr`` stores: chunk bytes, and metadata minus run attributes."""
    files_a = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    diffs = [f"only in one store: {sorted(files_a ^ files_b)[:10]}"] if files_a != files_b else []
    for rel in sorted(files_a & files_b):
        da, db = (a / rel).read_bytes(), (b / rel).read_bytes()
        if rel.endswith(".json"):
            if _strip_run_attrs(json.loads(da)) != _strip_run_attrs(json.loads(db)):
                diffs.append(f"metadata {rel} differs")
        elif da != db:
            diffs.append(f"chunk {rel} differs")
    return diffs


def _numbers(doc: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(doc, dict):
        return {k: v for key, val in doc.items() for k, v in _numbers(val, f"{prefix}/{key}").items()}
    if isinstance(doc, list):
        return {k: v for i, val in enumerate(doc) for k, v in _numbers(val, f"{prefix}[{i}]").items()}
    if isinstance(doc, bool) or not isinstance(doc, int | float):
        return {}
    return {prefix: float(doc)}


def compare_report(a: Path, b: Path) -> list[str]:
    """Differences between the numbers of two ``demo_report.json`` documents."""
    na, nb = _numbers(json.loads(a.read_text())), _numbers(json.loads(b.read_text()))
    if na.keys() != nb.keys():
        return [f"report fields differ: {sorted(na.keys() ^ nb.keys())[:10]}"]
    return [f"{key}: {na[key]} vs {nb[key]}" for key in sorted(na) if na[key] != nb[key]]


def compare_outputs(a: Path, b: Path) -> dict[str, list[str]]:
    """Differences per output between two region output folders."""
    result = {
        "polygons.parquet": compare_polygons(a / "polygons.parquet", b / "polygons.parquet"),
        "masks.zarr": compare_zarr(a / "masks.zarr", b / "masks.zarr"),
    }
    if (a / "demo_report.json").exists() or (b / "demo_report.json").exists():
        result["demo_report.json"] = compare_report(a / "demo_report.json", b / "demo_report.json")
    return result


def main(argv: list[str] | None = None) -> int:
    """Print one line per output; 0 when everything is identical, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="first output folder")
    parser.add_argument("b", type=Path, help="second output folder")
    args = parser.parse_args(argv)
    result = compare_outputs(args.a, args.b)
    for name, diffs in result.items():
        print(f"{name}: {'identical' if not diffs else 'DIFFERENT'}")
        for line in diffs[:20]:
            print(f"  {line}")
    return 0 if not any(result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
