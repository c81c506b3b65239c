"""Training-run configuration: one dataclass tree loaded from YAML, with dotted command-line overrides.

PIPELINE.md §7 (flags), MODEL.md §6 (recipe). The model itself is described by a preset name plus
dotted overrides of its `CroBIMConfig`; everything about the run (data, batch, epochs, workers,
storage) lives here. YAML files in `configs/` are plain data for this tree.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from crobim.precision import PRECISIONS

__all__ = [
    "DatasetName",
    "DataSettings",
    "RunSettings",
    "ScheduleSettings",
    "TrainConfig",
    "apply_overrides",
    "check_initial_weights",
    "load_train_config",
    "parse_override",
]

DatasetName = Literal["synrs", "rrsisd", "refsegrs", "risbench"]
_DATASETS = typing.get_args(DatasetName)


def _check_positive(section: str, name: str, value: float | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ValueError(f"{section}.{name} = {value!r} must be a positive number")


@dataclass
class DataSettings:
    """Where the samples come from and how they are fed.

    Attributes:
        dataset: which reader builds the sample references (`crobim.data.<Reader>(root, split)`).
        root: dataset root folder (local path; every node must see it, e.g. a shared volume).
        train_split: split used for training.
        val_split: split used for the per-epoch validation and best-checkpoint selection.
        max_train_samples: keep only the first N training references (quick runs); None keeps all.
        max_val_samples: keep only the first N validation references; None keeps all.
        shuffle: reshuffle the training references every epoch (seeded by `schedule.seed` and the epoch).
        group_by_image: shuffle images instead of references, each image followed by its expressions, so that a
            batch holds several expressions of an image and the training step encodes the image once
            (`crobim.scoring.forward_batch`; every batch dedupes repeated images, this makes them
            common). For sets with several expressions per image (SynRS, RRSIS-D); off keeps samples i.i.d.
        negatives: train on no-target samples when the model's presence head is on; with the head off
            they are always dropped from training (they stay in validation).
        skip_known_bad: drop the readers' published list of broken training files (DATA_AND_EVAL.md §2, §5).
        decode_cpus: CPUs reserved by each decode/resize/tokenize actor.
        decode_concurrency: at most this many decode actors per dataset, as CPUs allow (each rank has its own
            training dataset per epoch); every actor opens the reader and tokenizer once. Fractional-CPU tasks
            instead made Ray start and reap worker processes continually, at ~20x the cost of the decoding
            itself on a small node.
    """

    dataset: DatasetName = "synrs"
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    shuffle: bool = True
    group_by_image: bool = False
    negatives: bool = True
    skip_known_bad: bool = True
    decode_cpus: float = 0.25
    decode_concurrency: int = 2

    def __post_init__(self) -> None:
        if self.dataset not in _DATASETS:
            raise ValueError(f"data.dataset = {self.dataset!r} is not one of {list(_DATASETS)}")
        _check_positive("data", "max_train_samples", self.max_train_samples, allow_none=True)
        _check_positive("data", "max_val_samples", self.max_val_samples, allow_none=True)
        _check_positive("data", "decode_cpus", self.decode_cpus)
        _check_positive("data", "decode_concurrency", self.decode_concurrency)


@dataclass
class ScheduleSettings:
    """Epochs, batch and precision.

    Attributes:
        epochs: number of epochs (40 in the recipe).
        max_steps: stop after this many optimizer steps (the poly decay then spans `max_steps`); None = no cap.
        batch_size: global batch per optimizer step, summed over workers and accumulation micro-steps.
        grad_accum_steps: micro-batches accumulated per optimizer step on each worker.
        val_batch_size: per-worker validation batch (does not change any metric).
        seed: seeds model init, data order and every worker's RNG (per epoch, per rank).
        precision: "auto" = bf16 autocast on GPU and fp32 on CPU; "bf16" forces autocast; "fp32" disables it.
        log_every_steps: progress line on rank 0 every N optimizer steps.
        grad_clip_norm: clip the global gradient norm to this value; None disables clipping.

    The learning rate, weight decay and poly power live in the model config's `optim` section
    (`model_overrides: {optim.lr: 5e-5}`), next to the parameter-group rules they belong to.
    """

    epochs: int = 40
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum_steps: int = 1
    val_batch_size: int = 8
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    log_every_steps: int = 20
    grad_clip_norm: float | None = None

    def __post_init__(self) -> None:
        _check_positive("schedule", "epochs", self.epochs)
        _check_positive("schedule", "max_steps", self.max_steps, allow_none=True)
        _check_positive("schedule", "batch_size", self.batch_size)
        _check_positive("schedule", "grad_accum_steps", self.grad_accum_steps)
        _check_positive("schedule", "val_batch_size", self.val_batch_size)
        _check_positive("schedule", "log_every_steps", self.log_every_steps)
        _check_positive("schedule", "grad_clip_norm", self.grad_clip_norm, allow_none=True)
        if self.precision not in PRECISIONS:
            raise ValueError(f"schedule.precision = {self.precision!r} is not one of {list(PRECISIONS)}")


@dataclass
class RunSettings:
    """Where the run lives and how many workers it gets (Ray Train `ScalingConfig` / `RunConfig`).

    Attributes:
        name: run name; re-running with the same `storage_path` and `name` resumes.
        storage_path: local folder or s3:// / gs:// URI holding checkpoints and the exported `best/`.
        num_workers: Ray Train workers (one DDP rank each).
        use_gpu: one GPU per worker.
        cpus_per_worker: CPUs reserved per training worker.
        threads_per_worker: torch intra-op threads per worker (`torch.set_num_threads`); None keeps
            torch's default. One thread per worker avoids oversubscription on small CPU nodes.
        max_failures: worker-failure retries (`FailureConfig`).
        num_to_keep: checkpoints kept (best by `val_oIoU` plus the latest; must be >= 2).
    """

    name: str = "crobim"
    storage_path: str = "runs"
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads_per_worker: int | None = None
    max_failures: int = 3
    num_to_keep: int = 2

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name = {self.name!r} must be a non-empty name without '/'")
        _check_positive("run", "num_workers", self.num_workers)
        _check_positive("run", "cpus_per_worker", self.cpus_per_worker)
        _check_positive("run", "threads_per_worker", self.threads_per_worker, allow_none=True)
        if self.max_failures < -1:
            raise ValueError(f"run.max_failures = {self.max_failures!r} must be >= -1 (-1 retries forever)")
        if self.num_to_keep < 2:
            raise ValueError(
                f"run.num_to_keep = {self.num_to_keep!r} must be >= 2: one slot for the best checkpoint "
                "by val_oIoU and one for the latest, which a resume needs"
            )


@dataclass
class TrainConfig:
    """One training run: model preset and overrides, data, schedule, run placement.

    Attributes:
        model: a preset name (`crobim-tiny`, `crobim-swin-b`, `crobim-convnext-b`) or a path to a
            model config YAML/JSON written by `CroBIMConfig`.
        model_overrides: dotted `CroBIMConfig` keys and values, e.g. `{"text.max_len": 20}`.
        init_weights: optional folder saved by `crobim.save_model` to start from.
    """

    model: str = "crobim-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_weights: str | None = None
    data: DataSettings = field(default_factory=DataSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        per_step = self.run.num_workers * self.schedule.grad_accum_steps
        if self.schedule.batch_size % per_step:
            raise ValueError(
                f"schedule.batch_size = {self.schedule.batch_size} is not divisible by run.num_workers "
                f"({self.run.num_workers}) x schedule.grad_accum_steps ({self.schedule.grad_accum_steps}); "
                f"use a multiple of {per_step}"
            )

    @property
    def micro_batch_size(self) -> int:
        """Samples per worker per forward pass."""
        return self.schedule.batch_size // (self.run.num_workers * self.schedule.grad_accum_steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict, refusing unknown keys with the list of valid ones."""
        return _build(cls, raw, "")

    def to_yaml(self, path: str | Path) -> None:
        """Write the config as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def to_json(self) -> str:
        """The config as a JSON string (stored in checkpoints)."""
        return json.dumps(self.to_dict(), sort_keys=True)


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:  # noqa: ANN401
    if not isinstance(raw, dict):
        raise TypeError(f"config section {prefix or '<root>'!r} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise KeyError(f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _set_dotted(
    tree: dict[str, Any],
    key: str,
    value: Any,  # noqa: ANN401
    *,
    what: str,
    existing_only: bool,
    free_form: tuple[str, ...] = (),
) -> None:
    """Set `tree[a][b][c] = value` for the dotted `key` "a.b.c": the one walker of both override kinds.

    Args:
        tree: nested mapping, changed in place.
        key: dotted key.
        value: the value to set.
        what: how error messages name the key ("override", "model_overrides").
        existing_only: every section and the leaf must exist already (a `CroBIMConfig` dict); otherwise missing
            sections are created (the `TrainConfig` keys are checked when the dataclass is built).
        free_form: section names whose entries are free (e.g. `backbone.model_kwargs`): new leaves are allowed.

    Raises:
        ValueError: if a section on the way is missing or not a mapping, or (with `existing_only`) the leaf is
            unknown; the message names the key and the valid keys.
    """
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part) if existing_only else node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{what} key {key!r}: {part!r} is not a section")
        node = child
    leaf = parts[-1]
    if existing_only and leaf not in node and not (len(parts) > 1 and parts[-2] in free_form):
        raise ValueError(f"{what} key {key!r} does not exist; valid keys here: {sorted(node)}")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `key=value` override; the value is read as YAML (numbers, booleans, null, lists).

    Args:
        text: e.g. `schedule.epochs=2`, `optim.lr=1e-4`, `model_overrides.text.max_len=16`.

    Returns:
        The dotted key and the parsed value.

    Raises:
        ValueError: if `text` has no `=`.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not of the form key=value (e.g. schedule.epochs=2)")
    parsed = yaml.safe_load(value) if value.strip() else None
    # YAML reads "1e-4" as a string (no dot); numbers written that way are common on command lines.
    if isinstance(parsed, str):
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return key.strip(), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """Set dotted keys in a nested config dict (a copy is returned).

    Keys under `model_overrides.` are kept dotted (they address `CroBIMConfig`, checked when the model
    is built), and so are `weights.` keys, short for `model_overrides.weights.` (the refusal of random
    initialisation names `weights.allow_random_init`); every other key must name a field of `TrainConfig`.

    Args:
        raw: nested config mapping (from YAML).
        overrides: (dotted key, value) pairs, applied in order.

    Returns:
        The updated mapping.
    """
    out = json.loads(json.dumps(raw))
    for key, value in overrides:
        key = f"model_overrides.{key}" if key.startswith("weights.") else key
        if key.startswith("model_overrides."):
            out.setdefault("model_overrides", {})[key.removeprefix("model_overrides.")] = value
            continue
        _set_dotted(out, key, value, what="override", existing_only=False)
    return out


def load_train_config(path: str | Path | None, overrides: list[tuple[str, Any]] | None = None) -> TrainConfig:
    """Read a YAML training config and apply overrides.

    Args:
        path: YAML file (`configs/*.yaml`); None starts from the defaults.
        overrides: (dotted key, value) pairs applied after the file.

    Returns:
        The validated `TrainConfig` (its model config built once, so a bad model key fails here).

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if the run would train from random initialisation where the model config forbids it
            (`check_initial_weights`).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"training config {str(p)!r} not found; the shipped ones are in configs/")
        raw = yaml.safe_load(p.read_text()) or {}
    cfg = TrainConfig.from_dict(apply_overrides(raw, overrides or []))
    check_initial_weights(cfg, build_model_config(cfg))
    return cfg


