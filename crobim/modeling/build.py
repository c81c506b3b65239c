"""``build_model``: wires the CroBIM components from a preset name or a ``CroBIMConfig`` (MODEL.md §2; every
section of the config).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from crobim.config import CroBIMConfig, get_preset
from crobim.modeling.backbone import Backbone, StageLanguageFusion, create_timm_features
from crobim.modeling.capm import CAPM
from crobim.modeling.heads import MaskHead, PresenceHead
from crobim.modeling.lgfa import LGFA
from crobim.modeling.mid import MID
from crobim.modeling.model import CroBIM
from crobim.modeling.text import TextEncoder
from crobim.pretrained import backbone_pretrained_kwargs, build_text_encoder, build_tokenizer

__all__ = ["build_from_config", "build_model", "freeze_text_layers"]

logger = logging.getLogger(__name__)


def freeze_text_layers(encoder: nn.Module, train_layers: str) -> None:
    """``text.train_layers = "0-9"``: only encoder layers 0-9 train (the LAVT/RMSIN quirk, MODEL.md §6); the
    embeddings (which the CAPM prompts also pass through) and layers 10+ get ``requires_grad=False``."""
    if train_layers == "all":
        return
    for name, param in encoder.named_parameters():
        parts = name.split(".")
        trainable = len(parts) > 2 and parts[0] == "encoder" and parts[1] == "layer" and int(parts[2]) <= 9
        param.requires_grad_(trainable)


def _require_divisible(value: int, divisor: int, value_key: str, divisor_key: str) -> None:
    if value % divisor:
        raise ValueError(f"config key {divisor_key} = {divisor} must divide {value_key} = {value}")


def _build_text(
    config: CroBIMConfig, text_config: Any, tokenizer_dir: str | Path | None
) -> tuple[Any, TextEncoder]:
    """The tokenizer and the text encoder, checked against the config (positions, vocabulary, head widths)."""
    tokenizer = build_tokenizer(config.text, config.weights, directory=tokenizer_dir)
    encoder = build_text_encoder(config.text, config.weights, encoder_config=text_config)
    text_dim = int(encoder.config.hidden_size)
    num_positions = int(getattr(encoder.config, "max_position_embeddings", 0) or 0)
    needed = config.text.max_len + config.capm.num_prompts
    if num_positions and num_positions < needed:
        raise ValueError(
            f"the text encoder has {num_positions} positions; text.max_len + capm.num_prompts = {needed} needs more"
        )
    if len(tokenizer) > int(encoder.config.vocab_size):
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the text encoder only {encoder.config.vocab_size}; set "
            "text.tokenizer to the encoder's own tokenizer"
        )
    _require_divisible(text_dim, config.capm.num_heads, "text hidden size", "capm.num_heads")
    _require_divisible(text_dim, 4, "text hidden size", "the sine position code width 4")
    _require_divisible(config.lgfa.dim, config.mid.num_heads, "lgfa.dim", "mid.num_heads")
    _require_divisible(config.lgfa.dim, 4, "lgfa.dim", "the sine position code width 4")
    freeze_text_layers(encoder, config.text.train_layers)
    text = TextEncoder(encoder, max_len=config.text.max_len, prompt_position=config.capm.prompt_position)
    return tokenizer, text


def _build_backbone(config: CroBIMConfig, text_dim: int) -> tuple[Backbone, tuple[int, ...]]:
    """The timm feature backbone (with the in-backbone fusion blocks for ``backbone.in_fusion = 'pwam'``) and its
    four stage widths."""
    body = create_timm_features(
        config.backbone.name,
        out_indices=config.backbone.out_indices,
        img_size=config.input.size,
        drop_path_rate=config.backbone.drop_path_rate,
        model_kwargs=config.backbone.model_kwargs,
        pretrained_kwargs=backbone_pretrained_kwargs(config.weights),
    )
    channels = tuple(body.feature_info.channels())
    stage_fusions = None
    if config.backbone.in_fusion == "pwam":
        stage_fusions = [
            StageLanguageFusion(
                channels=c,
                text_dim=text_dim,
                out_norm=config.lgfa.pwam_out_norm,
                project_mm=config.lgfa.pwam_project_mm,
            )
            for c in channels
        ]
    return Backbone(body, out_norm=config.backbone.out_norm, stage_fusions=stage_fusions), channels


def _build_decoder(
    config: CroBIMConfig, channels: tuple[int, ...], text_dim: int
) -> tuple[CAPM, LGFA, MID, MaskHead, PresenceHead | None]:
    """CAPM, LGFA, MID, the mask head and the optional presence head, built in this order (the order fixes how
    the seeded random initialisation is drawn)."""
    capm = CAPM(
        in_channels=channels,
        text_dim=text_dim,
        pool_grid=config.capm.pool_grid,
        num_prompts=config.capm.num_prompts,
        num_layers=config.capm.layers,
        num_heads=config.capm.num_heads,
        ffn_ratio=config.capm.ffn_ratio,
    )
    lgfa = LGFA(
        in_channels=channels,
        text_dim=text_dim,
        dim=config.lgfa.dim,
        out_stride=config.lgfa.out_stride,
        compensation=config.lgfa.compensation,
        norm_groups=config.lgfa.norm_groups,
        pwam_out_norm=config.lgfa.pwam_out_norm,
        pwam_project_mm=config.lgfa.pwam_project_mm,
    )
    mid = MID(
        dim=config.lgfa.dim,
        text_dim=text_dim,
        depth=config.mid.depth,
        num_heads=config.mid.num_heads,
        text_ffn_ratio=config.mid.text_ffn_ratio,
        pixel_ffn=config.mid.pixel_ffn,
        pixel_ffn_ratio=config.mid.pixel_ffn_ratio,
        order=config.mid.order,
    )
    mask_head = MaskHead(
        dim=config.lgfa.dim,
        channels=config.head.channels,
        product=config.head.product,
        num_tokens=config.text.max_len + config.capm.num_prompts,
    )
    presence_head = PresenceHead(dim=config.lgfa.dim) if config.presence.enabled else None
    return capm, lgfa, mid, mask_head, presence_head


def build_from_config(
    config: CroBIMConfig, *, text_config: Any = None, tokenizer_dir: str | Path | None = None
) -> CroBIM:
    """Build every component from ``config`` and wire them (the one builder, like SAM's ``_build_sam``).

    Args:
        config: the full configuration.
        text_config: a transformers config to build the text encoder from (random weights), used when loading a
            checkpoint; otherwise ``text.name_or_path`` decides.
        tokenizer_dir: a saved tokenizer folder, used when loading a checkpoint.

    Returns:
        The model, in training mode.
    """
    # Text first, then backbone, then decoder: the build order fixes the seeded random initialisation.
    tokenizer, text = _build_text(config, text_config, tokenizer_dir)
    backbone, channels = _build_backbone(config, text.hidden_size)
    capm, lgfa, mid, mask_head, presence_head = _build_decoder(config, channels, text.hidden_size)
    return CroBIM(
        config,
        backbone=backbone,
        text=text,
        capm=capm,
        lgfa=lgfa,
        mid=mid,
        mask_head=mask_head,
        presence_head=presence_head,
        tokenizer=tokenizer,
    )


def build_model(name_or_config: str | CroBIMConfig | Mapping[str, Any]) -> CroBIM:
    """Build a CroBIM from a preset name (``crobim.list_presets()``), a ``CroBIMConfig`` or a config mapping.

    Random initialisation unless the config names local pretrained weights (``weights.backbone``,
    ``text.name_or_path``); the network is only used when ``weights.allow_download`` is true.

    Raises:
        KeyError: unknown preset name.
        ValueError: an invalid configuration (the message names the key, the value and the allowed set).
    """
    if isinstance(name_or_config, str):
        config = get_preset(name_or_config)
    elif isinstance(name_or_config, CroBIMConfig):
        config = name_or_config
    elif isinstance(name_or_config, Mapping):
        config = CroBIMConfig.from_dict(dict(name_or_config))
    else:
        raise TypeError(
            f"build_model takes a preset name, a CroBIMConfig or a mapping; got {type(name_or_config)}"
        )
    return build_from_config(config)
