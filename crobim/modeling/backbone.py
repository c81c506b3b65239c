"""Visual encoder: a timm ``features_only`` model returning 4 NCHW maps, with per-stage LayerNorms and optional
in-backbone language fusion (MODEL.md §3.3; keys `backbone.name`, `backbone.out_indices`, `backbone.out_norm`,
`backbone.in_fusion` (A1), `backbone.drop_path_rate`, `backbone.model_kwargs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
from torch import Tensor, nn

from crobim.modeling.common import LayerNorm2d
from crobim.modeling.lgfa import PixelWordAttention

__all__ = ["Backbone", "StageLanguageFusion", "create_timm_features"]

#: timm modules whose models are built for one input size and need ``img_size`` (MODEL.md §3.3).
_FIXED_SIZE_MODULES = ("swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr")


def create_timm_features(
    name: str,
    *,
    out_indices: Sequence[int],
    img_size: tuple[int, int],
    drop_path_rate: float,
    model_kwargs: dict[str, Any] | None = None,
    pretrained_kwargs: dict[str, Any] | None = None,
) -> Any:
    """``timm.create_model(name, features_only=True, ...)``, passing ``img_size`` to fixed-size families (Swin).

    Args:
        name: timm model name.
        out_indices: the 4 feature stages.
        img_size: (H, W) input size.
        drop_path_rate: stochastic depth rate.
        model_kwargs: extra constructor arguments.
        pretrained_kwargs: ``{"pretrained": True, "pretrained_cfg_overlay": {...}}`` from ``crobim.weights``; None
            for random initialisation.

    Returns:
        A timm feature extractor carrying ``feature_info`` and ``output_fmt``.
    """
    if not timm.is_model(name):
        raise ValueError(f"config key backbone.name = {name!r} is not a timm model; see timm.list_models()")
    kwargs: dict[str, Any] = dict(model_kwargs or {})
    if timm.models.is_model_in_modules(name, list(_FIXED_SIZE_MODULES)):
        kwargs["img_size"] = tuple(img_size)
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    pretrained = dict(pretrained_kwargs or {"pretrained": False})
    try:
        return timm.create_model(
            name, features_only=True, out_indices=tuple(out_indices), **pretrained, **kwargs
        )
    except (OSError, RuntimeError, ValueError) as exc:
        if not pretrained.get("pretrained"):
            raise
        source = pretrained.get("pretrained_cfg_overlay", {}).get("file", f"the hub tag of {name!r}")
        raise OSError(
            f"could not load pretrained backbone weights from {source} (weights.backbone) into {name!r}: {exc}. "
            "Offline, point weights.backbone at a local file whose layout matches backbone.name (e.g. the "
            "'.ms_in22k' tag for an ImageNet-22k Swin checkpoint)."
        ) from exc


class StageLanguageFusion(nn.Module):
    """LAVT-style language fusion after a backbone stage (A1 = ``pwam``): x + gate * PWAM(x, words)."""

    def __init__(self, *, channels: int, text_dim: int) -> None:
        super().__init__()
        self.pwam = PixelWordAttention(
            vis_channels=channels, text_dim=text_dim, dim=channels, out_channels=channels
        )

    def forward(self, x: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """x (B, C, H, W), words (B, L, Dt), word_mask (B, L) -> (B, C, H, W)."""
        fused, _ = self.pwam.fuse(self.pwam.prepare(x), words, word_mask)
        return x + fused


class Backbone(nn.Module):
    """Runs a timm feature extractor stage by stage and returns 4 NCHW maps F1..F4.

    The NHWC -> NCHW permute is decided once from the extractor's ``output_fmt`` (Swin is NHWC) and then checked
    against ``feature_info.channels()``; shapes are never used to guess the layout (at small sizes H or W can equal C).
    """

    def __init__(
        self, body: Any, *, out_norm: bool, stage_fusions: Sequence[StageLanguageFusion] | None = None
    ) -> None:
        super().__init__()
        self.body: Any = body  # a timm FeatureListNet
        self.channels: tuple[int, ...] = tuple(body.feature_info.channels())
        self.reductions: tuple[int, ...] = tuple(body.feature_info.reduction())
        fmt = getattr(body, "output_fmt", "NCHW")
        self.channels_last = str(getattr(fmt, "value", fmt)) == "NHWC"
        self.return_layers: dict[str, str] = dict(body.return_layers)
        self.stage_norms = nn.ModuleList(LayerNorm2d(c) for c in self.channels) if out_norm else None
        self.stage_fusions = nn.ModuleList(stage_fusions) if stage_fusions is not None else None

    @property
    def needs_text(self) -> bool:
        """True when language is fused inside the backbone (A1 = ``pwam``)."""
        return self.stage_fusions is not None

    def _to_nchw(self, x: Tensor, stage: int) -> Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        if x.shape[1] != self.channels[stage]:
            raise AssertionError(
                f"backbone stage {stage} has {x.shape[1]} channels, feature_info says {self.channels[stage]}"
            )
        return x

    def forward(
        self, images: Tensor, words: Tensor | None = None, word_mask: Tensor | None = None
    ) -> list[Tensor]:
        """Multi-scale features.

        Args:
            images: (B, 3, S_h, S_w) normalised.
            words: (B, L, Dt) plain-pass text features, only with in-backbone fusion.
            word_mask: (B, L), only with in-backbone fusion.

        Returns:
            4 maps (B, Ci, S_h / ri, S_w / ri), ri = 4, 8, 16, 32 for the usual stages.
        """
        if self.stage_fusions is not None and (words is None or word_mask is None):
            raise ValueError(
                "backbone.in_fusion = 'pwam' needs the words: call CroBIM.forward, not encode_image"
            )
        outputs: list[Tensor] = []
        x = images
        for name, module in self.body.items():
            x = module(x)
            if name not in self.return_layers:
                continue
            stage = len(outputs)
            fmap = self._to_nchw(x, stage)
            if self.stage_fusions is not None:
                assert words is not None and word_mask is not None
                fmap = self.stage_fusions[stage](fmap, words, word_mask)
                x = fmap.permute(0, 2, 3, 1) if self.channels_last else fmap  # back to the body's layout
            outputs.append(self.stage_norms[stage](fmap) if self.stage_norms is not None else fmap)
        return outputs