def check_initial_weights(cfg: TrainConfig, model_cfg: Any) -> None:  # noqa: ANN401
    """Refuse to train from random initialisation when `weights.allow_random_init` is false (the paper presets).

    A run that starts from `init_weights` (a saved checkpoint) is never refused: its weights come from there.

    Raises:
        ValueError: `weights.backbone` or `text.name_or_path` is empty; the message gives the staging command.
    """
    if cfg.init_weights or model_cfg.weights.allow_random_init:
        return
    keys = {"weights.backbone": model_cfg.weights.backbone, "text.name_or_path": model_cfg.text.name_or_path}
    empty = [key for key, value in keys.items() if not value]
    if not empty:
        return
    from crobim.weight_staging import PAPER_WEIGHTS, config_overrides

    staged = [c.key for c in PAPER_WEIGHTS.values() if c.backbone_name in (model_cfg.backbone.name, None)]
    raise ValueError(
        f"model {cfg.model!r} would train from random initialisation: {' and '.join(empty)} "
        f"{'are' if len(empty) > 1 else 'is'} empty and "
        "weights.allow_random_init is false (the paper recipe starts from pretrained weights, MODEL.md §8). "
        "Stage them where the internet is with `python jobs/fetch_weights.py --out /weights`, copy the folder "
        f"where every worker sees it, and add {' '.join(config_overrides('/weights', staged))} "
        "(docs/deploy.md). To train from random initialisation anyway, add --set weights.allow_random_init=true"
    )


def build_model_config(cfg: TrainConfig) -> Any:  # noqa: ANN401
    """The run's `CroBIMConfig`: the preset (or config file) named by `cfg.model` plus `cfg.model_overrides`.

    Raises:
        ValueError: for an unknown override key (the message names it and the valid keys).
    """
    from crobim.config import CroBIMConfig, get_preset

    source = Path(cfg.model)
    if source.suffix in (".yaml", ".yml", ".json") and source.is_file():
        text = source.read_text()
        raw = yaml.safe_load(text) if source.suffix != ".json" else json.loads(text)
        base = CroBIMConfig.from_dict(raw).to_dict()
    else:
        base = get_preset(cfg.model).to_dict()
    for key, value in cfg.model_overrides.items():
        _set_dotted(base, key, value, what="model_overrides", existing_only=True, free_form=("model_kwargs",))
    return CroBIMConfig.from_dict(base)
