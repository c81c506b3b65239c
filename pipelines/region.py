"""Region inference (PIPELINE.md §1, §3, §5): prepare on the driver, chunks on Ray Data, finalise on the driver.

``prepare`` (check inputs, search, freeze the items, plan, claim the output folder or resume it) ->
``execute`` (``pipelines.execute``: read -> infer + blend -> write, one chunk per block) -> ``finalise``
(``pipelines.finalise``: merge polygons, quicklook, map; ``pipelines.run_document``: ``run.json``).

Re-running into the same ``--out`` resumes: the fingerprint must match, chunks with a done marker are skipped, and
the finalise step is re-run from the parts, so ``masks.zarr`` and ``polygons.parquet`` are byte-identical to those of
an uninterrupted run. Ctrl-C or SIGTERM after ``run.json`` is written leaves it with status ``interrupted``, an
exception with ``failed``, each with a ``message``; ``--overwrite`` deletes only what a run writes
(:func:`pipelines.provenance.claim_output`).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common import storage
from pipelines.plan import RegionPlan, plan_region, search
from pipelines.predict import resolve_model
from pipelines.provenance import (
    RunManifest,
    check_resume,
    claim_output,
    items_sha256,
    stored_fingerprint,
    write_fingerprint,
    write_run_json,
)
from pipelines.region_config import RegionJobConfig
from pipelines.run_document import (
    RegionResult,
    chunk_counts,
    finished_document,
    recorded_stop,
    started_document,
    throughput,
)
from pipelines.stac_files import freeze_items, load_items

__all__ = ["RegionResult", "prepare_run", "resume_command", "run_region"]

logger = logging.getLogger(__name__)


def _resume(config: RegionJobConfig, stored: dict[str, Any]) -> tuple[RegionPlan, dict[str, Any]]:
    """The plan on the frozen items of an earlier run with the same settings (never a fresh search, §1.1)."""
    items_uri = storage.join(config.out, "inputs", "items.parquet")
    if not storage.exists(items_uri):
        raise FileNotFoundError(
            f"{items_uri} is missing: the output folder is damaged; rerun with --overwrite"
        )
    plan = plan_region(config, load_items(items_uri))
    settings = plan.fingerprint_settings(items_sha256(plan.items))
    check_resume(config.out, stored, settings)
    return plan, settings


def _start(config: RegionJobConfig) -> tuple[RegionPlan, dict[str, Any]]:
    """Search once, plan on exactly the frozen items a resume will read, then claim the output folder."""
    model = resolve_model(config.model, config.tile_size_px, config.query_plan.expressions)
    with tempfile.TemporaryDirectory(prefix="crobim-items-") as tmp:
        frozen_path = str(Path(tmp) / "items.parquet")
        freeze_items(search(config), frozen_path)
        # Everything is validated before the output folder is touched.
        plan = plan_region(config, load_items(frozen_path), model=model)
        claim_output(config.out, overwrite=config.overwrite)
        storage.write_bytes(
            storage.join(config.out, "inputs", "items.parquet"), Path(frozen_path).read_bytes()
        )
    settings = plan.fingerprint_settings(items_sha256(plan.items))
    write_fingerprint(config.out, settings)
    return plan, settings


def prepare_run(config: RegionJobConfig) -> tuple[RegionPlan, dict[str, Any], bool]:
    """Fresh start or resume: the plan, the fingerprint settings, and whether this run resumes another."""
    stored = None if config.overwrite else stored_fingerprint(config.out)
    if stored is not None:
        return (*_resume(config, stored), True)
    return (*_start(config), False)


def _ray_is_up() -> bool:
    """Whether this process is connected to Ray already (without importing it)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _execute(plan: RegionPlan, todo: list[Any], thumb_step: int) -> float:
    """The chunk pipeline on Ray (up already); returns its wall time in seconds."""
    from pipelines.execute import execute_chunks

    return execute_chunks(plan, todo, thumb_step)


def _execute_and_finalise(
    plan: RegionPlan, manifest: RunManifest, todo: list[Any], thumb_step: int, address: str | None
) -> tuple[dict[str, float], list[str], list[dict[str, Any]], Any]:
    """Chunks on Ray (started here unless it is up already), then finalise while it is still up.

    Returns:
        ``pipeline_s`` and ``finalise_s``, the done chunk ids, the failures and the output polygons.
    """
    from pipelines.finalise import finalise_outputs

    with contextlib.ExitStack() as stack:
        pipeline_s = 0.0
        if todo:
            from pipelines.execute import ray_runtime

            stack.enter_context(ray_runtime(address, dashboard=plan.config.dashboard))
            pipeline_s = _execute(plan, todo, thumb_step)
        t1 = time.perf_counter()
        planned = {ch.chunk_id for ch in plan.chunks}
        done = [cid for cid in manifest.done_ids() if cid in planned]
        failures = [
            manifest.read_failed(cid) for cid in manifest.failed_ids() if cid in planned and cid not in done
        ]
        # The relation step's partitions run on Ray when it is up (a resume with nothing to do stays local).
        polygons = finalise_outputs(plan, done, thumb_step, "ray" if _ray_is_up() else "local")
        times = {"pipeline_s": pipeline_s, "finalise_s": time.perf_counter() - t1}
        return times, done, failures, polygons


