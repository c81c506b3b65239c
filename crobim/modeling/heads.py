"""Mask head (the figure's ⊗ and "Output Prediction") and the target-presence head
(MODEL.md §3.7 and §4.2; keys `head.channels` (A9), `head.product`, `presence.enabled`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from crobim.modeling.common import MLP, masked_mean

__all__ = ["MaskHead", "PresenceHead"]


class MaskHead(nn.Module):
    """Mask logits at the decoder stride from Z (N, d, h, w) and the final text tokens Q_N (N, T, d).

    * ``pooled`` (default): q_c = MLP_c(masked mean of Q_N), logits_c = <Z(x, y), q_c> / sqrt(d), one MLP per channel
      (C = 1: foreground; C = 2: background, foreground).
    * ``tokens``: S = Z . Q_N^T (N, hw, T) / sqrt(d) with padded tokens zeroed, then a learned 1x1 over the T tokens
      to C channels (T = max_len + Np is fixed).
    """

    def __init__(
        self, *, dim: int, channels: int, product: Literal["pooled", "tokens"], num_tokens: int | None = None
    ) -> None:
        super().__init__()
        self.dim = dim
        self.channels = channels
        self.product = product
        if product == "pooled":
            self.query_mlps = nn.ModuleList(MLP(dim, dim, dim, act_layer=nn.ReLU) for _ in range(channels))
        else:
            if num_tokens is None:
                raise ValueError("MaskHead(product='tokens') needs num_tokens = max_len + num_prompts")
            self.num_tokens = num_tokens
            self.token_mix = nn.Linear(num_tokens, channels)

    def forward(self, z: Tensor, tokens: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Mask logits.

        Args:
            z: (N, d, h, w).
            tokens: Q_N (N, T, d).
            token_mask: (N, T).

        Returns:
            logits (N, C, h, w) and the pooled query q (N, d) for the presence head (the foreground query for
            ``pooled``; the masked token mean for ``tokens``).
        """
        pooled = masked_mean(tokens, token_mask)  # (N, T, d) -> (N, d)
        scale = self.dim**-0.5
        if self.product == "pooled":
            queries = torch.stack([mlp(pooled) for mlp in self.query_mlps], dim=1)  # (N, C, d)
            logits = torch.einsum("ncd,ndhw->nchw", queries, z) * scale
            return logits, queries[:, -1]
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(
                f"head.product='tokens' was built for {self.num_tokens} text tokens, got {tokens.shape[1]}; "
                "tokenize with model.tokenize (pads to text.max_len)"
            )
        n, d, h, w = z.shape
        scores = torch.einsum("ntd,ndhw->nthw", tokens, z) * scale  # (N, T, h, w)
        scores = scores * token_mask[:, :, None, None].to(scores.dtype)
        logits = self.token_mix(scores.permute(0, 2, 3, 1)).permute(
            0, 3, 1, 2
        )  # (N, h, w, T) -> (N, C, h, w)
        return logits, pooled


class PresenceHead(nn.Module):
    """One logit per image-query pair: is any referred object present?

    Input [q ; p_vis ; max foreground logit] with p_vis = sum_xy softmax_xy(fg logit) * Z(x, y); for a 2-channel head
    the foreground logit is logit_fg - logit_bg. MLP (2d + 1 -> d -> 1), GELU.
    """

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.mlp = MLP(2 * dim + 1, dim, 1)

    def forward(self, query: Tensor, z: Tensor, logits: Tensor) -> Tensor:
        """query (N, d), z (N, d, h, w), logits (N, C, h, w) at the decoder stride -> presence logit (N,)."""
        fg = logits[:, -1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]  # (N, h, w)
        weights = fg.flatten(1).softmax(dim=-1)  # (N, hw)
        p_vis = torch.einsum("nk,ndk->nd", weights, z.flatten(2))  # (N, d, h, w) -> (N, d)
        peak = fg.flatten(1).max(dim=-1, keepdim=True).values  # (N, 1)
        return self.mlp(torch.cat([query, p_vis, peak], dim=-1)).squeeze(-1)
