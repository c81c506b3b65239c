"""A self-contained speed check of the CroBIM model for a bare GPU machine (torch, timm, transformers,
safetensors; no Ray, no geo packages, no network). It writes one JSON (after every section) within ``--budget-s``
(420 s: with start-up the run fits 8 minutes); a section that does not fit in what is left is named in "skipped".

For ``crobim-swin-b`` and ``crobim-region`` (random init, 480 px, bf16 autocast), in this order:
``throughput`` (images/s of encode_image + decode of one query per batch size 1, 8, 32, 64, 128 until the first
out-of-memory, and peak memory), ``queries`` (one encode_image of 16 tiles, then decode of Q = 1, 4, 16 queries:
ms per tile, ms per pair, tiles/s, host syncs of one decode), ``train_step`` (samples/s of forward + loss + backward
+ AdamW step under autocast, batch halved on OOM), ``channels_last`` (queries at Q = 4 in that layout),
``input_transfer`` (first model: ``model.preprocess`` of uint8 tiles, pinned and on the GPU, against the former CPU
preprocessing and float copy), and last ``compile`` (``CroBIM.compile_parts``, queries at Q = 4, the first call's
time). Each measurement: warm-up, ``torch.cuda.synchronize``, timed calls for ``--section-s``; medians.
``--smoke`` runs the same code on the CPU (``crobim-tiny``, 64 px) in seconds; the test suite runs it.

    python benchmarks/gpu_check.py --out gpu_check.json          # on the GPU machine, from the repository root
    python benchmarks/gpu_check.py --smoke --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from crobim import build_model  # noqa: E402
from crobim.config import get_preset  # noqa: E402
from crobim.losses import CroBIMLoss  # noqa: E402
from crobim.optim import build_optimizer  # noqa: E402
from crobim.precision import autocast  # noqa: E402
from crobim.transforms import preprocess_images  # noqa: E402

#: The bert-base-uncased vocab shipped with the demo model: no tokenizer package or download needed.
TOKENIZER = REPO / "assets" / "demo-model" / "tokenizer"
EXPRESSIONS = [
    "the large white building next to the parking lot",
    "a small pond in the middle",
    "the road on the left",
    "two storage tanks near the top right corner",
]
#: Seconds a section needs before it starts (estimates on an H100-class GPU; scaled down with --smoke).
NEEDS = {"build": 20, "throughput": 30, "queries": 20, "train_step": 25, "channels_last": 10}
NEEDS |= {"input_transfer": 10, "compile": 150}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny preset on the CPU, in seconds")
    parser.add_argument("--presets", nargs="+", default=None)
    parser.add_argument("--size", type=int, default=None, help="input side (default 480; 64 with --smoke)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    parser.add_argument("--queries", nargs="+", type=int, default=None)
    parser.add_argument("--query-batch", type=int, default=None, help="tiles in the queries sections")
    parser.add_argument("--train-batch", type=int, default=None)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="bf16 (smoke: fp32)")
    parser.add_argument("--budget-s", type=float, default=None, help="global time budget (420; smoke: 120)")
    parser.add_argument("--section-s", type=float, default=None, help="timed seconds per measurement")
    parser.add_argument("--no-compile", action="store_true")
    return parser


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options used, with the defaults of a full or a smoke run filled in."""
    smoke = bool(args.smoke)
    defaults: dict[str, Any] = {
        "presets": ["crobim-tiny", "crobim-tiny+region"] if smoke else ["crobim-swin-b", "crobim-region"],
        "size": 64 if smoke else 480,
        "batch_sizes": [1, 2] if smoke else [1, 8, 32, 64, 128],
        "queries": [1, 2, 4] if smoke else [1, 4, 16],
        "query_batch": 2 if smoke else 16,
        "train_batch": 2 if smoke else 8,
        "precision": "fp32" if smoke else "bf16",
        "budget_s": 120.0 if smoke else 420.0,
        "section_s": 0.2 if smoke else 3.0,
    }
    options = {
        key: getattr(args, key) if getattr(args, key) is not None else value
        for key, value in defaults.items()
    }
    device = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
    options.update(smoke=smoke, device=device, warmup=1 if smoke else 2, need_scale=0.02 if smoke else 1.0)
    options["compile"] = not args.no_compile and device == "cuda"
    return options


