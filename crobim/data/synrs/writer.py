"""Write SynRS splits in the RefSegRS layout plus ``synrs_meta.jsonl`` (DATA_AND_EVAL.md §9)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from crobim.data.synrs.expressions import make_expressions
from crobim.data.synrs.render import render_scene
from crobim.data.synrs.scene import GENERATOR_VERSION, Expression, SceneGraph, SynRSParams
from crobim.data.synrs.templates import template_probabilities

__all__ = ["SPLITS", "generate_split", "scene_rng", "write_dataset"]

logger = logging.getLogger(__name__)

#: Split order; the index is the split's branch of the seed tree.
SPLITS: tuple[str, ...] = ("train", "val", "test")


def scene_rng(seed: int, split: str, scene: int) -> np.random.Generator:
    """The generator of one scene: child ``scene`` of child ``split`` of ``SeedSequence(seed)``.

    Equivalent to ``SeedSequence(seed).spawn(3)[split_index].spawn(scene + 1)[scene]``, computed directly so
    scene ``k`` does not depend on how many scenes are generated, and splits never share a scene.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), scene)))


def generate_split(
    seed: int, split: str, num_samples: int, size: int, params: SynRSParams | None = None
) -> Iterator[tuple[int, SceneGraph, list[Expression]]]:
    """Yield ``(scene index, scene, expressions)`` until ``num_samples`` expressions are drawn.

    The last scene's list is cut so the total is exactly ``num_samples``.
    """
    params = params or SynRSParams()
    left = num_samples
    scene = 0
    while left > 0:
        rng = scene_rng(seed, split, scene)
        graph = render_scene(rng, size, params=params)
        exprs = make_expressions(graph, rng, params)[:left]
        if exprs:
            left -= len(exprs)
            yield scene, graph, exprs
        scene += 1


def _tiff_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="TIFF")
    return buf.getvalue()


def _prepare(out: Path, overwrite: bool) -> None:
    ours = ["images", "masks", "synrs_meta.jsonl", "synrs_info.json"] + [
        f"output_phrase_{s}.txt" for s in SPLITS
    ]
    existing = [name for name in ours if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a dataset ({', '.join(existing)}); pass overwrite=True (--overwrite) to replace it"
        )
    for name in existing:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)


def _check_arguments(counts: dict[str, int], size: int, params: SynRSParams) -> None:
    """Refuse bad template weights, splits, counts or size before anything is written."""
    for kind in ("single", "multi", "none"):
        template_probabilities(params, kind)  # a bad template name fails before anything is written
    for split, n in counts.items():
        if split not in SPLITS or n < 0:
            raise ValueError(f"counts[{split!r}] = {n}: splits must be in {SPLITS} with counts >= 0")
    if not 64 <= size <= 4096 or size % 8:
        raise ValueError(f"size {size} must be a multiple of 8 in [64, 4096]; use e.g. 128 or 512")


@dataclass
class _Tally:
    """Counts of the written samples by kind, ``kind/template`` and target class, for the summary."""

    kinds: Counter[str] = field(default_factory=Counter)
    templates: Counter[str] = field(default_factory=Counter)
    classes: Counter[str] = field(default_factory=Counter)

    def add(self, expr: Expression) -> None:
        self.kinds[expr.kind] += 1
        self.templates[f"{expr.kind}/{expr.template}"] += 1
        self.classes[expr.target_class] += 1


def _sample_record(
    stem: str, split: str, seed: int, scene: int, graph: SceneGraph, expr: Expression, mask: np.ndarray,
    size: int, params: SynRSParams,
) -> dict[str, Any]:  # fmt: skip
    """The ``synrs_meta.jsonl`` entry of one sample."""
    return {
        "stem": stem,
        "split": split,
        "seed": seed,
        "scene": scene,
        "text": expr.text,
        "kind": expr.kind,
        "template": expr.template,
        "target_class": expr.target_class,
        "ref_class": expr.ref_class,
        "referent_ids": list(expr.referents),
        "referent_classes": sorted({i.cls for i in graph.instances if i.id in expr.referents}),
        "no_target": expr.kind == "none",
        "mask_area": int(mask.sum()),
        "size": size,
        "params": params.to_dict(),
        "generator_version": GENERATOR_VERSION,
    }