def _sigterm_handler(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the run lasts, SIGTERM raises ``KeyboardInterrupt("SIGTERM")`` as Ctrl-C does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _sigterm_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def resume_command(args: Sequence[str], program: str | None = None) -> str:
    """The command line that resumes an interrupted run: the same one without ``--overwrite`` (a fresh start).

    Args:
        args: The job's arguments (``sys.argv[1:]``); ``--overwrite`` and its unique abbreviations are dropped.
        program: The job's script (default ``sys.argv[0]``), run by this interpreter.
    """
    keep = [a for a in args if not (a.startswith("--overw") and "--overwrite".startswith(a))]
    return shlex.join([sys.executable, program or sys.argv[0], *keep])


def _process(
    config: RegionJobConfig, plan: RegionPlan, doc: dict[str, Any], t0: float, address: str | None
) -> RegionResult:
    """Execute the chunks left to do and finalise; returns the result whose document is the final run.json."""
    from pipelines.stac_output import write_output_item
    from pipelines.viz import thumbnail_step
    from pipelines.write import create_zarr_template

    create_zarr_template(
        storage.join(config.out, "masks.zarr"),
        plan.grid,
        list(plan.expressions),
        zarr_chunk_px=config.chunk_size_px,
        attrs={"crobim:fingerprint": doc["fingerprint"]},
    )
    manifest = RunManifest(config.out)
    done_before = set(manifest.done_ids())
    todo = plan.todo(done_before)
    thumb_step = thumbnail_step(plan.grid.shape)
    logger.info(
        "%s: %d chunks (%d empty, %d already done), %d to process",
        "resuming" if doc["resumed"] else "starting",
        len(plan.chunks),
        sum(1 for ch in plan.chunks if ch.empty),
        len(done_before),
        len(todo),
    )
    plan_s = time.perf_counter() - t0
    # Execute the chunk pipeline on Ray, then finalise: polygons and relations, quicklook, map; then run.json.
    times, done, failures, polygons = _execute_and_finalise(plan, manifest, todo, thumb_step, address)
    summaries = {cid: manifest.read_done(cid) for cid in done}
    this_run = [summaries[cid] for cid in done if cid not in done_before]
    counts = chunk_counts(plan, summaries, len(this_run), done_before, failures, polygons)
    timings = {
        "plan_s": round(plan_s, 3),
        "pipeline_s": round(times["pipeline_s"], 3),
        "finalise_s": round(times["finalise_s"], 3),
        "total_s": round(time.perf_counter() - t0, 3),
        "read_task_s": round(sum(s.get("read_s", 0.0) for s in this_run), 3),
        "infer_actor_s": round(sum(s.get("infer_s", 0.0) for s in this_run), 3),
        "write_task_s": round(sum(s.get("write_s", 0.0) for s in this_run), 3),
    }
    rates = throughput(plan, sum(s.get("n_tiles", 0) for s in this_run), times["pipeline_s"])
    answers = polygons[polygons["role"] == "answer"]
    per_query = {q: int((answers["query"] == q).sum()) for q in config.queries}
    doc = finished_document(doc, plan, counts, failures, timings, rates, per_query)
    write_run_json(config.out, doc)
    write_output_item(config.out, plan, doc)  # the run in STAC terms: assets, inputs, model, software
    return RegionResult(config.out, doc["status"], counts, failures, per_query, {**timings, **rates}, doc)


def run_region(config: RegionJobConfig, address: str | None = None) -> RegionResult:
    """Run (or resume) a region job into ``config.out``.

    Once ``run.json`` is written (status ``running``), an exception or interrupt (Ctrl-C; SIGTERM, which raises
    ``KeyboardInterrupt`` here) rewrites it with status ``failed`` or ``interrupted`` and a message, and is
    re-raised; chunks with a done marker are kept for the resume.

    Args:
        config: The job settings.
        address: Ray address when Ray is not initialised yet (None: a local runtime).

    Returns:
        Counts, failures, polygons per query and timings; ``run.json`` holds the same and more.

    Raises:
        ValueError, FileNotFoundError, FileExistsError, pipelines.errors.CatalogError: bad input, or an
            output folder that holds another run or files a run does not write (see :mod:`pipelines.provenance`).
        KeyboardInterrupt: Ctrl-C or SIGTERM (``run.json`` says ``interrupted``).
    """
    with _sigterm_as_interrupt():
        started, t0 = time.time(), time.perf_counter()
        # Prepare: plan, fingerprint, run.json "running"; then the chunks, with the true status on any stop.
        plan, settings, resumed = prepare_run(config)
        doc = started_document(plan, settings, resumed, started)
        write_run_json(config.out, doc)
        with recorded_stop(config.out, doc):
            return _process(config, plan, doc, t0, address)
