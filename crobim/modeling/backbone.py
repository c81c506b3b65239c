"""Visual encoder: a timm ``features_only`` model returning 4 NCHW maps, with per-stage LayerNorms and optional
in-backbone language fusion (MODEL.md §3.3; keys `backbone.name`, `backbone.out_indices`, `backbone.out_norm`,
`backbone.in_fusion` (A1), `backbone.drop_path_rate`, `backbone.model_kwargs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import Tensor, nn

from crobim.modeling.common import LayerNorm2d
from crobim.modeling.lgfa import PixelWordAttention
from crobim.pretrained import hub_backbone_name
from crobim.pretrained_layouts import load_backbone_state, read_backbone_file

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
    """``timm.create_model(name, features_only=True, ...)``, passing ``img_size`` to fixed-size families (Swin), then
    the pretrained weights, checked against the model before they load (``crobim.pretrained_layouts``).

    Args:
        name: timm model name.
        out_indices: the 4 feature stages.
        img_size: (H, W) input size.
        drop_path_rate: stochastic depth rate.
        model_kwargs: extra constructor arguments.
        pretrained_kwargs: ``crobim.pretrained.backbone_pretrained_kwargs``: ``{"pretrained": True,
            "pretrained_cfg_overlay": {"file": path}}`` for a local safetensors file, ``{"pretrained": True}`` for
            the hub (``crobim.pretrained.hub_backbone_name``); None or ``{"pretrained": False}`` for random init.

    Returns:
        A timm feature extractor carrying ``feature_info`` and ``output_fmt``.

    Raises:
        CheckpointError: The weights file is truncated, not safetensors, or its keys do not match the model (the
            message names the keys, a stray prefix and the fix).
        OSError: The hub download failed.
    """
    if not timm.is_model(name):
        raise ValueError(f"config key backbone.name = {name!r} is not a timm model; see timm.list_models()")
    kwargs: dict[str, Any] = dict(model_kwargs or {})
    if timm.models.is_model_in_modules(name, list(_FIXED_SIZE_MODULES)):
        kwargs["img_size"] = tuple(img_size)
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    pretrained = dict(pretrained_kwargs or {"pretrained": False})
    # Random init first (the same draws as an unloaded build), then the checked load.
    body = timm.create_model(
        name, features_only=True, out_indices=tuple(out_indices), pretrained=False, **kwargs
    )
    if pretrained.get("pretrained"):
        file = pretrained.get("pretrained_cfg_overlay", {}).get("file")
        _load_pretrained_backbone(body, name, kwargs, file)
    return body


def _load_pretrained_backbone(body: nn.Module, name: str, kwargs: dict[str, Any], file: str | None) -> None:
    """Load a local file (``file``) or the hub weights into ``body``, checked against the full model built on the
    meta device (no memory, no random draws)."""
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False, **kwargs)
    if file is not None:
        state, source = read_backbone_file(file), f"{file} (weights.backbone)"
    else:
        state = _hub_backbone_state(name, kwargs)
        source = f"timm's {hub_backbone_name(name)!r} (weights.backbone)"
    load_backbone_state(body, reference, state, name=name, source=source)


def _hub_backbone_state(name: str, kwargs: dict[str, Any]) -> dict[str, Tensor]:
    """The state dict of the paper family's hub weights for ``name`` (timm downloads; the RNG state is kept)."""
    hub_name = hub_backbone_name(name)
    try:
        with torch.random.fork_rng(devices=[]):
            return timm.create_model(hub_name, pretrained=True, **kwargs).state_dict()
    except (OSError, RuntimeError, ValueError) as exc:
        raise OSError(
            f"could not download the backbone weights {hub_name!r} (weights.backbone: hub) for {name!r}: {exc}. "
            "Offline, stage them with jobs/fetch_weights.py and point weights.backbone at the local file."
        ) from exc


class StageLanguageFusion(nn.Module):
    """LAVT-style language fusion after a backbone stage (A1 = ``pwam``): x + gate(m) * m, m = PWAM(x, words).

    As yz93/LAVT-RIS ``lib/backbone.py::MMBasicLayer.forward`` (commit 066bcf2): only the gated language term is
    added; the pretrained stream x itself is not re-projected (the pixel-word attention has no ``vis_proj``).
    ``out_norm`` / ``project_mm``: LAVT's InstanceNorm and ``project_mm`` inside the PWAM (``lgfa.pwam_*``).
    """

    def __init__(
        self, *, channels: int, text_dim: int, out_norm: bool = False, project_mm: bool = False
    ) -> None:
        super().__init__()
        self.pwam = PixelWordAttention(
            vis_channels=channels,
            text_dim=text_dim,
            dim=channels,
            out_channels=channels,
            residual=False,
            out_norm=out_norm,
            project_mm=project_mm,
        )

    def forward(self, x: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """x (B, C, H, W), words (B, L, Dt), word_mask (B, L) -> (B, C, H, W)."""
        term, _ = self.pwam.language_term(
            self.pwam.query(x), self.pwam.vis_gate_in(x), words, word_mask, need_weights=False
        )
        return x + term


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
