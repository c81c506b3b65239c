"""CAPM, context-aware prompt modulation (MODEL.md §3.5; keys `capm.pool_grid` (A3), `capm.num_prompts` (A4),
`capm.layers`, `capm.num_heads`, `capm.ffn_ratio`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crobim.modeling.common import MLP, Attention, sine_position_2d

__all__ = ["CAPM"]


class _PromptLayer(nn.Module):
    """Pre-LN cross-attention (prompts attend to the pooled visual context) + FFN, both residual."""

    def __init__(self, dim: int, num_heads: int, ffn_ratio: int) -> None:
        super().__init__()
        self.norm_prompts = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.prompt_to_context_attn = Attention(dim, num_heads)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = MLP(dim, dim * ffn_ratio, dim)

    def forward(self, prompts: Tensor, context: Tensor, context_pos: Tensor) -> Tensor:
        """prompts (B, Np, Dt), context (B, G, Dt), context_pos (B, G, Dt) -> (B, Np, Dt)."""
        # Cross attention block, prompts attending to the visual context
        q = self.norm_prompts(prompts)
        kv = self.norm_context(context)
        prompts = prompts + self.prompt_to_context_attn(q, kv + context_pos, kv)
        # FFN block
        return prompts + self.ffn(self.norm_ffn(prompts))


class CAPM(nn.Module):
    """Turns Np learnable prompts into image-conditioned prompts P' from pooled multi-scale context.

    Each encoder map is pooled to a ``pool_grid`` x ``pool_grid`` grid (adaptive, so independent of the input size),
    projected to Dt with a LayerNorm, given a 2-D sine position code plus a learned scale embedding, and the scales
    are concatenated into V_ctx (B, 4 * g * g, Dt). The prompts then cross-attend to V_ctx.
    P' depends on the image only, so ``decode`` computes it once per image.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        text_dim: int,
        pool_grid: int,
        num_prompts: int,
        num_layers: int,
        num_heads: int,
        ffn_ratio: int,
    ) -> None:
        super().__init__()
        self.pool_grid = pool_grid
        self.scale_proj = nn.ModuleList(
            nn.Sequential(nn.Linear(c, text_dim), nn.LayerNorm(text_dim)) for c in in_channels
        )
        self.scale_embed = nn.Parameter(torch.zeros(len(in_channels), text_dim))
        self.prompts = nn.Parameter(torch.zeros(num_prompts, text_dim))
        nn.init.normal_(self.scale_embed, std=0.02)
        nn.init.normal_(self.prompts, std=0.02)
        self.layers = nn.ModuleList(_PromptLayer(text_dim, num_heads, ffn_ratio) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(text_dim)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Image-conditioned prompts.

        Args:
            features: 4 maps (B, Ci, Hi, Wi).

        Returns:
            P': (B, Np, Dt).
        """
        contexts, positions = [], []
        g = self.pool_grid
        for i, (fmap, proj) in enumerate(zip(features, self.scale_proj, strict=True)):
            pooled = F.adaptive_avg_pool2d(fmap, g)  # (B, Ci, Hi, Wi) -> (B, Ci, g, g)
            tokens = proj(pooled.flatten(2).transpose(1, 2))  # (B, Ci, g, g) -> (B, g*g, Dt)
            pos = sine_position_2d(g, g, tokens.shape[-1], device=tokens.device, dtype=tokens.dtype)
            contexts.append(tokens)
            positions.append(pos + self.scale_embed[i])  # (g*g, Dt)
        context = torch.cat(contexts, dim=1)  # -> (B, 4*g*g, Dt)
        context_pos = torch.cat(positions, dim=0).unsqueeze(0).expand_as(context)
        prompts = self.prompts.unsqueeze(0).repeat(context.shape[0], 1, 1)  # (Np, Dt) -> (B, Np, Dt)
        for layer in self.layers:
            prompts = layer(prompts, context, context_pos)
        return self.norm_out(prompts)
