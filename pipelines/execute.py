"""The chunk pipeline on Ray Data (PIPELINE.md §3): read tasks -> inference actor pool -> region datasink.

One chunk per block: CPU read tasks (``read_stage``), an actor pool that loads the model once per actor
(``PredictorActor``) and a custom ``Datasink`` whose done marker is the last write of each chunk. A crashed actor is
restarted and its chunk retried by Ray Data (its defaults); the datasink's markers make the retry idempotent.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from common import storage
from pipelines.grid import ChunkSpec
from pipelines.plan import RegionPlan

__all__ = ["execute_chunks", "ray_runtime"]

#: Object store budget of the pipeline's in-flight blocks (imagery and probabilities of a few chunks).
_OBJECT_STORE_BYTES = 2 * 1024**3


def _restore_sigterm(handler: Any) -> None:
    """Reinstall a SIGTERM handler that ``ray.init`` replaced (with ``sys.exit``), from the main thread only."""
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def ray_runtime(address: str | None, dashboard: bool = False) -> Iterator[None]:
    """Connect to ``address`` or start a local runtime unless Ray is already up; shut down what was started here.

    The runtime is shut down however the body ends (an exception, Ctrl-C). ``ray.init`` installs its own SIGTERM
    handler; a Python handler that was there before (the region job's) is put back for the run and afterwards.

    Args:
        address: A cluster to join (None: start a local runtime).
        dashboard: Start Ray's dashboard with a local runtime (its processes hold ~1 GB of resident memory, ~0.2 GB
            proportional; docs/benchmarks.md); a cluster keeps its own.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main_thread else None
    ray.init(
        address=address,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
        log_to_driver=True,
        **({} if address else {"include_dashboard": dashboard}),
    )
    if callable(before):
        _restore_sigterm(before)
    try:
        yield
    finally:
        ray.shutdown()
        _restore_sigterm(before)


@contextlib.contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Ray Data settings of a region run, restored afterwards (the driver may run other datasets)."""
    from ray.data import DataContext, ExecutionResources

    ctx = DataContext.get_current()
    opts = ctx.execution_options
    saved = (opts.preserve_order, ctx.wait_for_min_actors_s, ctx.enable_progress_bars, opts.resource_limits)
    opts.preserve_order = False  # writes are keyed by chunk id
    ctx.wait_for_min_actors_s = 1800  # model loads may be slow (ray-project/ray#40604)
    ctx.enable_progress_bars = progress
    opts.resource_limits = ExecutionResources.for_limits(object_store_memory=_OBJECT_STORE_BYTES)
    try:
        yield
    finally:
        opts.preserve_order, ctx.wait_for_min_actors_s, ctx.enable_progress_bars, opts.resource_limits = saved


def _rows(plan: RegionPlan, todo: list[ChunkSpec]) -> list[dict[str, str]]:
    """One row per chunk: its spec and the tile windows the plan gave it (JSON)."""
    return [
        {
            "chunk": json.dumps(ch.to_dict(), sort_keys=True),
            "windows": json.dumps([asdict(w) for w in plan.tiles[ch.chunk_id]]),
        }
        for ch in todo
    ]


def _actor_kwargs(plan: RegionPlan, thumb_step: int) -> dict[str, Any]:
    c = plan.config
    return {
        "model": c.model,
        "model_sha256": plan.model.sha256,
        "queries": list(plan.expressions),
        "lattice": asdict(plan.lattice),
        "blend": c.blend,
        "batch_size": c.batch_size,
        "thumb_step": thumb_step,
        "threshold": c.threshold,
        "torch_threads": c.torch_threads or max(1, round(c.cpus_per_actor)),
        "device": "cuda" if c.gpus_per_actor > 0 else "cpu",
        "predictor_options": {"channels_last": c.channels_last, "compile": c.compile_model},
    }


def execute_chunks(plan: RegionPlan, todo: list[ChunkSpec], thumb_step: int) -> float:
    """Run the Ray Data pipeline over ``todo`` chunks (Ray must be up); returns its wall time in seconds."""
    import ray
    from ray.data import ActorPoolStrategy

    from pipelines.region_stages import PredictorActor, RegionDatasink, read_stage

    c = plan.config
    min_area_px = int(math.floor(c.min_area_m2 / plan.pixel_area_m2)) if c.min_area_m2 > 0 else 0
    read_kwargs = {
        "grid": plan.grid.to_dict(),
        "items_uri": storage.join(c.out, "inputs", "items.parquet"),
        "radiometry": plan.radiometry.to_dict(),
        "attempts": c.read_attempts,
        "backoff_s": c.read_backoff_s,
    }
    start = time.perf_counter()
    with _data_context(c.progress):
        rows = _rows(plan, todo)
        ds: Any = ray.data.from_items(rows, override_num_blocks=len(rows))  # one chunk per block
        ds = ds.map_batches(
            read_stage, batch_size=1, batch_format="numpy", num_cpus=c.read_cpus, fn_kwargs=read_kwargs
        )
        ds = ds.map_batches(
            PredictorActor,
            batch_size=1,
            batch_format="numpy",
            zero_copy_batch=True,
            compute=ActorPoolStrategy(min_size=1, max_size=c.actors, max_tasks_in_flight_per_actor=2),
            fn_constructor_kwargs=_actor_kwargs(plan, thumb_step),
            num_cpus=c.cpus_per_actor,
            # num_gpus=0 would still be a GPU request (ray-project/ray#45201): CPU runs pass None.
            num_gpus=c.gpus_per_actor or None,
            resources={c.inference_resource: 1} if c.inference_resource else None,
        )
        sink = RegionDatasink(c.out, plan.grid.to_dict(), list(plan.expressions), c.threshold, min_area_px)
        # One write per actor at a time: inference paces the writes, and when it ends, the last chunks' writes
        # do not start more workers (each holds ~0.2-0.3 GB) beside the actors still alive.
        ds.write_datasink(sink, ray_remote_args={"num_cpus": c.write_cpus}, concurrency=c.actors)
    return time.perf_counter() - start
