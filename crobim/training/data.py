"""Ray Data input for training (PIPELINE.md §7, DATA_AND_EVAL.md §1): sample references -> decoded batches.

References are reader indices into one split (`SampleSource`), built on the driver from the reader's index
without reading any pixels. A streaming CPU `map_batches` actor pool opens the reader once per actor, decodes
image and mask, resizes and normalises the image with the model's own `preprocess_images` settings, resizes the
mask with `crobim.transforms.resize_mask` and tokenises the expression with the model's tokenizer. Every rank
gets its own dataset per epoch (`epoch_indices`: a seeded permutation cut into global micro-steps, the rank's
slice of each; with `data.group_by_image` a permutation of the images, each followed by its expressions), read
with `ray.train.get_dataset_shard`; validation is split across the ranks. Each decoded row carries `image_key`, a
hash of the reader's `image_key`, so that `crobim.scoring.forward_batch` encodes an image once per batch however
many of its expressions the batch holds. No process holds the dataset: the object store keeps only the indices
(8 bytes per sample and epoch).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from crobim.config import CroBIMConfig
from crobim.training.config import DataSettings

__all__ = [
    "DecodeBatch",
    "ReferenceSet",
    "SampleSource",
    "build_reference_set",
    "decode_references",
    "epoch_indices",
    "make_reader",
    "to_dataset",
    "train_dataset_name",
]

logger = logging.getLogger(__name__)

#: Columns of a decoded batch (numpy), as the training loop reads them.
BATCH_COLUMNS = ("image", "mask", "input_ids", "attention_mask", "no_target", "index", "image_key")


def make_reader(dataset: str, root: str, split: str, skip_known_bad: bool = True) -> Any:  # noqa: ANN401
    """Open `crobim.data.<Reader>(root, split)` for a dataset name of `DataSettings.dataset`.

    `skip_known_bad` reaches the readers that publish a skip list (RRSIS-D, RISBench; training split only).
    """
    from crobim.data import DATASETS

    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is not one of {sorted(DATASETS)}")
    if dataset in ("rrsisd", "risbench"):
        return DATASETS[dataset](root, split, skip_known_bad=skip_known_bad)
    return DATASETS[dataset](root, split)


@functools.lru_cache(maxsize=8)
def _cached_reader(dataset: str, root: str, split: str, skip_known_bad: bool) -> Any:  # noqa: ANN401
    return make_reader(dataset, root, split, skip_known_bad)


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(model_config_json: str, tokenizer_dir: str | None) -> Any:  # noqa: ANN401
    from crobim.pretrained import build_tokenizer

    cfg = CroBIMConfig.from_json(model_config_json)
    return build_tokenizer(cfg.text, cfg.weights, directory=tokenizer_dir)


@dataclass(frozen=True)
class SampleSource:
    """Where references point: one split of one dataset, opened with `make_reader`."""

    dataset: str
    root: str
    split: str
    skip_known_bad: bool = True

    def open(self) -> Any:  # noqa: ANN401
        """The reader, cached per process."""
        return _cached_reader(self.dataset, self.root, self.split, self.skip_known_bad)


@dataclass(frozen=True)
class ReferenceSet:
    """References of one split, ready to become a Ray Dataset: reader indices, no pixels.

    Attributes:
        source: the split the indices point into.
        indices: (N,) int64 reader indices, in file order.
        no_target: (N,) bool, True where the annotation has no referent.
        image_groups: (N,) int64, the same number for references to the same image (reader `image_key`),
            numbered in order of first appearance.
    """

    source: SampleSource
    indices: np.ndarray
    no_target: np.ndarray
    image_groups: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_no_target(self) -> int:
        """Samples without a referent."""
        return int(self.no_target.sum())

    @property
    def num_target(self) -> int:
        """Samples with a referent."""
        return len(self) - self.num_no_target


def build_reference_set(
    data: DataSettings, split: str, *, limit: int | None, keep_no_target: bool
) -> ReferenceSet:
    """Read a split's index (no pixels) and build its references.

    Args:
        data: the run's data settings.
        split: split name.
        limit: keep the first N samples (after dropping no-target ones, if asked).
        keep_no_target: keep samples whose annotation has no referent.

    Returns:
        The references.
    """
    source = SampleSource(data.dataset, str(data.root), split, bool(data.skip_known_bad))
    reader = make_reader(source.dataset, source.root, split, source.skip_known_bad)
    indices, flags, keys = [], [], []
    for i in range(len(reader)):
        rec = reader.record(i)
        # SynRS keeps the flag in its metadata; the target-only real sets have none (False).
        no_target = bool(rec.get("no_target", rec.get("synrs", {}).get("no_target", False)))
        if no_target and not keep_no_target:
            continue
        indices.append(i)
        flags.append(no_target)
        keys.append(reader.image_key(i))
        if limit is not None and len(indices) >= limit:
            break
    if not indices:
        raise ValueError(
            f"{data.dataset} split {split!r} under {data.root!r} has no usable samples "
            f"(keep_no_target={keep_no_target}, limit={limit})"
        )
    _, first, groups = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
    renumber = np.argsort(np.argsort(first))  # group ids in order of first appearance
    return ReferenceSet(
        source,
        np.asarray(indices, dtype=np.int64),
        np.asarray(flags, dtype=bool),
        renumber[groups.reshape(-1)].astype(np.int64),
    )


def image_key_hash(key: str) -> int:
    """A stable int64 for a reader's `image_key` (the `image_key` batch column)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