class Budget:
    """The global deadline: a section starts only if its estimated need fits in what is left."""

    def __init__(self, total_s: float, scale: float) -> None:
        self.start, self.total_s, self.scale = time.perf_counter(), total_s, scale
        self.skipped: list[dict[str, str]] = []

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.start)

    def allows(self, section: str, model: str) -> bool:
        need = NEEDS[section.split(":")[0]] * self.scale
        if self.left() >= need:
            return True
        self.skip(section, model, f"needs ~{need:.1f} s, {max(self.left(), 0):.1f} s of the budget left")
        return False

    def skip(self, section: str, model: str, reason: str) -> None:
        self.skipped.append({"section": section, "model": model, "reason": reason})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, opts: dict[str, Any]) -> dict[str, float]:
    """Warm-up calls, then timed calls (synchronised) for ``section_s`` seconds (2 to 50 of them): the median."""
    for _ in range(opts["warmup"]):
        fn()
    sync(device)
    times: list[float] = []
    end = time.perf_counter() + opts["section_s"]
    while len(times) < 50 and (len(times) < 2 or time.perf_counter() < end):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "repeats": len(times)}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def model_config(label: str, size: int) -> Any:
    """The preset (``+region``: presence head on, LGFA / MID at stride 8) at ``size``, random init, no downloads,
    tokenised with the vocab shipped in the working tree."""
    name, _, variant = label.partition("+")
    config = get_preset(name).replace(
        input={"size": (size, size)},
        weights={"backbone": None, "allow_download": False, "allow_random_init": True},
        text={"name_or_path": None, "tokenizer": str(TOKENIZER)},
    )
    if variant == "region":
        config = config.replace(presence={"enabled": True}, lgfa={"out_stride": 8})
    return config


def inputs(model: Any, batch: int, queries: int, size: int, device: torch.device) -> tuple[torch.Tensor, Any]:
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        txt = model.encode_text(**model.tokenize([EXPRESSIONS[i % len(EXPRESSIONS)] for i in range(queries)]))
    return images, txt


def measure_throughput(model: Any, device: torch.device, opts: dict[str, Any]) -> list[dict[str, Any]]:
    """Images/s of encode_image + decode (one query) per batch size, until the first out-of-memory."""
    rows: list[dict[str, Any]] = []
    for batch in opts["batch_sizes"]:
        images, txt = inputs(model, batch, 1, opts["size"], device)
        reset_peak(device)
        try:
            with torch.inference_mode(), autocast(device, opts["precision"]):
                t = timed(
                    lambda images=images, txt=txt: model.decode(model.encode_image(images), txt), device, opts
                )
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch": batch, "status": "oom"})
            break
        rows.append(
            {
                "batch": batch,
                "status": "ok",
                "ms_per_batch": t["median_s"] * 1e3,
                "images_per_s": batch / t["median_s"],
                "repeats": t["repeats"],
                "peak_gib": peak_gib(device),
            }
        )
    return rows


def count_host_syncs(fn: Callable[[], Any], device: torch.device) -> dict[str, Any] | None:
    """Host synchronisations one call of ``fn`` makes (CUDA sync debug mode); None off CUDA."""
    if device.type != "cuda":
        return None
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    messages = [
        str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message).lower()
    ]
    return {"count": len(messages), "first": messages[:5]}


def measure_queries(
    model: Any, device: torch.device, opts: dict[str, Any], queries: list[int], layout: Any = None
) -> list[dict]:
    """encode_image once over a batch (images in ``layout``), then decode Q queries over the cached features."""
    batch, rows = opts["query_batch"], []
    images, _ = inputs(model, batch, 1, opts["size"], device)
    images = images.contiguous(memory_format=layout or torch.contiguous_format)
    with torch.inference_mode(), autocast(device, opts["precision"]):
        reset_peak(device)
        enc = timed(lambda: model.encode_image(images), device, opts)["median_s"]
        img = model.encode_image(images)
        for q in queries:
            _, txt = inputs(model, 1, q, opts["size"], device)
            reset_peak(device)
            dec = timed(lambda txt=txt: model.decode(img, txt), device, opts)["median_s"]
            rows.append(
                {
                    "queries": q,
                    "batch": batch,
                    "encode_ms_per_tile": enc / batch * 1e3,
                    "decode_ms_per_pair": dec / (batch * q) * 1e3,
                    "tiles_per_s": batch / (enc + dec),
                    "peak_gib": peak_gib(device),
                    "decode_host_syncs": count_host_syncs(lambda txt=txt: model.decode(img, txt), device),
                }
            )
    return rows


def measure_train_step(model: Any, device: torch.device, opts: dict[str, Any]) -> dict[str, Any]:
    """Samples/s of one training step (forward + loss + backward + AdamW step) under autocast."""
    model.train()
    optimizer, loss_fn = build_optimizer(model, model.config), CroBIMLoss(model.config).to(device)
    result: dict[str, Any] = {"status": "oom"}
    batch = opts["train_batch"]
    while batch >= 1:
        images, _ = inputs(model, batch, 1, opts["size"], device)
        tokens = model.tokenize([EXPRESSIONS[i % len(EXPRESSIONS)] for i in range(batch)])
        gen = torch.Generator().manual_seed(1)
        masks = (torch.rand(batch, opts["size"], opts["size"], generator=gen) > 0.7).to(device)

        def step(images: torch.Tensor = images, tokens: dict = tokens, masks: torch.Tensor = masks) -> None:
            with autocast(device, opts["precision"]):
                loss = loss_fn(model(images, **tokens), masks).total
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        reset_peak(device)
        try:
            t = timed(step, device, opts)
        except torch.cuda.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            batch //= 2
            continue
        result = {
            "status": "ok",
            "batch": batch,
            "ms_per_step": t["median_s"] * 1e3,
            "samples_per_s": batch / t["median_s"],
            "repeats": t["repeats"],
            "peak_gib": peak_gib(device),
        }
        break
    model.eval()
    return result


