"""MID, the mutual-interaction decoder: cascaded two-way cross-attention between text tokens and pixels
(MODEL.md §3.7; keys `mid.depth` (A8), `mid.order`, `mid.num_heads`, `mid.pixel_ffn`, `mid.text_ffn_ratio`,
`mid.pixel_ffn_ratio`).

Names of the two directions, as the official flowchart draws MID: the block labelled "Language-to-Vision
Alignment" (inside: "Language2Vision Attention") takes V* and T_p and its output goes to the matrix product with
the pixel map and up into the other block, so it is text-side: the text tokens attend to the pixels. The block
labelled "Vision-to-Language Alignment" ("Vision2Language Attention") takes V* and that output, and its output is
added to V*: the pixels attend to the text. (The figure's CAPM and LGFA "Interaction" labels name the receiving side
last, e.g. CAPM's "Vision-to-Language Interaction" updates the prompts; MID's "Alignment" labels, read from its
arrows, name it first. The code names each step by who attends to whom.)
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from crobim.modeling.common import MLP, Attention, sine_position_2d

__all__ = ["MID", "MutualInteractionLayer"]


class MutualInteractionLayer(nn.Module):
    """One cascaded layer of two post-LN residual steps, the same two-way pattern as segment-anything's
    ``modeling/transformer.py::TwoWayAttentionBlock`` (commit 6fdee8f):

    * text step: the text tokens attend to the pixels, then an FFN (the figure's "Language-to-Vision Alignment");
    * pixel step: the pixels attend to the valid text tokens, then an FFN ("Vision-to-Language Alignment").

    ``order`` (``mid.order``): ``text_first`` (the figure as drawn) runs the text step, then the pixel step over the
    updated text; ``pixels_first`` the reverse.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        text_ffn_ratio: int,
        pixel_ffn: bool,
        pixel_ffn_ratio: int,
        order: Literal["text_first", "pixels_first"] = "text_first",
    ) -> None:
        super().__init__()
        self.order = order
        self.text_to_pixel_attn = Attention(dim, num_heads)
        self.norm_text_attn = nn.LayerNorm(dim)
        self.text_ffn = MLP(dim, dim * text_ffn_ratio, dim)
        self.norm_text_ffn = nn.LayerNorm(dim)
        self.pixel_to_text_attn = Attention(dim, num_heads)
        self.norm_pixel_attn = nn.LayerNorm(dim)
        self.pixel_ffn = MLP(dim, dim * pixel_ffn_ratio, dim) if pixel_ffn else None
        self.norm_pixel_ffn = nn.LayerNorm(dim) if pixel_ffn else None

    def _text_step(self, text: Tensor, pixels: Tensor, pixel_pos: Tensor) -> Tensor:
        """Text tokens attend to the pixels (the figure's Language-to-Vision Alignment), then the text FFN."""
        text = self.norm_text_attn(text + self.text_to_pixel_attn(text, pixels + pixel_pos, pixels))
        return self.norm_text_ffn(text + self.text_ffn(text))

    def _pixel_step(self, pixels: Tensor, text: Tensor, pixel_pos: Tensor, text_mask: Tensor) -> Tensor:
        """Pixels attend to the valid text tokens (the figure's Vision-to-Language Alignment), then the pixel FFN."""
        pixels = self.norm_pixel_attn(
            pixels + self.pixel_to_text_attn(pixels + pixel_pos, text, text, text_mask)
        )
        if self.pixel_ffn is not None and self.norm_pixel_ffn is not None:
            pixels = self.norm_pixel_ffn(pixels + self.pixel_ffn(pixels))
        return pixels

    def forward(
        self, text: Tensor, pixels: Tensor, pixel_pos: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """text (N, T, d), pixels (N, HW, d), pixel_pos (1, HW, d), text_mask (N, T) -> updated (text, pixels)."""
        if self.order == "text_first":
            text = self._text_step(text, pixels, pixel_pos)
            pixels = self._pixel_step(pixels, text, pixel_pos, text_mask)
        else:
            pixels = self._pixel_step(pixels, text, pixel_pos, text_mask)
            text = self._text_step(text, pixels, pixel_pos)
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
        order: Literal["text_first", "pixels_first"] = "text_first",
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
                order=order,
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
