"""Reading a scalar-head model: per-token values (critic) and the score at the last real token (reward)."""

from __future__ import annotations

from typing import Any

import torch

from rlhfkit.core import last_valid_index


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) positions that start at 0 on each row's first real token, so left padding does not shift
    absolute-position models (GPT-2); padded positions get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)


def scalar_values(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, packed: bool = False
) -> torch.Tensor:
    """The `score` head read at every position: (B, L) ids and mask -> (B, L) fp32 values. `packed`: from
    one padding-free pass (`models.packing`; the values at padding are then the head's bias alone).

    The backbone is reached through `base_model_prefix` so the head is applied to all hidden states, not
    only to the pooled one `forward` returns.
    """
    backbone = getattr(model, model.base_model_prefix)
    if packed:
        from rlhfkit.models.packing import packed_hidden

        hidden = packed_hidden(backbone, input_ids, attention_mask)  # (B, L, d), zeros at padding
        return model.score(hidden.float()).squeeze(-1).float()  # (B, L)
    from rlhfkit.models.forward import no_cache

    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        **no_cache(backbone),
    ).last_hidden_state  # (B, L, d)
    return model.score(hidden.float()).squeeze(-1).float()  # (B, L); the head is fp32 (bf16 bases too)


def sequence_scores(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, packed: bool = False
) -> torch.Tensor:
    """Reward of each sequence: the value at its last real token (EOS for a finished response), with left
    or right padding. (B, L) -> (B,). `packed`: from one padding-free pass."""
    values = scalar_values(model, input_ids, attention_mask, packed)  # (B, L)
    last = last_valid_index(attention_mask)  # (B,)
    return values.gather(1, last[:, None]).squeeze(1)  # (B,)


class SequenceScores(torch.nn.Module):
    """A scalar-head model as a module whose forward is `sequence_scores`: what accelerate prepares (and DDP
    wraps) to train a reward model, since the scores read the backbone and the head directly."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.scorer = model

    @property
    def _no_split_modules(self) -> list[str]:
        """The scorer's transformer-block classes, which FSDP shards one by one."""
        return list(getattr(self.scorer, "_no_split_modules", None) or [])

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, packed: bool = False
    ) -> torch.Tensor:
        return sequence_scores(self.scorer, input_ids, attention_mask, packed)  # (B,)
