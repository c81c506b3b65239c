"""The three Ray Data stages of a region job (PIPELINE.md §1.5-§1.10, §3): read, infer + blend, write.

Rows are single chunks. A chunk that fails in a stage becomes a row with ``status = "failed"`` and a reason
instead of an exception, so the other chunks finish; the write stage records it under ``_state/failed``.

- :func:`read_stage` (CPU task, ``batch_size=1``): chunk spec -> uint8 RGB + validity + source rank over
  the chunk core + halo, read from the frozen items with retries (``pipelines.read``).
- :class:`PredictorActor` (actor pool, ``batch_size=1``): the model is loaded once per actor; tiles of the
  global lattice run in fixed-size micro-batches (the last one padded) and are blended over the core.
- :class:`RegionDatasink` (``write_datasink``): Zarr region -> polygon part -> thumbnail -> done marker.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import numpy as np
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from common import storage
from common.heap import trim_heap

__all__ = ["PredictorActor", "RegionDatasink", "read_stage"]

logger = logging.getLogger(__name__)

#: Frozen items per process: {items_uri: {item_id: pystac.Item}} (read tasks reuse worker processes).
_ITEMS_CACHE: dict[str, dict[str, Any]] = {}


def _frozen_items(uri: str) -> dict[str, Any]:
    if uri not in _ITEMS_CACHE:
        from pipelines.stac_files import load_items

        _ITEMS_CACHE.clear()
        _ITEMS_CACHE[uri] = {it.id: it for it in load_items(uri)}
    return _ITEMS_CACHE[uri]


def _failed_row(batch: dict[str, np.ndarray], stage: str, reason: str) -> dict[str, np.ndarray]:
    return {
        "chunk": batch["chunk"],
        "windows": batch["windows"],
        "status": np.array(["failed"], dtype=object),
        "stage": np.array([stage], dtype=object),
        "reason": np.array([reason], dtype=object),
        "item_ids": np.array(["[]"], dtype=object),
        "rgb": np.zeros((1, 1, 1, 3), dtype=np.uint8),
        "valid": np.zeros((1, 1, 1), dtype=np.uint8),
        "rank": np.zeros((1, 1, 1), dtype=np.uint8),
        "read_s": np.zeros(1, dtype=np.float64),
    }


def read_stage(
    batch: dict[str, np.ndarray],
    grid: dict[str, Any],
    items_uri: str,
    radiometry: dict[str, Any],
    attempts: int = 5,
    backoff_s: float = 1.0,
) -> dict[str, np.ndarray]:
    """Read one chunk (a batch of one row): imagery over core + halo, or a failed row with the reason.

    Args:
        batch: ``{"chunk": [chunk spec JSON], "windows": [its tile windows, JSON]}``.
        grid: ``OutputGrid.to_dict()``.
        items_uri: The frozen selection (``out/inputs/items.parquet``).
        radiometry: ``RadiometryConfig`` fields.
        attempts: Tries per asset for transient errors (exponential backoff with jitter).
        backoff_s: First retry delay in seconds.

    Returns:
        One row: ``chunk``, ``windows``, ``status`` (``ok``/``failed``), ``stage``, ``reason``, ``item_ids`` (JSON),
        ``rgb`` uint8 (H, W, 3), ``valid`` and ``rank`` uint8 (H, W), ``read_s``.
    """
    from pipelines.grid import ChunkSpec, OutputGrid
    from pipelines.radiometry import RadiometryConfig
    from pipelines.read import read_chunk

    (chunk_json,) = batch["chunk"].tolist()
    chunk = ChunkSpec.from_dict(json.loads(chunk_json))
    start = time.perf_counter()
    try:
        imagery = read_chunk(
            chunk,
            OutputGrid.from_dict(grid),
            _frozen_items(items_uri),
            RadiometryConfig(**radiometry),
            attempts=attempts,
            backoff_s=backoff_s,
        )
    except Exception as exc:  # any read failure becomes a failed row: the other chunks go on
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning("chunk %s: read failed: %s", chunk.chunk_id, reason)
        return _failed_row(batch, "read", reason)
    return {
        "chunk": batch["chunk"],
        "windows": batch["windows"],
        "status": np.array(["ok"], dtype=object),
        "stage": np.array(["read"], dtype=object),
        "reason": np.array([""], dtype=object),
        "item_ids": np.array([json.dumps(list(imagery.item_ids))], dtype=object),
        "rgb": imagery.rgb[None],
        "valid": imagery.valid.astype(np.uint8)[None],
        "rank": imagery.source_rank[None],
        "read_s": np.array([time.perf_counter() - start], dtype=np.float64),
    }


class PredictorActor:
    """Callable class for ``map_batches``: loads the predictor once, then infers and blends one chunk per call.

    Args:
        model: ``--model`` (checkpoint folder or ``module:factory``).
        model_sha256: Expected checkpoint hash (None for factories).
        queries: The job's queries.
        lattice: ``TileLattice`` fields (``tile_size_px``, ``overlap_px``, ``margin_px``).
        blend: ``"cosine"`` or ``"clip"``.
        batch_size: Tiles per ``predict`` call; the last micro-batch of a chunk is padded to this size.
        thumb_step: Quicklook sampling step (grid pixels).
        threshold: Mask threshold (for thumbnails; polygons use the same cut).
        torch_threads: Intra-op threads for torch (None: leave as is).
        device: Torch device for CroBIM (None: CUDA if visible, else CPU).
        predictor_options: ``CroBIMPredictor`` options (``channels_last``, ``compile``).
    """

    def __init__(
        self,
        model: str,
        model_sha256: str | None,
        queries: list[str],
        lattice: dict[str, int],
        blend: str,
        batch_size: int,
        thumb_step: int,
        threshold: float,
        torch_threads: int | None = None,
        device: str | None = None,
        predictor_options: dict[str, Any] | None = None,
    ) -> None:
        from pipelines.blend import TileLattice
        from pipelines.predict import load_predictor

        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        start = time.perf_counter()
        self.predictor = load_predictor(
            model, device=device, expected_sha256=model_sha256, **(predictor_options or {})
        )
        self.load_s = time.perf_counter() - start
        self.queries = list(queries)
        self.lattice = TileLattice(**lattice)
        if self.predictor.tile_size != self.lattice.tile_size_px:  # --tile-size overrides the model's
            logger.info(
                "predictor tile_size %d; tiles are %d px", self.predictor.tile_size, self.lattice.tile_size_px
            )
        self.blend = blend
        self.batch_size = int(batch_size)
        self.thumb_step = int(thumb_step)
        from pipelines.polygonize import threshold_value

        self.threshold_u8 = max(threshold_value(threshold), 1)
        logger.info("PredictorActor pid %d loaded %s in %.2f s", os.getpid(), model, self.load_s)

    def _infer(
        self, chunk: Any, windows: list[Any], rgb: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """Blended uint8 probabilities (Q, h, w) of the chunk core and the number of tiles run."""
        from pipelines.blend import Blender, cut_tiles

        core = (chunk.row_off, chunk.col_off, chunk.height, chunk.width)
        origin = (chunk.row_off - chunk.halo_px, chunk.col_off - chunk.halo_px)
        s = self.lattice.tile_size_px
        blender = Blender(self.lattice, core, len(self.queries), mode=self.blend)  # type: ignore[arg-type]
        pending: list[tuple[Any, np.ndarray]] = []
        n_tiles = 0

        def flush() -> None:
            tiles = np.zeros((self.batch_size, s, s, 3), dtype=np.uint8)  # fixed shape: padded micro-batch
            for k, (_, tile) in enumerate(pending):
                tiles[k] = tile
            probs = np.asarray(self.predictor.predict(tiles, self.queries), dtype=np.float32)
            expected = (self.batch_size, len(self.queries), s, s)
            if probs.shape != expected:
                raise ValueError(f"predictor returned shape {probs.shape}; expected {expected} (B, Q, S, S)")
            for k, (win, _) in enumerate(pending):
                blender.add(win, probs[k])
            pending.clear()

        for win, tile in cut_tiles(rgb, origin, windows, s, valid=valid.astype(bool)):
            pending.append((win, tile))
            n_tiles += 1
            if len(pending) == self.batch_size:
                flush()
        if pending:
            flush()
        h = chunk.halo_px
        core_valid = valid[h : h + chunk.height, h : h + chunk.width].astype(bool)
        return blender.result(core_valid), n_tiles

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Infer one chunk row from the read stage; failed rows pass through."""
        from pipelines.blend import TileWindow
        from pipelines.grid import ChunkSpec
        from pipelines.viz import make_thumbnail

        (chunk_json,) = batch["chunk"].tolist()
        (status,) = batch["status"].tolist()
        chunk = ChunkSpec.from_dict(json.loads(chunk_json))
        windows = [TileWindow(**w) for w in json.loads(batch["windows"].tolist()[0])]
        q = len(self.queries)
        row: dict[str, np.ndarray] = {
            "chunk": batch["chunk"],
            "status": batch["status"],
            "stage": batch["stage"],
            "reason": batch["reason"],
            "item_ids": batch["item_ids"],
            "read_s": batch["read_s"],
            "prob": np.zeros((1, q, 1, 1), dtype=np.uint8),
            "valid": np.zeros((1, 1, 1), dtype=np.uint8),
            "rank": np.zeros((1, 1, 1), dtype=np.uint8),
            "thumb": np.array([b""], dtype=object),
            "n_tiles": np.zeros(1, dtype=np.int64),
            "infer_s": np.zeros(1, dtype=np.float64),
        }
        if status != "ok":
            return row
        start = time.perf_counter()
        rgb, valid, rank = batch["rgb"][0], batch["valid"][0], batch["rank"][0]
        try:
            prob, n_tiles = self._infer(chunk, windows, rgb, valid)
        except (
            Exception
        ) as exc:  # a predictor error fails this chunk only (a process crash restarts the actor)
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning("chunk %s: inference failed: %s", chunk.chunk_id, reason)
            row.update(
                status=np.array(["failed"], dtype=object),
                stage=np.array(["infer"], dtype=object),
                reason=np.array([reason], dtype=object),
            )
            return row
        h = chunk.halo_px
        core = (slice(h, h + chunk.height), slice(h, h + chunk.width))
        core_valid = valid[core]
        thumb = make_thumbnail(
            rgb[core], prob, core_valid, chunk.row_off, chunk.col_off, self.thumb_step, self.threshold_u8
        )
        row.update(
            prob=prob[None],
            valid=np.ascontiguousarray(core_valid)[None],
            rank=np.ascontiguousarray(rank[core])[None],
            thumb=np.array([thumb.to_bytes()], dtype=object),
            n_tiles=np.array([n_tiles], dtype=np.int64),
            infer_s=np.array([time.perf_counter() - start], dtype=np.float64),
        )
        return row


