"""Training checkpoints as a folder of safetensors and JSON files (no pickle anywhere; PIPELINE.md §7).

Layout of one checkpoint folder:

| File | Content |
| --- | --- |
| `model.safetensors` | the unwrapped model's state dict |
| `config.json` | the model's `CroBIMConfig` (so any checkpoint exports with `crobim.save_model`) |
| `optimizer.safetensors` | every tensor of the optimizer state, keyed `state.<param index>.<name>` |
| `optimizer.json` | optimizer param groups and non-tensor state entries |
| `scheduler.json` | the LR scheduler's state dict (plain numbers) |
| `rng.safetensors`, `rng.json` | torch CPU/CUDA generator states (uint8 tensors), numpy and `random` states |
| `trainer_state.json` | epochs done, global step, metric history, the training config; written last |

`trainer_state.json` is written last, so a folder without it is incomplete and `load_training_state`
refuses it. Ray Train copies a reported folder to storage only after `report` returns, so a
worker dying mid-write never registers a half-written checkpoint.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "CHECKPOINT_FILES",
    "TrainerState",
    "capture_rng_state",
    "load_training_state",
    "read_trainer_state",
    "restore_rng_state",
    "save_training_state",
]

#: Every file a complete checkpoint folder holds.
CHECKPOINT_FILES = (
    "model.safetensors",
    "config.json",
    "optimizer.safetensors",
    "optimizer.json",
    "scheduler.json",
    "rng.safetensors",
    "rng.json",
    "trainer_state.json",
)
_STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Progress of a run, stored as JSON in each checkpoint.

    Attributes:
        epochs_done: completed epochs (the next epoch to run has this index).
        global_step: optimizer steps taken so far.
        history: one metrics dict per reported epoch (loss, lr, val_* ...), in order.
        train_config: the `TrainConfig` as a dict, for the record.
        starts: the epoch index at which each (re)start of the worker group began: `[0]` for an
            uninterrupted run, `[0, 3]` after a resume or a recovered failure during epoch 4.
    """

    epochs_done: int = 0
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    train_config: dict[str, Any] = field(default_factory=dict)
    starts: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        """Serialise to JSON."""
        return json.dumps(
            {
                "epochs_done": self.epochs_done,
                "global_step": self.global_step,
                "history": self.history,
                "train_config": self.train_config,
                "starts": self.starts,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        """Parse the JSON written by `to_json`."""
        raw = json.loads(text)
        return cls(
            epochs_done=int(raw["epochs_done"]),
            global_step=int(raw["global_step"]),
            history=list(raw.get("history", [])),
            train_config=dict(raw.get("train_config", {})),
            starts=[int(x) for x in raw.get("starts", [])],
        )


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Current torch, CUDA, numpy and `random` generator states as tensors plus JSON.

    Returns:
        (tensors for safetensors, JSON-safe dict).
    """
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    meta = {
        "numpy": {
            "kind": kind,
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss},
    }
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (CUDA states only where the devices exist)."""
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if states and len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    npm = meta["numpy"]
    np.random.set_state(
        (
            npm["kind"],
            tensors["numpy_keys"].numpy().astype(np.uint32),
            npm["pos"],
            npm["has_gauss"],
            npm["cached_gaussian"],
        )
    )
    py = meta["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))


def _optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entry in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    model_config_json: str,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainerState,
) -> Path:
    """Write a complete checkpoint folder (see the module docstring), `trainer_state.json` last.

    Args:
        directory: empty or new folder.
        model: the unwrapped model (not the DDP wrapper).
        model_config_json: `CroBIMConfig.to_json()`.
        optimizer: the optimizer whose state is saved.
        scheduler: the LR scheduler.
        state: progress to record.

    Returns:
        The folder path.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(model_config_json)
    opt_tensors, opt_meta = _optimizer_to_files(optimizer.state_dict())
    save_file(opt_tensors, str(out / "optimizer.safetensors"))
    (out / "optimizer.json").write_text(json.dumps(opt_meta))
    (out / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    rng_tensors, rng_meta = capture_rng_state()
    save_file(rng_tensors, str(out / "rng.safetensors"))
    (out / "rng.json").write_text(json.dumps(rng_meta))
    tmp = out / (_STATE_FILE + ".tmp")
    tmp.write_text(state.to_json())
    tmp.replace(out / _STATE_FILE)
    return out


def read_trainer_state(directory: str | Path) -> TrainerState:
    """Read `trainer_state.json` of a checkpoint folder.

    Raises:
        FileNotFoundError: if the folder lacks any checkpoint file (an incomplete write).
    """
    folder = Path(directory)
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint folder {str(folder)!r} is incomplete (missing {missing}); "
            "delete it or resume from an earlier checkpoint"
        )
    return TrainerState.from_json((folder / _STATE_FILE).read_text())


def load_training_state(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    restore_rng: bool = True,
) -> TrainerState:
    """Load a checkpoint folder written by `save_training_state` (strict for the model weights).

    Args:
        directory: checkpoint folder.
        model: the unwrapped model to fill.
        optimizer: optimizer to restore, if given.
        scheduler: scheduler to restore, if given.
        restore_rng: also restore the generator states.

    Returns:
        The stored `TrainerState`.

    Raises:
        FileNotFoundError: if the folder is incomplete.
    """
    folder = Path(directory)
    state = read_trainer_state(folder)
    weights = load_file(str(folder / "model.safetensors"))
    model.load_state_dict(weights, strict=True)
    if optimizer is not None:
        tensors = load_file(str(folder / "optimizer.safetensors"))
        meta = json.loads((folder / "optimizer.json").read_text())
        optimizer.load_state_dict(_optimizer_from_files(tensors, meta))
    if scheduler is not None:
        scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    if restore_rng:
        restore_rng_state(
            load_file(str(folder / "rng.safetensors")), json.loads((folder / "rng.json").read_text())
        )
    return state
