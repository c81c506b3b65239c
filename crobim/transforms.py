"""The one place that resizes and normalises images, resizes masks and tokenises expressions (MODEL.md §3.2;
keys `input.size`, `input.mean`, `input.std`, `input.interpolation`, `text.max_len`). Callers go through
``CroBIM.preprocess`` / ``CroBIM.tokenize``, ``resize_mask`` and (for numpy batches) ``tokenize``;
``inspect_text`` says how ``tokenize`` will read an expression (its length, what truncation keeps, unknown words).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TextReport", "inspect_text", "preprocess_images", "resize_mask", "to_size", "tokenize"]


def to_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``S`` or ``(H, W)`` -> ``(H, W)``."""
    if isinstance(size, int):
        return (size, size)
    if len(size) != 2:
        raise ValueError(f"size {size!r} must be an int S or a pair (H, W)")
    return (int(size[0]), int(size[1]))


def _stack_uint8(images: Any) -> Tensor:
    if isinstance(images, np.ndarray | Tensor) and images.ndim == 4:
        batch = [images[i] for i in range(images.shape[0])]
    elif isinstance(images, np.ndarray | Tensor):
        batch = [images]
    elif isinstance(images, Sequence) and len(images) > 0:
        batch = list(images)
    else:
        raise TypeError(
            f"images must be a uint8 (H, W, 3) array, a list of them or a (B, H, W, 3) array; got {type(images)}"
        )
    tensors = []
    for i, image in enumerate(batch):
        t = torch.as_tensor(np.asarray(image)) if not isinstance(image, Tensor) else image
        if t.dtype != torch.uint8 or t.ndim != 3 or t.shape[-1] != 3:
            raise ValueError(
                f"image {i} has dtype {t.dtype} and shape {tuple(t.shape)}; expected uint8 (H, W, 3) RGB "
                "(convert with pipelines.radiometry.to_uint8 or Image.convert('RGB'))"
            )
        tensors.append(t)
    return tensors  # type: ignore[return-value]


def preprocess_images(
    images: Any,
    *,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> Tensor:
    """uint8 RGB images -> normalised float (B, 3, H, W) at ``size``.

    Args:
        images: a uint8 (H, W, 3) array, a list of them (sizes may differ) or a (B, H, W, 3) array/tensor.
        size: target (H, W).
        mean: per-channel mean of [0, 1] pixels.
        std: per-channel std of [0, 1] pixels.
        interpolation: ``bilinear`` or ``bicubic`` (antialiased when shrinking, like PIL).

    Returns:
        float32 (B, 3, H, W).
    """
    out = []
    for image in _stack_uint8(images):
        x = image.permute(2, 0, 1).unsqueeze(0).float() / 255.0  # (H, W, 3) -> (1, 3, H, W)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode=interpolation, align_corners=False, antialias=True).clamp_(
                0, 1
            )
        out.append(x)
    batch = torch.cat(out, dim=0)
    mean_t = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


def tokenize(
    tokenizer: Any,
    texts: Sequence[str] | str,
    *,
    max_len: int,
    return_tensors: Literal["pt", "np"] = "pt",
) -> dict[str, Any]:
    """Expressions -> token ids, padded and truncated to ``max_len`` (``text.max_len``) the one way the model expects.

    Args:
        tokenizer: the model's transformers tokenizer (``CroBIM.tokenizer``).
        texts: one expression or a list of them (Q).
        max_len: the token length L.
        return_tensors: ``"pt"`` for torch tensors, ``"np"`` for numpy arrays (data loading).

    Returns:
        ``input_ids`` and ``attention_mask``, both (Q, L) int64 (torch ``long`` or numpy ``int64``).
    """
    if return_tensors not in ("pt", "np"):
        raise ValueError(f"return_tensors = {return_tensors!r} is not allowed; expected 'pt' or 'np'")
    if isinstance(texts, str):
        texts = [texts]
    encoded = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors=return_tensors
    )
    keys = ("input_ids", "attention_mask")
    if return_tensors == "pt":
        return {key: encoded[key].long() for key in keys}
    return {key: encoded[key].astype(np.int64) for key in keys}


@dataclass(frozen=True)
class TextReport:
    """How ``tokenize`` reads one expression.

    Attributes:
        num_tokens: Tokens of the text, without the special tokens ([CLS], [SEP]).
        max_tokens: Tokens of text that ``text.max_len`` leaves room for (special tokens take the rest).
        kept: The part of the text that survives truncation (the whole text when it fits).
        unknown_words: Words that map only to the tokenizer's unknown token ([UNK]), as written.
        known_words: Words holding a letter or digit that the vocabulary knows.
    """

    num_tokens: int
    max_tokens: int
    kept: str
    unknown_words: tuple[str, ...]
    known_words: int

    @property
    def truncated(self) -> bool:
        """True when ``tokenize`` cuts the text."""
        return self.num_tokens > self.max_tokens


def inspect_text(tokenizer: Any, text: str, *, max_len: int) -> TextReport:  # noqa: ANN401
    """How ``tokenize(tokenizer, text, max_len=max_len)`` reads ``text``: its length, what survives, unknown words.

    Args:
        tokenizer: The model's fast transformers tokenizer (``CroBIM.tokenizer``; word boundaries need a fast one).
        text: One expression.
        max_len: The token length L (``text.max_len``), special tokens included.

    Returns:
        The report; words are the tokenizer's own (punctuation marks are words of their own).

    Raises:
        TypeError: The tokenizer is a slow (pure Python) one, which does not give word boundaries.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow tokenizer; load the fast one (AutoTokenizer, default)"
        )
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    max_tokens = max(max_len - tokenizer.num_special_tokens_to_add(), 0)
    if len(ids) <= max_tokens:
        kept = text
    else:
        kept = text[: offsets[max_tokens - 1][1]] if max_tokens else ""
    words: dict[int, list[int]] = {}  # word index -> its token positions
    for position, word in enumerate(encoded.word_ids()):
        words.setdefault(-1 - position if word is None else word, []).append(position)
    unknown, known = [], 0
    for positions in words.values():
        word = text[offsets[positions[0]][0] : offsets[positions[-1]][1]]
        if all(ids[p] == tokenizer.unk_token_id for p in positions):
            unknown.append(word)
        elif any(ch.isalnum() for ch in word):
            known += 1
    return TextReport(len(ids), max_tokens, kept, tuple(unknown), known)


def resize_mask(mask: Any, size: int | Sequence[int]) -> Any:
    """Nearest-neighbour resize of a boolean mask (H, W) to ``size`` (S or (H', W')).

    Returns the same kind as the input (numpy array or torch tensor), dtype bool.
    """
    target = to_size(size)
    is_numpy = not isinstance(mask, Tensor)
    t = torch.as_tensor(np.asarray(mask)) if is_numpy else mask
    if t.ndim != 2:
        raise ValueError(f"mask has shape {tuple(t.shape)}; expected (H, W)")
    if tuple(t.shape) != target:
        t = F.interpolate(t[None, None].to(torch.uint8), size=target, mode="nearest-exact")[
            0, 0
        ]  # (H, W) -> (H', W')
    t = t.bool()
    return t.numpy() if is_numpy else t
