"""The model's fast paths on the CPU, each against the computation it replaces, interleaved in one run (A, B, A, B,
..., medians): ms per call and the largest absolute difference of the outputs.

* ``word_attention``: the pixel-word attention at crobim-region's stride-8 LGFA shapes (pairs x 3600 pixels x 20
  words x 256): the former explicit softmax, the fused ``scaled_dot_product_attention`` (what the in-backbone fusion
  runs, no weights needed), the explicit path that returns the weights (LGFA), and SDPA plus a separate score pass
  for the weights (the alternative LGFA would need: slower, so LGFA keeps the explicit path);
* ``channels_last``: ``CroBIMPredictor.predict`` (uint8 tiles -> probabilities) with ``channels_last`` off and on, for
  the shipped demo model (assets/demo-model, 96 px) and ``crobim-tiny`` at 320 px;
* ``compile`` (with ``--compile``; minutes of compiling on a small CPU): the same predictor with ``compile=True``.

    .venv/bin/python benchmarks/fast_paths.py --threads 1 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from crobim import build_model, get_preset, load_model  # noqa: E402
from crobim.modeling.lgfa import word_attention  # noqa: E402
from pipelines.predict import CroBIMPredictor  # noqa: E402

QUERIES = ["the large building", "a pond", "the road on the left", "two storage tanks"]


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median ms per call of each variant, called in turn (one warm-up round first)."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def _former(q, k, v, mask):
    scores = (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).masked_fill(mask[:, None, :] == 0, -1e4)
    attn = scores.softmax(dim=-1)
    return attn @ v, attn


def _sdpa_plus_scores(q, k, v, mask):
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bool()[:, None, :])
    scores = (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).masked_fill(mask[:, None, :] == 0, -1e4)
    return out, scores.softmax(dim=-1)


def bench_word_attention(pairs: int, repeats: int) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(pairs, 3600, 256, generator=gen),
        torch.randn(pairs, 20, 256, generator=gen),
        torch.randn(pairs, 20, 256, generator=gen),
    )
    mask = (torch.arange(20)[None, :] < torch.randint(3, 21, (pairs, 1), generator=gen)).long()
    ref = _former(q, k, v, mask)
    variants = {
        "former explicit softmax": lambda: _former(q, k, v, mask),
        "SDPA (need_weights=False)": lambda: word_attention(q, k, v, mask, need_weights=False),
        "explicit (need_weights=True)": lambda: word_attention(q, k, v, mask, need_weights=True),
        "SDPA + score pass for the weights": lambda: _sdpa_plus_scores(q, k, v, mask),
    }
    with torch.inference_mode():
        ms = interleaved(variants, repeats)
        diffs = {name: float((fn()[0] - ref[0]).abs().max()) for name, fn in variants.items()}
    return [
        f"| word attention, {pairs} pairs x 3600 px x 20 words x 256 | {name} | {ms[name]:.1f} | "
        f"{diffs[name]:.1e} |"
        for name in variants
    ]


def _model(source: str) -> torch.nn.Module:
    if source == "demo":
        return load_model(str(REPO / "assets" / "demo-model"))
    torch.manual_seed(0)
    return build_model(get_preset(source).replace(presence={"enabled": True}))


def bench_predictor(source: str, batch: int, repeats: int, with_compile: bool) -> list[str]:
    base = CroBIMPredictor(_model(source))
    variants = {"default": base, "channels_last=True": CroBIMPredictor(_model(source), channels_last=True)}
    if with_compile:
        variants["compile=True"] = CroBIMPredictor(_model(source), compile=True)
    size = base.tile_size
    tiles = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    ref = base.predict(tiles, QUERIES)
    compile_s = None
    if with_compile:
        start = time.perf_counter()
        variants["compile=True"].predict(tiles, QUERIES)
        compile_s = time.perf_counter() - start
    ms = interleaved({name: (lambda p=p: p.predict(tiles, QUERIES)) for name, p in variants.items()}, repeats)
    diffs = {name: float(np.abs(p.predict(tiles, QUERIES) - ref).max()) for name, p in variants.items()}
    label = f"predict, {source} {size} px, {batch} tiles x {len(QUERIES)} queries"
    rows = [f"| {label} | {name} | {ms[name]:.1f} | {diffs[name]:.1e} |" for name in variants]
    if compile_s is not None:
        rows.append(f"| {label} | compile=True, first call (compiling) | {compile_s * 1e3:.0f} | - |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=4, help="image-query pairs in the word attention case")
    parser.add_argument(
        "--compile", action="store_true", help="also the compiled predictor (slow to compile)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} interleaved repeats, medians")
    print("| case | variant | ms per call | max abs diff to the first row |")
    print("| --- | --- | --- | --- |")
    for row in bench_word_attention(args.pairs, args.repeats):
        print(row, flush=True)
    for source, batch in (("demo", 8), ("crobim-tiny", 2)):
        for row in bench_predictor(source, batch, args.repeats, args.compile):
            print(row, flush=True)


if __name__ == "__main__":
    main()