def measure_input_transfer(model: Any, device: torch.device, opts: dict[str, Any]) -> dict[str, Any]:
    """``model.preprocess`` of a uint8 batch (on CUDA: pinned, non-blocking, on the GPU) against CPU preprocessing
    and a float copy (the former path)."""
    size, cfg = opts["size"], model.config.input
    tiles = np.random.default_rng(0).integers(0, 256, (opts["query_batch"], size, size, 3), dtype=np.uint8)

    def former() -> torch.Tensor:
        return preprocess_images(tiles, size=cfg.size, mean=cfg.mean, std=cfg.std).to(device)

    now, before = model.preprocess(tiles), former()
    out = {"batch": len(tiles), "max_abs_diff": float((now - before).abs().max())}
    out["preprocess_ms"] = timed(lambda: model.preprocess(tiles), device, opts)["median_s"] * 1e3
    out["former_cpu_preprocess_and_copy_ms"] = timed(former, device, opts)["median_s"] * 1e3
    return out


def environment(device: torch.device) -> dict[str, Any]:
    import safetensors
    import timm
    import transformers

    cuda = device.type == "cuda"
    env = {m.__name__: m.__version__ for m in (torch, timm, transformers, safetensors)}
    env.update(device=torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu")
    env.update(device_type=device.type, python=platform.python_version(), cuda=torch.version.cuda)
    gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else None
    return env | {"cpu_threads": torch.get_num_threads(), "gpu_memory_gib": gib}


def run_model(label: str, result: dict, budget: Budget, opts: dict, write: Callable[[], None]) -> None:
    """Every section but ``compile`` for one preset, writing the JSON after each."""
    device = torch.device(opts["device"])
    if not budget.allows("build", label):
        return
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(model_config(label, opts["size"])).to(device).eval()
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    entry: dict[str, Any] = {"build_s": time.perf_counter() - start, "params_m": params_m}
    result["models"][label] = entry
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("throughput", lambda: measure_throughput(model, device, opts)),
        ("queries", lambda: measure_queries(model, device, opts, opts["queries"])),
        ("train_step", lambda: measure_train_step(model, device, opts)),
        ("channels_last", lambda: measure_channels_last(model, device, opts)),
    ]
    if len(result["models"]) == 1:
        sections.append(("input_transfer", lambda: measure_input_transfer(model, device, opts)))
    for name, fn in sections:
        if budget.allows(name, label):
            entry[name] = fn()
            write()


def measure_channels_last(model: Any, device: torch.device, opts: dict[str, Any]) -> list[dict]:
    """The queries section at Q = 4 (the middle of ``--queries``) in the channels-last layout."""
    q = opts["queries"][len(opts["queries"]) // 2]
    model.to(memory_format=torch.channels_last)
    try:
        return measure_queries(model, device, opts, [q], layout=torch.channels_last)
    finally:
        model.to(memory_format=torch.contiguous_format)


def run_compile(label: str, result: dict, budget: Budget, opts: dict[str, Any]) -> None:
    """``CroBIM.compile_parts``, then the queries section at Q = 4; the first call's time includes compiling."""
    if not budget.allows("compile", label):
        return
    device = torch.device(opts["device"])
    torch.manual_seed(0)
    model = build_model(model_config(label, opts["size"])).to(device).eval().compile_parts()
    images, txt = inputs(model, opts["query_batch"], 4, opts["size"], device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast(device, opts["precision"]):
        model.decode(model.encode_image(images), txt)
    sync(device)
    first = time.perf_counter() - start
    rows = measure_queries(model, device, opts, [opts["queries"][len(opts["queries"]) // 2]])
    result["models"].setdefault(label, {})["compile"] = {"first_call_s": first, "queries": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    opts = resolve_options(args)
    device = torch.device(opts["device"])
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True
    elif opts["smoke"]:
        torch.set_num_threads(1)  # a shared CPU: oversubscribed threads crawl
    budget = Budget(opts["budget_s"], opts["need_scale"])
    result: dict[str, Any] = {"schema": 1, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    result |= {"environment": environment(device), "options": opts, "models": {}, "skipped": budget.skipped}
    out = Path(args.out)

    def write() -> None:
        result["elapsed_s"] = time.perf_counter() - budget.start
        out.write_text(json.dumps(result, indent=2, default=str))

    for label in opts["presets"]:
        run_model(label, result, budget, opts, write)
    for label in opts["presets"]:
        if opts["compile"]:
            run_compile(label, result, budget, opts)
            write()
        else:
            budget.skip("compile", label, "compile runs on CUDA only (tests/crobim check it on the CPU)")
    write()
    return result


if __name__ == "__main__":
    main()