def _write_split(
    root: Path, meta_file: IO[str], split: str, n: int, seed: int, size: int, params: SynRSParams,
    tally: _Tally, progress: Callable[[int], None] | None,
) -> tuple[int, int]:  # fmt: skip
    """Write one split's images, masks, phrase file and metadata lines; returns ``(scenes, samples)``."""
    lines: list[str] = []
    n_scenes = 0
    for scene, graph, exprs in generate_split(seed, split, n, size, params):
        n_scenes += 1
        image_bytes = _tiff_bytes(graph.image)
        for k, expr in enumerate(exprs):
            stem = f"{split}_{scene:06d}_{k:02d}"
            mask = graph.mask(expr.referents)
            (root / "images" / f"{stem}.tif").write_bytes(image_bytes)
            (root / "masks" / f"{stem}.tif").write_bytes(_tiff_bytes(mask.astype(np.uint8) * 255))
            lines.append(f"{stem} {expr.text}\n")
            record = _sample_record(stem, split, seed, scene, graph, expr, mask, size, params)
            meta_file.write(json.dumps(record, sort_keys=True) + "\n")
            tally.add(expr)
        if progress is not None:
            progress(len(exprs))
    (root / f"output_phrase_{split}.txt").write_text("".join(lines), encoding="utf-8", newline="\n")
    return n_scenes, len(lines)


def _summary(
    seed: int, size: int, params: SynRSParams, written: dict[str, int], scenes: dict[str, int], tally: _Tally
) -> dict[str, Any]:
    """The ``synrs_info.json`` content: settings, sample and scene counts, and the kind/template/class mix."""
    total = sum(written.values())
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "samples": written,
        "scenes": scenes,
        "kinds": dict(sorted(tally.kinds.items())),
        "no_target_share": round(tally.kinds["none"] / total, 6) if total else 0.0,
        "templates": dict(sorted(tally.templates.items())),
        "target_classes": dict(sorted(tally.classes.items())),
        "params": params.to_dict(),
        "seeding": "SeedSequence(seed, spawn_key=(split_index, scene)); splits train=0 val=1 test=2",
    }


def write_dataset(
    out: str | os.PathLike[str],
    seed: int,
    counts: dict[str, int],
    size: int = 512,
    *,
    params: SynRSParams | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Generate SynRS and write it in the RefSegRS layout.

    Layout: ``images/<stem>.tif`` (RGB, repeated per expression), ``masks/<stem>.tif`` (0/255),
    ``output_phrase_{split}.txt`` (``<stem> <expression>``), ``synrs_meta.jsonl`` (one line per stem) and
    ``synrs_info.json`` (settings and summary, written last as the completion marker). Stem =
    ``<split>_<scene:06d>_<k:02d>``. Same seed, sizes and generator version give byte-identical files.

    Args:
        out: Output folder.
        seed: Root seed.
        counts: Samples (expressions) per split, e.g. ``{"train": 2000, "val": 200, "test": 200}``.
        size: Image side in pixels (a multiple of 8 between 64 and 4096).
        params: Generator thresholds.
        overwrite: Replace an existing dataset in ``out``.
        progress: Called with the number of samples written since the last call.

    Returns:
        The summary also written to ``synrs_info.json``.

    Raises:
        ValueError: For an unknown split, a negative count, a bad size or bad template weights.
        FileExistsError: If ``out`` already holds a dataset and ``overwrite`` is False.
    """
    params = params or SynRSParams()
    _check_arguments(counts, size, params)
    root = Path(out)
    _prepare(root, overwrite)
    tally = _Tally()
    scenes: dict[str, int] = {}
    written: dict[str, int] = {}
    with (root / "synrs_meta.jsonl").open("w", encoding="utf-8", newline="\n") as meta_file:
        for split in SPLITS:
            n = int(counts.get(split, 0))
            scenes[split], written[split] = _write_split(
                root, meta_file, split, n, seed, size, params, tally, progress
            )
    summary = _summary(seed, size, params, written, scenes, tally)
    (root / "synrs_info.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    logger.info(
        "wrote SynRS to %s: %s samples, no-target share %.3f", root, written, summary["no_target_share"]
    )
    return summary
