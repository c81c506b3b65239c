"""MID, the mutual-interaction decoder: cascaded two-way cross-attention between text tokens and pixels
(MODEL.md §3.7; keys `mid.depth` (A8), `mid.num_heads`, `mid.pixel_ffn`, `mid.text_ffn_ratio`, `mid.pixel_ffn_ratio`).
"""

from __future__ import annotations

from torch import Tensor, nn

from crobim.modeling.common import MLP, Attention, sine_position_2d

__all__ = ["MID", "MutualInteractionLayer"]


class MutualInteractionLayer(nn.Module):
    """One cascaded layer: text tokens attend to pixels (L->V alignment), then pixels attend to the updated text
    (V->L alignment). Post-LN residual blocks, the same two-way pattern as segment-anything's
    ``modeling/transformer.py::TwoWayAttentionBlock`` (commit 6fdee8f).
    """

    def __init__(
        self, *, dim: int, num_heads: int, text_ffn_ratio: int, pixel_ffn: bool, pixel_ffn_ratio: int
    ) -> None:
        super().__init__()
        self.text_to_pixel_attn = Attention(dim, num_heads)
        self.norm_text_attn = nn.LayerNorm(dim)
        self.text_ffn = MLP(dim, dim * text_ffn_ratio, dim)
        self.norm_text_ffn = nn.LayerNorm(dim)
        self.pixel_to_text_attn = Attention(dim, num_heads)
        self.norm_pixel_attn = nn.LayerNorm(dim)
        self.pixel_ffn = MLP(dim, dim * pixel_ffn_ratio, dim) if pixel_ffn else None
        self.norm_pixel_ffn = nn.LayerNorm(dim) if pixel_ffn else None

    def forward(
        self, text: Tensor, pixels: Tensor, pixel_pos: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """text (N, T, d), pixels (N, HW, d), pixel_pos (1, HW, d), text_mask (N, T) -> updated (text, pixels)."""
        # Cross attention block, text tokens attending to pixels
        text = self.norm_text_attn(text + self.text_to_pixel_attn(text, pixels + pixel_pos, pixels))
        # FFN block on the text tokens
        text = self.norm_text_ffn(text + self.text_ffn(text))
        # Cross attention block, pixels attending to the (valid) text tokens
        pixels = self.norm_pixel_attn(
            pixels + self.pixel_to_text_attn(pixels + pixel_pos, text, text, text_mask)
        )
        # FFN block on the pixels
        if self.pixel_ffn is not None and self.norm_pixel_ffn is not None:
            pixels = self.norm_pixel_ffn(pixels + self.pixel_ffn(pixels))
        return text, pixels


class MID(nn.Module):
    """Projects T_p to the decoder width, runs ``depth`` cascaded mutual-interaction layers, and returns
    Z = V* + X_N (the figure's element-wise sum) with the final text tokens Q_N.
    """

    def __init__(
        self,
        *,
        dim: int,
        text_dim: int,
        depth: int,
        num_heads: int,
        text_ffn_ratio: int,
        pixel_ffn: bool,
        pixel_ffn_ratio: int,
    ) -> None:
        super().__init__()
        self.text_proj = nn.Linear(text_dim, dim)
        self.layers = nn.ModuleList(
            MutualInteractionLayer(
                dim=dim,
                num_heads=num_heads,
                text_ffn_ratio=text_ffn_ratio,
                pixel_ffn=pixel_ffn,
                pixel_ffn_ratio=pixel_ffn_ratio,
            )
            for _ in range(depth)
        )

    def forward(self, visual: Tensor, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Mutual interaction.

        Args:
            visual: V* (N, d, h, w).
            text: T_p (N, T, Dt), T = L + Np.
            text_mask: (N, T), 1 on real tokens and prompts.

        Returns:
            Z (N, d, h, w) and Q_N (N, T, d).
        """
        n, d, h, w = visual.shape
        pixels = visual.flatten(2).transpose(1, 2)  # (N, d, h, w) -> (N, hw, d)
        pixel_pos = sine_position_2d(h, w, d, device=visual.device, dtype=visual.dtype).unsqueeze(
            0
        )  # (1, hw, d)
        tokens = self.text_proj(text)  # (N, T, Dt) -> (N, T, d)
        for layer in self.layers:
            tokens, pixels = layer(tokens, pixels, pixel_pos, text_mask)
        z = visual + pixels.transpose(1, 2).reshape(n, d, h, w)  # (N, hw, d) -> (N, d, h, w)
        return z, tokens
