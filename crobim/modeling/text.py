"""Text encoder wrapper, plain and prompted passes (MODEL.md §3.4; keys `text.*`, `capm.prompt_position`)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["TextEncoder"]


class TextEncoder(nn.Module):
    """A transformers encoder (BERT family, no pooler) with a plain pass and a prompted pass.

    The prompted pass appends Np image-conditioned prompt embeddings to the word embeddings and runs the same
    encoder, which adds its own position / token-type embeddings and embedding LayerNorm to the prompts too.
    Sequences stay in the order [words ; prompts]; the prompt positions are set through ``position_ids``:

    * ``after_padding`` (A5 default): prompts take positions ``max_len .. max_len + Np - 1``, i.e. right after a
      sequence padded to ``max_len`` (extra padding below ``max_len`` therefore changes nothing);
    * ``after_sep``: prompts take positions ``n .. n + Np - 1`` right after [SEP] (n = number of real tokens), and the
      padding tokens move behind them.
    """

    def __init__(
        self,
        encoder: Any,
        *,
        max_len: int,
        prompt_position: Literal["after_padding", "after_sep"] = "after_padding",
    ) -> None:
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            raise ValueError(
                "the text encoder still has a pooler; build it with add_pooling_layer=False (an unused pooler "
                "gets no gradient)"
            )
        self.encoder: Any = encoder  # a transformers PreTrainedModel
        self.hidden_size = int(encoder.config.hidden_size)
        self.max_len = max_len
        self.prompt_position = prompt_position

    def word_embeddings(self, input_ids: Tensor) -> Tensor:
        """Token embeddings only (no position / type / norm): (Q, L) -> (Q, L, Dt)."""
        return self.encoder.get_input_embeddings()(input_ids)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Plain pass.

        Args:
            input_ids: (Q, L) long.
            attention_mask: (Q, L), 1 on real tokens.

        Returns:
            T: (Q, L, Dt) last hidden states.
        """
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _prompt_position_ids(self, attention_mask: Tensor, num_prompts: int) -> Tensor:
        q, length = attention_mask.shape
        device = attention_mask.device
        word_pos = torch.arange(length, device=device).expand(q, length)  # (Q, L)
        prompt_pos = torch.arange(num_prompts, device=device).expand(q, num_prompts)  # (Q, Np)
        if self.prompt_position == "after_padding":
            return torch.cat([word_pos, prompt_pos + self.max_len], dim=1)  # (Q, L + Np)
        num_real = attention_mask.long().sum(dim=1, keepdim=True)  # (Q, 1)
        word_pos = torch.where(word_pos < num_real, word_pos, word_pos + num_prompts)
        return torch.cat([word_pos, prompt_pos + num_real], dim=1)  # (Q, L + Np)

    def prompted(self, input_ids: Tensor, attention_mask: Tensor, prompts: Tensor) -> tuple[Tensor, Tensor]:
        """Prompted pass: encoder([word_embeddings(ids) ; prompts]).

        Args:
            input_ids: (Q, L) long.
            attention_mask: (Q, L), 1 on real tokens.
            prompts: (Q, Np, Dt) image-conditioned prompts P'.

        Returns:
            T_p: (Q, L + Np, Dt) hidden states in the order [words ; prompts], and its mask (Q, L + Np).
        """
        num_prompts = prompts.shape[1]
        embeds = torch.cat([self.word_embeddings(input_ids), prompts], dim=1)  # (Q, L + Np, Dt)
        mask = torch.cat(
            [attention_mask, attention_mask.new_ones(attention_mask.shape[0], num_prompts)], dim=1
        )
        position_ids = self._prompt_position_ids(attention_mask, num_prompts)
        token_type_ids = torch.zeros_like(position_ids)
        hidden = self.encoder(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids,
            token_type_ids=token_type_ids,
        ).last_hidden_state
        return hidden, mask