class DecodeBatch:
    """Map stage: reader indices -> decoded, resized, normalised, tokenised numpy columns.

    A plain picklable callable (Ray Data runs it in an actor pool); the reader and tokenizer are opened
    once per worker process and cached.

    Args:
        source: the split the `index` column points into.
        model_config_json: `CroBIMConfig.to_json()` (input size, mean/std, interpolation, max_len).
        tokenizer_dir: a saved tokenizer folder (from `crobim.save_model`); None builds it from the config.
    """

    def __init__(
        self, source: SampleSource, model_config_json: str, tokenizer_dir: str | None = None
    ) -> None:
        self.source = source
        self.model_config_json = model_config_json
        self.tokenizer_dir = tokenizer_dir
        cfg = CroBIMConfig.from_json(model_config_json)
        self.size = tuple(cfg.input.size)
        self.mean = tuple(cfg.input.mean)
        self.std = tuple(cfg.input.std)
        self.interpolation = cfg.input.interpolation
        self.max_len = cfg.text.max_len

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """`crobim.transforms.tokenize` as numpy int64 (the ids of `CroBIM.tokenize`, padded to `text.max_len`)."""
        from crobim.transforms import tokenize

        tok = _cached_tokenizer(self.model_config_json, self.tokenizer_dir)
        return tokenize(tok, texts, max_len=self.max_len, return_tensors="np")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from crobim.transforms import preprocess_images, resize_mask

        reader = self.source.open()
        indices = np.asarray(batch["index"], dtype=np.int64)
        samples = [reader[int(i)] for i in indices]
        pixels = preprocess_images(
            [s.image for s in samples],
            size=self.size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )  # (B, 3, H, W) float32, normalised
        tokens = self.tokenize([s.text for s in samples])
        keys = [image_key_hash(reader.image_key(int(i))) for i in indices]
        return {
            "image": pixels.numpy(),
            "mask": np.stack([resize_mask(s.mask, self.size) for s in samples]).astype(np.uint8),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "no_target": np.asarray([s.no_target for s in samples], dtype=bool),
            "index": indices,
            "image_key": np.asarray(keys, dtype=np.int64),
        }


