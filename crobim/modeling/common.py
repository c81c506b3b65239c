"""Shared building blocks: channel LayerNorm, 2-D sine position code, multi-head attention, MLP, masked mean."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLP", "Attention", "LayerNorm2d", "masked_mean", "sine_position_2d"]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` (N, T, D) over the tokens where ``mask`` (N, T) is 1 -> (N, D)."""
    weights = mask.to(x.dtype).unsqueeze(-1)  # (N, T) -> (N, T, 1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def sine_position_2d(
    height: int,
    width: int,
    dim: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    temperature: float = 10000.0,
) -> Tensor:
    """DETR-style 2-D sine/cosine position code on a normalised (0, 1] grid -> (height * width, dim).

    Half of the channels encode y, half x; computed on the fly, so no size is hard-coded.
    """
    if dim % 4:
        raise ValueError(f"sine position code width {dim} must be a multiple of 4")
    quarter = dim // 4
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 1.0) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 1.0) / width
    freqs = temperature ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    y_angles = ys[:, None] * (2 * math.pi) / freqs  # (H, D/4)
    x_angles = xs[:, None] * (2 * math.pi) / freqs  # (W, D/4)
    y_code = torch.cat([y_angles.sin(), y_angles.cos()], dim=-1)  # (H, D/2)
    x_code = torch.cat([x_angles.sin(), x_angles.cos()], dim=-1)  # (W, D/2)
    code = torch.cat(
        [y_code[:, None, :].expand(height, width, -1), x_code[None, :, :].expand(height, width, -1)], dim=-1
    )  # (H, W, D)
    return code.reshape(height * width, dim).to(dtype)  # (H, W, D) -> (HW, D)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map.

    Adapted from facebookresearch/segment-anything ``segment_anything/modeling/common.py::LayerNorm2d``
    (commit 6fdee8f).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` (B, C, H, W) over C."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """Two-layer perceptron ``in -> hidden -> out`` with a configurable activation."""

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, *, act_layer: type[nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Apply to the last axis of ``x`` (..., in_dim) -> (..., out_dim)."""
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention with separate query / key / value widths and an optional key-padding mask.

    Same layout as segment-anything ``modeling/transformer.py::Attention`` (commit 6fdee8f), computed with
    ``torch.nn.functional.scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, num_heads: int, *, kv_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        kv_dim = dim if kv_dim is None else kv_dim
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim)
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        n, tokens, dim = x.shape
        x = x.reshape(n, tokens, self.num_heads, dim // self.num_heads)  # (N, T, D) -> (N, T, heads, D/heads)
        return x.transpose(1, 2)  # -> (N, heads, T, D/heads)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Attend ``q`` (N, Tq, D) to ``k`` (N, Tk, Dkv) / ``v`` (N, Tk, Dkv).

        Args:
            q: queries (N, Tq, D).
            k: keys (N, Tk, Dkv).
            v: values (N, Tk, Dkv).
            key_mask: (N, Tk), 1/True where a key may be attended, or None.

        Returns:
            (N, Tq, D).
        """
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        attn_mask = None
        if key_mask is not None:
            attn_mask = key_mask.bool()[:, None, None, :]  # (N, Tk) -> (N, 1, 1, Tk)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (N, heads, Tq, D/heads)
        n, heads, tokens, per_head = out.shape
        out = out.transpose(1, 2).reshape(n, tokens, heads * per_head)  # -> (N, Tq, D)
        return self.out_proj(out)
