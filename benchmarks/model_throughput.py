"""CroBIM model throughput: parameters (per module), GFLOPs (torch FlopCounterMode) per preset, images/s per batch
size, and the cost of decoding Q queries over precomputed image features relative to Q full forwards.

Everything is measured side by side in one run, on CPU in float32 (or on CUDA in bf16 autocast when available).

    .venv/bin/python benchmarks/model_throughput.py                       # full run (slow on 2 CPU cores)
    .venv/bin/python benchmarks/model_throughput.py --presets crobim-tiny --decode-preset crobim-tiny --size 320
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from crobim import build_model
from crobim.config import get_preset
from crobim.precision import autocast as precision_autocast

EXPRESSIONS = [
    "the large white building next to the parking lot",
    "a small pond in the middle",
    "the road on the left",
    "two storage tanks near the top right corner",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["crobim-tiny", "crobim-convnext-b", "crobim-swin-b"])
    parser.add_argument("--size", type=int, default=480, help="square input side in pixels (multiple of 32)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--queries", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--decode-preset", default="crobim-swin-b")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions per measurement (median)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    return parser


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def median(self, fn, repeats: int, warmup: int = 1) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def _inputs(model, batch: int, size: int, device: torch.device):
    tokens = model.tokenize([EXPRESSIONS[i % len(EXPRESSIONS)] for i in range(batch)])
    images = torch.randn(batch, 3, size, size, device=device)
    return images, {k: v.to(device) for k, v in tokens.items()}


def _flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def report_preset(name: str, args, device: torch.device, autocast, timer: _Timer) -> None:
    config = get_preset(name).replace(input={"size": (args.size, args.size)})
    torch.manual_seed(0)
    model = build_model(config).eval().to(device)
    total = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"\n== {name} @ {args.size}x{args.size}: {total:.2f} M parameters")
    for child_name, child in model.named_children():
        print(f"   {child_name:<14s} {sum(p.numel() for p in child.parameters()) / 1e6:8.2f} M")
    images, tokens = _inputs(model, 1, args.size, device)
    with torch.no_grad(), autocast():
        txt = model.encode_text(**tokens)
        img = model.encode_image(images)
        gf_full = _flops(lambda: model(images, **tokens))
        gf_img = _flops(lambda: model.encode_image(images))
        gf_txt = _flops(lambda: model.encode_text(**tokens))
        gf_dec = _flops(lambda: model.decode(img, txt))
    print(
        f"   GFLOPs per image-query pair: forward {gf_full:.1f} = encode_image {gf_img:.1f} + encode_text "
        f"{gf_txt:.2f} + decode {gf_dec:.1f}"
    )
    for batch in args.batch_sizes:
        images, tokens = _inputs(model, batch, args.size, device)
        with torch.no_grad(), autocast():
            seconds = timer.median(lambda images=images, tokens=tokens: model(images, **tokens), args.repeats)
        print(f"   forward batch {batch}: {seconds:.3f} s -> {batch / seconds:.2f} images/s")


def report_decode(name: str, args, device: torch.device, autocast, timer: _Timer) -> float | None:
    config = get_preset(name).replace(input={"size": (args.size, args.size)})
    torch.manual_seed(0)
    model = build_model(config).eval().to(device)
    print(f"\n== decode cost, {name} @ {args.size}x{args.size}: Q queries over one image")
    image = torch.randn(1, 3, args.size, args.size, device=device)
    ratio_at_4 = None
    with torch.no_grad(), autocast():
        encode_s = timer.median(lambda: model.encode_image(image), args.repeats)
        img = model.encode_image(image)
        print(f"   encode_image (once per tile): {encode_s:.3f} s")
        print(
            f"   {'Q':>3s} {'decode Q (s)':>13s} {'Q forwards (s)':>15s} {'ratio':>7s} {'per-pair decode (s)':>20s}"
        )
        for q in args.queries:
            tokens = model.tokenize([EXPRESSIONS[i % len(EXPRESSIONS)] for i in range(q)])
            tokens = {k: v.to(device) for k, v in tokens.items()}
            images = image.expand(q, -1, -1, -1).contiguous()
            repeats = max(1, args.repeats if q <= 4 else 1)
            decode_s = timer.median(
                lambda tokens=tokens: model.decode(img, model.encode_text(**tokens)), repeats
            )
            forward_s = timer.median(lambda tokens=tokens, images=images: model(images, **tokens), repeats)
            ratio = decode_s / forward_s
            if q == 4:
                ratio_at_4 = ratio
            print(f"   {q:3d} {decode_s:13.3f} {forward_s:15.3f} {ratio:7.3f} {decode_s / q:20.3f}")
    return ratio_at_4


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = functools.partial(precision_autocast, device, "auto")  # bf16 on CUDA, fp32 on CPU
    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    print(f"device {device} ({precision}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    timer = _Timer(device)
    for name in args.presets:
        report_preset(name, args, device, autocast, timer)
    ratio = report_decode(args.decode_preset, args, device, autocast, timer)
    if ratio is not None:
        verdict = "PASS" if ratio <= 0.5 else "FAIL"
        print(
            f"\ndecode of 4 queries / 4 full forwards ({args.decode_preset}) = {ratio:.3f} (target <= 0.5): {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
