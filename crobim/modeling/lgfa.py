"""LGFA, language-guided feature aggregation with attention-deficit compensation (MODEL.md §3.6; keys `lgfa.dim`,
`lgfa.out_stride` (A6), `lgfa.compensation` (A7), `lgfa.norm_groups`, `lgfa.pwam_out_norm`, `lgfa.pwam_project_mm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crobim.modeling.common import MLP, masked_mean

__all__ = ["LGFA", "LGFAImageState", "PixelWordAttention", "word_attention"]

_MASKED_SCORE = -1e4


def word_attention(
    q: Tensor, k: Tensor, v: Tensor, word_mask: Tensor, *, need_weights: bool
) -> tuple[Tensor, Tensor | None]:
    """Pixels attend to the words: softmax(q k^T / sqrt(d)) v with padded words excluded.

    Without ``need_weights`` this is ``F.scaled_dot_product_attention`` (fused, the (HW, L) weights are never
    stored); with it the weights are computed explicitly and returned, since SDPA cannot return them and computing
    them beside it costs more than this (benchmarks/fast_paths.py). A row whose words are all padding attends
    uniformly to them, as the former -1e4 fill gave (its keys are zeroed and unmasked): finite, never NaN.

    Args:
        q: (N, HW, d) pixel queries.
        k: (N, L, d) word keys.
        v: (N, L, dv) word values.
        word_mask: (N, L), 1 on real tokens.
        need_weights: also return the attention weights.

    Returns:
        The output (N, HW, dv) and the weights (N, HW, L) or None.
    """
    valid = word_mask.bool()  # (N, L)
    empty = ~valid.any(dim=1, keepdim=True)  # (N, 1): no real word at all
    valid = valid | empty
    k = k.masked_fill(empty[:, :, None], 0.0)  # zero keys: equal scores, uniform weights
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, :]), None
    scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5  # (N, HW, L)
    attn = scores.masked_fill(~valid[:, None, :], _MASKED_SCORE).softmax(dim=-1)
    return attn @ v, attn


class PixelWordAttention(nn.Module):
    """Language-to-vision interaction at one scale (PWAM-like, after yz93/LAVT-RIS ``lib/backbone.py::PWAM``,
    commit 066bcf2; Lsan2401/RMSIN has the same module).

    Pixels query the words: Q = 1x1 conv + InstanceNorm of the map, K and V = Linear of the words, scaled dot product
    over the words with padding set to -1e4, then an output projection (applied to the values, see ``fuse``). The
    result is multiplied with a GELU projection of the map (G), giving g; the language term is tanh-gate(g) * g, and
    ``fuse`` adds it to a 1x1 projection of the map (``vis_proj``).

    LAVT's PWAM also normalises the attention output (InstanceNorm after its output projection, no affine
    parameters) and projects the product with G (``project_mm``: 1x1 conv + GELU); ``out_norm`` and ``project_mm``
    turn these on (keys ``lgfa.pwam_out_norm``, ``lgfa.pwam_project_mm``). ``residual=False`` builds no
    ``vis_proj``, for callers that add the language term to their own stream (``StageLanguageFusion``).

    The image-only projections (``prepare``) are separated from the word attention (``fuse``) so that ``decode``
    computes them once per image.
    """

    def __init__(
        self,
        *,
        vis_channels: int,
        text_dim: int,
        dim: int,
        out_channels: int,
        residual: bool = True,
        out_norm: bool = False,
        project_mm: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.vis_proj = nn.Conv2d(vis_channels, out_channels, 1) if residual else None
        self.query = nn.Sequential(nn.Conv2d(vis_channels, dim, 1), nn.InstanceNorm2d(dim, affine=True))
        self.key = nn.Linear(text_dim, dim)
        self.value = nn.Linear(text_dim, dim)
        self.attn_out = nn.Conv2d(dim, dim, 1)
        self.vis_gate_in = nn.Sequential(nn.Conv2d(vis_channels, dim, 1), nn.GELU())
        self.fused_proj = nn.Identity() if dim == out_channels else nn.Conv2d(dim, out_channels, 1)
        self.gate = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 1),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1),
            nn.Tanh(),
        )
        # Built last, and only when asked, so that the layers above draw the same seeded initialisation either way.
        self.attn_out_norm = nn.InstanceNorm2d(dim) if out_norm else nn.Identity()
        self.project_mm = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU()) if project_mm else nn.Identity()

    def prepare(self, fmap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Image-only projections of ``fmap`` (B, Ci, H, W): residual (B, Co, H, W), query and G-input (B, d, H, W)."""
        if self.vis_proj is None:
            raise AssertionError("PixelWordAttention(residual=False) has no residual: call language_term")
        return self.vis_proj(fmap), self.query(fmap), self.vis_gate_in(fmap)

    def fuse(
        self, prepared: tuple[Tensor, Tensor, Tensor], words: Tensor, word_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Inject the words into a prepared map: F' = residual + language term.

        Args:
            prepared: output of ``prepare`` for N rows.
            words: (N, L, Dt) word features.
            word_mask: (N, L), 1 on real tokens.

        Returns:
            F' (N, Co, H, W) and the word attention (N, HW, L).
        """
        residual, query, gate_in = prepared
        term, attn = self.language_term(query, gate_in, words, word_mask)
        assert attn is not None
        return residual + term, attn

    def language_term(
        self, query: Tensor, gate_in: Tensor, words: Tensor, word_mask: Tensor, need_weights: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """The gated language term tanh-gate(g) * g, g = project(G * attention output).

        Args:
            query: (N, d, H, W), ``self.query`` of the map.
            gate_in: (N, d, H, W), ``self.vis_gate_in`` of the map (G).
            words: (N, L, Dt) word features.
            word_mask: (N, L), 1 on real tokens.
            need_weights: return the word attention; without it the fused ``scaled_dot_product_attention`` runs
                (see :func:`word_attention`).

        Returns:
            The term (N, Co, H, W) and the word attention (N, HW, L), or None without ``need_weights``.
        """
        n, d, h, w = query.shape
        q = query.flatten(2).transpose(1, 2)  # (N, d, H, W) -> (N, HW, d)
        k = self.key(words)  # (N, L, d)
        # attn_out (a 1x1 conv) acts on a convex combination of the values, so it is applied to the L values
        # instead of the HW outputs: the same result, HW / L times cheaper per image-query pair.
        v = F.linear(self.value(words), self.attn_out.weight.flatten(1), self.attn_out.bias)  # (N, L, d)
        out, attn = word_attention(q, k, v, word_mask, need_weights=need_weights)  # (N, HW, d), (N, HW, L)
        out = self.attn_out_norm(out.transpose(1, 2).reshape(n, d, h, w))  # (N, HW, d) -> (N, d, H, W)
        g = self.fused_proj(self.project_mm(gate_in * out))  # (N, Co, H, W)
        return self.gate(g) * g, attn


@dataclass
class LGFAImageState:
    """Image-only LGFA intermediates for B images.

    ``prepared``: per-scale ``PixelWordAttention.prepare`` outputs; ``visual``: phi(F~) (B, d, h, w) for the
    ``gated``/``residual``/``se`` compensations; ``residual_up``: the upsampled pre-language projections
    (B, d, h, w) per scale for ``complementary``.
    """

    prepared: list[tuple[Tensor, Tensor, Tensor]]
    visual: Tensor | None
    residual_up: list[Tensor] | None

    def index_select(self, index: Tensor) -> LGFAImageState:
        """Rows ``index`` (N,) of every tensor."""
        return LGFAImageState(
            prepared=[tuple(t.index_select(0, index) for t in p) for p in self.prepared],  # type: ignore[misc]
            visual=None if self.visual is None else self.visual.index_select(0, index),
            residual_up=None
            if self.residual_up is None
            else [t.index_select(0, index) for t in self.residual_up],
        )


class LGFA(nn.Module):
    """Per-scale language injection, per-pixel softmax fusion of the scales, attention-deficit compensation -> V*.

    Compensation (A7), with Ff the fused map, F~ = sum of the upsampled pre-language projections and
    phi = 1x1 conv + GroupNorm + ReLU:

    * ``gated`` (default): r = sigmoid(3x3 conv([Ff ; up(max over words of A_i), i = 1..4])),
      V* = Ff + (1 - r) * phi(F~): pixels with weak language attention get visual evidence back;
    * ``residual``: V* = Ff + gamma * phi(F~), gamma a learned scalar;
    * ``se``: V* = Ff + sigmoid(MLP(mean of the words)) * phi(F~), channel weights driven by the sentence;
    * ``complementary``: V* = Ff + phi(sum_i (1 - alpha_i) / (n - 1) * up(P_i)), alpha the scale weights and P_i the
      pre-language projections.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        text_dim: int,
        dim: int,
        out_stride: int,
        compensation: Literal["gated", "residual", "se", "complementary"],
        norm_groups: int,
        pwam_out_norm: bool = False,
        pwam_project_mm: bool = False,
    ) -> None:
        super().__init__()
        self.out_stride = out_stride
        self.compensation = compensation
        num_scales = len(in_channels)
        self.scales = nn.ModuleList(
            PixelWordAttention(
                vis_channels=c,
                text_dim=text_dim,
                dim=dim,
                out_channels=dim,
                out_norm=pwam_out_norm,
                project_mm=pwam_project_mm,
            )
            for c in in_channels
        )
        self.scale_logits = nn.Conv2d(num_scales * dim, num_scales, 3, padding=1)
        self.phi = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GroupNorm(norm_groups, dim), nn.ReLU())
        if compensation == "gated":
            self.deficit_gate = nn.Conv2d(dim + num_scales, 1, 3, padding=1)
        elif compensation == "residual":
            self.residual_scale = nn.Parameter(torch.tensor(0.1))
        elif compensation == "se":
            self.sentence_se = MLP(text_dim, dim, dim, act_layer=nn.ReLU)

    def _scale_modules(self) -> list[PixelWordAttention]:
        return [cast(PixelWordAttention, scale) for scale in self.scales]

    def prepare(self, features: Sequence[Tensor], out_size: tuple[int, int]) -> LGFAImageState:
        """Image-only part for B images.

        Args:
            features: 4 maps (B, Ci, Hi, Wi).
            out_size: (h, w) = input size / ``out_stride``.

        Returns:
            The state that ``forward`` consumes (index it to the image-query pairs first).
        """
        prepared = []
        for scale, fmap in zip(self._scale_modules(), features, strict=True):
            residual, query, gate_in = scale.prepare(fmap)
            if fmap.shape[-2] > out_size[0] or fmap.shape[-1] > out_size[1]:
                # A scale finer than the working grid (F1 at out_stride 8) is brought to it here, once per image,
                # so its word attention runs on the working grid like every other scale.
                residual, query, gate_in = (
                    _resize(t, out_size) for t in (residual, query, gate_in)
                )  # (B, C, Hi, Wi) -> (B, C, h, w)
            prepared.append((residual, query, gate_in))
        residual_up = [_resize(p[0], out_size) for p in prepared]  # (B, d, Hi, Wi) -> (B, d, h, w)
        if self.compensation == "complementary":
            return LGFAImageState(prepared=prepared, visual=None, residual_up=residual_up)
        visual = self.phi(torch.stack(residual_up, dim=0).sum(dim=0))  # F~ -> phi(F~) (B, d, h, w)
        return LGFAImageState(prepared=prepared, visual=visual, residual_up=None)

    def forward(
        self, state: LGFAImageState, words: Tensor, word_mask: Tensor, out_size: tuple[int, int]
    ) -> tuple[Tensor, list[Tensor]]:
        """Language-guided aggregation for N image-query pairs.

        Args:
            state: image-only state, already indexed to the N pairs.
            words: T (N, L, Dt) plain-pass word features.
            word_mask: (N, L), 1 on real tokens.
            out_size: (h, w) = input size / ``out_stride``.

        Returns:
            V* (N, d, h, w) and the per-scale word attentions A_i (N, Hi*Wi, L).
        """
        fused, attns, attn_peaks = [], [], []
        for scale, prepared in zip(self._scale_modules(), state.prepared, strict=True):
            f_prime, attn = scale.fuse(prepared, words, word_mask)
            n, _, hi, wi = f_prime.shape
            peak = attn.max(dim=-1).values.reshape(n, 1, hi, wi)  # (N, HiWi, L) -> (N, 1, Hi, Wi)
            fused.append(_resize(f_prime, out_size))  # (N, d, Hi, Wi) -> (N, d, h, w)
            attn_peaks.append(_resize(peak, out_size))
            attns.append(attn)
        # Multi-scale attention fusion: per-pixel softmax over the scales
        alpha = self.scale_logits(torch.cat(fused, dim=1)).softmax(dim=1)  # (N, 4d, h, w) -> (N, 4, h, w)
        fused_map = (alpha.unsqueeze(2) * torch.stack(fused, dim=1)).sum(
            dim=1
        )  # (N, 4, d, h, w) -> (N, d, h, w)
        # Attention deficit compensation
        if self.compensation == "complementary":
            assert state.residual_up is not None
            weights = (1.0 - alpha) / max(len(fused) - 1, 1)  # (N, 4, h, w)
            pre_language = (weights.unsqueeze(2) * torch.stack(state.residual_up, dim=1)).sum(dim=1)
            return fused_map + self.phi(pre_language), attns
        assert state.visual is not None
        if self.compensation == "gated":
            r = torch.sigmoid(self.deficit_gate(torch.cat([fused_map, *attn_peaks], dim=1)))  # (N, 1, h, w)
            return fused_map + (1.0 - r) * state.visual, attns
        if self.compensation == "residual":
            return fused_map + self.residual_scale * state.visual, attns
        channel_weights = torch.sigmoid(self.sentence_se(masked_mean(words, word_mask)))  # (N, d)
        return fused_map + channel_weights[:, :, None, None] * state.visual, attns


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # (N, C, Hi, Wi) -> (N, C, h, w)