def _batch_rows(block: Any) -> list[dict[str, Any]]:
    """The rows of a block as dicts of numpy values (tensor columns may differ in shape between rows)."""
    acc = BlockAccessor.for_block(block)
    rows: list[dict[str, Any]] = [dict(row) for row in acc.iter_rows(public_row_format=True)]  # type: ignore[var-annotated]
    return rows


class RegionDatasink(Datasink[list[dict[str, Any]]]):
    """``Datasink`` for ``write_datasink``: per chunk, Zarr region -> polygon part -> thumbnail -> done marker.

    Constructed on the driver, pickled to the write tasks. Each chunk's summary goes to its done marker
    (``pipelines.provenance.RunManifest``), which the driver reads back.

    Args:
        out: Output folder.
        grid: ``OutputGrid.to_dict()``.
        queries: The job's queries.
        threshold: Polygon threshold.
        min_area_px: Sieve size in pixels for components not touching the core border.
    """

    def __init__(
        self, out: str, grid: dict[str, Any], queries: list[str], threshold: float, min_area_px: int
    ) -> None:
        self.out = out
        self.grid = grid
        self.queries = list(queries)
        self.threshold = threshold
        self.min_area_px = min_area_px

    def get_name(self) -> str:
        """Name of the write tasks in Ray's UI and progress bars."""
        return "WriteRegion"

    def write(self, blocks: Any, ctx: Any) -> list[dict[str, Any]]:
        """Write every chunk row of the blocks; returns the per-chunk summaries."""
        out: list[dict[str, Any]] = []
        for block in blocks:
            for row in _batch_rows(block):
                out.append(self._write_row(row))
                trim_heap()  # the write worker outlives the chunk; its polygonising peak need not
        return out

    def _write_row(self, row: dict[str, Any]) -> dict[str, Any]:
        from pipelines.grid import ChunkSpec, OutputGrid
        from pipelines.polygonize import vectorize_chunk, write_part
        from pipelines.provenance import RunManifest
        from pipelines.write import write_zarr_chunk

        chunk = ChunkSpec.from_dict(json.loads(str(row["chunk"])))
        manifest = RunManifest(self.out)
        summary: dict[str, Any] = {
            "chunk_id": chunk.chunk_id,
            "status": str(row["status"]),
            "read_s": float(row["read_s"]),
            "infer_s": float(row["infer_s"]),
        }
        if row["status"] != "ok":
            summary.update(stage=str(row["stage"]), reason=str(row["reason"]))
            manifest.mark_failed(chunk.chunk_id, str(row["reason"]), str(row["stage"]))
            return summary
        start = time.perf_counter()
        grid = OutputGrid.from_dict(self.grid)
        prob, valid, rank = np.asarray(row["prob"]), np.asarray(row["valid"]), np.asarray(row["rank"])
        item_ids = json.loads(str(row["item_ids"]))
        try:
            write_zarr_chunk(storage.join(self.out, "masks.zarr"), chunk, prob, valid)
            part = vectorize_chunk(
                prob, chunk, grid, self.queries, self.threshold, self.min_area_px, rank, item_ids
            )
            write_part(part, storage.join(self.out, "_parts", "polygons", f"{chunk.chunk_id}.parquet"))
            storage.write_bytes(
                storage.join(self.out, "_parts", "thumbs", f"{chunk.chunk_id}.npz"), bytes(row["thumb"])
            )
        except Exception as exc:  # an unwritable chunk fails alone; a rerun retries it
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning("chunk %s: write failed: %s", chunk.chunk_id, reason)
            manifest.mark_failed(chunk.chunk_id, reason, "write")
            summary.update(status="failed", stage="write", reason=reason)
            return summary
        counts = part["query_id"].value_counts() if len(part) else {}
        summary.update(
            n_tiles=int(row["n_tiles"]),
            n_decodes=int(row["n_tiles"]) * len(self.queries),
            valid_px=int(np.count_nonzero(valid)),
            item_ids=item_ids,
            part_polygons=[int(counts.get(q, 0)) for q in range(len(self.queries))],
            write_s=time.perf_counter() - start,
        )
        manifest.mark_done(chunk.chunk_id, summary)  # last: a crash before it redoes the chunk
        return summary
