"""Whole-model checkpoints (MODEL.md §8): ``save_model`` writes a folder (``config.json`` + ``model.safetensors`` +
``text_encoder_config.json`` + ``tokenizer/``), ``load_model`` reads one back, and ``build_and_load`` is the one
"build from a config, then load weights strictly" step (no pickle, strict by default). Pretrained component
sources (backbone file, text encoder, tokenizer) are in ``crobim.pretrained``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crobim.config import CroBIMConfig
from crobim.errors import CheckpointError
from crobim.modeling.build import build_from_config
from crobim.modeling.model import CroBIM

__all__ = [
    "CONFIG_NAME",
    "TEXT_CONFIG_NAME",
    "TOKENIZER_DIR",
    "WEIGHTS_NAME",
    "build_and_load",
    "check_state_dict",
    "load_model",
    "save_model",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TEXT_CONFIG_NAME = "text_encoder_config.json"
TOKENIZER_DIR = "tokenizer"


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise ``CheckpointError`` listing missing / unexpected keys and shape mismatches between the two."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {source} does not match the model: {len(missing)} missing keys {missing[:20]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:20]}, {len(shapes)} shape mismatches {shapes[:20]}. "
            "The weights were saved from a different configuration; load them with the config they were saved with."
        )


def _corrupt(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is truncated or corrupt ({exc}); re-save it with crobim.save_model")


def _read_metadata(weights_file: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise _corrupt(weights_file, exc) from exc


def _read_state_dict(weights_file: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights_file), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise _corrupt(weights_file, exc) from exc


def build_and_load(
    config: CroBIMConfig,
    weights_file: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    text_config: Any = None,
    tokenizer_dir: str | Path | None = None,
) -> CroBIM:
    """Build a CroBIM from ``config`` and load a safetensors state dict into it, strictly.

    Args:
        config: the model configuration (its ``weights`` section still applies at build time).
        weights_file: a ``model.safetensors`` file holding every tensor of that model.
        map_location: device the tensors are read to and the model is moved to.
        text_config: a transformers config to build the text encoder from (see ``build_from_config``).
        tokenizer_dir: a saved tokenizer folder (see ``build_from_config``).

    Returns:
        The model on ``map_location``, in training mode.

    Raises:
        CheckpointError: the file is truncated or corrupt, or its keys or shapes do not match the model.
    """
    path = Path(weights_file)
    model = build_from_config(config, text_config=text_config, tokenizer_dir=tokenizer_dir)
    state_dict = _read_state_dict(path, map_location)
    check_state_dict(model, state_dict, source=str(path))
    model.load_state_dict(state_dict, strict=True)
    return model.to(map_location)


def save_model(model: CroBIM, directory: str | Path) -> Path:
    """Write a checkpoint folder that ``load_model`` reads back.

    Args:
        model: the model to save.
        directory: the folder (created if needed).

    Returns:
        The folder, holding ``config.json``, ``model.safetensors``, ``text_encoder_config.json`` and ``tokenizer/``.
    """
    from safetensors.torch import save_file

    from crobim import __version__

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config_json = model.config.to_json()
    (out / CONFIG_NAME).write_text(config_json)
    model.text.encoder.config.to_json_file(str(out / TEXT_CONFIG_NAME))
    model.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {
        "format": "pt",
        "crobim_version": __version__,
        "crobim_config": json.dumps(model.config.to_dict()),
    }
    save_file(tensors, str(out / WEIGHTS_NAME), metadata=metadata)
    return out


def _config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            diffs.append(f"{prefix}{key}: config.json {va!r} vs weights {vb!r}")
    return diffs


def _read_folder_config(folder: Path) -> CroBIMConfig:
    """``config.json``, checked against the config stored with the weights (when there is one)."""
    try:
        config = CroBIMConfig.from_json(folder / CONFIG_NAME)
    except (ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder / CONFIG_NAME} is not a valid CroBIM config: {exc}") from exc
    weights_path = folder / WEIGHTS_NAME
    metadata = _read_metadata(weights_path)
    if "crobim_config" in metadata:
        # Both sides parsed, so keys added to the config since the checkpoint was written take their defaults.
        try:
            saved = CroBIMConfig.from_dict(json.loads(metadata["crobim_config"])).to_dict()
        except (ValueError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{weights_path} carries an unreadable config ({exc})") from exc
        diffs = _config_differences(config.to_dict(), saved)
        if diffs:
            raise CheckpointError(
                f"{folder / CONFIG_NAME} does not match the config saved with the weights: {diffs}"
            )
    return config


def load_model(directory: str | Path, *, map_location: str | torch.device = "cpu") -> CroBIM:
    """Build a CroBIM from a folder written by ``save_model`` and load its weights strictly (safetensors only).

    Args:
        directory: the checkpoint folder.
        map_location: device the model is loaded to.

    Returns:
        The model on ``map_location``, in training mode.

    Raises:
        CheckpointError: a file is missing or corrupt, config.json disagrees with the config stored with the weights,
            or the weights do not match the model (missing / unexpected keys, shapes).
    """
    from transformers import AutoConfig

    folder = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME, TEXT_CONFIG_NAME, TOKENIZER_DIR):
        if not (folder / name).exists():
            raise CheckpointError(
                f"{folder / name} is missing; a CroBIM checkpoint folder holds {CONFIG_NAME}, {WEIGHTS_NAME}, "
                f"{TEXT_CONFIG_NAME} and {TOKENIZER_DIR}/ (written by crobim.save_model)"
            )
    config = _read_folder_config(folder)
    text_fields = json.loads((folder / TEXT_CONFIG_NAME).read_text())
    text_config = AutoConfig.for_model(text_fields.pop("model_type"), **text_fields)
    # The weights come from the checkpoint: no pretrained backbone file and no text download at build time.
    config = config.replace(weights={"backbone": None, "allow_download": False})
    return build_and_load(
        config,
        folder / WEIGHTS_NAME,
        map_location=map_location,
        text_config=text_config,
        tokenizer_dir=folder / TOKENIZER_DIR,
    )
