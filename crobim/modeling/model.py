"""The CroBIM model: split forward ``encode_image`` / ``encode_text`` / ``decode`` (MODEL.md §2, §3.8, §4.1; keys
`input.*`, `text.max_len`, `text.two_pass` (A2), `presence.enabled`, `backbone.in_fusion` (A1)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crobim.config import CroBIMConfig
from crobim.errors import ImageFeaturesUnavailableError
from crobim.modeling.backbone import Backbone
from crobim.modeling.capm import CAPM
from crobim.modeling.heads import MaskHead, PresenceHead
from crobim.modeling.lgfa import LGFA
from crobim.modeling.mid import MID
from crobim.modeling.text import TextEncoder
from crobim.transforms import preprocess_images, tokenize

__all__ = ["CroBIM", "CroBIMOutput", "DecodeAux", "ImageFeatures", "TextFeatures"]


@dataclass
class ImageFeatures:
    """Output of ``encode_image``: the 4 maps F1..F4 (B, Ci, Hi, Wi) and the input size (H, W)."""

    maps: tuple[Tensor, ...]
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.maps[0].shape[0])

    def index_select(self, index: Tensor) -> ImageFeatures:
        """Rows ``index`` (N,) of every map."""
        return ImageFeatures(tuple(m.index_select(0, index) for m in self.maps), self.image_size)

    def to(self, *args: Any, **kwargs: Any) -> ImageFeatures:
        """``Tensor.to`` on every map (device / dtype), e.g. to cache features in half precision."""
        return ImageFeatures(tuple(m.to(*args, **kwargs) for m in self.maps), self.image_size)


@dataclass
class TextFeatures:
    """Output of ``encode_text``: ids and mask (Q, L) and the plain-pass hidden states T (Q, L, Dt).

    ``hidden`` is None with ``text.two_pass = false`` (LGFA then reads the word part of the prompted pass).
    """

    input_ids: Tensor
    attention_mask: Tensor
    hidden: Tensor | None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def index_select(self, index: Tensor) -> TextFeatures:
        """Rows ``index`` (N,)."""
        hidden = None if self.hidden is None else self.hidden.index_select(0, index)
        return TextFeatures(
            self.input_ids.index_select(0, index), self.attention_mask.index_select(0, index), hidden
        )


@dataclass
class DecodeAux:
    """Debug tensors of ``decode``: per-scale LGFA word attention (N, Hi*Wi, L), N = number of pairs, and the
    image row of each pair (N,)."""

    word_attention: tuple[Tensor, ...] = ()
    image_index: Tensor | None = None


@dataclass
class CroBIMOutput:
    """Mask logits at input resolution, (B, C, H, W) per pair or (B, Q, C, H, W) for all pairs, and the presence
    logit (B,) / (B, Q), None when the presence head is off."""

    logits: Tensor
    presence_logit: Tensor | None
    aux: DecodeAux = field(default_factory=DecodeAux)


def _check_pair_index(pair_index: Tensor, num_images: int, num_queries: int) -> None:
    """``decode``'s pair_index: shape (Q,); values in [0, B), read only on the host (no sync): on an accelerator
    ``index_select`` checks them."""
    if pair_index.shape != (num_queries,):
        raise ValueError(f"pair_index has shape {tuple(pair_index.shape)}; expected ({num_queries},)")
    on_host = pair_index.device.type == "cpu"
    if on_host and num_queries and (int(pair_index.min()) < 0 or int(pair_index.max()) >= num_images):
        raise ValueError(f"pair_index values must lie in [0, {num_images}); got {pair_index.tolist()}")


class CroBIM(nn.Module):
    """Cross-modal bidirectional interaction model for referring remote-sensing image segmentation.

    Build it with ``crobim.build_model(name_or_config)``; the components are passed in already built. Save and
    load it with ``crobim.save_model`` / ``crobim.load_model``.
    """

    def __init__(
        self,
        config: CroBIMConfig,
        *,
        backbone: Backbone,
        text: TextEncoder,
        capm: CAPM,
        lgfa: LGFA,
        mid: MID,
        mask_head: MaskHead,
        presence_head: PresenceHead | None,
        tokenizer: Any,
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.text = text
        self.capm = capm
        self.lgfa = lgfa
        self.mid = mid
        self.mask_head = mask_head
        self.presence_head = presence_head
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------------ preprocessing
    def tokenize(self, texts: list[str] | str) -> dict[str, Tensor]:
        """Tokenise expressions the one way the model expects (padded / truncated to ``text.max_len``).

        Returns:
            ``input_ids`` and ``attention_mask``, both (Q, L) long on the model's device.
        """
        encoded = tokenize(self.tokenizer, texts, max_len=self.config.text.max_len, return_tensors="pt")
        device = self.device
        return {key: value.to(device) for key, value in encoded.items()}

    def preprocess(self, images: Any) -> Tensor:
        """uint8 (H, W, 3) images (one, a list, or a (B, H, W, 3) array) -> normalised (B, 3, H, W) at
        ``input.size`` on the model's device."""
        cfg = self.config.input
        device = self.device
        if device.type == "cuda" and isinstance(images, np.ndarray | Tensor) and images.ndim == 4:
            # A uint8 batch crosses to the GPU as uint8 (a quarter of the float bytes), from pinned memory without
            # blocking the host; resizing and normalising then run on the GPU.
            images = torch.as_tensor(images).pin_memory().to(device, non_blocking=True)
        batch = preprocess_images(
            images, size=cfg.size, mean=cfg.mean, std=cfg.std, interpolation=cfg.interpolation
        )
        return batch.to(device)

    def compile_parts(self, **options: Any) -> CroBIM:
        """``torch.compile`` (in place, ``nn.Module.compile``) every part that runs per tile or per image-query
        pair: backbone, text encoder, CAPM, LGFA, MID and the heads. Parameter names stay the same, so checkpoints
        save and load as before. Opt-in (``CroBIMPredictor(compile=True)``): the first calls of each new shape
        compile (minutes for the paper presets).

        Args:
            options: ``torch.compile`` keyword arguments (e.g. ``mode="max-autotune"``, ``dynamic=False``).

        Returns:
            The model itself.
        """
        for part in (self.backbone, self.text.encoder, self.capm, self.lgfa, self.mid, self.mask_head):
            part.compile(**options)
        if self.presence_head is not None:
            self.presence_head.compile(**options)
        return self

    # ---------------------------------------------------------------------------------------------- encoders
    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images have shape {tuple(images.shape)}; expected (B, 3, H, W); use model.preprocess"
            )
        for side in images.shape[-2:]:
            if side % 32:
                raise ValueError(
                    f"image side {side} is not a multiple of 32; resize with model.preprocess to input.size "
                    f"{self.config.input.size} (any multiple of 32, e.g. 480 or 512)"
                )

    def _backbone(
        self, images: Tensor, words: Tensor | None = None, word_mask: Tensor | None = None
    ) -> ImageFeatures:
        self._check_images(images)
        maps = self.backbone(images, words, word_mask)
        return ImageFeatures(tuple(maps), (int(images.shape[-2]), int(images.shape[-1])))

    def encode_image(self, images: Tensor) -> ImageFeatures:
        """Backbone + stage norms; depends on the image only, so it can be cached and reused for every query.

        Args:
            images: (B, 3, H, W) normalised, H and W multiples of 32.

        Returns:
            ``ImageFeatures`` with 4 maps (B, Ci, H / ri, W / ri).

        Raises:
            ImageFeaturesUnavailableError: with ``backbone.in_fusion = 'pwam'`` the backbone needs the text.
        """
        if self.backbone.needs_text:
            raise ImageFeaturesUnavailableError(
                "backbone.in_fusion = 'pwam' fuses language inside the backbone, so image features depend on the "
                "query; use model(images, input_ids, attention_mask) or set backbone.in_fusion = 'plain'"
            )
        return self._backbone(images)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """Plain text pass; depends on the query only.

        Args:
            input_ids: (Q, L) long, L <= ``text.max_len`` (use ``model.tokenize``).
            attention_mask: (Q, L), 1 on real tokens.

        Returns:
            ``TextFeatures`` with T (Q, L, Dt), or no T with ``text.two_pass = false``.
        """
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be "
                "(Q, L); use model.tokenize"
            )
        if input_ids.shape[1] > self.config.text.max_len:
            raise ValueError(
                f"input_ids have {input_ids.shape[1]} tokens; text.max_len is {self.config.text.max_len}; "
                "tokenize with model.tokenize (it truncates to text.max_len)"
            )
        hidden = self.text(input_ids, attention_mask) if self.config.text.two_pass else None
        return TextFeatures(input_ids, attention_mask, hidden)

    # ------------------------------------------------------------------------------------------------ decoder
    def decode(
        self,
        img: ImageFeatures,
        txt: TextFeatures,
        pair_index: Tensor | None = None,
        pairs_per_pass: int | None = None,
        output_size: tuple[int, int] | None = None,
    ) -> CroBIMOutput:
        """CAPM -> prompted text pass -> LGFA -> MID -> heads for image-query pairs.

        Args:
            img: features of B images.
            txt: features of Q queries.
            pair_index: optional (Q,) long, the image row of each query. None pairs every image with every query.
            pairs_per_pass: run the pixel side (LGFA, MID, heads) over at most this many pairs at a time (None:
                all at once). The image-only work still runs once per image and the prompted text pass once over
                all pairs; smaller passes keep the per-pair pixel activations small (on CPU they then stay in
                cache, see docs/benchmarks.md), at the price of more, smaller kernels.
            output_size: (H, W) of the returned logits (default: the input size); a caller whose images were
                resized to the input size passes their own size, so the logits are resized once.

        Returns:
            ``CroBIMOutput``: without ``pair_index`` logits (B, Q, C, H, W) and presence (B, Q); with it logits
            (Q, C, H, W) and presence (Q,). Image-only work (CAPM prompts, LGFA projections) runs once per image.
        """
        num_images, num_queries = len(img), len(txt)
        device = img.maps[0].device
        if pair_index is None:
            grid = (num_images, num_queries)
            image_rows = torch.arange(num_images, device=device)[:, None].expand(grid).reshape(-1)  # (B*Q,)
            text_rows = torch.arange(num_queries, device=device)[None, :].expand(grid).reshape(-1)  # (B*Q,)
        else:
            _check_pair_index(pair_index, num_images, num_queries)
            image_rows, text_rows = pair_index.to(device=device, dtype=torch.long), None  # query i <-> pair i
        if pairs_per_pass is not None and pairs_per_pass < 1:
            raise ValueError(f"pairs_per_pass must be None or >= 1; got {pairs_per_pass}")
        out_size = (img.image_size[0] // self.lgfa.out_stride, img.image_size[1] // self.lgfa.out_stride)

        # Image-only work, once per image: CAPM prompts P' (B, Np, Dt) and the LGFA projections
        prompts = self.capm(img.maps)
        state = self.lgfa.prepare(img.maps, out_size)

        # Text side for every pair in one pass: its activations are small and its cost is mostly weight reads.
        pairs = txt if text_rows is None else txt.index_select(text_rows)
        prompted, prompted_mask = self.text.prompted(
            pairs.input_ids, pairs.attention_mask, prompts.index_select(0, image_rows)
        )  # T_p (N, L + Np, Dt)
        words = pairs.hidden if pairs.hidden is not None else prompted[:, : pairs.input_ids.shape[1]]

        # Pixel side (LGFA, MID, heads) in passes of at most pairs_per_pass pairs
        num_pairs = int(image_rows.shape[0])
        step = max(num_pairs if pairs_per_pass is None else pairs_per_pass, 1)
        passes = []
        for start in range(0, max(num_pairs, 1), step):
            rows = slice(start, start + step)
            visual, word_attention = self.lgfa(
                state.index_select(image_rows[rows]), words[rows], pairs.attention_mask[rows], out_size
            )  # V* (n, d, h, w)
            z, tokens = self.mid(visual, prompted[rows], prompted_mask[rows])
            logits, query = self.mask_head(z, tokens, prompted_mask[rows])  # (n, C, h, w), (n, d)
            presence = self.presence_head(query, z, logits) if self.presence_head is not None else None
            logits = F.interpolate(
                logits, size=output_size or img.image_size, mode="bilinear", align_corners=True
            )
            passes.append((logits, presence, word_attention))  # logits (n, C, H, W)
        if len(passes) == 1:
            logits, presence, word_attention = passes[0]
        else:
            logits = torch.cat([p[0] for p in passes])
            presence = None if passes[0][1] is None else torch.cat([p[1] for p in passes])  # type: ignore[misc]
            word_attention = [torch.cat(maps) for maps in zip(*(p[2] for p in passes), strict=True)]

        if pair_index is None:
            logits = logits.reshape(num_images, num_queries, *logits.shape[1:])  # (B*Q, ...) -> (B, Q, ...)
            presence = None if presence is None else presence.reshape(num_images, num_queries)
        return CroBIMOutput(logits, presence, DecodeAux(tuple(word_attention), image_rows))

    def forward(
        self,
        images: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        pair_index: Tensor | None = None,
        output_size: tuple[int, int] | None = None,
    ) -> CroBIMOutput:
        """Paired forward: ``decode(encode_image(images), encode_text(ids, mask), pair_index)``.

        Args:
            images: (B, 3, H, W) normalised.
            input_ids: (N, L) long.
            attention_mask: (N, L).
            pair_index: optional (N,) long, the image row of each expression, for batches that hold several
                expressions of one image (each image is then encoded once); None pairs row i with row i (N = B).
            output_size: (H, W) of the returned logits (default: the input size), see :meth:`decode`.

        Returns:
            ``CroBIMOutput`` with logits (N, C, H, W) and presence (N,) or None.
        """
        if pair_index is None and images.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"forward pairs images and expressions: got {images.shape[0]} images and "
                f"{input_ids.shape[0]} expressions; pass pair_index, or use encode_image/encode_text/decode "
                "for many queries per image"
            )
        txt = self.encode_text(input_ids, attention_mask)
        if self.backbone.needs_text:
            # The backbone fuses each expression into its image, so every pair needs its own image copy.
            if pair_index is not None:
                images, pair_index = images.index_select(0, pair_index), None
            words = txt.hidden if txt.hidden is not None else self.text(input_ids, attention_mask)
            img = self._backbone(images, words, attention_mask)
        else:
            img = self.encode_image(images)
        if pair_index is None:
            pair_index = torch.arange(input_ids.shape[0], device=images.device)
        return self.decode(img, txt, pair_index=pair_index, output_size=output_size)