def to_dataset(
    source: SampleSource,
    indices: np.ndarray,
    *,
    model_config_json: str,
    tokenizer_dir: str | None = None,
    decode_cpus: float = 0.25,
    decode_concurrency: int = 2,
    decode_batch_size: int = 16,
    rows_per_block: int = 64,
) -> Any:  # noqa: ANN401
    """Turn reader indices into a streaming Ray Dataset of decoded batches, in the indices' order.

    Only the indices (8 bytes a sample) enter the object store here; pixels are read when the dataset is iterated.

    Args:
        source: the split the indices point into.
        indices: (N,) reader indices (`ReferenceSet.indices`, or one rank's epoch from `epoch_indices`).
        model_config_json: the model config (sizes, tokenizer) as JSON.
        tokenizer_dir: saved tokenizer folder, or None to build it from the config.
        decode_cpus: CPUs per decode actor.
        decode_concurrency: at most this many decode actors, at least one (see `DataSettings.decode_concurrency`).
        decode_batch_size: samples decoded per call.
        rows_per_block: indices per input block. Ray Data's cost is per block: one-sample blocks
            add Ray overhead for nothing.

    Returns:
        A `ray.data.Dataset` with columns `BATCH_COLUMNS`.
    """
    import ray.data

    indices = np.asarray(indices, dtype=np.int64)
    if not len(indices):
        raise ValueError("no references to decode")
    # from_items, not from_arrow: from_arrow datasets hung a 2-node training run (tests/cluster) that this passes.
    rows = [{"index": int(i)} for i in indices]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // rows_per_block)))
    return ds.map_batches(
        DecodeBatch,
        fn_constructor_kwargs={
            "source": source,
            "model_config_json": model_config_json,
            "tokenizer_dir": tokenizer_dir,
        },
        batch_size=decode_batch_size,
        num_cpus=decode_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=decode_concurrency),
        batch_format="numpy",
    )


def epoch_indices(
    refs: ReferenceSet,
    *,
    epoch: int,
    seed: int | None,
    step_rows: int,
    rank: int,
    world_size: int,
    group_by_image: bool = False,
) -> np.ndarray:
    """One rank's training samples for one epoch, as reader indices in training order.

    The epoch's order is a permutation of all references seeded by (seed, epoch) (file order when `seed` is
    None); with `group_by_image`, a permutation of the images, each followed by its references in file order.
    The order is cut into global micro-steps of `step_rows` samples (all ranks together); rank r takes rows
    [r * m, (r + 1) * m) of every step, m = step_rows // world_size, and the incomplete last step is dropped.
    So the global batches hold the same samples whatever the number of workers, every epoch has its own order,
    and a resumed or restarted run replays exactly the epochs it has left.

    Args:
        refs: the training references.
        epoch: 0-based epoch.
        seed: the run's seed, or None to keep the file order.
        step_rows: samples per global micro-step (`num_workers x micro-batch`).
        rank: this worker's rank.
        world_size: number of workers (divides `step_rows`).
        group_by_image: keep each image's references together (see `DataSettings.group_by_image`).

    Returns:
        `(len(refs) // step_rows) * m` reader indices (int64).
    """
    if step_rows % world_size:
        raise ValueError(f"step_rows={step_rows} is not a multiple of world_size={world_size}")
    n = len(refs)
    if seed is None:
        order = np.arange(n)
    elif group_by_image:
        image_order = np.random.default_rng([seed, epoch]).permutation(int(refs.image_groups.max()) + 1)
        rank_of_image = np.empty_like(image_order)
        rank_of_image[image_order] = np.arange(len(image_order))
        order = np.lexsort((np.arange(n), rank_of_image[refs.image_groups]))  # by image rank, then file order
    else:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // step_rows
    mine = order[: steps * step_rows].reshape(steps, world_size, step_rows // world_size)[:, rank].reshape(-1)
    return refs.indices[mine]


def train_dataset_name(epoch: int) -> str:
    """Name of epoch `epoch`'s (0-based) training dataset, as `ray.train.get_dataset_shard` knows it."""
    return f"train_epoch_{epoch}"


def decode_references(
    refs: ReferenceSet, *, model_config_json: str, tokenizer_dir: str | None = None
) -> dict[str, np.ndarray]:
    """Decode references in-process (no Ray): the same stage, for evaluation helpers and tests."""
    return DecodeBatch(refs.source, model_config_json, tokenizer_dir)({"index": refs.indices})
